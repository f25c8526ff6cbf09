"""Training of the inpainting detector: G + D (`uad train inpainting`) and the error regressor R
(`uad train inpainting_fast`, needs trained G weights).

Data: the healthy cases of each source (uad_label.training.data.healthy_cases: manifest.json,
healthy.txt, datastore image info {"healthy": true}, or a plain folder of scans such as IXI), plus
case folders holding a lesion mask (FLAIR + GT, e.g. ../shared/data/mslub/patient26), of which
only the lesion-free slices are used. Slices are cut as at inference (SliceMapper), normalised per
slice; slices whose brain covers < 2% of the network slice are dropped.

G training (pix2pix): a 16x16 box filled white (1.0 = the slice's brain 99th percentile) placed
where the brain is; loss L1(G(x_masked), x) * 100 + adversarial (PatchGAN D on (masked, slice)),
Adam 2e-4, betas (0.5, 0.999). R training: random brain boxes, target = G's mean L1 error inside
the box (not the whole-image error of the original), loss MSE on clamp(error / err_scale, 0, 1).

Several processes (`uad train inpainting --nproc N`, `uad train inpainting_fast --nproc N`,
uad_label.training.distributed): each step every process draws the global batch's slice indices (N x batch)
from one generator advanced alike and keeps its share; each slice's box comes from its own generator keyed by
step and position; G and D (or R) run in DistributedDataParallel with batch norm over the global batch, so N x
batch B train like one process with N x B. The batch-norm recalibration runs on every process (global
statistics); rank 0 alone validates and writes the weights and card. G stays fixed (eval mode, every process
holds a copy) while R trains.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from . import TrainRequest, check_config, check_overrides, distributed

log = logging.getLogger(__name__)
DISTRIBUTED = True  # `uad train inpainting|inpainting_fast --nproc N`
BN_KEY = 1 << 30  # step key of the batch-norm recalibration batches' boxes
MIN_BRAIN_FRACTION_TRAIN = 0.02  # drop slices whose brain covers less than this of the network slice

CONFIGS = {
    # the demo: small G on 128x128 slices of 2x-downsampled volumes, minutes on 2 CPU cores
    "cpu": dict(slice_size=128, scale=2, ngf=8, d_channels=16, batch_size=12, steps=100000, max_seconds=420,
                lr=2e-4, l1_weight=100.0, r_batch_size=16, r_steps=100000, r_max_seconds=150, r_lr=1e-3,
                val_slices=24, val_boxes=8, bn_batches=10),
    # the published size: unet_256 width 64 on 256x256 slices of the 1 mm grid, for a GPU
    "full": dict(slice_size=256, scale=1, ngf=64, d_channels=64, batch_size=32, steps=40000, max_seconds=None,
                 lr=2e-4, l1_weight=100.0, r_batch_size=64, r_steps=20000, r_max_seconds=None, r_lr=1e-3,
                 val_slices=200, val_boxes=16, bn_batches=50),
}
KNOWN = set(CONFIGS["cpu"]) | {"epochs", "box", "preprocessed", "steps", "lr", "batch_size"}


def overridable(config: str) -> set[str]:
    check_config(config, CONFIGS)
    return KNOWN


def _settings(request: TrainRequest) -> dict:
    check_overrides(request, overridable(request.config))
    s = dict(CONFIGS[request.config], box=16, preprocessed=None)
    s.update(request.overrides)
    if "epochs" in request.overrides:  # one "epoch" = as many steps as slices / batch
        s["epochs"] = int(request.overrides["epochs"])
    return s


# ----------------------------------------------------------------------------- data
def _sources(request: TrainRequest):
    """[(name, {modality: path}, lesion mask path or None)]."""
    from ..cases import find_modalities
    from .data import healthy_cases

    out = []
    for root in request.data:
        root = Path(root)
        try:  # a single case folder (FLAIR.nii.gz [+ GT.nii.gz]) or a datastore of many
            found = find_modalities(root) if root.is_dir() else {}
        except ValueError:
            found = {}
        if "FLAIR" in found:  # one case folder; with a lesion mask only its lesion-free slices count
            out.append((root.name, {"FLAIR": found["FLAIR"]}, found.get("GT")))
            continue
        for case in healthy_cases(root, ("FLAIR",)):
            out.append((Path(case["FLAIR"]).name, case, None))
    if not out:
        raise ValueError(f"data: no healthy FLAIR scan found in {[str(p) for p in request.data]}")
    return out


def _is_template_space(arr: np.ndarray) -> bool:
    """Skull-stripped template-space input has an exactly-zero (or near-zero) background."""
    return float((np.abs(arr) <= 1e-3 * np.abs(arr).max()).mean()) > 0.3


def load_training_slices(request: TrainRequest, cfg, preprocessed=None, progress=None):
    """(images (N, S, S), brains (N, S, S) bool, description of the sources)."""
    import SimpleITK as sitk

    from ..io import load_image
    from ..preprocess import PreprocessOptions, preprocess
    from ..transforms.slices import SliceMapper
    from .data import lesion_free_slices

    sources = _sources(request)
    imgs, brains, desc = [], [], []
    for i, (name, files, gt) in enumerate(sources):
        image = load_image(files["FLAIR"])
        arr = sitk.GetArrayViewFromImage(image)
        pre = _is_template_space(arr) if preprocessed is None else bool(preprocessed)
        case = preprocess({"FLAIR": image}, PreprocessOptions(preprocessed=pre), reference="FLAIR")
        vol, brain = case.arrays["FLAIR"], case.brain
        mapper = SliceMapper(vol.shape, cfg, 2)
        im, br, keep = mapper.to_slices(vol, brain)
        if gt is not None:
            # only the axial index matters here; template-space input keeps its z order
            g = np.transpose(sitk.GetArrayFromImage(load_image(gt)), (2, 1, 0)) > 0
            if g.shape != vol.shape:
                raise ValueError(f"{gt}: lesion mask shape {g.shape} != scan shape {vol.shape}")
            # keep the downsampled slices whose source slices are all lesion-free (margin 2)
            free = set(lesion_free_slices(g, axis=2, margin=2).tolist())
            ok = [all(z in free for z in range(k * cfg.scale, min((k + 1) * cfg.scale, vol.shape[2])))
                  for k in keep.tolist()]
            sel = torch.tensor(ok, dtype=torch.bool)
            im, br = im[sel], br[sel]
        big = br.flatten(1).float().mean(1) >= MIN_BRAIN_FRACTION_TRAIN
        imgs.append(im[big])
        brains.append(br[big])
        desc.append({"source": str(files["FLAIR"]), "slices": int(big.sum()), "template_space": pre,
                     "lesion_free_only": gt is not None})
        if progress:
            progress(0.1 * (i + 1) / len(sources), f"loaded {name}: {int(big.sum())} slices")
    return torch.cat(imgs), torch.cat(brains), desc


def random_boxes(brains: torch.Tensor, idx: torch.Tensor, box: int, gen) -> torch.Tensor:
    """(B, 2) box corners centred on a random brain pixel of each chosen slice (clipped into the slice).
    `gen`: one generator, or one per slice (the same box whichever process draws it)."""
    S = brains.shape[-1]
    gens = [gen] * idx.shape[0] if isinstance(gen, torch.Generator) else list(gen)
    out = torch.zeros((idx.shape[0], 2), dtype=torch.int64)
    for j, i in enumerate(idx.tolist()):
        pix = torch.nonzero(brains[i])
        p = pix[torch.randint(pix.shape[0], (1,), generator=gens[j])][0]
        out[j] = (p - box // 2).clamp(0, S - box)
    return out


def mask_boxes(x: torch.Tensor, starts: torch.Tensor, box: int, fill: float) -> torch.Tensor:
    """One box per image: x (B, 1, S, S), starts (B, 2)."""
    S = x.shape[-1]
    ar = torch.arange(S, device=x.device)
    sx = starts[:, 0].to(x.device).view(-1, 1, 1)
    sy = starts[:, 1].to(x.device).view(-1, 1, 1)
    inside = ((ar.view(1, -1, 1) >= sx) & (ar.view(1, -1, 1) < sx + box)
              & (ar.view(1, 1, -1) >= sy) & (ar.view(1, 1, -1) < sy + box))
    return torch.where(inside[:, None], torch.full_like(x, fill), x)


def box_errors(recon: torch.Tensor, x: torch.Tensor, starts: torch.Tensor, box: int) -> torch.Tensor:
    """Mean L1 error inside each image's box (B,)."""
    out = []
    for j in range(x.shape[0]):
        a, b = int(starts[j, 0]), int(starts[j, 1])
        out.append((recon[j, :, a:a + box, b:b + box] - x[j, :, a:a + box, b:b + box]).abs().mean())
    return torch.stack(out)


