"""tissue_outlier: the tissue-model outlier detector finds synthetic lesions, flags hyperintense and
not hypointense FLAIR blobs, uses T1/T2 when given, refuses bad input like every detector, shares
StRegA's EM + MRF (parity with the loop it replaced) and shows up in every front end."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from phantoms import brain_phantom
from scipy import ndimage
from test_recon import tissue_phantom

from uad_label.detectors import available, get_detector
from uad_label.errors import InputError
from uad_label.preprocess.geometry import image_to_xyz, xyz_to_image
from uad_label.synth import make_subject
from uad_label.tissue import segment_tissues
from uad_label.tissue.mixture import fit_mixture, neighbour_sum
from uad_label.tissue.segment import _kmeans_init

PRE = {"preprocessed": True}
QUIET = {"progress": lambda f, m: None}


def run(images, **params):
    return get_detector("tissue_outlier").detect(images, {**PRE, **params}, **QUIET)


def arr(img):
    return image_to_xyz(img)


@pytest.fixture(scope="module")
def lesioned():
    return make_subject(3, True, "template", downsample=2)


@pytest.fixture(scope="module")
def healthy_with_blobs():
    """A healthy template-space subject and two balls in deep white matter (one per hemisphere)."""
    s = make_subject(4, False, "template", downsample=2)
    wm = s.tissues["WM"] > 0.5
    depth = ndimage.distance_transform_edt(wm)
    idx = np.indices(wm.shape)
    half = idx[0] < wm.shape[0] // 2
    balls = []
    for side in (half, ~half):
        c = np.unravel_index(np.argmax(np.where(side, depth, 0)), wm.shape)
        balls.append(((idx - np.array(c)[:, None, None, None]) ** 2).sum(0) <= 9)
    return s, balls[0], balls[1]


def with_values(s, values):
    """s's images with {modality: [(mask, value), ...]} pasted in."""
    out = {}
    for mod, img in s.images.items():
        a = arr(img).astype(np.float32)
        for mask, value in values.get(mod, []):
            a[mask] = value
        out[mod] = xyz_to_image(a, img)
    return out


def covered(result, mask):
    return float((arr(result.mask) > 0)[mask].mean())


# ---- detection --------------------------------------------------------------------------------
def test_finds_real_lesion_masks_pasted_into_a_synthetic_subject(lesioned):
    from sklearn.metrics import average_precision_score

    gt = arr(lesioned.lesion_mask) > 0
    r = run(lesioned.images)
    amap, mask = arr(r.anomaly_map), arr(r.mask) > 0
    info = r.info["tissue_outlier"]
    assert info["atlas"] and info["channels"] == ["FLAIR", "T1", "T2"]
    assert r.info["threshold"] == 0.5 and "outlier class" in r.info["threshold_source"]
    assert amap.dtype == np.float32 and 0 <= amap.min() and amap.max() <= 1
    assert average_precision_score(gt.ravel(), amap.ravel()) > 0.3  # lesions are 0.2 % of the volume
    assert 2 * (mask & gt).sum() / (mask.sum() + gt.sum()) > 0.3
    assert set(info["tissue_volumes_ml"]) == {"CSF", "GM", "WM", "outlier"}
    # tissue means come back in input units and in each modality's contrast order
    means = info["class_means"]
    assert means["GM"]["T1"] < means["WM"]["T1"] and means["CSF"]["T2"] > means["GM"]["T2"] > means["WM"]["T2"]
    assert means["CSF"]["FLAIR"] < means["WM"]["FLAIR"] < means["GM"]["FLAIR"]


def test_hyperintense_flair_blob_is_flagged_hypointense_is_not(healthy_with_blobs):
    s, hyper, hypo = healthy_with_blobs
    c = s.meta["contrast"]
    # hypo: dark on FLAIR, white matter on T1 and T2, so no tissue class explains it either
    values = {m: [(hyper, c[m]["lesion"]), (hypo, 0.3 * c["FLAIR"]["wm"] if m == "FLAIR" else c[m]["wm"])]
              for m in ("FLAIR", "T1", "T2")}
    images = with_values(s, values)
    r = run(images)
    assert covered(r, hyper) > 0.9
    assert covered(r, hypo) == 0 and arr(r.anomaly_map)[hypo].max() == 0
    # the model does see the dark blob as abnormal: only the sign rule keeps it out
    unsigned = run(images, sign="none")
    assert covered(unsigned, hypo) > 0.9
    # FLAIR alone: the dark blob is not flagged either, the bright one is
    alone = run({"FLAIR": images["FLAIR"]})
    assert covered(alone, hyper) > 0.9 and covered(alone, hypo) == 0


