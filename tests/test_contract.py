"""The shared bundle contract: model files with their settings, schedules on a stage's real length, tracking."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from custom_monai.handlers import (
    BestMetricCheckpoint,
    ProgressAttributeSwitch,
    ProgressLRHandler,
    TimeBudgetHandler,
    TrackingExtras,
    check_settings,
    load_model,
    lr_factor,
    save_model,
    settings_path,
    stage_handlers,
    trained_settings,
)
from custom_monai.handlers import time_budget as time_budget_module


def test_save_model_is_a_plain_state_dict_with_settings_beside_it(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    path = save_model(net, tmp_path / "model.pt", {"input_size": (96, 128), "landmark_names": ["A", "B"]}, metric=1.5, epoch=3)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(net.state_dict())
    record = json.loads(settings_path(path).read_text())
    assert record == {"settings": {"input_size": [96, 128], "landmark_names": ["A", "B"]}, "metric": 1.5, "epoch": 3}
    assert trained_settings(path) == record["settings"]
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    load_model(path, other)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))


def test_trained_settings_missing_and_broken(tmp_path):
    assert trained_settings(tmp_path / "model.pt", required=False) == {}
    with pytest.raises(FileNotFoundError, match="model.json"):
        trained_settings(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json"):
        trained_settings(tmp_path / "model.pt")


def test_load_model_names_file_and_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_model(tmp_path / "nothere.pt", torch.nn.Linear(2, 2))
    save_model(torch.nn.Linear(2, 3), tmp_path / "model.pt", {})
    with pytest.raises(RuntimeError, match="model.pt does not fit"):
        load_model(tmp_path / "model.pt", torch.nn.Linear(2, 2))


def test_check_settings_names_setting_and_both_values():
    trained = {"input_size": [96, 128], "sigma": 2.0, "landmark_names": ["A", "B"]}
    assert check_settings(trained, {"input_size": (96, 128), "sigma": 2, "landmark_names": ["A", "B"], "new": 1})
    with pytest.raises(ValueError, match=r"setting 'input_size'.*\[96, 128\].*\[256, 256\]"):
        check_settings(trained, {"input_size": [256, 256]})
    with pytest.raises(ValueError, match="landmark_names"):
        check_settings(trained, {"landmark_names": ["A", "C"]})


def test_best_metric_checkpoint_writes_model_and_settings(tmp_path):
    net = torch.nn.Linear(3, 2)
    best = BestMetricCheckpoint(str(tmp_path), network=net, settings={"k": 1})
    evaluator = Engine(lambda e, b: None)
    best.attach(evaluator)
    values = iter([5.0, 7.0, 3.0])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mre"] = next(values)
        engine.state.key_metric_name = "val_mre"

    for expected in (5.0, 5.0, 3.0):
        evaluator.run([0], max_epochs=1)
        assert json.loads((tmp_path / "model.json").read_text())["metric"] == expected
    assert trained_settings(tmp_path / "model.pt") == {"k": 1}


@pytest.mark.parametrize(
    "progress,kwargs,expected",
    [
        (0.0, {}, 1.0),
        (0.5, {}, 0.5),
        (1.0, {"min_factor": 0.1}, 0.1),
        (0.05, {"warmup": 0.1, "min_factor": 0.0}, 0.5),
        (0.3, {"shape": "constant"}, 1.0),
        (0.5, {"shape": "linear", "min_factor": 0.2}, 0.6),
        # two cycles, the second twice as long: the first ends at 1/3, the restart is back at 1
        (1 / 3, {"cycles": 2, "cycle_mult": 2.0}, 0.0),
        (1 / 3 + 1e-9, {"cycles": 2, "cycle_mult": 2.0}, 1.0),
        (1.0, {"cycles": 5, "cycle_mult": 2.0}, 0.0),
    ],
)
def test_lr_factor(progress, kwargs, expected):
    assert lr_factor(progress, **kwargs) == pytest.approx(expected, abs=1e-6)


def test_lr_factor_rejects_unknown_shape():
    with pytest.raises(ValueError, match="unknown learning-rate shape"):
        lr_factor(0.5, shape="step")


class _Clock:
    """``time.monotonic`` stand-in: every iteration of the fake engine advances it by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now


def _budgeted_stage(monkeypatch, minutes: float, seconds_per_iteration: float, max_epochs: int = 100000):
    clock = _Clock(seconds_per_iteration)
    monkeypatch.setattr(time_budget_module.time, "monotonic", clock)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    engine = Engine(lambda e, b: setattr(clock, "now", clock.now + clock.step))
    budget = TimeBudgetHandler(minutes)
    budget.attach(engine)
    loss = type("Loss", (), {"focal": False})()
    switch = ProgressAttributeSwitch(loss, "focal", True, False, clock=budget, start=0.6)
    switch.attach(engine)
    lr = ProgressLRHandler(optimizer, clock=budget, shape="cosine", min_factor=0.01)
    lr.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((budget.progress(e), loss.focal, optimizer.param_groups[0]["lr"])))
    engine.run(range(10), max_epochs=max_epochs)
    return engine, seen, switch, optimizer


