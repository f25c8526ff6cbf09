"""Ghosting augmentation (StRegA's training set-up): the artefact is where k-space theory puts it,
the random form only draws parameters, array and dictionary forms agree, bad arguments are named."""
import numpy as np
import pytest
import torch

from uad_label.augment import Ghosting, Ghostingd, RandGhosting, RandGhostingd


def _point(shape=(1, 32, 24, 20), at=(10, 7, 5)):
    x = torch.zeros(shape)
    x[(0, *at)] = 1.0
    return x


def test_zero_intensity_is_identity():
    x = torch.rand(1, 17, 13, 9)
    assert torch.equal(Ghosting(4, axis=1, intensity=0.0)(x), x)


def test_ghosts_repeat_at_fov_over_num_ghosts_along_the_axis():
    x = _point()
    out = Ghosting(4, axis=0, intensity=1.0, restore=0.0)(x)
    # removing every 4th plane subtracts a quarter-amplitude comb of copies shifted by 32/4 = 8
    assert out[0, 10, 7, 5] == pytest.approx(0.75, abs=1e-5)
    for shift in (8, 16, 24):
        assert out[0, (10 + shift) % 32, 7, 5] == pytest.approx(0.25, abs=1e-5)
    # nothing leaks along the other axes
    assert float(out[0, :, :7, :].abs().max()) < 1e-5
    assert float(out.sum()) == pytest.approx(1.5, abs=1e-4)


def test_axis_selects_the_direction_of_the_ghosts():
    out = Ghosting(4, axis=1, intensity=1.0, restore=0.0)(_point())
    assert out[0, 10, (7 + 6) % 24, 5] == pytest.approx(0.25, abs=1e-5)
    assert float(out[0, 11:, :, :].abs().max()) < 1e-5


def test_restore_keeps_the_centre_of_k_space():
    x = torch.rand(1, 40, 16, 8)
    plain = Ghosting(5, axis=0, intensity=0.8, restore=0.0)(x)
    kept = Ghosting(5, axis=0, intensity=0.8, restore=0.5)(x)
    err_plain = float((plain - x).abs().mean())
    err_kept = float((kept - x).abs().mean())
    assert err_kept < err_plain
    k_in = torch.fft.fftshift(torch.fft.fftn(x[0]))
    # the centre plane (DC) of the restored output keeps the input's k-space up to the magnitude step
    k_out = torch.fft.fftshift(torch.fft.fftn(kept[0]))
    assert torch.allclose(k_out[20].real.abs().sum(), k_in[20].real.abs().sum(), rtol=0.2)


def test_numpy_in_numpy_out_same_values():
    x = np.random.default_rng(0).random((2, 11, 9, 7)).astype(np.float32)
    a = Ghosting(3, axis=2, intensity=0.6)(x)
    b = Ghosting(3, axis=2, intensity=0.6)(torch.from_numpy(x))
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    assert not np.allclose(a, x, atol=1e-3)


def test_random_form_draws_then_calls_the_deterministic_twin():
    x = torch.rand(1, 24, 20, 16)
    t = RandGhosting(prob=1.0, num_ghosts=(4, 10), axes=(0, 1, 2), intensity=(0.5, 1.0)).set_random_state(3)
    out = t(x)
    ghosts, axis, intensity = t._params
    assert 4 <= ghosts <= 10 and axis in (0, 1, 2) and 0.5 <= intensity <= 1.0
    assert torch.allclose(out, Ghosting(ghosts, axis, intensity, 0.02)(x))
    again = RandGhosting(prob=1.0).set_random_state(3)(x)
    assert torch.allclose(again, out)


def test_prob_zero_never_changes_the_image():
    x = torch.rand(1, 12, 12, 12)
    t = RandGhosting(prob=0.0).set_random_state(0)
    assert all(t(x) is x for _ in range(5))


def test_dictionary_forms_match_the_array_forms_and_share_one_draw():
    x, y = torch.rand(1, 20, 18, 10), torch.rand(1, 20, 18, 10)
    d = Ghostingd(["a", "b"], 4, axis=1, intensity=0.7)({"a": x, "b": y, "c": 5})
    assert torch.allclose(d["a"], Ghosting(4, 1, 0.7)(x)) and d["c"] == 5
    rd = RandGhostingd(["a", "b"], prob=1.0).set_random_state(7)
    out = rd({"a": x, "b": y})
    ghosts, axis, intensity = rd.rand._params
    assert torch.allclose(out["a"], Ghosting(ghosts, axis, intensity)(x))
    assert torch.allclose(out["b"], Ghosting(ghosts, axis, intensity)(y))


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_ghosts=1), "num_ghosts"), (dict(num_ghosts=2.5), "num_ghosts"),
    (dict(num_ghosts=4, intensity=1.5), "intensity"), (dict(num_ghosts=4, restore=1.0), "restore"),
    (dict(num_ghosts=4, axis=-1), "axis"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Ghosting(**kwargs)


def test_axis_beyond_the_image_and_random_ranges_are_checked():
    with pytest.raises(ValueError, match="axis"):
        Ghosting(4, axis=3)(torch.rand(1, 8, 8, 8))
    with pytest.raises(ValueError, match="intensity"):
        RandGhosting(intensity=(0.9, 0.1))
    with pytest.raises(ValueError, match="axes"):
        RandGhosting(axes=())


def test_strega_training_augmentation_includes_ghosting_and_is_seeded():
    from uad_label.training.strega import _augmenter

    assert any(isinstance(t, RandGhosting) for t in _augmenter(0).transforms)
    x = torch.rand(1, 20, 24, 16)
    assert torch.allclose(torch.as_tensor(_augmenter(5)(x)), torch.as_tensor(_augmenter(5)(x)))
