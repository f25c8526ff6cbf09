"""Tissue segmentation (EM + MRF) for StRegA: classes recovered on phantoms, named by the
modality's contrast order, wrong contrast refused."""
import numpy as np
import pytest
import SimpleITK as sitk
from test_recon import tissue_phantom

from uad_label.tissue import check_contrast, segment_tissues
from uad_label.tissue.segment import CSF, GM, WM


def _truth(shape=(40, 44, 36)):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    t = np.where(r < 0.9, GM, 0)
    t[r < 0.75] = WM
    t[r < 0.3] = CSF
    return t


@pytest.mark.parametrize("modality", ["T1", "T2", "FLAIR"])
def test_segmentation_recovers_the_phantom_tissues(modality):
    vol = sitk.GetArrayFromImage(tissue_phantom(modality=modality)).transpose(2, 1, 0)
    truth = _truth()
    seg = segment_tissues(vol, truth > 0, modality)
    assert (seg.labels == truth)[truth > 0].mean() > 0.97
    assert (seg.labels[truth == 0] == 0).all()
    assert seg.means[0] < seg.means[1] < seg.means[2]  # classes reported darkest first
    # ranks follow intensity: on T2 the CSF is the brightest class, on T1 the darkest
    assert seg.ranks[truth == CSF].mean() == pytest.approx(3 if modality == "T2" else 1, abs=0.05)
    check_contrast(seg, modality)


def test_mrf_prior_cleans_noise():
    vol = sitk.GetArrayFromImage(tissue_phantom(modality="T1")).transpose(2, 1, 0)
    rng = np.random.default_rng(1)
    noisy = vol + np.where(vol > 0, 18 * rng.standard_normal(vol.shape), 0)
    truth = _truth()
    acc = [(segment_tissues(noisy, truth > 0, "T1", beta=b).labels == truth)[truth > 0].mean() for b in (0.0, 1.0)]
    assert acc[1] > acc[0] + 0.02


def test_wrong_modality_and_bad_input():
    truth = _truth()
    t1 = sitk.GetArrayFromImage(tissue_phantom(modality="T1")).transpose(2, 1, 0)
    seg = segment_tissues(t1, truth > 0, "T2")  # a T1 scan declared T2: its brightest class (WM) is "CSF"
    with pytest.raises(ValueError, match="given as T2 does not have T2 contrast"):
        check_contrast(seg, "T2")
    with pytest.raises(ValueError, match="modality"):
        segment_tissues(t1, truth > 0, "PD")
    with pytest.raises(ValueError, match="at least 100 brain voxels"):
        segment_tissues(t1, np.zeros_like(truth, bool), "T1")
    bad = t1.copy()
    bad[20, 22, 18] = np.nan
    with pytest.raises(ValueError, match="finite"):
        segment_tissues(bad, truth > 0, "T1")
