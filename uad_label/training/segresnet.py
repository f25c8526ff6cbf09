"""Trainer of the fast segmenter (`segresnet`): weak-to-strong distillation. A slow, strong detector's masks
(pseudo-labels, e.g. SAMSEG's, written by `uad pseudo-label` into labels/<tag>/) and the annotators' approved
labels (labels/final/, weighted higher and always preferred for the same case: uad_label.training.labels)
teach MONAI's SegResNet on FLAIR with T1/T2 when present.

Each case goes through the inference preprocessing and input (uad_label.detectors.segresnet.network_input:
template space, per-modality brain percentile scaling, a missing modality as zeros, `spacing_mm` voxels);
its label is mapped into the work grid (>= 0.5 is lesion) and averaged down to the same grid (a soft
target). MONAI dictionary transforms draw each sample: crops centred on lesion / background voxels
(RandCropByPosNegLabeld, `pos_fraction`), random flips on every axis, a small affine, intensity scale and
shift, Gaussian noise; T1 and T2 are each zeroed with probability `drop_t1_t2` so FLAIR alone works.
Loss: MONAI's Dice + BCE (`dice_ce`) or Dice + focal (`dice_focal`) on the sigmoid, per sample, times the
case's label weight (normalised to a mean of 1 over the training cases); AdamW.

Runs on several processes under torchrun (`uad train segresnet --nproc N`, uad_label.training.distributed):
every sample's randomness comes from its own seed (sample_generator), each process takes its
DistributedSampler share of an epoch in equal batches, group norm is per sample; rank 0 writes.
"""
from __future__ import annotations

import datetime
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

NAME = "segresnet"
DISTRIBUTED = True
CHANNELS = ("FLAIR", "T1", "T2")
LOSSES = ("dice_ce", "dice_focal")
CONFIGS = {
    # CPU: 1.2 M parameters, 2 mm voxels, 48^3 crops (96 mm); about 0.7 CPU-s per step of 2 crops
    "cpu": {"network": {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "num_groups": 8},
            "spacing_mm": 2.0, "crop": 48, "batch_size": 2, "lr": 2e-3, "weight_decay": 1e-5, "steps": 3000,
            "max_minutes": 12.0, "loss": "dice_ce", "pos_fraction": 0.67, "drop_t1_t2": 0.5, "epoch_samples": 32,
            "prior": 0.01,
            # 1 intra-op thread: on a shared CPU, OpenMP threads spinning against other jobs slow each step down
            "threads": 1},
    # GPU: 4.7 M parameters, 1 mm, 128^3 crops (bf16 autocast); its weights want a GPU at inference too
    "full": {"network": {"init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "num_groups": 8},
             "spacing_mm": 1.0, "crop": 128, "batch_size": 2, "lr": 1e-3, "weight_decay": 1e-5, "steps": 40000,
             "max_minutes": 480.0, "loss": "dice_ce", "pos_fraction": 0.67, "drop_t1_t2": 0.5,
             "epoch_samples": 64, "prior": 0.01, "threads": 0},
}
DATA_KEYS = {"pseudo_tags", "final_weight", "pseudo_weight", "holdout", "preprocessed"}
DATA_DEFAULTS = {"pseudo_tags": ["samseg"], "final_weight": 3.0, "pseudo_weight": 1.0, "holdout": [],
                 "preprocessed": None}
OVERRIDABLE = set(CONFIGS["cpu"]) | DATA_KEYS
LIMITATIONS = {
    "cpu": "Minutes of CPU training at 2 mm on a handful of scans: it learns what its teacher marks, no better, "
           "and lesions under ~0.05 ml (a few 2 mm voxels) are beyond its grid. Not for clinical or research use.",
    "full": "1 mm GPU configuration; quality is bounded by the pseudo-labels' teacher and the number of scans.",
}


# ----------------------------------------------------------------------------- settings
def overridable(config: str) -> set[str]:
    from . import check_config

    check_config(config, CONFIGS)
    return OVERRIDABLE


def _number(cfg, name, kind=float, lo=None, hi=None, lo_open=False):
    v = cfg[name]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (kind is float or float(v).is_integer())
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
    if not ok:
        what = "a whole number" if kind is int else "a number"
        bounds = (f" {'>' if lo_open else '>='} {lo}" if lo is not None else "") + (f" and <= {hi}" if hi else "")
        raise InputError(f"{name}: expected {what}{bounds}, received {v!r}")
    cfg[name] = kind(v)


def _names(cfg, name) -> None:
    v = cfg[name]
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) and s for s in v):
        raise InputError(f"{name}: expected a list of names (or a comma-separated string), received {cfg[name]!r}")
    cfg[name] = list(v)


