"""Linear-beta DDPM forward process and the deterministic DDIM sampler (eta = 0), epsilon prediction.

Written in plain torch because the GPU benchmark machine has no MONAI; the numbers are the same as
MONAI's DDPMScheduler(schedule="linear_beta") / DDIMScheduler(set_alpha_to_one=True, steps_offset=0,
clip_sample=True) (tests/test_patchddm_diffusion.py compares them step by step).
"""
from __future__ import annotations

import torch


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """Descending timesteps as MONAI's DDIMScheduler.set_timesteps: 0, r, 2r, ... reversed, r = T // steps."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"steps: expected an integer in [1, {num_train_timesteps}], received {num_inference_steps}")
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in range(num_inference_steps)][::-1]


class DiffusionSchedule:
    """T steps, betas linear from beta_start to beta_end (the authors' code: 1e-4 to 0.02)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.T = int(num_train_timesteps)
        self.betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return a.to(torch.float32).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t is a (B,) integer tensor."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def ddim_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, prev_t: int, clip: bool = True):
        """One DDIM update with eta = 0: (x_{prev_t}, predicted x0). prev_t < 0 means abar = 1."""
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        eps = eps.float()
        x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        # as MONAI: the direction term uses the predicted eps, not one re-derived from the clipped x0
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps, x0

    def sample(self, model, cond: torch.Tensor, steps: int = 20, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, callback=None) -> torch.Tensor:
        """DDIM from pure noise: model(cat(cond, x_t), t) -> eps. cond (B, C, ...); returns x0 (B, 1, ...)."""
        shape = (cond.shape[0], 1, *cond.shape[2:])
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=cond.device)
        x = x.to(cond.device, torch.float32)
        ts = ddim_timesteps(self.T, steps)
        ratio = self.T // steps
        x0 = x
        for i, t in enumerate(ts):
            tt = torch.full((shape[0],), t, device=cond.device, dtype=torch.long)
            eps = model(torch.cat([cond, x.to(cond.dtype)], 1), tt)
            x, x0 = self.ddim_step(eps, t, x, t - ratio)
            if callback is not None:
                callback(i + 1, len(ts))
        return x0
