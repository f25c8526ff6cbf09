from __future__ import annotations

import json
import os
from pathlib import Path

HELP = """Train a learned detector on healthy data and write its weights (a plain state dict) with a
model card. --config cpu is the small demo configuration (minutes on a CPU); --config full is the
published-size run for a GPU. DATA is a datastore from `uad sample-data` (its healthy cases), a
MONAI Label datastore with healthy images marked, or a folder of healthy scans (e.g. IXI).
--nproc N trains in N processes through torchrun (DistributedDataParallel; gloo on CPU, NCCL on GPUs);
--set batch_size is then per process, and the model card records the world size and global batch."""
EPILOG = """example:
  uad sample-data demo_datastore
  uad train ppr --data demo_datastore --config cpu --out weights/
  uad train baur_ae --data demo_datastore --nproc 2 --out weights/"""


def add_arguments(p):
    import uad_label.detectors  # noqa: F401  (detectors register their trainers on import)

    from ..training import trainers

    p.add_argument("model", choices=trainers() or None, help="detector to train")
    p.add_argument("--data", action="append", required=True, help="healthy data folder (repeatable)")
    p.add_argument("--config", default="cpu", choices=("cpu", "full"), help="size of the run (default cpu)")
    p.add_argument("--out", default=None, help="weights folder (default $UAD_WEIGHTS_DIR or the package weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting, e.g. --set epochs=2 --set lr=1e-4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (torchrun, one per GPU on a GPU machine); default 1")
    p.add_argument("--summary", default=None, metavar="PATH", help="also write the summary JSON to PATH (rank 0)")


def _argv(args) -> list[str]:
    """The same command for each torchrun process, without --nproc."""
    argv = ["train", args.model, "--config", args.config, "--device", args.device, "--seed", str(args.seed)]
    for d in args.data:
        argv += ["--data", d]
    for item in args.set:
        argv += ["--set", item]
    argv += ["--summary", args.summary] if args.summary else []
    return argv + (["--out", args.out] if args.out else [])


def run(args) -> int:
    from tqdm import tqdm

    from ..training import TrainRequest, distributed, train

    if args.nproc != 1 and not distributed.launched():
        return distributed.launch(args.nproc, _argv(args), args.model, args.device)
    main_rank = int(os.environ.get("RANK", "0")) == 0

    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, received {item!r}")
        k, v = item.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    with tqdm(total=100, desc=f"train {args.model}", unit="%", bar_format="{l_bar}{bar}| {postfix}",
              disable=not main_rank) as bar:
        def progress(fraction, message):
            bar.n = int(100 * fraction)
            bar.set_postfix_str(message)
            bar.refresh()
        summary = train(args.model, TrainRequest([Path(d) for d in args.data], args.config,
                                                 Path(args.out) if args.out else None, args.device, overrides,
                                                 progress, args.seed))
    if main_rank:
        print(json.dumps(summary, indent=2, default=str))
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, default=str), encoding="utf-8")
    return 0