def settings(request) -> dict:
    """The run's settings: config, then overrides, every value checked (InputError naming it) before any
    data is read."""
    from ..networks.segresnet import check_network, divisor
    from . import check_overrides

    check_overrides(request, overridable(request.config))
    cfg = {**CONFIGS[request.config], **DATA_DEFAULTS, **request.overrides}
    if not isinstance(cfg["network"], dict):
        raise InputError(f"network: expected a JSON object of SegResNet settings, received {cfg['network']!r}")
    cfg["network"] = {**CONFIGS[request.config]["network"], **cfg["network"]}
    check_network(cfg["network"])
    for name, kind, lo, hi, lo_open in (("steps", int, 1, None, False), ("batch_size", int, 1, 256, False),
                                        ("crop", int, 1, 512, False), ("epoch_samples", int, 1, None, False),
                                        ("threads", int, 0, 256, False), ("spacing_mm", float, 0, 8.0, True),
                                        ("lr", float, 0, 1.0, True), ("weight_decay", float, 0, 1.0, False),
                                        ("max_minutes", float, 0, None, True), ("pos_fraction", float, 0, 1.0, False),
                                        ("drop_t1_t2", float, 0, 1.0, False), ("final_weight", float, 0, None, True),
                                        ("pseudo_weight", float, 0, None, True),
                                        ("prior", float, 0, 0.5, True)):
        _number(cfg, name, kind, lo, hi, lo_open)
    div = divisor(cfg["network"])
    if cfg["crop"] % div:
        raise InputError(f"crop: expected a multiple of {div} (the network's divisor), received {cfg['crop']}")
    if cfg["loss"] not in LOSSES:
        raise InputError(f"loss: expected one of {list(LOSSES)}, received {cfg['loss']!r}")
    if cfg["preprocessed"] not in (None, True, False):
        raise InputError(f"preprocessed: expected true or false, received {cfg['preprocessed']!r}")
    _names(cfg, "pseudo_tags")
    _names(cfg, "holdout")
    return cfg


# ----------------------------------------------------------------------------- data
def load_case(entry, spacing_mm: float, preprocessed: bool):
    """(input (3, X, Y, Z), soft target (1, X, Y, Z) in [0, 1]) of one labelled case on the model grid."""
    from ..detectors.segresnet import network_input
    from ..io import load_image
    from ..preprocess import PreprocessOptions, preprocess
    from ..transforms.model_grid import to_model_grid

    images = {m: load_image(p) for m, p in entry.images.items()}
    case = preprocess(images, PreprocessOptions(preprocessed=preprocessed, bias_correction=not preprocessed),
                      reference="FLAIR")
    try:
        label_img = load_image(entry.label)
    except (ValueError, OSError) as exc:
        raise InputError(f"label of {entry.case_id} ({entry.tag}): expected a 3D label image, received "
                         f"{Path(entry.label).name} ({exc})") from exc
    label = case.to_work(label_img, interpolation="nearest") >= 0.5
    x = network_input(case, CHANNELS, spacing_mm)
    y = to_model_grid(label[None].astype(np.float32), tuple(x.shape[1:]))
    return x, y, [m for m in CHANNELS if m in case.arrays]


def _relative(path, root) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _preprocessed(case, override) -> bool:
    """Template-space input (no registration): the override, else a sample-data manifest saying so, else a FLAIR
    on the template grid; several --data folders may mix raw and template-space cases."""
    from ..template import on_template_grid
    from .recon_common import is_template_space

    if override is not None:
        return bool(override)
    return is_template_space(case.source) or on_template_grid(case.images["FLAIR"])