def test_t2_and_t1_find_a_lesion_that_flair_alone_cannot_tell_from_grey_matter(healthy_with_blobs):
    s, blob, _ = healthy_with_blobs
    c = s.meta["contrast"]
    # as bright as grey matter on FLAIR, lesion contrast on T1 and T2
    images = with_values(s, {"FLAIR": [(blob, c["FLAIR"]["gm"])], "T1": [(blob, c["T1"]["lesion"])],
                             "T2": [(blob, c["T2"]["lesion"])]})
    multi = run(images)
    flair = run(images, channels="FLAIR")
    assert multi.info["tissue_outlier"]["channels"] == ["FLAIR", "T1", "T2"]
    assert flair.info["tissue_outlier"]["channels"] == ["FLAIR"]
    assert covered(multi, blob) > 0.9
    assert covered(flair, blob) < 0.1
    # the channels a case does not have are simply not used
    two = run({"FLAIR": images["FLAIR"], "T2": images["T2"]})
    assert two.info["tissue_outlier"]["channels"] == ["FLAIR", "T2"] and covered(two, blob) > 0.5


def test_mahalanobis_score_and_flat_priors_off_template(lesioned):
    gt = arr(lesioned.lesion_mask) > 0
    r = run(lesioned.images, score="mahalanobis")
    amap = arr(r.anomaly_map)
    brain = arr(lesioned.images["FLAIR"]) > 0
    assert r.info["threshold"] == 4.0 and amap.max() > 4.0
    assert np.median(amap[gt]) > np.percentile(amap[brain & ~gt], 99)
    # a phantom outside MNI space: no atlas, k-means start, the bright blob still found
    img, gt_img = brain_phantom()
    r = run({"FLAIR": img})
    assert r.info["tissue_outlier"]["atlas"] is False
    g = arr(gt_img) > 0
    assert covered(r, g) > 0.9 and ((arr(r.mask) > 0) & ~g).sum() == 0


# ---- bad input --------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_clear_message(lesioned):
    s = lesioned
    with pytest.raises(InputError, match=r"needs modalities \['FLAIR'\], missing \['FLAIR'\]"):
        run({"T1": s.images["T1"], "T2": s.images["T2"]})
    with pytest.raises(InputError, match=r"images\['FLAIR'\].*does not have FLAIR contrast"):
        run({"FLAIR": s.images["T1"]})
    with pytest.raises(InputError, match=r"images\['T2'\].*does not have T2 contrast"):
        run({"FLAIR": s.images["FLAIR"], "T2": s.images["T1"]})
    r = run({"FLAIR": s.images["FLAIR"], "T2": s.images["T1"]}, check_contrast=False)  # switched off: runs
    assert r.info["tissue_outlier"]["channels"] == ["FLAIR", "T2"]
    with pytest.raises(InputError, match="parameter 'score'"):
        run(s.images, score="likelihood")
    tiny = np.zeros((30, 30, 30), np.float32)
    tiny[14:18, 14:18, 14:18] = 100
    with pytest.raises(InputError, match="at least 1000 brain voxels, received 64"):
        run({"FLAIR": xyz_to_image(tiny)})


