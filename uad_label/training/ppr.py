"""Training of the patch position regressor (detector `ppr`) on healthy template-space volumes.

Per step: one volume, patches whose 31^3 window holds brain (background-only patches are
excluded), loss = mean Euclidean distance between true and predicted normalised centre, Adam.

Sampling:
- "uniform" (the paper; `full` config): 256 centres drawn uniformly among the voxels whose patch
  holds brain, gathered with uad_kernels.gather_patches, evaluated one patch at a time.
- "crops" (`cpu` config): a few random crops of 31 + 4 (g - 1) voxels; the network's strided
  output gives the g^3 patches of a stride-4 grid inside each crop with shared computation
  (about 15x cheaper per patch on a CPU); crop offsets are uniform, so every position is
  covered over the steps. 8 crops of g = 3 = 216 patches per step (crops at 8 places: one
  crop per step made the gradient chase one region and the loss did not fall).

Several processes (`uad train ppr --nproc N`, uad_label.training.distributed): every process picks the same
volume each step (one generator advanced alike) and the step's patch centres or crop anchors come from one
generator keyed by the step (distributed.sample_rng) drawn for the global batch (N x patches or crops), of which
each process keeps its share; the network runs in DistributedDataParallel and the loss divides by the global
count of patches holding brain, so N processes x batch B train like one process with batch N x B. Rank 0 alone
evaluates on the held-out volume and writes the weights and card.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from uad_kernels import gather_patches

from ..device import resolve_device
from . import TrainRequest, check_config, check_overrides, distributed

DISTRIBUTED = True  # `uad train ppr --nproc N`
EVAL_KEY = 1 << 40  # step key of the held-out evaluation batches (the same batches at every evaluation)

CONFIGS = {
    "cpu": {"width": 4, "steps": 3000, "sampling": "crops", "crops": 8, "crop_grid": 3, "patches": 256,
            "lr": 1e-3, "max_volumes": 10, "max_minutes": 8.0, "eval_every": 100, "eval_batches": 8,
            "modalities": ["FLAIR"]},
    "full": {"width": 16, "steps": 60000, "sampling": "uniform", "crops": 4, "crop_grid": 4, "patches": 256,
             "lr": 1e-4, "max_volumes": 0, "max_minutes": 0.0, "eval_every": 1000, "eval_batches": 16,
             "modalities": ["FLAIR"]},
}


def _load_volume(files: dict, modalities, preprocessed):
    from ..networks.ppr_maps import intensity_input
    from ..preprocess import PreprocessOptions, preprocess

    if preprocessed is None:  # template-space data: the template / FSL MNI grid at 1 mm
        from ..template import on_template_grid

        preprocessed = on_template_grid(files[modalities[0]])
    case = preprocess({m: str(files[m]) for m in modalities}, PreprocessOptions(preprocessed=bool(preprocessed)),
                      reference=modalities[0])
    return intensity_input(case, modalities), case.brain, case.affine


def _has_brain(brain: np.ndarray) -> np.ndarray:
    """Voxels whose 31^3 patch holds at least one brain voxel."""
    from scipy.ndimage import maximum_filter

    from ..networks.ppr import PATCH

    return maximum_filter(brain.astype(np.uint8), size=PATCH, mode="constant") > 0


def overridable(config: str) -> set[str]:
    check_config(config, CONFIGS)
    return set(CONFIGS[config]) | {"preprocessed", "batch_size"}


def train(request: TrainRequest) -> dict:
    import torch
    import torch.nn.functional as F

    from ..networks.ppr import HALO, PATCH, STRIDE, build_ppr, count_parameters
    from ..networks.ppr_maps import BOX_MM, unit_affine
    from ..weights import save_state
    from .data import healthy_cases

    check_overrides(request, overridable(request.config))
    cfg = dict(CONFIGS[request.config])
    overrides = dict(request.overrides)
    if "batch_size" in overrides:  # the generic name (MONAI Label train task) for patches per step
        overrides["patches"] = overrides.pop("batch_size")
    cfg.update({k: v for k, v in overrides.items() if k != "preprocessed"})
    if cfg["sampling"] not in ("uniform", "crops"):
        raise ValueError(f"sampling: expected 'uniform' or 'crops', received {cfg['sampling']!r}")
    report = request.progress or (lambda f, m: None)
    world, dev = distributed.init(resolve_device(request.device))
    if not world.main:
        report = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    device = torch.device(dev)
    torch.manual_seed(request.seed)
    rng = np.random.default_rng(request.seed)
    mods = list(cfg["modalities"])
    t_start = time.perf_counter()

    cases = [c for d in request.data for c in healthy_cases(d, mods)]
    if cfg["max_volumes"]:
        cases = cases[: int(cfg["max_volumes"])]
    if len(cases) < 2:
        raise ValueError(f"data: ppr needs at least 2 healthy volumes (one held out), found {len(cases)}")
    report(0.0, f"loading {len(cases)} healthy volumes")
    vols = []
    for i, files in enumerate(cases):
        img, brain, affine = _load_volume(files, mods, overrides.get("preprocessed"))
        vols.append({"image": torch.from_numpy(img), "brain": brain, "has": _has_brain(brain), "affine": affine,
                     "id": str(Path(files[mods[0]]).name)})
        report(0.1 * (i + 1) / len(cases), f"loaded {i + 1}/{len(cases)}")
    held, train_vols = vols[-1], vols[:-1]
    for v in vols:
        v["padded"] = F.pad(v["image"], (HALO,) * 6).to(device)
        v["m"], v["b"] = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in unit_affine(v["affine"]))
        v["cand"] = np.argwhere(v["has"])

    model = distributed.wrap(build_ppr(len(mods), cfg["width"]).to(device), world, dev)
    net = distributed.unwrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    g = int(cfg["crop_grid"])
    crop = PATCH + STRIDE * (g - 1)

    per_process = int(cfg["patches"] if cfg["sampling"] == "uniform" else cfg["crops"])

    def batch(v, key: int, share: slice):
        """(inputs, true unit positions (N, 3), valid (N,)) of this process's share of the global batch of
        step `key` on volume v (the draws: one generator per step, for the whole global batch)."""
        r = distributed.sample_rng(request.seed, key, 0)
        n = per_process * world.size
        if cfg["sampling"] == "uniform":
            sel = v["cand"][r.integers(0, len(v["cand"]), n)][share]
            c = torch.as_tensor(sel, device=device)
            x = gather_patches(v["padded"], c + HALO, (PATCH,) * 3, padding="zero")
            return x, c.float() @ v["m"].T + v["b"], torch.ones(len(c), dtype=torch.bool, device=device)
        xs, cs = [], []
        ax = torch.arange(g, device=device) * STRIDE
        grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
        # first patch centre = a random candidate minus a random grid offset: crops hit the brain
        anchors = v["cand"][r.integers(len(v["cand"]), size=n)] - STRIDE * r.integers(0, g, (n, 3))
        anchors = np.clip(anchors, 0, np.array(v["brain"].shape) - 1 - STRIDE * (g - 1))[share]
        for anchor in anchors:
            s = [int(a) for a in anchor]  # padded index of the crop start = centre voxel index
            xs.append(v["padded"][:, s[0]:s[0] + crop, s[1]:s[1] + crop, s[2]:s[2] + crop])
            cs.append(grid + torch.as_tensor(s, device=device))
        c = torch.cat(cs)
        has = torch.as_tensor(v["has"], device=device)
        return torch.stack(xs), c.float() @ v["m"].T + v["b"], has[c[:, 0], c[:, 1], c[:, 2]]

    def predict(x, network=model):
        out = network(x)  # (N, 3, g, g, g) or (N, 3, 1, 1, 1)
        return out.permute(0, 2, 3, 4, 1).reshape(-1, 3).float()

    def held_out_error():
        """Rank 0 (or the one process): the global batches of the fixed evaluation keys, on the bare network."""
        n = int(cfg["eval_batches"])
        net.eval()
        errs = []
        with torch.no_grad(), amp:
            for k in range(n):
                x, t, ok = batch(held, EVAL_KEY + k, slice(None))
                e = torch.linalg.vector_norm((predict(x, net) - t) * torch.as_tensor(BOX_MM, device=device,
                                                                                      dtype=torch.float32), dim=1)
                errs.append(e[ok])
        net.train()
        return float(torch.cat(errs).mean())

    losses, history = [], []
    max_s = 60.0 * float(cfg["max_minutes"]) if cfg["max_minutes"] else math.inf
    t_loop = time.perf_counter()
    steps = int(cfg["steps"])
    step = 0
    net.train()
    for step in range(1, steps + 1):
        v = train_vols[rng.integers(len(train_vols))]  # the same volume in every process
        x, t, ok = batch(v, step, distributed.share(per_process, world))
        with amp:
            pred = predict(x)
        # mean distance over the global batch's patches holding brain (each process: its sum / global count)
        count = distributed.all_sum(ok.sum().float(), world) / world.size
        loss = torch.linalg.vector_norm(pred - t, dim=1)[ok].sum() / count.clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(distributed.all_mean(float(loss.detach()), world))  # the global batch's loss
        if world.main and (step % int(cfg["eval_every"]) == 0 or step == steps):
            history.append({"step": step, "train_loss": float(np.mean(losses[-int(cfg["eval_every"]):])),
                            "held_out_error_mm": held_out_error(), "seconds": round(time.perf_counter() - t_loop, 1)})
        report(0.1 + 0.7 * step / steps, f"step {step}/{steps} loss {losses[-1]:.4f}")
        if distributed.any_rank(time.perf_counter() - t_loop > max_s, world):  # every process stops alike
            break
    train_seconds = time.perf_counter() - t_loop
    if not world.main:  # rank 0 alone evaluates and writes
        distributed.finish(world)
        return {"weights": None, "rank": world.rank, "steps": step, "world_size": world.size}
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "train_loss": float(np.mean(losses[-50:])),
                        "held_out_error_mm": held_out_error(), "seconds": round(train_seconds, 1)})

    # healthy error quantiles on the held-out volume, computed like the detector's default map
    report(0.85, "healthy error quantiles on the held-out volume")
    from ..networks.ppr_maps import brain_bbox, coarse_map, exact_map

    net.eval()
    m, b = unit_affine(held["affine"])
    bbox = brain_bbox(held["brain"])
    img = held["image"].to(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        emap = exact_map(net, img, m, b, bbox, device, slab_voxels=32_000_000)
        how = "exact"
    else:
        emap = coarse_map(net, img, m, b, bbox, device)
        how = "coarse (stride 4, interpolated; the CPU default without refinement)"
    vals = emap.cpu().numpy()[held["brain"]]
    quant = {f"q{q}": round(float(np.percentile(vals, q)), 3) for q in (50, 90, 99, 99.5, 99.9)}
    quant["map"] = how
    quant["seconds"] = round(time.perf_counter() - t0, 2)

    card = {
        "detector": "ppr", "method": "patch position regression (Bieder et al., MIDL 2022)",
        "config": request.config, "settings": cfg, "seed": request.seed, "device": str(device),
        "modalities": mods,
        "network": {"name": "PPRNet", "in_channels": len(mods), "width": int(cfg["width"]), "patch": PATCH,
                    "parameters": count_parameters(net)},
        "data": {"sources": [str(d) for d in request.data], "train_volumes": [v["id"] for v in train_vols],
                 "held_out_volume": held["id"]},
        "position_normalisation": "MNI RAS mm over the fixed template box x [-98, 98], y [-134, 98], z [-72, 116]",
        "intensity": "histogram equalisation inside the brain, zero outside",
        "distributed": {**distributed.card(world, per_process),
                        "batch_unit": "patches" if cfg["sampling"] == "uniform" else "crops"},
        "steps": step, "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "final_train_loss": history[-1]["train_loss"], "history": history,
        "healthy_error_mm": quant,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    path = save_state("ppr", state, card, request.out_dir)
    report(1.0, f"weights written to {path}")
    distributed.finish(world)
    return {"weights": str(path), "steps": step, "train_seconds": card["train_seconds"],
            "world_size": world.size, "global_batch_size": per_process * world.size,
            "final_train_loss": card["final_train_loss"], "held_out_error_mm": history[-1]["held_out_error_mm"],
            "healthy_error_mm": quant}
