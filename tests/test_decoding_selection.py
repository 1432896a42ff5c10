"""``select_decoding``: each candidate evaluated once, the best kept in model.json; ``trained_decoding`` reads it."""

import json
from types import SimpleNamespace

import pytest
import torch

from custom_monai.handlers import save_model, select_decoding, trained_decoding, trained_settings


class FakeInferer:
    def __init__(self):
        self.expand, self.component, self.prior_power = False, True, 1.0


class FakeEvaluator:
    """Scores the target's current settings with ``score(target)``; records what it saw and the loaded weights."""

    def __init__(self, target, score):
        self.network = torch.nn.Linear(2, 2)
        self.target, self.score, self.seen = target, score, []
        self.state = SimpleNamespace(key_metric_name="val_mre", metrics={})

    def run(self):
        self.seen.append((self.target.expand, self.target.component, self.target.prior_power))
        self.state.metrics = {"val_mre": self.score(self.target), "other": -1.0}


CANDIDATES = {
    "guided": {"expand": False, "peak_component": True, "prior_power": 1.0},
    "paper": {"expand": False, "peak_component": False, "prior_power": 0.0},
    "weighted_squared": {"expand": False, "peak_component": False, "prior_power": 2.0},
    "guided_exploration": {"expand": True, "peak_component": True, "prior_power": 1.0},
}
ATTR = {"peak_component": "component"}


@pytest.fixture
def model(tmp_path):
    net = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(net.weight, 3.0)
    path = tmp_path / "model.pt"
    save_model(net, path, {"global_size": [96, 96]}, metric_name="val_mre", metric=1.5, epoch=4)
    return path


def test_best_candidate_is_written_and_kept(model):
    target = FakeInferer()
    ev = FakeEvaluator(target, lambda t: 1.0 + t.prior_power * (-0.3 if not t.component else 0.0) + 0.5 * t.expand)
    assert select_decoding(ev, target, CANDIDATES, model, attributes=ATTR) == "weighted_squared"
    assert ev.seen == [(False, True, 1.0), (False, False, 0.0), (False, False, 2.0), (True, True, 1.0)]
    assert (target.expand, target.component, target.prior_power) == (False, False, 2.0)  # the winner stays set
    assert torch.all(ev.network.weight == 3.0)  # the selected model was loaded first
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["settings"]["decoding"] == CANDIDATES["weighted_squared"]
    assert record["settings"]["global_size"] == [96, 96] and record["metric"] == 1.5 and record["epoch"] == 4
    assert record["decoding_selection"]["chosen"] == "weighted_squared"
    assert record["decoding_selection"]["scores"] == pytest.approx({"guided": 1.0, "paper": 1.0, "weighted_squared": 0.4,
                                                                    "guided_exploration": 1.5})
    assert trained_decoding(trained_settings(model), "prior_power", 1.0) == 2.0
    assert trained_decoding(trained_settings(model), "peak_component", True) is False


def test_ties_go_to_the_first_candidate(model):
    target = FakeInferer()
    ev = FakeEvaluator(target, lambda t: 0.7)
    assert select_decoding(ev, target, dict(reversed(list(CANDIDATES.items()))), model, attributes=ATTR) == "guided_exploration"
    assert select_decoding(ev, target, CANDIDATES, model, attributes=ATTR) == "guided"


def test_another_decoding_must_beat_the_first_by_the_margin(model):
    target = FakeInferer()
    ev = FakeEvaluator(target, lambda t: 1.0 - 0.005 * (not t.component))  # paper / weighted²: 0.5 % better
    assert select_decoding(ev, target, CANDIDATES, model, attributes=ATTR) == "guided"  # default margin 1 %
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["decoding_selection"]["chosen"] == "guided" and record["settings"]["decoding"] == CANDIDATES["guided"]
    assert select_decoding(ev, target, CANDIDATES, model, attributes=ATTR, margin=0.004) == "paper"  # first of the two
    assert select_decoding(ev, target, CANDIDATES, model, attributes=ATTR, margin=0.0) == "paper"
    with pytest.raises(ValueError, match="margin"):
        select_decoding(ev, target, CANDIDATES, model, attributes=ATTR, margin=1.0)


def test_unknown_setting_and_missing_model_are_clear(model, tmp_path):
    target = FakeInferer()
    ev = FakeEvaluator(target, lambda t: 1.0)
    with pytest.raises(ValueError, match="'peak_component'.*FakeInferer"):
        select_decoding(ev, target, CANDIDATES, model)  # no attribute map: FakeInferer has no peak_component
    with pytest.raises(FileNotFoundError, match="no model was selected"):
        select_decoding(ev, target, CANDIDATES, tmp_path / "none" / "model.pt", attributes=ATTR)
    with pytest.raises(ValueError, match="no candidate"):
        select_decoding(ev, target, {}, model)
    assert ev.seen == []


def test_trained_decoding_defaults():
    assert trained_decoding({}, "expand", False) is False
    assert trained_decoding({"decoding": None}, "prior_power", 1.0) == 1.0
    assert trained_decoding({"decoding": {"expand": True}}, "expand", False) is True