# ---- the shared EM + MRF ----------------------------------------------------------------------
def _segment_before_the_refactor(vol, brain, beta=0.5, iterations=10, tol=1e-3):
    """The EM + MRF loop segment_tissues had before it moved to uad_label.tissue.mixture (reference)."""
    idx = np.nonzero(brain)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    v, m = vol[box].astype(np.float32), brain[box]
    scale = float(np.percentile(v[m], 99.5))
    v = v / scale
    mu, sd, pi = _kmeans_init(v[m])
    post = None
    for _ in range(iterations):
        z = (v[None] - mu[:, None, None, None]) / sd[:, None, None, None]
        ll = -0.5 * z ** 2 - np.log(sd)[:, None, None, None]
        logp = ll + np.log(pi)[:, None, None, None]
        if post is not None and beta > 0:
            logp = logp + beta * neighbour_sum(post)
        logp -= logp.max(0, keepdims=True)
        p = np.exp(logp)
        p /= p.sum(0, keepdims=True)
        p *= m[None]
        w = p.reshape(3, -1).sum(1) + 1e-8
        new_mu = (p * v[None]).reshape(3, -1).sum(1) / w
        sd = np.maximum(np.sqrt((p * (v[None] - new_mu[:, None, None, None]) ** 2).reshape(3, -1).sum(1) / w), 1e-3)
        pi = w / w.sum()
        shift = np.abs(new_mu - mu).max()
        mu, post = new_mu, p
        if shift < tol:
            break
    labels = np.zeros(vol.shape, np.int64)
    labels[box] = np.where(m, post.argmax(0) + 1, 0)
    return np.sort(mu) * scale, labels


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_strega_segmentation_is_unchanged_by_the_shared_em(beta):
    vol = sitk.GetArrayFromImage(tissue_phantom(modality="T1")).transpose(2, 1, 0)
    vol = vol + np.where(vol > 0, 15 * np.random.default_rng(2).standard_normal(vol.shape), 0)
    brain = vol != 0
    ref_means, ref_labels = _segment_before_the_refactor(vol, brain, beta)
    seg = segment_tissues(vol, brain, "T1", beta=beta)
    assert np.allclose(seg.means, ref_means, rtol=1e-4)
    # same partition (class ids differ: the reference keeps EM's order, segment_tissues names them)
    pairs = {(int(a), int(b)) for a, b in zip(ref_labels[brain], seg.labels[brain])}
    assert len(pairs) == 3


def test_outlier_class_keeps_lesions_out_of_the_tissue_estimates():
    rng = np.random.default_rng(0)
    shape = (30, 30, 30)
    truth = (np.indices(shape)[0] >= 15).astype(int)  # two tissues, half the box each
    means = np.array([[1.0, 2.0], [2.0, 1.0]])
    x = means[truth].transpose(3, 0, 1, 2) + 0.1 * rng.standard_normal((2, *shape))
    lesion = np.zeros(shape, bool)
    lesion[3:12, 3:12, 3:12] = True  # 2.7 % of the voxels, far from both tissues
    x[:, lesion] = np.array([3.0, 3.0])[:, None]
    mask = np.ones(shape, bool)
    start = np.stack([truth == 0, truth == 1]).reshape(2, -1).astype(np.float32)
    plain = fit_mixture(x.reshape(2, -1), mask, responsibilities=start, beta=0.3)
    robust = fit_mixture(x.reshape(2, -1), mask, responsibilities=start, beta=0.3, outlier_prior=0.01,
                         outlier_density=1 / 16)
    assert robust.posterior.shape == (3, mask.size)
    outlier = robust.posterior[2]
    assert outlier[lesion.ravel()].min() > 0.99 and (outlier[~lesion.ravel()] > 0.5).mean() < 1e-3
    assert np.abs(robust.means - means).max() < 0.02 < np.abs(plain.means - means).max()



def test_neighbour_sum_into_a_reused_buffer_equals_a_fresh_one():
    p = np.random.default_rng(3).random((4, 7, 6, 5)).astype(np.float32)
    fresh = neighbour_sum(p)
    buf = np.full_like(p, 99.0)  # stale content from an earlier E-step must not leak in
    out = neighbour_sum(p, out=buf)
    assert out is buf and np.array_equal(out, fresh)
    assert fresh[0, 0, 0, 0] == p[0, 1, 0, 0] + p[0, 0, 1, 0] + p[0, 0, 0, 1]


