"""Gradient-norm clipping: detectors clip at 10 by default, `clip_grad_norm` overrides it (0 = off), other
families do not clip unless asked. The detectors' optimizer and default learning rate."""

from __future__ import annotations

import pytest
import torch

from gpjobs.catalog import lookup_model_type, parse_arguments
from gpjobs.training.data import open_training_data
from gpjobs.training.engine import FitConfig, clip_norm, fit
from gpjobs.training.engine.schedule import describe_optimizer, make_optimizer
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


@pytest.mark.parametrize(
    ("model_type", "kind", "default_lr"),
    [("FASTERRCNN", torch.optim.SGD, 1e-2), ("MASKRCNN", torch.optim.AdamW, 1e-3), ("YOLOV3", torch.optim.AdamW, 3e-3)],
)
def test_detector_optimizer_defaults(voc, model_type, kind, default_lr):
    """FASTERRCNN trains with torchvision's SGD recipe at 1e-2, YOLOV3 with AdamW at 3e-3 (bench/quality.py's
    detection rows); the schedule the .emd and the model card show names the optimizer."""
    family, _ = _family(model_type, voc)
    model = family.build()
    optimizer = make_optimizer(family, model, 0.5, 1.0)
    assert isinstance(optimizer, kind)
    if kind is torch.optim.SGD:
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4
    assert family.default_learning_rate == default_lr
    assert describe_optimizer(family).startswith(kind.__name__)
