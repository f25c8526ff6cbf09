"""`uad train strega`: the compact ceVAE of StRegA on axial slices of the tissue segmentation of
healthy scans. Augmentations as published, applied to the scan before segmentation, through MONAI
transforms: bias field, Gaussian noise, gamma, flips, affine (MONAI has no MR ghosting transform,
and torchio is not installed: ghosting is not applied). Loss: w_kl * KL + w_rec * L1 + w_ce * L1 of
the context-encoded input (published code: 0.5 / 0.01 / 1); Adam; best checkpoint by validation loss.

Several processes (`uad train strega --nproc N`, uad_label.training.distributed): the ceVAE, the one part
trained by gradient, runs in DistributedDataParallel with a DistributedSampler share of every epoch's slices;
each slice's context masks and latent draws come from its own generator, so 2 processes x batch B train like
1 x 2B. The tissue classes (EM + MRF, uad_label.tissue) are fitted per case with no gradient: every process
computes them for every case (seeded, the same numbers) before training; they are the data, not distributed.
Rank 0 alone validates, writes the weights and the card."""
from __future__ import annotations

import copy
import datetime
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..networks import strega as strega_net
from ..transforms.canvas import Canvas
from . import TrainRequest, check_config, check_overrides, distributed
from .data import healthy_cases
from .recon_common import is_template_space

log = logging.getLogger(__name__)
DISTRIBUTED = True  # `uad train strega --nproc N`
VAL_KEY = 1 << 20  # the "epoch" of the validation slices' generators: the same masks and draws every epoch

DEFAULTS = {
    "common": {"modality": "T2", "w_kl": 0.5, "w_rec": 0.01, "w_ce": 1.0, "val_fraction": 0.17,
               "max_squares": 3, "tissue_beta": 0.5},
    # demo: 2x-downsampled slices, reduced channels; lr raised from the published 1e-4 to converge in minutes
    "cpu": {"network": strega_net.CPU, "canvas": (80, 96, 80), "factor": 2, "lr": 1e-3, "epochs": 200,
            "batch_size": 32, "augmented_copies": 1, "max_minutes": 4.0},
    "full": {"network": strega_net.FULL, "canvas": (160, 192, 160), "factor": 1, "lr": 1e-4, "epochs": 100,
             "batch_size": 32, "augmented_copies": 4, "max_minutes": 600.0},
}


def _augmenter(seed: int):
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandBiasField, RandFlip, RandGaussianNoise

    from ..augment import RandGhosting

    t = Compose([RandBiasField(prob=0.5, coeff_range=(0.0, 0.2)), RandGaussianNoise(prob=0.5, std=0.02),
                 RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
                 RandGhosting(prob=0.5, num_ghosts=(4, 10), axes=(0, 1, 2), intensity=(0.5, 1.0)),
                 RandFlip(prob=0.5, spatial_axis=0),
                 RandAffine(prob=0.5, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.05, 0.05, 0.05),
                            mode="bilinear", padding_mode="zeros")])
    t.set_random_state(seed)
    return t


def slices_of(request: TrainRequest, cfg: dict, progress):
    """Per case: (S, 1, H, W) slices of the intensity-ordered tissue input, canvas space."""
    from ..detectors.strega import canvas_tissue_input
    from ..io import load_image
    from ..preprocess import PreprocessOptions, preprocess

    mod = cfg["modality"]
    cases = []
    for source in request.data:
        pre = is_template_space(source) if request.overrides.get("preprocessed") is None \
            else bool(request.overrides["preprocessed"])
        cases += [(c, pre) for c in healthy_cases(source, (mod,))]
    if request.overrides.get("max_cases"):
        cases = cases[: int(request.overrides["max_cases"])]
    aug = _augmenter(request.seed) if int(cfg["augmented_copies"]) else None
    per_case, names = [], []
    total = len(cases) * (1 + int(cfg["augmented_copies"]))
    done = 0
    for c, pre in cases:
        pc = preprocess({mod: load_image(c[mod])}, PreprocessOptions(preprocessed=pre), reference=mod)
        vol = pc.arrays[mod] / float(np.median(pc.arrays[mod][pc.brain]))
        stack = []
        for copy_i in range(1 + int(cfg["augmented_copies"])):
            progress(0.3 * done / total, f"tissue segmentation {Path(c[mod]).name} ({copy_i})")
            done += 1
            v = vol
            if copy_i:
                v = np.asarray(aug(torch.from_numpy(vol)[None]))[0].astype(np.float32)
                v = np.clip(v, 0, None)
            brain = pc.brain & (v > 0) if copy_i else pc.brain
            cv = Canvas.around(brain, cfg["canvas"], cfg["factor"])
            xt, bt, _ = canvas_tissue_input(v, brain, cv, mod, cfg["tissue_beta"], check=False)
            keep = [k for k in range(xt.shape[2]) if bt[:, :, k].float().mean() > 0.05]
            stack.append(xt[:, :, keep].permute(2, 0, 1)[:, None])
        per_case.append(torch.cat(stack))
        names.append(Path(c[mod]).name)
    if len(per_case) < 2:
        raise ValueError(f"data: expected at least 2 healthy {mod} cases (one for validation), "
                         f"received {len(per_case)}")
    return per_case, names


