"""Heat map of one slice for the sliding-window inpainting detectors, on tensors: G over every
window (exact; the local or the batched engine) or the error regressor R (fast).

Kept apart from the detectors (which need SimpleITK for their I/O) so that the GPU benchmark and
tests run on machines that hold only torch and numpy. See detectors/inpainting.py and
docs/inpainting.md.
"""
from __future__ import annotations

import torch

from uad_kernels import accumulate_scores, finalize_heatmap, inpaint_batch, inpaint_heatmap, inpaint_windows

ENGINES = ("auto", "local", "batched")


def exact_slice_map(net, img: torch.Tensor, brain: torch.Tensor, *, box: int, stride: int, fill: float,
                    batch_size: int, metric: str = "l1", score_in_brain: bool = False, reduce: str = "mean",
                    engine: str = "auto") -> tuple[torch.Tensor, str]:
    """(heat map (H, W), engine used) of generator `net` over every box position touching the brain.
    engine 'auto' is 'local' on a CPU and 'batched' on CUDA; both give G's exact box errors."""

    if engine not in ENGINES:
        raise ValueError(f"parameter 'engine': expected one of {ENGINES}, received {engine!r}")
    cuda = img.device.type == "cuda"
    if engine == "auto":
        engine = "batched" if cuda else "local"
    if engine == "local":
        from .inpainting_local import LocalBoxInpainter, local_inpaint_heatmap

        # one per slice: it holds the slice's features (a detector instance serves concurrent requests)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            res = local_inpaint_heatmap(LocalBoxInpainter(net), img, box=box, stride=stride, fill=fill,
                                        batch_size=batch_size, metric=metric, brain_mask=brain, only_brain=True,
                                        score_in_brain=score_in_brain, reduce=reduce)
        return res.heatmap, engine

    def model(copies):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return net(copies).float()

    res = inpaint_heatmap(img[None], model, box=box, stride=stride, fill=fill, batch_size=batch_size,
                          metric=metric, brain_mask=brain, only_brain=True, score_in_brain=score_in_brain,
                          reduce=reduce)
    return res.heatmap, engine


def fast_slice_map(net, img: torch.Tensor, brain: torch.Tensor, *, box: int, stride: int, fill: float,
                   err_scale: float, batch_size: int) -> torch.Tensor:
    """Heat map (H, W) of regressor `net` (R): its predicted box error of each masked copy, spread
    over the box footprint and averaged where windows overlap."""

    cuda = img.device.type == "cuda"
    starts = inpaint_windows(img.shape, box, stride, brain)
    heat = torch.zeros_like(img)
    count = torch.zeros_like(img)
    with torch.no_grad():
        for i in range(0, starts.shape[0], batch_size):
            chunk = starts[i:i + batch_size]
            copies = inpaint_batch(img[None], chunk, box, fill)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                scores = net(copies).float() * err_scale
            accumulate_scores(scores, chunk, box, heat, count)
    return finalize_heatmap(heat, count)
