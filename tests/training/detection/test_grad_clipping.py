"""Gradient-norm clipping: detectors clip at 10 by default, `clip_grad_norm` overrides it (0 = off), other
families do not clip unless asked. YOLOV3's own default learning rate."""

from __future__ import annotations

import pytest
import torch

from gpjobs.catalog import lookup_model_type, parse_arguments
from gpjobs.training.data import open_training_data
from gpjobs.training.engine import FitConfig, clip_norm, fit
from gpjobs.training.engine.schedule import choose_learning_rate
from gpjobs.training.events import ListReporter
from gpjobs.training.models import family_for
from gpjobs.training.weights import WeightsPolicy
from tests.builders.exports import write_pascal_voc


def _family(model_type: str, folder, **arguments):
    info = lookup_model_type(model_type)
    data = open_training_data([folder], task=info.task, validation_percent=25.0, augment=False)
    family = family_for(model_type)(
        info,
        data.info,
        "RESNET18",
        parse_arguments(info, arguments),
        WeightsPolicy(None, "random"),
        lambda level, text: None,
    )
    family.attach_data(data)
    return family, data


def _clip(model_type: str, folder, config: FitConfig | None = None, **arguments) -> float:
    return clip_norm(_family(model_type, folder, **arguments)[0], config or FitConfig())


def _fit(model_type: str, folder, **arguments) -> None:
    family, data = _family(model_type, folder, **arguments)
    fit(family, family.build(), data, FitConfig(max_epochs=1, batch_size=2, learning_rate=1e-3), ListReporter())


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_pascal_voc(tmp_path_factory.mktemp("voc"), n=6, size=32)


def test_clip_norm_resolution(voc):
    assert _clip("SSD", voc) == 10.0
    assert _clip("SSD", voc, clip_grad_norm="2.5") == 2.5
    assert _clip("SSD", voc, clip_grad_norm=0) == 0.0
    assert _clip("SSD", voc, FitConfig(clip_grad_norm=1.0), clip_grad_norm=3) == 1.0  # config wins


@pytest.mark.slow
def test_training_steps_clip_the_gradient(voc, monkeypatch):
    seen: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *a, **kw):
        norm = original(parameters, max_norm, *a, **kw)
        seen.append(float(max_norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    _fit("SSD", voc, clip_grad_norm=0.5)
    assert seen and set(seen) == {0.5}  # once per training step, with the requested norm
    seen.clear()
    _fit("SSD", voc, clip_grad_norm=0)
    assert seen == []


def test_yolov3_trains_at_its_own_default_rate_when_none_is_given(voc, monkeypatch):
    """A YOLOV3 job without learning_rate and too short for the LR range test trains at its family's default
    (1e-3, measured in yolov3.py) and says so; the family's attribute, not the engine's, decides."""
    reporter = ListReporter()
    family, _ = _family("YOLOV3", voc)
    rate = choose_learning_rate(family, None, FitConfig(max_epochs=1), None, [None], reporter)
    assert rate.lr == 1e-3 and rate.how.startswith("default")
    assert any("training at 1.0e-03" in e["text"] for e in reporter.events if e["type"] == "message")
    monkeypatch.setattr(type(family), "default_learning_rate", 3e-3)
    assert choose_learning_rate(family, None, FitConfig(max_epochs=1), None, [None], ListReporter()).lr == 3e-3
    ssd, _ = _family("SSD", voc)
    assert choose_learning_rate(ssd, None, FitConfig(max_epochs=1), None, [None], ListReporter()).lr == 1e-3