def test_priors_on_the_template_grid_are_the_template_layers_without_resampling(monkeypatch):
    """Registered raw input works on the template's own grid: the priors are the (smoothed) template
    layers as they are (no resampling is run), equal to what resampling them onto that grid gives."""
    from uad_label.preprocess.case import grid_from_affine
    from uad_label.preprocess.geometry import ras_affine
    from uad_label.tissue import atlas

    layers = atlas._template_priors(2.0)
    aff, shape = ras_affine(layers[0]), tuple(layers[0].GetSize())
    atlas._priors_on.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(sitk, "Resample", lambda *a, **k: pytest.fail("the template grid was resampled"))
        direct = atlas._priors_on(tuple(aff.ravel()), shape, 2.0)
    grid = grid_from_affine(aff, shape)
    resampled = np.stack([image_to_xyz(sitk.Resample(im, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32)) for im in layers])
    assert direct.shape == (3, *shape) and direct.dtype == np.float32
    assert np.array_equal(direct, resampled)
    assert 0.9 < float(direct.sum(0).max()) < 1.1


# ---- front ends -------------------------------------------------------------------------------
def uad(*args):
    return subprocess.run([sys.executable, "-m", "uad_label.cli.main", *args], capture_output=True, encoding="utf-8",
                          timeout=600)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    for i, lesion in enumerate((True, False)):
        d = root / f"case{i}"
        d.mkdir()
        img, gt = brain_phantom(seed=i, lesion=lesion)
        sitk.WriteImage(img, str(d / "FLAIR.nii.gz"))
        sitk.WriteImage(gt, str(d / "GT.nii.gz"))
    return root


def test_detect_evaluate_batch_and_scoring_run_it_like_any_detector(cases, tmp_path):
    from uad_label.active.scoring import score_case
    from uad_label.cli.main import main

    assert "tissue_outlier" in available()
    r = uad("detect", "tissue_outlier", str(cases / "case0" / "FLAIR.nii.gz"), "--preprocessed",
            "-p", "beta=0.5", "--out", str(tmp_path / "det"))
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "det" / "result.json").read_text(encoding="utf-8"))
    assert info["detector"] == "tissue_outlier" and info["params"]["beta"] == 0.5 and info["components"]
    assert sitk.ReadImage(str(tmp_path / "det" / "map.nii.gz")).GetPixelID() == sitk.sitkFloat32

    r = uad("evaluate", "tissue_outlier", str(cases), "--preprocessed", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert m["detector"] == "tissue_outlier" and m["cases"] == 2 and m["auroc"] > 0.99

    assert main(["batch", "tissue_outlier", str(cases), "--preprocessed", "--out", str(tmp_path / "b")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "b" / "summary.csv")))
    assert [row["case"] for row in rows] == ["case0", "case1"]  # the lesioned case ranks first
    assert float(rows[0]["image_score"]) > float(rows[1]["image_score"])

    scores = [score_case("tissue_outlier", str(cases / c / "FLAIR.nii.gz"), PRE)["score"] for c in ("case0", "case1")]
    assert scores[0] > scores[1]


def test_server_lists_and_serves_it(cases, tmp_path):
    from server_fixture import Server

    studies = tmp_path / "studies"
    studies.mkdir()
    sitk.WriteImage(brain_phantom(seed=0)[0], str(studies / "c0_FLAIR.nii.gz"))
    server = Server(studies, tmp_path / "server.log", conf={"models": "tissue_outlier"})
    try:
        model = requests.get(server.url + "/info/", timeout=10).json()["models"]["tissue_outlier"]
        assert model["type"] == "anomaly" and "Van Leemput" in model["description"]
        assert model["params"]["outlier_prior"]["default"] == 0.01
        r = requests.post(server.url + "/infer/tissue_outlier", params={"image": "c0_FLAIR", "output": "json"},
                          data={"params": json.dumps(PRE)}, timeout=300)
        assert r.status_code == 200 and r.json()["detector"] == "tissue_outlier" and r.json()["components"]
        r = requests.post(server.url + "/infer/tissue_outlier", params={"image": "c0_FLAIR", "output": "json"},
                          data={"params": json.dumps({**PRE, "score": "nope"})}, timeout=60)
        assert r.status_code == 422 and "score" in r.text
    finally:
        server.stop()
