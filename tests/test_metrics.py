"""Landmark metrics: radial error, summary (MRE/SD/median/SDR/per-landmark), accumulator, Ignite metrics."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from custom_monai.metrics import (
    LandmarkErrorAccumulator,
    MeanRadialError,
    SuccessDetectionRate,
    lower_is_better,
    radial_errors,
    summarize_errors,
)

NAN = np.nan


# ----------------------------------------------------------------------------------------------- radial_errors
def test_radial_error_345_pixels_and_mm():
    gt = np.array([[[10.0, 20.0], [0.0, 0.0]]])
    pred = gt + np.array([[[3.0, 4.0], [-6.0, 8.0]]])
    np.testing.assert_allclose(radial_errors(pred, gt), [[5.0, 10.0]])
    np.testing.assert_allclose(radial_errors(pred, gt, spacing=[0.1, 0.1]), [[0.5, 1.0]])
    np.testing.assert_allclose(radial_errors(pred, gt, spacing=0.1), [[0.5, 1.0]])
    # a single image (N, D) gives (N,)
    np.testing.assert_allclose(radial_errors(pred[0], gt[0]), [5.0, 10.0])


def test_radial_error_anisotropic_and_per_image_spacing():
    gt = np.zeros((2, 1, 2))
    pred = np.array([[[3.0, 4.0]], [[3.0, 4.0]]])
    # x spacing 1.0, y spacing 0.5 -> sqrt(3^2 + 2^2); second image (2.0, 0.25) -> sqrt(6^2 + 1^2)
    e = radial_errors(pred, gt, spacing=np.array([[1.0, 0.5], [2.0, 0.25]]))
    np.testing.assert_allclose(e[:, 0], [math.sqrt(13.0), math.sqrt(37.0)])
    # axis order matters: (0.5, 1.0) is a different answer
    assert radial_errors(pred, gt, spacing=[0.5, 1.0])[0, 0] == pytest.approx(math.sqrt(1.5**2 + 16.0))


def test_radial_error_3d_and_torch_input():
    gt = torch.zeros(1, 2, 3)
    pred = torch.tensor([[[1.0, 2.0, 2.0], [2.0, 3.0, 6.0]]])
    np.testing.assert_allclose(radial_errors(pred, gt), [[3.0, 7.0]])
    np.testing.assert_allclose(radial_errors(pred, gt, torch.tensor([2.0, 2.0, 2.0])), [[6.0, 14.0]])


def test_radial_error_missing_gt_is_nan_and_not_found_is_inf():
    gt = np.array([[[0.0, 0.0], [NAN, NAN], [1.0, NAN], [5.0, 5.0], [NAN, NAN]]])
    pred = np.array([[[3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [NAN, NAN], [NAN, NAN]]])
    e = radial_errors(pred, gt, spacing=[0.5, 0.5])
    assert e[0, 0] == pytest.approx(2.5)
    assert np.isnan(e[0, 1]) and np.isnan(e[0, 2]) and np.isnan(e[0, 4])  # any NaN coordinate = missing gt
    assert np.isposinf(e[0, 3])  # gt exists, prediction not found


@pytest.mark.parametrize(
    "pred,gt,spacing,match",
    [
        (np.zeros((1, 3, 2)), np.zeros((1, 2, 2)), None, "same shape"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), [1.0, 1.0, 1.0], "2 values"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), [1.0, 0.0], "positive"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), [1.0, NAN], "finite"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.ones((3, 2)), "does not match"),
        (np.zeros(2), np.zeros(2), None, r"\(\.\.\., N, D\)"),
    ],
)
def test_radial_error_bad_input(pred, gt, spacing, match):
    with pytest.raises(ValueError, match=match):
        radial_errors(pred, gt, spacing)


# ------------------------------------------------------------------------------------------- summarize_errors
def test_sdr_tie_at_threshold_counts_as_success():
    # exactly 2.0 mm: (2, 0) px at 1 mm; and the 3-4-5 triangle at 0.4 mm/px (2.0 on paper, float-rounded)
    gt = np.zeros((1, 4, 2))
    pred = np.array([[[2.0, 0.0], [3.0, 4.0], [2.0 + 1e-6, 0.0], [4.0, 0.0]]])
    spacing = np.array([[1.0, 1.0]])
    e = radial_errors(pred, gt, spacing)
    e[0, 1] = radial_errors(pred[:, 1:2], gt[:, 1:2], [0.4, 0.4])[0, 0]
    s = summarize_errors(e)
    # 2.0 and 2.0 (rounded) succeed, 2.000001 and 4.0 fail at 2.0 mm; all but 4.0 succeed at 2.5 and 3.0
    assert s["sdr"] == {"2.0": 50.0, "2.5": 75.0, "3.0": 75.0, "4.0": 100.0}


def test_summary_known_values_and_per_landmark():
    # 3 images x 3 landmarks, errors in mm: L1 = 1, 2, 3; L2 = 5, missing gt, not found; L3 = 2.5, 0, 4
    gt = np.zeros((3, 3, 2))
    gt[1, 1] = NAN
    pred = np.zeros((3, 3, 2))
    pred[:, 0, 0] = [1.0, 2.0, 3.0]
    pred[0, 1] = [3.0, 4.0]
    pred[2, 1] = NAN
    pred[:, 2, 1] = [2.5, 0.0, 4.0]
    names = ["Sella", "Nasion", "Orbitale"]
    e_px = radial_errors(pred, gt)
    e_mm = radial_errors(pred, gt, spacing=[0.5, 0.5])
    s = summarize_errors(e_mm, e_px, names)

    found_px = np.array([1, 2, 3, 5, 2.5, 0, 4.0])
    assert s["n_images"] == 3 and s["n_landmarks"] == 3
    assert s["n_points"] == 8 and s["n_missing_gt"] == 1 and s["n_not_found"] == 1
    assert s["mre_px"] == pytest.approx(found_px.mean())
    assert s["sd_px"] == pytest.approx(np.std(found_px, ddof=1))  # sample SD
    assert s["median_px"] == pytest.approx(2.5)
    assert s["mre_mm"] == pytest.approx(found_px.mean() / 2)
    assert s["sd_mm"] == pytest.approx(np.std(found_px / 2, ddof=1))
    assert s["median_mm"] == pytest.approx(1.25)
    # mm errors: .5 1 1.5 | 2.5 inf | 1.25 0 2 ; denominators: 8 points with ground truth
    assert s["sdr"]["2.0"] == pytest.approx(100 * 6 / 8)
    assert s["sdr"]["2.5"] == pytest.approx(100 * 7 / 8)
    assert s["sdr"]["4.0"] == pytest.approx(100 * 7 / 8)  # the not-found one never succeeds

    l1, l2, l3 = s["per_landmark"]
    assert (l1["index"], l1["name"], l2["index"], l3["name"]) == (1, "Sella", 2, "Orbitale")
    assert l1["n"] == 3 and l1["mre_mm"] == pytest.approx(1.0) and l1["sd_mm"] == pytest.approx(0.5)
    assert l1["median_mm"] == pytest.approx(1.0) and l1["mre_px"] == pytest.approx(2.0)
    assert l1["sdr"]["2.0"] == 100.0
    assert l2["n"] == 2 and l2["n_not_found"] == 1
    assert l2["mre_mm"] == pytest.approx(2.5) and l2["sd_mm"] is None  # one found value: no sample SD
    assert l2["sdr"] == {"2.0": 0.0, "2.5": 50.0, "3.0": 50.0, "4.0": 50.0}
    assert l3["mre_mm"] == pytest.approx(3.25 / 3) and l3["median_mm"] == pytest.approx(1.25)
    assert l3["sdr"]["2.0"] == 100.0
    json.dumps(s, allow_nan=False)  # the summary is plain JSON


def test_summary_px_only_mode():
    gt = np.zeros((2, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [NAN, NAN]]])
    s = summarize_errors(None, radial_errors(pred, gt), thresholds=(2.0, 3.0))
    assert s["mre_mm"] is None and s["sd_mm"] is None and s["median_mm"] is None
    assert s["sdr"] == {"2.0": None, "3.0": None}
    assert s["mre_px"] == pytest.approx((5 + 1 + 10) / 3)
    assert s["n_points"] == 4 and s["n_not_found"] == 1
    assert s["per_landmark"][0]["mre_px"] == pytest.approx(7.5) and s["per_landmark"][0]["mre_mm"] is None
    assert [p["name"] for p in s["per_landmark"]] == ["L1", "L2"]


def test_summary_all_missing_is_null_not_nan():
    e = np.full((2, 3), NAN)
    s = summarize_errors(e)
    assert s["n_points"] == 0 and s["n_missing_gt"] == 6
    assert s["mre_mm"] is None and s["sdr"]["2.0"] is None


def test_summary_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="errors_mm or errors_px"):
        summarize_errors(None, None)
    with pytest.raises(ValueError, match="disagree"):
        summarize_errors(np.array([[1.0, NAN]]), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="landmark names"):
        summarize_errors(np.array([[1.0, 2.0]]), landmark_names=["a"])


# ------------------------------------------------------------------------------------------------ accumulator
def test_accumulator_matches_functions_and_records():
    acc = LandmarkErrorAccumulator(["A", "B"])
    gt = np.array([[[0.0, 0.0], [NAN, NAN]], [[1.0, 1.0], [2.0, 2.0]]])
    pred = np.array([[[3.0, 4.0], [1.0, 1.0]], [[1.0, 1.0], [NAN, NAN]]])
    sp = np.array([[0.2, 0.2], [0.5, 0.5]])
    acc.add_batch(["img1", "img2"], torch.as_tensor(pred), gt, torch.as_tensor(sp))
    assert len(acc) == 2 and acc.ids == ["img1", "img2"]
    expected = summarize_errors(radial_errors(pred, gt, sp), radial_errors(pred, gt), ["A", "B"])
    assert acc.summary() == expected
    rec = acc.records()
    assert [r["status"] for r in rec] == ["ok", "missing_gt", "ok", "not_found"]
    assert rec[0]["error_mm"] == pytest.approx(1.0) and rec[0]["error_px"] == pytest.approx(5.0)
    assert rec[0]["pred_x"] == 3.0 and rec[0]["gt_y"] == 0.0 and rec[0]["name"] == "A" and rec[1]["index"] == 2
    assert math.isinf(rec[3]["error_mm"]) and math.isnan(rec[3]["pred_x"])
    with pytest.raises(ValueError, match="3 landmarks, expected 2"):
        acc.add("bad", np.zeros((3, 2)), np.zeros((3, 2)))


def test_accumulator_units_world_and_mixed():
    acc = LandmarkErrorAccumulator()
    acc.add("a", [[0.0, 0.0, 3.0]], [[0.0, 4.0, 0.0]], world=True)
    s = acc.summary()
    assert s["mre_mm"] == pytest.approx(5.0) and s["mre_px"] is None and s["per_landmark"][0]["name"] == "L1"
    assert acc.records()[0]["pred_z"] == 3.0

    mixed = LandmarkErrorAccumulator()
    mixed.add("with", [[3.0, 4.0]], [[0.0, 0.0]], spacing=[0.1, 0.1])
    mixed.add("without", [[0.0, 1.0]], [[0.0, 0.0]])
    with pytest.warns(UserWarning, match="without"):
        s = mixed.summary()
    assert s["mre_mm"] is None and s["mre_px"] == pytest.approx(3.0)  # no averaging of mm with unknown units
    nan_spacing = LandmarkErrorAccumulator()
    nan_spacing.add("unknown", [[3.0, 4.0]], [[0.0, 0.0]], spacing=[NAN, NAN])  # NaN spacing = unknown
    assert nan_spacing.summary()["mre_mm"] is None and nan_spacing.summary()["mre_px"] == 5.0
    with pytest.raises(ValueError, match="no images"):
        LandmarkErrorAccumulator().summary()


# ------------------------------------------------------------------------------------------------ ignite
def _batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        gt = rng.uniform(0, 100, (4, 5, 2))
        pred = gt + rng.normal(0, 15, gt.shape)
        gt[rng.random((4, 5)) < 0.1] = NAN
        pred[rng.random((4, 5)) < 0.1] = NAN
        sp = rng.uniform(0.1, 0.2, (4, 2))
        out.append((torch.as_tensor(pred).float(), torch.as_tensor(gt).float(), torch.as_tensor(sp)))
    return out


def test_ignite_metrics_equal_the_functions():
    batches = _batches()
    engine = Engine(lambda e, b: b)
    MeanRadialError().attach(engine, "mre")
    SuccessDetectionRate(threshold=2.5).attach(engine, "sdr")
    engine.run(batches, max_epochs=1)

    acc = LandmarkErrorAccumulator(thresholds=(2.5,))
    for i, (p, g, s) in enumerate(batches):
        acc.add_batch([f"{i}_{k}" for k in range(len(p))], p, g, s)
    ref = acc.summary()
    assert ref["n_not_found"] > 0 and ref["n_missing_gt"] > 0  # the case exercises both rules
    assert engine.state.metrics["mre"] == pytest.approx(ref["mre_mm"], rel=1e-9)
    assert engine.state.metrics["sdr"] == pytest.approx(ref["sdr"]["2.5"], rel=1e-9)

    # pixels when no spacing, from a mapping output as the evaluator produces it
    engine_px = Engine(lambda e, b: {"pred": b[0], "label": b[1], "spacing": None, "image_path": []})
    MeanRadialError().attach(engine_px, "mre")
    engine_px.run(batches, max_epochs=1)
    px = summarize_errors(None, np.concatenate([radial_errors(p, g) for p, g, _ in batches]))
    assert engine_px.state.metrics["mre"] == pytest.approx(px["mre_px"], rel=1e-9)


def test_ignite_metric_edge_cases():
    m = MeanRadialError()
    with pytest.raises(NotComputableError):
        m.compute()
    m.update((torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2), None))
    assert m.compute() == math.inf  # ground truth but nothing found: the worst value, never "best"
    # unknown spacing is None or a NaN row (as the loading transforms collate it); mixed runs fall back to px
    m = MeanRadialError()
    m.update((torch.tensor([[[3.0, 4.0]]]), torch.zeros(1, 1, 2), torch.tensor([[0.5, 0.5]])))
    assert m.compute() == pytest.approx(2.5) and m.unit == "mm"
    m.update((torch.tensor([[[6.0, 8.0]]]), torch.zeros(1, 1, 2), torch.tensor([[float("nan")] * 2])))
    with pytest.warns(UserWarning, match="1 of 2 images have no spacing"):
        assert m.compute() == pytest.approx(7.5)
    assert m.unit == "px"
    sdr = SuccessDetectionRate(5.0)
    sdr.update((torch.tensor([[[3.0, 4.0], [6.0, 8.0]]]), torch.zeros(1, 2, 2), torch.full((1, 2), float("nan"))))
    assert sdr.compute() == 50.0 and sdr.unit == "px"  # threshold in px without spacing
    with pytest.raises(ValueError, match="partly NaN"):
        sdr.update((torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([[0.1, float("nan")]])))
    with pytest.raises(ValueError, match="ground-truth"):
        MeanRadialError().update((torch.zeros(1, 2, 2), None, None))
    # decollated list of per-image dictionaries
    m2 = MeanRadialError()
    item = {"pred": torch.tensor([[3.0, 4.0]]), "label": torch.zeros(1, 2), "spacing": torch.tensor([1.0, 1.0])}
    m2.update([item, item])
    assert m2.compute() == pytest.approx(5.0) and m2.unit == "mm"


def test_key_metric_in_monai_evaluator_lower_is_better():
    from custom_monai.engines.landmark_evaluator import LandmarkEvaluator

    gt = torch.zeros(2, 3, 2)
    data = [{"image": torch.zeros(2, 1, 8, 8), "landmarks": gt, "spacing": torch.full((2, 2), 0.5)}]
    shift = {"value": 4.0}

    def predictor(batch, device):
        return batch["landmarks"] + torch.tensor([shift["value"], 0.0]), None

    evaluator = LandmarkEvaluator(
        device="cpu",
        val_data_loader=data,
        network=torch.nn.Identity(),
        predictor=predictor,
        key_val_metric={"val_mre": MeanRadialError()},
        additional_metrics={"val_sdr": SuccessDetectionRate(2.0)},
        metric_cmp_fn=lower_is_better,
    )
    evaluator.run(global_epoch=1)
    assert evaluator.state.metrics["val_mre"] == pytest.approx(2.0)
    assert evaluator.state.metrics["val_sdr"] == pytest.approx(100.0)
    shift["value"] = 2.0  # better
    evaluator.run(global_epoch=2)
    assert evaluator.state.best_metric == pytest.approx(1.0) and evaluator.state.best_metric_epoch == 2
    shift["value"] = 6.0  # worse: best stays
    evaluator.run(global_epoch=3)
    assert evaluator.state.metrics["val_mre"] == pytest.approx(3.0) and evaluator.state.metrics["val_sdr"] == 0.0
    assert evaluator.state.best_metric == pytest.approx(1.0) and evaluator.state.best_metric_epoch == 2


def _distributed_worker(local_rank, batches, result_file):
    import ignite.distributed as idist

    engine = Engine(lambda e, b: b)
    MeanRadialError().attach(engine, "mre")
    SuccessDetectionRate(3.0).attach(engine, "sdr")
    rank, world = idist.get_rank(), idist.get_world_size()
    engine.run(batches[rank::world], max_epochs=1)
    if rank == 0:
        with open(result_file, "w") as f:
            json.dump(engine.state.metrics, f)


@pytest.mark.slow  # spawns two processes (~5 s on 2 cores)
def test_ignite_metrics_reduce_over_processes(tmp_path):
    """Two gloo processes, each seeing part of the data, report the value over all of it."""
    import ignite.distributed as idist

    batches = _batches()
    result_file = tmp_path / "metrics.json"
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_distributed_worker, batches, str(result_file))
    got = json.loads(result_file.read_text())
    acc = LandmarkErrorAccumulator(thresholds=(3.0,))
    for i, (p, g, s) in enumerate(batches):
        acc.add_batch([f"{i}_{k}" for k in range(len(p))], p, g, s)
    ref = acc.summary()
    assert got["mre"] == pytest.approx(ref["mre_mm"], rel=1e-9)
    assert got["sdr"] == pytest.approx(ref["sdr"]["3.0"], rel=1e-9)


# ------------------------------------------------------------------------------------------------ real data
def _labelme_once(path):
    """{label: (x, y)} for labels that occur exactly once in a Labelme file."""
    shapes = json.loads(path.read_text())["shapes"]
    counts = collections.Counter(s["label"] for s in shapes)
    return {s["label"]: s["points"][0] for s in shapes if counts[s["label"]] == 1}


@pytest.mark.realdata
def test_interobserver_error_hamedan(data_dir):
    """farhadifar vs mollabashi on the 100 Hamedan images, scored with the project's metric code."""
    root = data_dir / "hamedan_ceph" / "annotations"
    labels = [f"l{k}" for k in range(1, 20)]
    a = np.full((100, 19, 2), NAN)
    b = np.full((100, 19, 2), NAN)
    for i in range(100):
        fa = _labelme_once(root / "farhadifar" / f"{i + 1:03d}.json")
        fb = _labelme_once(root / "mollabashi" / f"{i + 1:03d}.json")
        for k, lab in enumerate(labels):
            if lab in fa:
                a[i, k] = fa[lab]
            if lab in fb:
                b[i, k] = fb[lab]
    acc = LandmarkErrorAccumulator(labels)
    acc.add_batch([f"{i + 1:03d}" for i in range(100)], a, b, spacing=[0.127, 0.127])
    s = acc.summary()
    assert s["n_points"] - s["n_not_found"] == 1892  # pairs both annotated exactly once
    assert s["mre_px"] == pytest.approx(11.41, abs=0.01)
    assert s["mre_mm"] == pytest.approx(11.41 * 0.127, abs=0.01)


