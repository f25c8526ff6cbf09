"""Training shared by the volumetric reconstruction detectors (baur_ae, ae3d): healthy volumes
through the inference preprocessing (uad_label.detectors.recon_base), a held-out healthy
validation split, the best checkpoint by validation loss, and the calibration stored in the
model card (default thresholds = a high percentile of the healthy map; the healthy mean residual).
Runs on several processes under torchrun (`uad train NAME --nproc N`, uad_label.training.distributed): each
takes its DistributedSampler share of every epoch, rank 0 alone writes the weights and card."""
from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..transforms.canvas import Canvas
from ..transforms.intensity import median_normalise
from ..transforms.residual import canvas_filter_size, residual_map, threshold_key
from . import TrainRequest, check_config, check_overrides, distributed
from .data import healthy_cases

log = logging.getLogger(__name__)

# the combinations whose default thresholds are calibrated (request parameters residual / filter / mean)
CALIBRATED = [(mode, filt, size, minus) for mode in ("abs", "positive")
              for filt, size in (("median", 5), ("erosion", 5), ("none", 5))
              for minus in (False, True)]


def is_template_space(source: Path) -> bool:
    manifest = Path(source) / "manifest.json"
    if manifest.exists():
        try:
            return json.loads(manifest.read_text(encoding="utf-8")).get("geometry") == "template"
        except (ValueError, OSError):
            return False
    return False


def load_healthy_volumes(request: TrainRequest, modality: str, canvas, factor: int, preprocessed=None,
                         max_cases: int | None = None, progress=None):
    """(N, 1, *canvas) normalised volumes and brain masks of the healthy cases of request.data."""
    from ..io import load_image
    from ..preprocess import PreprocessOptions, preprocess

    cases = []
    for source in request.data:
        pre = is_template_space(source) if preprocessed is None else bool(preprocessed)
        cases += [(c, pre, source) for c in healthy_cases(source, (modality,))]
    if max_cases:
        cases = cases[:max_cases]
    xs, bs = [], []
    for i, (c, pre, _) in enumerate(cases):
        if progress:
            progress(0.1 * i / len(cases), f"loading {Path(c[modality]).name}")
        pc = preprocess({modality: load_image(c[modality])}, PreprocessOptions(preprocessed=pre), reference=modality)
        cv = Canvas.around(pc.brain, canvas, factor)
        xs.append(cv.to_canvas(median_normalise(pc.arrays[modality], pc.brain)))
        bs.append(cv.to_canvas(pc.brain.astype(np.float32)) > 0.5)
    if len(xs) < 2:
        raise InputError(f"data: expected at least 2 healthy {modality} cases (one for validation), received {len(xs)}")
    return torch.cat(xs), torch.cat(bs), [str(c[modality]) for c, _, _ in cases]