def test_schedules_run_in_full_inside_a_time_budget(monkeypatch):
    # 2-minute budget, 1 s per iteration, max_epochs far away: the time budget ends the stage
    engine, seen, switch, optimizer = _budgeted_stage(monkeypatch, minutes=2, seconds_per_iteration=1.0)
    assert engine.state.iteration == 120
    focal = [f for _, f, _ in seen]
    assert focal.index(True) == pytest.approx(0.6 * 120, abs=1) and all(focal[focal.index(True):])
    assert switch.switched_at is not None and switch.switched_at[2] == pytest.approx(0.6, abs=0.01)
    # the lr reaches its floor at the end of the stage (last iteration started at progress 119/120)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(119 / 120, min_factor=0.01), rel=1e-6)
    assert optimizer.param_groups[0]["lr"] < 0.1 * 0.0102


def test_schedules_follow_epochs_without_a_budget(monkeypatch):
    engine, seen, _, _ = _budgeted_stage(monkeypatch, minutes=0, seconds_per_iteration=1.0, max_epochs=5)
    assert engine.state.iteration == 50
    assert [f for _, f, _ in seen].index(True) == 30
    assert seen[-1][0] == 1.0


def test_time_budget_progress_survives_resume(monkeypatch):
    clock = _Clock(1.0)
    monkeypatch.setattr(time_budget_module.time, "monotonic", clock)
    budget = TimeBudgetHandler(1.0)
    engine = Engine(lambda e, b: setattr(clock, "now", clock.now + 1.0))
    budget.attach(engine)
    engine.run(range(10), max_epochs=2)
    state = budget.state_dict()
    assert state["elapsed"] == pytest.approx(20.0)
    resumed = TimeBudgetHandler(1.0)
    resumed.load_state_dict(state)
    engine2 = Engine(lambda e, b: setattr(clock, "now", clock.now + 1.0))
    resumed.attach(engine2)
    engine2.run(range(10), max_epochs=100000)
    assert engine2.state.iteration == 40  # the 60-second budget had 40 seconds left


class _FakeTracker:
    """The attributes of MONAI's ``MLFlowHandler`` that the extras touch (type name matched, as for the real one)."""

    def __init__(self, close_on_complete: bool) -> None:
        self.close_on_complete = close_on_complete
        self.experiment_param = None
        self.artifacts = "config.json"
        self.closed = 0

    def start(self, engine):
        pass

    def close(self):
        self.closed += 1

    def attach(self, engine):
        engine.add_event_handler(Events.STARTED, self.start)
        if self.close_on_complete:
            engine.add_event_handler(Events.COMPLETED, lambda e: self.close())


_FakeTracker.__name__ = "MLFlowHandler"


def test_tracking_extras_and_stage_handlers():
    tracker = _FakeTracker(close_on_complete=True)
    extras = TrackingExtras(params={"input_size": [96, 128], "long": list(range(1000))}, artifacts="out/metrics.json")
    first, last = Engine(lambda e, b: None), Engine(lambda e, b: None)
    for h in [extras] + stage_handlers([tracker], last=False):
        h.attach(first)
    for h in [extras] + stage_handlers([tracker], last=True):
        h.attach(last)
    first.run([0], max_epochs=1)
    assert tracker.closed == 0  # an earlier stage keeps the run open
    assert tracker.experiment_param["input_size"] == "[96, 128]" and len(tracker.experiment_param["long"]) <= 500
    assert tracker.artifacts == ["config.json", "out/metrics.json"]
    last.run([0], max_epochs=1)
    assert tracker.closed == 1 and tracker.close_on_complete
    assert tracker.artifacts == ["config.json", "out/metrics.json"]


def test_real_mlflow_handler_one_run_over_two_stages(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from monai.handlers import MLFlowHandler

    uri = "sqlite:///" + str(tmp_path / "mlruns.db")
    tracker = MLFlowHandler(tracking_uri=uri, experiment_name="t", iteration_log=True, epoch_log=True, close_on_complete=True,
                            output_transform=lambda out: out)
    extras = TrackingExtras(params={"patch_size": 32})
    stages = [Engine(lambda e, b: 1.0), Engine(lambda e, b: 0.5)]
    for i, engine in enumerate(stages):
        for h in [extras] + stage_handlers([tracker], last=i == 1):
            h.attach(engine)
        engine.run(range(3), max_epochs=1)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["patch_size"] == "32"
    assert len(client.get_metric_history(runs[0].info.run_id, "Loss")) == 6  # both stages' iterations


def test_time_budget_process_clock(monkeypatch):
    monkeypatch.setenv("CUSTOM_MONAI_BUDGET_CLOCK", "process")
    budget = TimeBudgetHandler(1.0)
    assert budget.clock == "process"
    engine = Engine(lambda e, b: sum(i * i for i in range(20000)))  # CPU work: process time advances
    budget.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert 0 < budget.elapsed() < 60
    assert TimeBudgetHandler(1.0, clock="wall").clock == "wall"
    with pytest.raises(ValueError, match="clock"):
        TimeBudgetHandler(1.0, clock="gpu")