def test_mean_position_baseline_by_hand_with_missing_points(tmp_path):
    """Per-landmark nanmean of the training points, errors scaled by spacing; missing points add nothing."""
    from custom_monai.metrics import mean_position_baseline

    dl = {
        "landmark_names": ["A", "B"],
        "training": [
            {"landmarks": [[0.0, 0.0], [10.0, 10.0]]},
            {"landmarks": [[2.0, 0.0], None]},
            {"landmarks": [[4.0, 0.0], [None, 3.0]]},
        ],
        "validation": [{"landmarks": [[2.0, 3.0], [10.0, 12.0]], "spacing": [0.5, 0.5]}, {"landmarks": [None, [10.0, 10.0]]}],
    }
    # mean A = (2, 0), mean B = (10, 10): errors 3 * 0.5, 2 * 0.5, and 0 (pixels: no spacing)
    assert mean_position_baseline(dl, "validation") == pytest.approx((1.5 + 1.0 + 0.0) / 3)
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    assert mean_position_baseline(tmp_path / "dl.json", "validation") == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="'test'"):
        mean_position_baseline(dl, "test")


def test_training_summary_names_metric_and_baseline(tmp_path, capsys):
    from custom_monai.handlers import log_training_summary, save_model

    dl = {"landmark_names": ["A"], "training": [{"landmarks": [[0.0, 0.0]]}, {"landmarks": [[4.0, 0.0]]}],
          "validation": [{"landmarks": [[2.0, 3.0]], "spacing": [0.1, 0.1]}]}
    path = save_model(torch.nn.Linear(1, 1), tmp_path / "model.pt", {"landmark_names": ["A"]}, metric=0.123, epoch=7)
    text = log_training_summary(path, dl)
    assert "val_mre 0.12 mm on 'validation' (epoch 7)" in text and "baseline on the same images: 0.30 mm" in text
    assert text in capsys.readouterr().out