def loss_weights(x: torch.Tensor, b: torch.Tensor, exclude_above) -> torch.Tensor:
    """(N, 1, *canvas) float weights of the reconstruction loss for volumes x and brain masks b of
    the same shape: 1, except brain voxels brighter than
    `exclude_above` times the brain median (normalised value 0.5 * exclude_above) and their 26
    neighbours, which get 0. For training on patients' scans when no healthy cohort exists: the
    network is not asked to reproduce what may be a lesion (FLAIR/T2-hyperintense), so it keeps
    flagging it. None: every voxel counts (the published loss)."""
    if exclude_above is None:
        return torch.ones_like(x)
    try:
        ratio = float(exclude_above)
    except (TypeError, ValueError):
        ratio = float("nan")
    if not ratio > 1.0:
        raise InputError(f"exclude_above: expected a ratio to the brain median above 1 (e.g. 1.25), "
                         f"received {exclude_above!r}")
    bright = (x > 0.5 * ratio) & b
    grown = torch.nn.functional.max_pool3d(bright.float(), 3, stride=1, padding=1) > 0
    return (~grown).float()


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str,
                  total: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 or squared error over the voxels with weight 1 (all voxels: torch's L1Loss / MSELoss).
    `total`: the denominator instead of weight.sum() (per process, the global batch's weight sum / world size,
    so the mean of the processes' losses is the global batch's loss)."""
    err = (pred - target).abs() if kind == "l1" else (pred - target) ** 2
    return (err * weight).sum() / (weight.sum() if total is None else total).clamp_min(1.0)


def augment(x: torch.Tensor, gen) -> torch.Tensor:
    """Left-right flips and a random intensity gain / gamma per volume (healthy appearance kept). `gen`: one
    generator, or one per volume (the same draws for a sample whichever process trains on it)."""
    gens = [gen] * len(x) if isinstance(gen, torch.Generator) else list(gen)
    out = []
    for v, gen in zip(x, gens):
        if torch.rand((), generator=gen) < 0.5:
            v = v.flip(-3)
        gain = 1.0 + 0.1 * (2 * torch.rand((), generator=gen) - 1)
        gamma = math.exp(0.15 * (2 * float(torch.rand((), generator=gen)) - 1))
        v = (v.clamp_min(0) / 2.0) ** gamma * 2.0 * gain
        out.append(v)
    return torch.stack(out)


def overridable_keys(defaults: dict, config: str) -> set[str]:
    """What `--set` may change for a volume autoencoder: its config's settings and the data options."""
    check_config(config, ("cpu", "full"))
    return set(defaults["common"]) | set(defaults[config]) | {"preprocessed", "max_cases", "steps", "exclude_above"}


def train_volume_autoencoder(name: str, request: TrainRequest, network_module, defaults: dict) -> dict:
    """Train `network_module.build(**network)` on healthy volumes; save `<name>.pt` + model card."""
    from ..weights import save_state

    check_overrides(request, overridable_keys(defaults, request.config))
    cfg = {**defaults["common"], **defaults[request.config]}
    cfg.update({k: v for k, v in request.overrides.items() if k in cfg})
    net_cfg = dict(cfg["network"])
    levels = network_module.levels(net_cfg)
    canvas = tuple(int(c) for c in cfg["canvas"])
    if any(c % (2 ** levels) for c in canvas):
        raise ValueError(f"canvas: expected sizes divisible by {2 ** levels} ({levels} stride-2 levels), "
                         f"received {canvas}")
    progress = request.progress or (lambda f, m: log.info("[%s] %3.0f%% %s", name, 100 * f, m))
    world, device = distributed.init(resolve_device(request.device))
    if not world.main:
        progress = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    torch.manual_seed(request.seed)
    gen = torch.Generator().manual_seed(request.seed)
    t0 = time.perf_counter()
    x, b, files = load_healthy_volumes(request, cfg["modality"], canvas, int(cfg["factor"]),
                                       request.overrides.get("preprocessed"), request.overrides.get("max_cases"),
                                       progress)
    exclude_above = request.overrides.get("exclude_above")
    w = loss_weights(x, b, exclude_above)
    in_loss = w > 0
    excluded = [round(float((bi & ~ki).sum() / bi.sum().clamp_min(1)), 5) for bi, ki in zip(b, in_loss)]
    n_val = max(1, int(round(cfg["val_fraction"] * len(x))))
    perm = torch.randperm(len(x), generator=gen)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    load_s = time.perf_counter() - t0

    model = distributed.wrap(network_module.build(**net_cfg).to(device), world, device)
    net = distributed.unwrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    kind = "l1" if cfg["loss"] == "l1" else "mse"
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    bs = int(cfg["batch_size"])
    best = (float("inf"), None, -1)
    history = []
    t1 = time.perf_counter()
    budget = float(cfg["max_minutes"]) * 60
    epochs = int(cfg["epochs"])
    max_steps = int(request.overrides.get("steps", 0)) or None  # the MONAI Label train task may pass it
    steps = 0
    for epoch in range(epochs):
        net.train()
        order = train_idx[distributed.epoch_indices(len(train_idx), epoch, request.seed, world)]
        losses = []
        stop = False
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            xb = augment(x[idx], [distributed.sample_generator(request.seed, epoch, j) for j in idx.tolist()])
            xb = xb.to(device)
            total = distributed.all_sum(w[idx].sum(), world) / world.size if world.distributed else None
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = weighted_loss(model(xb).float(), xb, w[idx].to(device), kind, total)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(distributed.all_mean(float(loss.detach()), world))  # the global batch's loss
            steps += 1
            stop = distributed.any_rank(time.perf_counter() - t1 > budget or bool(max_steps and steps >= max_steps),
                                        world)  # every process stops at the same step
            if stop:
                break
        val = _evaluate(net, x[val_idx], w[val_idx], kind, device, amp)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val})
        if val < best[0]:
            best = (val, copy.deepcopy(net.state_dict()), epoch + 1)
        elapsed = time.perf_counter() - t1
        progress(0.1 + 0.8 * min(1.0, max((epoch + 1) / epochs, elapsed / budget)),
                 f"epoch {epoch + 1}: train {np.mean(losses):.4f} val {val:.4f}")
        if stop or distributed.any_rank(elapsed > budget, world):
            if elapsed > budget:
                log.info("%s: time budget of %.1f min reached after %d epochs", name, budget / 60, epoch + 1)
            break
    train_s = time.perf_counter() - t1
    net.load_state_dict(best[1])
    summary = {"epochs": len(history), "best_epoch": best[2], "best_val_loss": best[0],
               "train_seconds": round(train_s, 1), "n_train": len(train_idx), "n_val": len(val_idx),
               "world_size": world.size, "global_batch_size": bs * world.size}
    if not world.main:  # rank 0 alone calibrates and writes
        distributed.finish(world)
        return {**summary, "weights": None, "rank": world.rank}
    progress(0.92, "calibrating thresholds on the healthy validation volumes")
    thresholds, means, cal_info = calibrate(net, x[val_idx], b[val_idx] & in_loss[val_idx], device,
                                            float(cfg["threshold_percentile"]), int(cfg["factor"]))
    # float16 on disk (the shipped files stay small); the detector loads them back as float32
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in net.state_dict().items()}
    for mode, m in means.items():
        state[f"extra.healthy_mean_{mode}"] = m.half()
    card = {
        "detector": name, "config": request.config, "network": net_cfg, "modality": cfg["modality"],
        "canvas": list(canvas), "factor": int(cfg["factor"]), "normalisation": "x * 0.5 / brain median, clip [0, 2]",
        "loss": cfg["loss"], "exclude_above": exclude_above,
        "excluded_brain_fraction": dict(zip((Path(f).name for f in files), excluded)),
        "optimizer": "Adam", "lr": float(cfg["lr"]), "batch_size": bs,
        "distributed": distributed.card(world, bs),
        "epochs_run": len(history), "steps": steps, "best_epoch": best[2], "best_val_loss": best[0],
        "history": history, "seconds": {"load": round(load_s, 1), "train": round(train_s, 1)},
        "data": {"sources": [str(s) for s in request.data], "n_train": len(train_idx), "n_val": len(val_idx),
                 "val_cases": [Path(files[i]).name for i in val_idx.tolist()]},
        "threshold_percentile": float(cfg["threshold_percentile"]), "thresholds": thresholds,
        "calibration": cal_info, "device": device, "seed": request.seed,
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = save_state(name, state, card, request.out_dir)
    progress(1.0, f"saved {path}")
    distributed.finish(world)
    return {**summary, "weights": str(path)}


@torch.no_grad()
def _evaluate(net, x, w, kind, device, amp) -> float:
    net.eval()
    losses = []
    for v, wv in zip(x, w):
        xb = v[None].to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            losses.append(float(weighted_loss(net(xb).float(), xb, wv[None].to(device), kind)))
    return float(np.mean(losses))


@torch.no_grad()
def calibrate(net, x, b, device, percentile: float, factor: int = 1):
    """Default thresholds (the `percentile` of the in-brain map over the healthy validation volumes,
    for each calibrated combination of residual / filter / mean subtraction) and the healthy mean
    residual per residual mode (canvas space)."""
    net.eval()
    recons = [net(v[None].to(device)).float().cpu() for v in x]
    means = {}
    for mode in ("abs", "positive"):
        maps = [residual_map(v, r, m, mode)[0] for v, r, m in zip(x, recons, b)]
        means[mode] = torch.stack(maps).mean(0)
    thresholds = {}
    for mode, filt, size, minus in CALIBRATED:
        values = []
        for v, r, m in zip(x, recons, b):
            mp, _ = residual_map(v, r, m, mode, means[mode] if minus else None, filt, canvas_filter_size(size, factor))
            values.append(mp[m.reshape(mp.shape)].numpy())
        key = threshold_key({"residual": mode, "filter": filt, "filter_size": size, "subtract_healthy_mean": minus})
        thresholds[key] = float(np.percentile(np.concatenate(values), percentile))
    info = {"n_volumes": len(x), "percentile": percentile,
            "note": "healthy mean residual from the validation volumes themselves, so 'minus_mean' thresholds "
                    "are optimistic (in-sample)"}
    return thresholds, means, info