def recalibrate_batchnorm(net, batches) -> None:
    """Population statistics for BatchNorm: a short run (a few hundred steps) leaves running means
    far from the data's (momentum 0.1), and eval-mode G would then inpaint badly. Reset them and
    average over `batches` (no gradients), then back to eval mode."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for xb in batches:
            net(xb)
    for m in bns:
        m.momentum = 0.1
    net.eval()


def _global_batch(idx_pool, batch_size, gen, seed, key, world):
    """This process's share of a global batch (batch_size per process): slice indices drawn for the whole global
    batch from `gen` (every process advances it alike), and one box generator per slice (keyed by `key` and the
    slice's position in the global batch)."""
    idx = idx_pool[torch.randint(len(idx_pool), (batch_size * world.size,), generator=gen)]
    share = distributed.share(batch_size, world)
    gens = [distributed.sample_generator(seed, key, j) for j in range(share.start, share.stop)]
    return idx[share], gens


def _masked_batches(imgs, brains, idx_pool, cfg, batch_size, n, gen, device, seed, world):
    for b in range(n):
        idx, gens = _global_batch(idx_pool, batch_size, gen, seed, BN_KEY + b, world)
        x = imgs[idx][:, None].to(device)
        yield mask_boxes(x, random_boxes(brains, idx, cfg.box, gens), cfg.box, cfg.fill)


def _split(n: int, n_val: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    n_val = min(n_val, max(1, n // 10))
    return perm[n_val:], perm[:n_val]


def _card_common(request, s, desc, seconds, device):
    import platform

    return {"config_name": request.config, "settings": s, "device": device, "train_seconds": round(seconds, 1),
            "data": desc, "n_slices": sum(d["slices"] for d in desc), "seed": request.seed,
            "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}


# ----------------------------------------------------------------------------- G + D
def train_generator(request: TrainRequest) -> dict:
    from ..networks.inpainting import InpaintConfig, build_generator, count_parameters, patch_discriminator
    from ..weights import save_state

    s = _settings(request)
    report = request.progress or (lambda f, m: log.info("[inpainting] %3.0f%% %s", 100 * f, m))
    world, device = distributed.init(resolve_device(request.device))
    if not world.main:
        report = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    torch.manual_seed(request.seed)
    gen = torch.Generator().manual_seed(request.seed)
    cfg = InpaintConfig(slice_size=s["slice_size"], scale=s["scale"], ngf=s["ngf"], box=s["box"])
    imgs, brains, desc = load_training_slices(request, cfg, s["preprocessed"], report)
    train_idx, val_idx = _split(imgs.shape[0], s["val_slices"], gen)
    g_model = distributed.wrap(build_generator(cfg).to(device), world, device)
    D = distributed.wrap(patch_discriminator(2, s["d_channels"]).to(device), world, device)
    G = distributed.unwrap(g_model)
    opt_g = torch.optim.Adam(g_model.parameters(), lr=s["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=s["lr"], betas=(0.5, 0.999))
    steps = s["steps"]
    if "epochs" in s:
        steps = s["epochs"] * max(1, len(train_idx) // (s["batch_size"] * world.size))
    t0 = time.perf_counter()
    history = []
    step = 0
    for step in range(1, steps + 1):
        idx, gens = _global_batch(train_idx, s["batch_size"], gen, request.seed, step, world)
        x = imgs[idx][:, None].to(device)
        starts = random_boxes(brains, idx, cfg.box, gens)
        xm = mask_boxes(x, starts, cfg.box, cfg.fill)
        fake = g_model(xm)
        # D step
        d_real = D(torch.cat([xm, x], 1))
        d_fake = D(torch.cat([xm, fake.detach()], 1))
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                        + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # G step
        d_fake = D(torch.cat([xm, fake], 1))
        adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        l1 = F.l1_loss(fake, x)
        loss_g = s["l1_weight"] * l1 + adv
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 10 == 0 or step == 1:
            box_l1 = box_errors(fake.detach(), x, starts, cfg.box).mean()
            t = distributed.all_sum(torch.stack([l1, adv, loss_d, box_l1]).detach().double().cpu(), world)
            l1_g, adv_g, d_g, box_g = (t / world.size).tolist()  # the global batch's losses
            history.append({"step": step, "l1": round(l1_g, 5), "adv": round(adv_g, 4), "d": round(d_g, 4),
                            "box_l1": round(box_g, 5), "seconds": round(time.perf_counter() - t0, 1)})
            report(0.1 + 0.75 * min(1.0, step / steps if not s["max_seconds"] else
                                    (time.perf_counter() - t0) / s["max_seconds"]),
                   f"step {step}: l1 {l1_g:.4f} adv {adv_g:.3f} D {d_g:.3f}")
        if distributed.any_rank(bool(s["max_seconds"]) and time.perf_counter() - t0 > s["max_seconds"], world):
            break
    seconds = time.perf_counter() - t0
    recalibrate_batchnorm(G, _masked_batches(imgs, brains, train_idx, cfg, s["batch_size"], s["bn_batches"], gen,
                                             device, request.seed, world))  # every process: global statistics
    if not world.main:  # rank 0 alone validates and writes
        distributed.finish(world)
        return {"weights": None, "rank": world.rank, "steps": step, "world_size": world.size}
    val = _validation_scores(G, imgs, brains, val_idx, cfg, s, gen, device)
    report(0.95, f"validation box L1 {val['mean']:.4f}")
    card = {"detector": "inpainting", "network": "G: pix2pix U-Net, bicubic upsampling",
            "parameters": count_parameters(G), "config": cfg.to_dict(), "steps": step,
            "distributed": distributed.card(world, s["batch_size"]),
            **_card_common(request, s, desc, seconds, device), "history": history,
            "validation_box_l1": val, "healthy_window_score_q99": val["q99"],
            "note": "window scores = mean L1 error inside the box, normalised units (brain p99 = 1)"}
    path = save_state("inpainting", {k: v.cpu() for k, v in G.state_dict().items()}, card, request.out_dir)
    report(1.0, f"saved {path}")
    distributed.finish(world)
    return {"weights": str(path), "steps": step, "seconds": round(seconds, 1), "validation_box_l1": val,
            "last": history[-1] if history else None, "world_size": world.size,
            "global_batch_size": s["batch_size"] * world.size}


def _validation_boxes(imgs, brains, val_idx, cfg, s, gen, device):
    """Held-out healthy slices, val_boxes random brain boxes each: yields (x, masked x, box starts)."""
    for i in val_idx.tolist():
        idx = torch.full((s["val_boxes"],), i)
        x = imgs[idx][:, None].to(device)
        starts = random_boxes(brains, idx, cfg.box, gen)
        yield x, mask_boxes(x, starts, cfg.box, cfg.fill), starts


def _validation_scores(G, imgs, brains, val_idx, cfg, s, gen, device) -> dict:
    """G's box errors on held-out healthy slices."""
    with torch.no_grad():
        v = torch.cat([box_errors(G(xm), x, starts, cfg.box).cpu()
                       for x, xm, starts in _validation_boxes(imgs, brains, val_idx, cfg, s, gen, device)]).numpy()
    return {"n": int(v.size), "mean": float(v.mean()), "q95": float(np.quantile(v, 0.95)),
            "q99": float(np.quantile(v, 0.99))}


# ----------------------------------------------------------------------------- R
def train_regressor(request: TrainRequest) -> dict:
    from ..networks.inpainting import ErrorRegressor, InpaintConfig, build_generator, count_parameters
    from ..weights import load_state, save_state

    s = _settings(request)
    report = request.progress or (lambda f, m: log.info("[inpainting_fast] %3.0f%% %s", 100 * f, m))
    world, device = distributed.init(resolve_device(request.device))
    if not world.main:
        report = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    saved = None
    if request.out_dir and (Path(request.out_dir) / "inpainting.pt").exists():
        saved = Path(request.out_dir) / "inpainting.pt"
    if saved is not None:
        import json

        g_state = torch.load(saved, map_location="cpu", weights_only=True)
        g_card = json.loads(saved.with_suffix(".json").read_text(encoding="utf-8"))
    else:
        g_state, g_card = load_state("inpainting")  # UntrainedError: train `inpainting` first
    cfg = InpaintConfig.from_dict(g_card["config"])
    G = build_generator(cfg)
    G.load_state_dict(g_state)
    G = G.to(device).eval()
    torch.manual_seed(request.seed)
    gen = torch.Generator().manual_seed(request.seed + 1)
    imgs, brains, desc = load_training_slices(request, cfg, s["preprocessed"], report)
    train_idx, val_idx = _split(imgs.shape[0], s["val_slices"], gen)
    r_model = distributed.wrap(ErrorRegressor().to(device), world, device)
    R = distributed.unwrap(r_model)
    opt = torch.optim.Adam(r_model.parameters(), lr=s["r_lr"])
    t0 = time.perf_counter()
    history = []
    step = 0
    for step in range(1, s["r_steps"] + 1):
        idx, gens = _global_batch(train_idx, s["r_batch_size"], gen, request.seed, step, world)
        x = imgs[idx][:, None].to(device)
        starts = random_boxes(brains, idx, cfg.box, gens)
        xm = mask_boxes(x, starts, cfg.box, cfg.fill)
        with torch.no_grad():
            target = (box_errors(G(xm), x, starts, cfg.box) / cfg.err_scale).clamp(0, 1)
        pred = r_model(xm)
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 1:
            t = distributed.all_sum(torch.stack([loss.detach(), target.mean()]).double().cpu(), world)
            mse_g, target_g = (t / world.size).tolist()  # the global batch's
            history.append({"step": step, "mse": round(mse_g, 6), "target_mean": round(target_g, 5),
                            "seconds": round(time.perf_counter() - t0, 1)})
            report(0.1 + 0.75 * min(1.0, (time.perf_counter() - t0) / (s["r_max_seconds"] or 1e30)
                                    if s["r_max_seconds"] else step / s["r_steps"]),
                   f"step {step}: mse {mse_g:.5f}")
        if distributed.any_rank(bool(s["r_max_seconds"]) and time.perf_counter() - t0 > s["r_max_seconds"], world):
            break
    seconds = time.perf_counter() - t0
    recalibrate_batchnorm(R, _masked_batches(imgs, brains, train_idx, cfg, s["r_batch_size"], s["bn_batches"], gen,
                                             device, request.seed, world))  # every process: global statistics
    if not world.main:  # rank 0 alone validates and writes
        distributed.finish(world)
        return {"weights": None, "rank": world.rank, "steps": step, "world_size": world.size}
    # agreement with G on held-out boxes: Spearman of predicted vs true box errors
    truth, pred = [], []
    with torch.no_grad():
        for x, xm, starts in _validation_boxes(imgs, brains, val_idx, cfg, s, gen, device):
            truth.append(box_errors(G(xm), x, starts, cfg.box).cpu())
            pred.append((R(xm) * cfg.err_scale).cpu())
    truth_v, pred_v = torch.cat(truth).numpy(), torch.cat(pred).numpy()
    from scipy.stats import spearmanr

    rho = float(spearmanr(truth_v, pred_v).statistic) if truth_v.size > 2 else float("nan")
    val = {"n": int(truth_v.size), "spearman_vs_G": rho, "mae": float(np.abs(truth_v - pred_v).mean()),
           "q99_pred": float(np.quantile(pred_v, 0.99)), "q99_G": float(np.quantile(truth_v, 0.99))}
    report(0.95, f"validation Spearman vs G {rho:.3f}")
    card = {"detector": "inpainting_fast", "network": "R: published error regressor (box-restricted target)",
            "parameters": count_parameters(R), "config": cfg.to_dict(), "steps": step,
            "generator_card": {k: g_card.get(k) for k in ("config_name", "steps", "train_seconds", "date")},
            "distributed": distributed.card(world, s["r_batch_size"]),
            **_card_common(request, s, desc, seconds, device), "history": history, "validation": val,
            "healthy_window_score_q99": val["q99_pred"],
            "note": "R predicts G's mean L1 box error (err_scale units) from the masked slice alone"}
    path = save_state("inpainting_fast", {k: v.cpu() for k, v in R.state_dict().items()}, card, request.out_dir)
    report(1.0, f"saved {path}")
    distributed.finish(world)
    return {"weights": str(path), "steps": step, "seconds": round(seconds, 1), "validation": val,
            "last": history[-1] if history else None, "world_size": world.size,
            "global_batch_size": s["r_batch_size"] * world.size}
