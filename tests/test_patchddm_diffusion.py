"""The plain-torch diffusion schedule and DDIM sampler against MONAI's schedulers."""
import pytest
import torch

from uad_label.diffusion import DiffusionSchedule, ddim_timesteps

schedulers = pytest.importorskip("monai.networks.schedulers")


def test_linear_schedule_matches_monai_ddpm():
    ours = DiffusionSchedule(1000, 1e-4, 0.02)
    ref = schedulers.DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    assert float(ours.betas[0]) == pytest.approx(1e-4) and float(ours.betas[-1]) == pytest.approx(0.02)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod.float(), rtol=1e-5, atol=1e-6)
    x0, noise = torch.rand(3, 1, 4, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4, 4)
    t = torch.tensor([0, 499, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 20, 50])
def test_ddim_timesteps_match_monai(steps):
    ref = schedulers.DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    ref.set_timesteps(steps)
    assert ddim_timesteps(1000, steps) == ref.timesteps.tolist()


def test_ddim_trajectory_matches_monai():
    """A whole 20-step eta-0 trajectory with a fixed fake noise predictor, clipped x0 as MONAI does."""
    ours = DiffusionSchedule(1000, 1e-4, 0.02)
    ref = schedulers.DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 6, 6, generator=g)
    cond = torch.randn(2, 2, 6, 6, 6, generator=g)

    def model(inp, t):  # depends on the condition, the sample and t
        return torch.tanh(inp[:, :1] + 0.5 * inp[:, 1:2] - inp[:, 2:3] * (t.float()[:, None, None, None, None] / 1000))

    got = ours.sample(model, cond, steps=20, noise=x.clone())
    xr = x.clone()
    for t in ref.timesteps:
        eps = model(torch.cat([cond, xr], 1), torch.full((2,), int(t)))
        xr, x0r = ref.step(eps, int(t), xr)
    torch.testing.assert_close(got, x0r, rtol=1e-4, atol=1e-4)


def test_bad_steps_named():
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)
