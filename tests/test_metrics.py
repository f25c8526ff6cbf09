import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.metrics import average_precision_score, roc_auc_score

from uad_label.evaluation.level_components import filtered_counts
from uad_label.evaluation.metrics import PooledEvaluation, dice, evaluate_maps, merge_samples, weighted_samples


def brute_force_counts(score, gt, thresholds, max_removed, connectivity):
    structure = ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    pred, tp = [], []
    for t in thresholds:
        lab, n = ndi.label(score > t, structure=structure)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes > max_removed
        keep[0] = False
        m = keep[lab]
        pred.append(m.sum())
        tp.append((m & gt).sum())
    return np.array(pred), np.array(tp)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 9, 5), (23, 17, 13), (40, 3, 31)])
@pytest.mark.parametrize("connectivity", [6, 26])
def test_filtered_counts_match_labelling_each_threshold(shape, connectivity):
    rng = np.random.default_rng(sum(shape) + connectivity)
    score = ndi.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)
    gt = score > np.quantile(score, 0.9)
    thresholds = np.linspace(score.min(), score.max(), 25)
    got = filtered_counts(score, gt, thresholds, max_removed_size=4, connectivity=connectivity)
    pred, tp = brute_force_counts(score, gt, thresholds, 4, connectivity)
    np.testing.assert_array_equal(got["pred"], pred)
    np.testing.assert_array_equal(got["tp"], tp)


def test_filtered_counts_without_filter_are_plain_counts():
    rng = np.random.default_rng(0)
    score = rng.random((6, 7, 8)).astype(np.float32)
    gt = rng.random((6, 7, 8)) > 0.5
    th = np.array([0.1, 0.5, 0.9])
    got = filtered_counts(score, gt, th, max_removed_size=0)
    assert got["pred"].tolist() == [(score > t).sum() for t in th]
    assert got["tp"].tolist() == [((score > t) & gt).sum() for t in th]


def test_filtered_counts_rejects_bad_arguments():
    with pytest.raises(ValueError, match="score_map: expected a 3D array"):
        filtered_counts(np.zeros((3, 3)), np.zeros((3, 3), bool), [0.5])
    with pytest.raises(ValueError, match="gt: expected shape"):
        filtered_counts(np.zeros((3, 3, 3)), np.zeros((3, 3, 2), bool), [0.5])
    with pytest.raises(ValueError, match="connectivity"):
        filtered_counts(np.zeros((3, 3, 3)), np.zeros((3, 3, 3), bool), [0.5], connectivity=8)


def test_dice_by_hand():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :3] = True  # 3 voxels
    b[0, 0, 1:] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError, match="pred: expected the shape"):
        dice(a, b[:2])


def test_weighted_auc_equals_sklearn_on_every_voxel():
    rng = np.random.default_rng(3)
    maps = [np.round(rng.random((9, 8, 7)), 2).astype(np.float32) for _ in range(3)]  # many ties
    gts = [rng.random((9, 8, 7)) < 0.15 + 0.5 * m for m in maps]
    merged = merge_samples([weighted_samples(m, g) for m, g in zip(maps, gts)])
    s, y, w = merged
    all_s = np.concatenate([m.ravel() for m in maps])
    all_y = np.concatenate([g.ravel() for g in gts])
    assert w.sum() == all_s.size
    assert roc_auc_score(y, s, sample_weight=w) == pytest.approx(roc_auc_score(all_y, all_s), abs=1e-12)
    assert average_precision_score(y, s, sample_weight=w) == pytest.approx(average_precision_score(all_y, all_s),
                                                                           abs=1e-12)


def test_pooled_evaluation_upper_dice_by_hand():
    # one 27-voxel blob (kept) scored 1.0, one 2-voxel speck (removed by the filter) scored 0.9
    score = np.zeros((12, 12, 12), np.float32)
    gt = np.zeros_like(score, bool)
    score[2:5, 2:5, 2:5] = 1.0
    gt[2:5, 2:5, 2:5] = True
    score[9, 9, 9:11] = 0.9
    ev = evaluate_maps([score], [gt], n_thresholds=11, max_removed_size=20)
    r = ev.result()
    assert r["dsc_upper"] == pytest.approx(1.0)  # the speck is filtered out at every level
    ev_nofilter = evaluate_maps([score], [gt], n_thresholds=11, max_removed_size=0)
    assert ev_nofilter.result()["dsc_upper"] == pytest.approx(1.0)  # at t=0.9 only the blob remains
    assert ev_nofilter.dice_curve()[8] == pytest.approx(2 * 27 / (29 + 27))  # t=0.8: blob + speck


def test_pooled_evaluation_rejects_nan():
    score = np.zeros((3, 3, 3), np.float32)
    score[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_maps([score], [np.zeros((3, 3, 3), bool)])


def test_pooled_ranking_of_unmerged_volumes_equals_the_merged_ranking():
    """PooledEvaluation ranks the volumes' samples without merging equal (score, label) pairs first: the
    cumulative counts at each distinct score, hence AUROC and AUPRC, are exactly those of the merged samples."""
    from uad_label.evaluation.metrics import auroc_auprc, ranking_curve

    rng = np.random.default_rng(7)
    maps = [np.round(rng.random((10, 9, 8)), 2).astype(np.float32) for _ in range(4)]  # ties across volumes
    gts = [rng.random(m.shape) < 0.1 + 0.4 * m for m in maps]
    ev = evaluate_maps(maps, gts, n_thresholds=10)
    assert len(ev.samples) == 4  # not merged
    merged = ranking_curve(*merge_samples([weighted_samples(m, g) for m, g in zip(maps, gts)]))
    fps, tps = ev.ranking()
    assert fps.size == merged[0].size < sum(s[0].size for s in ev.samples)  # equal scores were added up
    np.testing.assert_array_equal(fps, merged[0])
    np.testing.assert_array_equal(tps, merged[1])
    result = ev.result()
    assert (result["auroc"], result["auprc"]) == auroc_auprc(*merged)


def test_add_many_in_threads_equals_adding_one_by_one():
    rng = np.random.default_rng(7)
    pairs = []
    for shape in ((17, 23, 11), (9, 31, 20), (25, 8, 13)):
        m = rng.random(shape)
        pairs.append((m, m + 0.3 * rng.standard_normal(shape) > 1.1))
    thresholds = np.linspace(0, 1, 37)
    one, many = PooledEvaluation(thresholds, 4), PooledEvaluation(thresholds, 4)
    for m, g in pairs:
        one.add(m, g)
    many.add_many(pairs, workers=3)
    assert np.array_equal(one.pred, many.pred) and np.array_equal(one.tp, many.tp)
    assert one.gt_total == many.gt_total and one.pred.sum() > 0
    assert one.result() == many.result()
    with pytest.raises(ValueError, match="score_map: expected finite values"):
        PooledEvaluation(thresholds).add_many([(np.full((4, 4, 4), np.nan), pairs[0][1][:4, :4, :4])] * 2)