def test_spearman_ranks_and_ignores_nonfinite():
    from custom_monai.metrics import spearman

    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert spearman(a, a**3) == pytest.approx(1.0)  # monotone, not linear: rank correlation is exact
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1.0, 2.0], [1.0, 2.0]) is None  # too few pairs
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # no ranking


def test_accumulator_confidence_spearman_in_summary():
    rng = np.random.default_rng(0)
    acc = LandmarkErrorAccumulator(["a", "b", "c"])
    for i in range(6):
        gt = rng.uniform(0, 100, (3, 2))
        offset = rng.uniform(1, 10, 3)  # error of each point, px
        pred = gt + np.stack([offset, np.zeros(3)], axis=1)
        acc.add(f"img{i}", pred, gt, [0.1, 0.1], confidence=offset * 0.5)  # an uncertainty that tracks the error
    assert acc.summary()["confidence_error_spearman"] == pytest.approx(1.0)
    plain = LandmarkErrorAccumulator(["a"])
    plain.add("x", [[0.0, 0.0]], [[1.0, 0.0]])
    assert "confidence_error_spearman" not in plain.summary()
    with pytest.raises(ValueError, match="confidence values"):
        plain.add("y", [[0.0, 0.0]], [[1.0, 0.0]], confidence=[1.0, 2.0])
