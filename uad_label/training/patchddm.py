"""PatchDDM trainer: a diffusion segmenter learned from lesion labels (not from healthy data).

Data, in this order of preference:
- the final labels of a MONAI Label datastore (labels/final/<image id>.nii.gz) with their images;
- folders with ground truth (`uad sample-data ... --lesion-masks`: healthy synthetic subjects with
  real MSLUB lesion masks pasted in, ground_truth/<case>.nii.gz), used while there are fewer than
  `min_real_cases` datastore labels.

Each case is preprocessed like at inference (template space), each modality scaled to [0, 1]
between its 0.5 / 99.5 brain percentiles, averaged down to the model's voxel size, and given three
coordinate channels (-1 to 1 over the whole volume) before cropping. Crops start uniformly over
the valid range (the published centre-biased distribution: central voxels fall in more crops);
the CPU configuration centres half its crops on a lesion voxel so minutes of training see lesions.
Loss: MSE of the predicted noise, t uniform in [0, T), AdamW.

Several processes (`uad train patchddm --nproc N`, uad_label.training.distributed): every crop of a step's
global batch (N x batch_size) draws its case, crop, flip, timestep and noise from its own generators keyed by
step and position in the global batch (distributed.sample_rng / sample_generator); each process makes its share
and the U-Net (GroupNorm: per sample) runs in DistributedDataParallel, so N x batch B train like one process
with N x B. Every process loads every case; rank 0 alone writes the weights and card.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..transforms.intensity import scale_modalities
from ..transforms.model_grid import model_grid_shape, to_model_grid

log = logging.getLogger(__name__)
DISTRIBUTED = True  # `uad train patchddm --nproc N`

NAME = "patchddm"
CONFIGS = {
    # CPU demo: a tiny U-Net on 4 mm volumes (49 x 58 x 47 in template space), 24^3 crops (96 mm)
    "cpu": {"network": {"base_channels": 8, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 1},
            "spacing_mm": 4.0, "crop": 24, "batch_size": 2, "lr": 1e-3, "steps": 4000, "max_minutes": 7.0,
            "lesion_crop_fraction": 0.5, "min_real_cases": 4, "checkpoint": False,
            # 1 intra-op thread: on a shared CPU, OpenMP threads spinning against other jobs made each
            # step 6-30x slower (measured 0.42 s vs 2.8-13 s per step on the 2-core development box)
            "threads": 1},
    # published: base 29, 7 levels, 128^3 crops at 1 mm, AdamW 1e-4 (GPU, bf16 autocast)
    "full": {"network": {"base_channels": 29, "channel_mult": [1, 3, 4, 4, 4, 4, 4], "num_res_blocks": 2},
             "spacing_mm": 1.0, "crop": 128, "batch_size": 1, "lr": 1e-4, "steps": 100000, "max_minutes": 600.0,
             "lesion_crop_fraction": 0.0, "min_real_cases": 4, "checkpoint": True, "threads": 0},
}
MODALITIES = ("FLAIR", "T1", "T2")
LIMITATIONS = {
    "cpu": "Demo weights: a tiny U-Net trained minutes on a shared CPU on a handful of synthetic cases, at 4 mm. "
           "It shows the loop (segmentation + uncertainty, active learning) working; its masks are coarse "
           "(4 mm voxels, lesions under ~0.1 ml are invisible to it) and not for any clinical or research use.",
    "full": "Published configuration (base 29, 1 mm, 128^3 crops); quality depends on the labels it was trained on.",
}
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
OVERRIDABLE = {"steps", "lr", "batch_size", "crop", "spacing_mm", "max_minutes", "lesion_crop_fraction",
               "min_real_cases", "holdout", "preprocessed", "network", "threads"}


# ----------------------------------------------------------------------------- data
def labelled_cases(sources, holdout=()) -> tuple[list[dict], list[dict]]:
    """(real, synthetic) cases: {"id", "images", "label", "preprocessed", "source"}."""
    from ..cases import final_label, find_cases

    real, synthetic = [], []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise FileNotFoundError(f"data: expected a folder (datastore or labelled cases), received {root}")
        manifest = (json.loads((root / "manifest.json").read_text(encoding="utf-8"))
                    if (root / "manifest.json").exists() else {})
        is_synth = manifest.get("kind") == "synthetic"
        template = manifest.get("geometry") == "template"
        for case in find_cases(root):
            if case.case_id in holdout or not all(m in case.images for m in MODALITIES):
                continue
            label = final_label(root, case.case_id, case.images)
            entry = {"id": case.case_id, "images": {m: case.images[m] for m in MODALITIES},
                     "preprocessed": template, "source": str(root)}
            if label is not None:
                real.append({**entry, "label": label, "kind": "final label"})
            elif case.gt is not None:
                (synthetic if is_synth else real).append({**entry, "label": case.gt,
                                                          "kind": "synthetic" if is_synth else "ground truth"})
    return real, synthetic


def load_case(entry: dict, spacing_mm: float, preprocessed: bool | None = None):
    """(inputs (3 + 3, X, Y, Z) with coordinates, target (1, X, Y, Z) in [-1, 1]) on the model grid."""
    import torch

    from ..io import load_image
    from ..networks.patchddm import coordinate_channels
    from ..preprocess import PreprocessOptions, preprocess

    images = {m: load_image(p) for m, p in entry["images"].items()}
    pre = entry["preprocessed"] if preprocessed is None else preprocessed
    case = preprocess(images, PreprocessOptions(preprocessed=pre, bias_correction=not pre), reference="FLAIR")
    label = case.to_work(load_image(entry["label"]), interpolation="nearest") > 0
    size = model_grid_shape(case.shape, spacing_mm, case.spacing)
    x = to_model_grid(scale_modalities(case, MODALITIES), size)
    y = to_model_grid(label[None].astype(np.float32), size)
    coords = coordinate_channels(size)
    return torch.cat([x, coords]), y * 2.0 - 1.0


def sample_crop(shape, crop: int, rng: np.random.Generator, lesion_voxels: np.ndarray | None = None):
    """Crop start: uniform over the valid range, or (with lesion_voxels) a crop holding a random lesion voxel."""
    if lesion_voxels is not None and len(lesion_voxels):
        v = lesion_voxels[rng.integers(len(lesion_voxels))]
        return [int(np.clip(c - rng.integers(0, crop), 0, max(n - crop, 0))) for c, n in zip(v, shape)]
    return [int(rng.integers(0, max(n - crop, 0) + 1)) for n in shape]


def crop_pad(t, start, crop: int):
    """(C, X, Y, Z)[start : start + crop], zero-padded where the volume is smaller than the crop."""
    import torch.nn.functional as F

    sl = t[:, start[0]:start[0] + crop, start[1]:start[1] + crop, start[2]:start[2] + crop]
    pads = [crop - s for s in sl.shape[1:]]
    return F.pad(sl, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else sl


# ----------------------------------------------------------------------------- training
def overridable(config: str) -> set[str]:
    from . import check_config

    check_config(config, CONFIGS)
    return OVERRIDABLE


def train(request) -> dict:
    import torch

    from ..device import resolve_device
    from . import check_overrides, distributed

    check_overrides(request, overridable(request.config))
    cfg = {**CONFIGS[request.config], **request.overrides}
    holdout = cfg.get("holdout") or []
    holdout = set(holdout.split(",") if isinstance(holdout, str) else holdout)
    report = request.progress or (lambda f, m: log.info("%3.0f%% %s", 100 * f, m))
    world, device = distributed.init(resolve_device(request.device))
    if not world.main:
        report = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    torch.manual_seed(request.seed)
    threads_before = torch.get_num_threads()
    if int(cfg.get("threads") or 0) > 0 and not device.startswith("cuda"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _train(request, cfg, holdout, report, device, world, torch)
    finally:
        torch.set_num_threads(threads_before)


def _sample(data, crop: int, cfg, seed: int, step: int, j: int, schedule, torch):
    """Crop j of step `step`'s global batch: (inputs, target, t, noise), drawn from its own generators."""
    from . import distributed

    rng = distributed.sample_rng(seed, step, j)
    x, y, lesions = data[rng.integers(len(data))]
    on_lesion = rng.random() < float(cfg["lesion_crop_fraction"])
    start = sample_crop(x.shape[1:], crop, rng, lesions if on_lesion else None)
    xc, yc = crop_pad(x, start, crop), crop_pad(y + 1.0, start, crop) - 1.0  # pad target with background
    if rng.random() < 0.5:  # left-right flip of the anatomy; coordinates stay positional
        xc = torch.cat([xc[:3].flip(1), xc[3:]])
        yc = yc.flip(1)
    g = distributed.sample_generator(seed, step, j)
    t = torch.randint(0, schedule.T, (), generator=g)
    return xc, yc, t, torch.randn(yc.shape, generator=g)