def overridable(config: str) -> set[str]:
    check_config(config, ("cpu", "full"))
    return set(DEFAULTS["common"]) | set(DEFAULTS[config]) | {"preprocessed", "max_cases", "steps"}


def train(request: TrainRequest) -> dict:
    from ..weights import save_state

    check_overrides(request, overridable(request.config))
    cfg = {**DEFAULTS["common"], **DEFAULTS[request.config]}
    cfg.update({k: v for k, v in request.overrides.items() if k in cfg})
    net_cfg = dict(cfg["network"])
    net_cfg["input_size"] = tuple(int(s) for s in cfg["canvas"][:2])
    progress = request.progress or (lambda f, m: log.info("[strega] %3.0f%% %s", 100 * f, m))
    world, device = distributed.init(resolve_device(request.device))
    if not world.main:
        progress = lambda f, m: None  # noqa: E731  (rank 0 alone reports)
    torch.manual_seed(request.seed)
    gen = torch.Generator().manual_seed(request.seed)
    t0 = time.perf_counter()
    per_case, names = slices_of(request, cfg, progress)
    n_val = max(1, int(round(cfg["val_fraction"] * len(per_case))))
    perm = torch.randperm(len(per_case), generator=gen).tolist()
    val = torch.cat([per_case[i] for i in perm[:n_val]])
    trn = torch.cat([per_case[i] for i in perm[n_val:]])
    prep_s = time.perf_counter() - t0

    model = distributed.wrap(strega_net.build(**net_cfg).to(device), world, device)
    net = distributed.unwrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    max_size = max(1, 128 // int(cfg["factor"]))
    w = (float(cfg["w_kl"]), float(cfg["w_rec"]), float(cfg["w_ce"]))
    bs = int(cfg["batch_size"])
    corrupt = _Corruption(request.seed, int(cfg["max_squares"]), max_size, int(net_cfg["latent"]))
    best, history, steps = (float("inf"), None, -1), [], 0
    budget = float(cfg["max_minutes"]) * 60
    max_steps = int(request.overrides.get("steps", 0)) or None
    per_epoch = max(1, len(trn) // (bs * world.size))  # full global batches (one short one when fewer slices)
    t1 = time.perf_counter()
    for epoch in range(int(cfg["epochs"])):
        net.train()
        order = distributed.epoch_indices(len(trn), epoch, request.seed, world)
        terms = []
        stop = False
        for k in range(per_epoch):
            idx = order[k * bs:(k + 1) * bs]
            xb = trn[idx]
            xm, noise = corrupt(xb, idx.tolist(), epoch)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                kl, l1, ce = strega_net.loss_terms(model, xb.to(device), xm.to(device), noise)
                loss = w[0] * kl + w[1] * l1 + w[2] * ce
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            t = torch.stack([kl, l1, ce, loss]).detach().double().cpu()
            terms.append((distributed.all_sum(t, world) / world.size).tolist())  # the global batch's terms
            steps += 1
            stop = distributed.any_rank(bool(max_steps and steps >= max_steps) or time.perf_counter() - t1 > budget,
                                        world)  # every process stops at the same step
            if stop:
                break
        t = np.mean(terms, 0)
        elapsed = time.perf_counter() - t1
        if world.main:  # rank 0 alone validates and keeps the best state (eval mode: no collective)
            vloss = _val_loss(net, val, w, corrupt, device)
            history.append({"epoch": epoch + 1, "kl": t[0], "l1": t[1], "ce": t[2], "train_loss": t[3],
                            "val_loss": vloss})
            if vloss < best[0]:
                best = (vloss, copy.deepcopy(net.state_dict()), epoch + 1)
            progress(0.3 + 0.65 * min(1.0, elapsed / budget), f"epoch {epoch + 1}: loss {t[3]:.2f} val {vloss:.2f}")
        if stop or distributed.any_rank(elapsed > budget, world):
            break
    train_s = time.perf_counter() - t1
    if not world.main:  # rank 0 alone writes
        distributed.finish(world)
        return {"weights": None, "rank": world.rank, "steps": steps, "world_size": world.size}
    net.load_state_dict(best[1])
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in net.state_dict().items()}  # float16 on disk; loaded back as float32
    card = {
        "detector": "strega", "config": request.config, "network": {**net_cfg, "channels": list(net_cfg["channels"]),
                                                                     "input_size": list(net_cfg["input_size"])},
        "modality": cfg["modality"], "canvas": list(cfg["canvas"]), "factor": int(cfg["factor"]),
        "input": "tissue classes (EM + MRF, uad_label.tissue) in intensity order / 3",
        "loss_weights": {"kl": w[0], "l1": w[1], "ce": w[2]}, "optimizer": "Adam", "lr": float(cfg["lr"]),
        "batch_size": bs, "distributed": distributed.card(world, bs),
        "context_masks": {"max_squares": cfg["max_squares"], "max_size_px": max_size},
        "augmentation": "MONAI RandBiasField, RandGaussianNoise, RandAdjustContrast, RandFlip, RandAffine "
                        "and uad_label.augment.RandGhosting (k-space ghosting, as torchio's in StRegA) "
                        f"({cfg['augmented_copies']} augmented copies per case)",
        "epochs_run": len(history), "steps": steps, "best_epoch": best[2], "best_val_loss": best[0],
        "history": history, "seconds": {"prepare": round(prep_s, 1), "train": round(train_s, 1)},
        "data": {"sources": [str(s) for s in request.data], "n_train_slices": len(trn), "n_val_slices": len(val),
                 "val_cases": [names[i] for i in perm[:n_val]]},
        "device": device, "seed": request.seed,
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = save_state("strega", state, card, request.out_dir)
    progress(1.0, f"saved {path}")
    distributed.finish(world)
    return {"weights": str(path), "epochs": len(history), "steps": steps, "best_epoch": best[2],
            "best_val_loss": best[0], "train_seconds": round(train_s, 1), "n_train_slices": len(trn),
            "world_size": world.size, "global_batch_size": bs * world.size}


class _Corruption:
    """Per slice, from its own generator (distributed.sample_generator(seed, epoch, slice index)): the context
    masks and the latent draws of the two passes, the same whichever process trains on the slice."""

    def __init__(self, seed: int, max_squares: int, max_size: int, latent: int):
        self.seed, self.max_squares, self.max_size, self.latent = seed, max_squares, max_size, latent

    def __call__(self, xb: torch.Tensor, positions: list[int], epoch: int):
        masked, draws = [], []
        for k, j in enumerate(positions):
            g = distributed.sample_generator(self.seed, epoch, j)
            masked.append(strega_net.context_masks(xb[k:k + 1], self.max_squares, self.max_size, g))
            draws.append(torch.randn((2, self.latent, 1, 1), generator=g))
        draws = torch.stack(draws)
        return torch.cat(masked), (draws[:, 0], draws[:, 1])


@torch.no_grad()
def _val_loss(net, val, w, corrupt: _Corruption, device) -> float:
    net.eval()
    total, n = 0.0, 0
    for i in range(0, len(val), 64):
        xb = val[i:i + 64]
        xm, noise = corrupt(xb, list(range(i, i + len(xb))), VAL_KEY)
        kl, l1, ce = strega_net.loss_terms(net, xb.to(device), xm.to(device), noise)
        total += float(w[0] * kl + w[1] * l1 + w[2] * ce) * len(xb)
        n += len(xb)
    return total / max(n, 1)