def prepare_case(x, y, crop: int) -> dict:
    """A case ready for sampling: padded to at least the crop (MONAI's SpatialPadd) with its lesion and
    background voxel indices found once (FgBgToIndicesd), not at every crop."""
    from monai.transforms import Compose, FgBgToIndicesd, SpatialPadd

    keys = ("image", "label")
    d = Compose([SpatialPadd(keys, spatial_size=(crop,) * 3), FgBgToIndicesd("label")])({"image": x, "label": y})
    return {"image": plain(d["image"]), "label": plain(d["label"]),
            "label_fg_indices": d["label_fg_indices"], "label_bg_indices": d["label_bg_indices"]}


def plain(t):
    """A torch.Tensor of a MONAI MetaTensor (or array), without its metadata."""
    import torch

    return torch.as_tensor(t).as_subclass(torch.Tensor)


def augmentations(cfg: dict):
    """MONAI dictionary transforms drawing one training sample from a prepared case (prepare_case)."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys, roi = ("image", "label"), (cfg["crop"],) * 3
    pos = cfg["pos_fraction"]
    return Compose([
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi, pos=pos, neg=1.0 - pos, num_samples=1,
                               fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"),
        *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
        RandAffined(keys, prob=0.3, rotate_range=(0.15,) * 3, scale_range=(0.1,) * 3, mode=("bilinear", "bilinear"),
                    padding_mode="zeros"),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        RandGaussianNoised("image", prob=0.2, std=0.03),
    ])


def draw_sample(transform, case: dict, seed: int, drop: float):
    """One augmented crop (image, label) of a prepared case, every draw from `seed` (the same sample whichever
    process makes it); T1 and T2 each zeroed with probability `drop`."""
    import warnings

    with warnings.catch_warnings():  # a lesion-free case (healthy, or a teacher that found nothing): background crops
        warnings.filterwarnings("ignore", message="Num foregrounds 0")
        out = transform.set_random_state(seed=seed)(dict(case))
    out = out[0] if isinstance(out, list) else out
    img, lab = plain(out["image"]).clone(), plain(out["label"]).clamp(0, 1)
    rng = np.random.default_rng(seed)
    for c in (1, 2):
        if rng.random() < drop:
            img[c] = 0.0
    return img, lab


def per_sample_loss(kind: str):
    """(logits, target) -> one loss per sample: MONAI's Dice (sigmoid) + BCE (`dice_ce`) or + focal loss
    (`dice_focal`). The Dice term counts only for samples whose target has lesion voxels: on a background crop it is
    ~1 whatever the network does (no overlap to gain), a floor without a gradient that hides the loss curve."""
    import torch.nn.functional as F
    from monai.losses import DiceLoss, FocalLoss

    dice = DiceLoss(sigmoid=True, reduction="none")
    focal = FocalLoss(reduction="none") if kind == "dice_focal" else None

    def loss(logits, target):
        has_lesion = (target.flatten(1).amax(1) > 0).to(logits.dtype)
        other = (focal(logits, target) if focal is not None
                 else F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
        return dice(logits, target).flatten(1).mean(1) * has_lesion + other.flatten(1).mean(1)

    return loss


# ----------------------------------------------------------------------------- training
def train(request) -> dict:
    import torch

    cfg = settings(request)
    threads_before = torch.get_num_threads()
    from ..device import resolve_device

    if cfg["threads"] > 0 and not resolve_device(request.device).startswith("cuda"):
        torch.set_num_threads(cfg["threads"])
    try:
        return _train(request, cfg)
    finally:
        torch.set_num_threads(threads_before)


def _cases(request, cfg):
    from .labels import labelled_cases

    cases = labelled_cases(request.data, modalities=CHANNELS, required=("FLAIR",), pseudo_tags=cfg["pseudo_tags"],
                           final_weight=cfg["final_weight"], pseudo_weight=cfg["pseudo_weight"],
                           holdout=cfg["holdout"])
    if not cases:
        raise InputError(f"data: expected cases with a FLAIR and a label tagged 'final' or one of "
                         f"{cfg['pseudo_tags']} (labels/<tag>/<image id>.nii.gz) in {[str(d) for d in request.data]}, "
                         "received none: write pseudo-labels with `uad pseudo-label`, approve labels, or set "
                         "--set pseudo_tags=TAG")
    return cases


def _train(request, cfg) -> dict:
    import torch

    from ..device import resolve_device
    from ..networks.segresnet import build, set_prior
    from . import distributed

    world, device = distributed.init(resolve_device(request.device))
    report = request.progress or (lambda f, m: log.info("[segresnet] %3.0f%% %s", 100 * f, m))
    if not world.main:
        report = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    torch.manual_seed(request.seed)
    t0 = time.perf_counter()
    cases = _cases(request, cfg)
    report(0.0, f"loading {len(cases)} labelled cases")
    from ..preprocess import RegistrationError

    data, rows, skipped, kept = [], [], {}, []
    for i, c in enumerate(cases):
        try:
            x, y, present = load_case(c, cfg["spacing_mm"], _preprocessed(c, cfg["preprocessed"]))
        except (InputError, RegistrationError) as exc:  # one unusable case (bad label, failed registration)
            skipped[c.case_id] = str(exc)
            log.warning("segresnet: case %s left out: %s", c.case_id, exc)
            continue
        kept.append(c)
        data.append(prepare_case(x, y, cfg["crop"]))
        rows.append({"id": c.case_id, "tag": c.tag, "weight": c.weight, "label": _relative(c.label, c.source),
                     "channels": present, "source": str(c.source),
                     "label_fraction": round(float(y.mean()), 6)})
        report(0.1 * (i + 1) / len(cases), f"loaded {c.case_id} ({c.tag})")
    if not data:
        raise InputError(f"data: expected at least one usable labelled case, received {len(cases)} that all "
                         f"failed: {skipped}")
    cases = kept
    weights = torch.tensor([c.weight for c in cases], dtype=torch.float32)
    weights = weights / weights.mean()  # mean 1: the weights move cases against each other, not the step size
    load_s = time.perf_counter() - t0

    net_cfg = {"in_channels": len(CHANNELS), **cfg["network"]}
    net = build(net_cfg)
    set_prior(net, cfg["prior"])
    model = distributed.wrap(net.to(device), world, device)
    net = distributed.unwrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    loss_fn = per_sample_loss(cfg["loss"])
    transform = augmentations(cfg)
    cuda = device.startswith("cuda")
    bs, n = cfg["batch_size"], len(data)
    repeats = max(1, math.ceil(max(cfg["epoch_samples"], bs * world.size) / n))  # an epoch: each case `repeats` x
    budget, max_steps = cfg["max_minutes"] * 60.0, cfg["steps"]
    losses, step, epoch, stop = [], 0, 0, False
    t1 = time.perf_counter()
    model.train()
    while not stop:
        order = distributed.epoch_indices(n * repeats, epoch, request.seed, world).tolist()
        for i in range(0, len(order) - bs + 1, bs):  # equal batches: the last partial one is dropped
            xs, ys, ws = [], [], []
            for j in order[i:i + bs]:
                seed = distributed.sample_generator(request.seed, epoch, j).initial_seed() % 2**32
                xi, yi = draw_sample(transform, data[j % n], seed, cfg["drop_t1_t2"])
                xs.append(xi)
                ys.append(yi)
                ws.append(weights[j % n])
            xb, yb, wb = torch.stack(xs).to(device), torch.stack(ys).to(device), torch.stack(ws).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(xb)
            loss = (loss_fn(logits.float(), yb) * wb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(distributed.all_mean(float(loss.detach()), world))  # the global batch's loss
            step += 1
            elapsed = time.perf_counter() - t1
            stop = distributed.any_rank(step >= max_steps or elapsed > budget, world)
            if step % 10 == 0 or stop:
                report(0.1 + 0.85 * min(1.0, max(step / max_steps, elapsed / budget)),
                       f"step {step} loss {np.mean(losses[-10:]):.4f}")
            if stop:
                break
        epoch += 1
    train_s = time.perf_counter() - t1
    summary = {"steps": step, "epochs": epoch, "cases": len(cases), "world_size": world.size,
               "global_batch_size": bs * world.size, "train_seconds": round(train_s, 1)}
    if not world.main:
        distributed.finish(world)
        return {**summary, "weights": None, "rank": world.rank}

    card = _card(request, cfg, net_cfg, rows, losses, step, epoch, load_s, train_s, world, device)
    card["data"]["skipped"] = skipped
    from ..weights import save_state

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    path = save_state(NAME, state, card, request.out_dir)
    png = write_loss_curve(losses, path.with_name(f"{NAME}_loss.png"),
                           f"segresnet ({request.config}): {len(cases)} cases, {step} steps, {train_s / 60:.1f} min",
                           f"weighted {cfg['loss'].replace('_', ' + ')} loss")
    report(1.0, f"saved {path}")
    distributed.finish(world)
    return {**summary, "weights": str(path), "loss_curve": str(png), "tags": card["data"]["tags"],
            "skipped": sorted(skipped),
            "loss_first_10": card["training"]["loss_first_10"], "loss_last_10": card["training"]["loss_last_10"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _card(request, cfg, net_cfg, rows, losses, step, epoch, load_s, train_s, world, device) -> dict:
    import monai
    import torch

    tags: dict[str, int] = {}
    for r in rows:
        tags[r["tag"]] = tags.get(r["tag"], 0) + 1
    every = 10
    return {
        "detector": NAME, "method": "MONAI SegResNet (Myronenko 2018, no VAE branch), sigmoid, one channel",
        "config": request.config,
        "settings": {k: v for k, v in cfg.items() if k not in DATA_KEYS},
        "network": net_cfg, "modalities": list(CHANNELS), "spacing_mm": cfg["spacing_mm"],
        "normalisation": "per modality: brain percentiles 0.5 -> 0, 99.5 -> 1 (clipped to [-0.5, 2]), 0 outside; "
                         "a missing modality is all zeros",
        "loss": {"kind": cfg["loss"], "per_sample_weight": "the case's label weight / mean weight",
                 "dice_term": "only on crops holding lesion voxels"},
        "augmentations": ["RandCropByPosNegLabeld", "RandFlipd x3", "RandAffined", "RandScaleIntensityd",
                          "RandShiftIntensityd", "RandGaussianNoised", f"T1/T2 dropped with p={cfg['drop_t1_t2']}"],
        "data": {"sources": [str(s) for s in request.data], "cases": rows, "tags": tags,
                 "pseudo_tags": cfg["pseudo_tags"], "final_weight": cfg["final_weight"],
                 "pseudo_weight": cfg["pseudo_weight"], "holdout": sorted(cfg["holdout"]),
                 "rule": "one label per case: final if approved, else the first pseudo-label tag it has"},
        "training": {"steps": step, "epochs": epoch, "seconds": round(train_s, 1), "load_seconds": round(load_s, 1),
                     "device": device, "seed": request.seed, "world_size": world.size,
                     "backend": world.backend or None, "batch_size_per_process": cfg["batch_size"],
                     "global_batch_size": cfg["batch_size"] * world.size,
                     "loss_first_10": float(np.mean(losses[:10])) if losses else None,
                     "loss_last_10": float(np.mean(losses[-10:])) if losses else None,
                     f"loss_per_{every}_steps": [round(float(np.mean(losses[i:i + every])), 5)
                                                 for i in range(0, len(losses), every)]},
        "loss_curve_png": f"{NAME}_loss.png",
        "software": {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "limitations": LIMITATIONS[request.config],
    }


def write_loss_curve(losses, path: Path, title: str, ylabel: str = "weighted loss") -> Path:
    """The training loss per step (and its running mean over 10 steps) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", lw=0.8, label="per step")
    if len(losses) >= 10:
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
        ax.plot(steps[9:], smooth, color="C0", lw=1.5, label="mean of 10")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