def _train(request, cfg, holdout, report, device, world, torch) -> dict:
    from ..diffusion import DiffusionSchedule
    from ..networks.patchddm import build
    from ..weights import save_state
    from . import distributed

    t0 = time.perf_counter()

    real, synthetic = labelled_cases(request.data, holdout)
    if len(real) >= cfg["min_real_cases"]:
        cases, source = real, "final labels"
    else:
        cases, source = real + synthetic, ("final labels + synthetic" if real else "synthetic")
    if not cases:
        raise ValueError(
            f"data: no labelled case with {list(MODALITIES)} in {[str(d) for d in request.data]}: approve labels "
            "in the datastore (labels/final) or add synthetic lesion cases, e.g. `uad sample-data DIR --n-healthy 0 "
            "--n-lesion 8 --geometry template --lesion-masks MSLUB/lesion_masks_mni` and pass --data DIR too")
    report(0.0, f"loading {len(cases)} cases ({source})")
    data = []
    for i, entry in enumerate(cases):
        x, y = load_case(entry, float(cfg["spacing_mm"]), cfg.get("preprocessed"))
        lesions = np.argwhere(y[0].numpy() > 0)
        data.append((x, y, lesions))
        report(0.1 * (i + 1) / len(cases), f"loaded {entry['id']}")
    t_load = time.perf_counter() - t0

    net_cfg = {"in_channels": len(MODALITIES) + 4, "out_channels": 1, **cfg["network"]}
    net_cfg["channel_mult"] = list(net_cfg["channel_mult"])
    net = build(net_cfg, checkpoint=bool(cfg.get("checkpoint"))).to(device)
    crop = int(cfg["crop"])
    if crop % net.divisor:
        raise ValueError(f"crop: expected a multiple of {net.divisor} for this U-Net, received {crop}")
    cuda = device.startswith("cuda")
    if cuda:
        net = net.to(memory_format=torch.channels_last_3d)
    model = distributed.wrap(net, world, device)
    schedule = DiffusionSchedule(**SCHEDULE)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]))
    bs = int(cfg["batch_size"])
    share = distributed.share(bs, world)
    steps, budget = int(cfg["steps"]), float(cfg["max_minutes"]) * 60.0
    losses, t_train, step = [], time.perf_counter(), 0
    model.train()
    while step < steps and not distributed.any_rank(time.perf_counter() - t_train >= budget, world):
        xs, ys, ts, noises = zip(*[_sample(data, crop, cfg, request.seed, step, j, schedule, torch)
                                   for j in range(share.start, share.stop)])
        x = torch.stack(xs).to(device)
        x0 = torch.stack(ys).to(device)
        t = torch.stack(ts).to(device)
        noise = torch.stack(noises).to(device)
        xt = schedule.add_noise(x0, noise, t)
        inp = torch.cat([x, xt], 1)
        if cuda:
            inp = inp.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            eps = model(inp, t)
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(distributed.all_mean(float(loss.detach()), world))  # the global batch's loss
        step += 1
        if step % 25 == 0:
            elapsed = time.perf_counter() - t_train
            report(0.1 + 0.85 * min(1.0, max(step / steps, elapsed / budget)),
                   f"step {step} loss {np.mean(losses[-25:]):.4f}")
    t_train = time.perf_counter() - t_train
    if not world.main:  # rank 0 alone writes
        distributed.finish(world)
        return {"weights": None, "rank": world.rank, "steps": step, "world_size": world.size}

    card = {
        "detector": NAME, "method": "PatchDDM (Bieder et al.): DDPM segmenter, epsilon prediction, 3D U-Net "
                                    "without attention, averaging skips, coordinate channels",
        "config": request.config, "settings": {k: v for k, v in cfg.items() if k != "holdout"},
        "network": net_cfg, "schedule": SCHEDULE, "modalities": list(MODALITIES),
        "normalisation": "per modality: brain percentiles 0.5 -> 0, 99.5 -> 1 (clipped to [-0.5, 2]), 0 outside",
        "spacing_mm": float(cfg["spacing_mm"]), "distributed": distributed.card(world, bs),
        "data": {"source": source, "cases": [c["id"] for c in cases], "kinds": sorted({c["kind"] for c in cases}),
                 "folders": sorted({c["source"] for c in cases}), "holdout": sorted(holdout)},
        "training": {"steps": step, "seconds": round(t_train, 1), "load_seconds": round(t_load, 1),
                     "device": device, "torch": torch.__version__, "seed": request.seed,
                     "loss_first_100": float(np.mean(losses[:100])) if losses else None,
                     "loss_last_100": float(np.mean(losses[-100:])) if losses else None,
                     "loss_first_10_steps": [float(v) for v in losses[:10]],
                     "loss_per_25_steps": [round(float(np.mean(losses[i:i + 25])), 4)
                                           for i in range(0, len(losses), 25)]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "limitations": LIMITATIONS.get(request.config, ""),
    }
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    path = save_state(NAME, state, card, request.out_dir)
    report(1.0, f"saved {path}")
    distributed.finish(world)
    return {"weights": str(path), "steps": step, "cases": len(cases), "source": source,
            "loss_first_100": card["training"]["loss_first_100"], "loss_last_100": card["training"]["loss_last_100"],
            "seconds": round(time.perf_counter() - t0, 1), "world_size": world.size,
            "global_batch_size": bs * world.size}
