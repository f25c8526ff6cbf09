"""Diffusion schedules and samplers in plain torch (the GPU machine has no MONAI); tests check them
against MONAI's DDPMScheduler / DDIMScheduler."""
from .ddim import DiffusionSchedule, ddim_timesteps

__all__ = ["DiffusionSchedule", "ddim_timesteps"]
