"""The engine's multi-network hook (configure_optimizers + training_step) on a tiny two-network family."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gpjobs.catalog import lookup_model_type
from gpjobs.training.checkpoint import load_checkpoint
from gpjobs.training.engine import FitConfig, NaNLossError, fit
from gpjobs.training.events import ListReporter, StopRequested
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.multi_network import is_multi_network
from gpjobs.training.protocol import ExitCode
from gpjobs.training.weights import WeightsPolicy

torch.set_num_threads(1)


class TwoNets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 1)
        self.second = nn.Linear(4, 1)

    def forward(self, x):
        return self.first(x)


class TwoNetFamily(ModelFamily):
    """`first` regresses y, `second` regresses -y; each has its own Adam (beta1 0.5, as GANs use)."""

    default_learning_rate = 0.3
    nan_in_second_at: int | None = None

    def build(self):
        return TwoNets()

    def configure_optimizers(self, model, lr):
        return {
            "first": torch.optim.Adam(model.first.parameters(), lr=lr, betas=(0.5, 0.999)),
            "second": torch.optim.Adam(model.second.parameters(), lr=lr / 2, betas=(0.5, 0.999)),
        }

    def training_step(self, model, batch, device, optimizers, scaler):
        x, y = batch
        self.steps = getattr(self, "steps", 0) + 1
        second = nn.functional.mse_loss(model.second(x).squeeze(1), -y)
        if self.nan_in_second_at is not None and self.steps >= self.nan_in_second_at:
            second = second * float("nan")
        optimizers["second"].zero_grad(set_to_none=True)
        scaler.scale(second).backward()
        scaler.step(optimizers["second"])
        first = nn.functional.mse_loss(model.first(x).squeeze(1), y)
        optimizers["first"].zero_grad(set_to_none=True)
        scaler.scale(first).backward()
        scaler.step(optimizers["first"])
        return {"loss": first.detach(), "second": second.detach()}

    def training_loss(self, model, batch, device):
        x, y = batch
        return nn.functional.mse_loss(model(x).squeeze(1), y)

    def validate(self, model, loader, device):
        total = second = n = 0.0
        for x, y in loader:
            total += float(nn.functional.mse_loss(model.first(x).squeeze(1), y, reduction="sum"))
            second += float(nn.functional.mse_loss(model.second(x).squeeze(1), -y, reduction="sum"))
            n += len(y)
        return total / n, {"second_mse": second / n}

    def predict(self, model, images):
        return [{"value": float(v)} for v in model(images)]


class LinearData:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.train, self.valid = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])

    def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
        gen = torch.Generator().manual_seed(1)
        return (
            DataLoader(self.train, batch_size, shuffle=True, drop_last=True, generator=gen),
            DataLoader(self.valid, batch_size),
        )


def family(**attrs) -> TwoNetFamily:
    info = SimpleNamespace(bands=4, extract_bands=None, classes=[], chip_size=(1, 1), task="translation")
    fam = TwoNetFamily(
        lookup_model_type("FEATURE_CLASSIFIER"), info, "RESNET18", {}, WeightsPolicy(), lambda level, text: None
    )
    for key, value in attrs.items():
        setattr(fam, key, value)
    return fam


def run(fam, cfg, reporter=None):
    torch.manual_seed(0)
    model = fam.build()
    reporter = reporter or ListReporter()
    return model, fit(fam, model, LinearData(), cfg, reporter), reporter


def test_only_families_with_both_hooks_are_multi_network():
    assert is_multi_network(family())
    from tests.training.test_engine import TinyFamily  # the single-optimizer family of the engine tests

    assert not is_multi_network(
        TinyFamily(
            lookup_model_type("FEATURE_CLASSIFIER"),
            SimpleNamespace(),
            "RESNET18",
            {},
            WeightsPolicy(),
            lambda level, text: None,
        )
    )


def test_both_networks_learn_with_their_own_optimizer_and_schedule():
    # 8 epochs: over seeds 0-9 the second network's MSE ends at <= 0.13x its first (6 epochs: 0.23x, close to 1/4)
    _model, result, reporter = run(
        family(), FitConfig(max_epochs=8, batch_size=8, learning_rate=None, stop_training=False)
    )
    # no LR range test for multi-network families: their default rate, and the job says so
    assert result.lr_find is None and result.learning_rate == 0.3
    assert any("learning_rate not set" in e.get("text", "") for e in reporter.events)
    first, last = result.history[0], result.history[-1]
    assert last["valid_loss"] < first["valid_loss"] / 4
    assert last["second_mse"] < first["second_mse"] / 4  # the second network trained too
    assert last["train_second"] < first["train_second"]  # per-part training means are recorded per epoch
    assert len(result.batch_losses) == 8 * 6 and all(math.isfinite(v) for v in result.batch_losses)
    progress = [e["percent"] for e in reporter.events if e["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(95.0)


def test_one_cycle_per_optimizer_without_touching_beta1(tmp_path):
    path = tmp_path / "c.pt"
    run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=0.04, checkpoint_path=path))
    state = load_checkpoint(path)["stepper"]
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"first", "second"}
    for name, peak in (("first", 0.04), ("second", 0.02)):
        group = state["optimizers"][name]["param_groups"][0]
        assert group["max_lr"] == pytest.approx(peak)  # each optimizer keeps its own peak rate
        assert group["initial_lr"] == pytest.approx(peak / 25)  # the one-cycle warm-up start
        assert group["betas"][0] == 0.5  # GAN momentum is not cycled
        assert state["schedulers"][name]["last_epoch"] == 2 * 6


def test_interrupted_multi_network_run_resumes_to_the_same_result(tmp_path):
    cfg = {"max_epochs": 4, "batch_size": 8, "learning_rate": 0.03, "stop_training": False}
    straight_model, straight, _ = run(family(), FitConfig(**cfg))

    class StopAfterEpochOne(ListReporter):
        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "epoch" and fields["epoch"] == 1:
                self.request_cancel()

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(StopRequested) as stop:
        run(family(), FitConfig(**cfg, checkpoint_path=path), StopAfterEpochOne())
    assert stop.value.exit_code == ExitCode.CANCELLED
    resumed_model, resumed, _ = run(family(), FitConfig(**cfg, checkpoint_path=path))
    assert resumed.resumed_from_epoch == 1
    # identical only if both optimizers' moments and both schedules were restored
    assert [h["valid_loss"] for h in resumed.history] == [h["valid_loss"] for h in straight.history]
    assert all(torch.equal(v, resumed_model.state_dict()[k]) for k, v in straight_model.state_dict().items())


def test_a_diverging_second_network_is_a_nan_failure():
    with pytest.raises(NaNLossError):
        run(family(nan_in_second_at=4), FitConfig(max_epochs=2, batch_size=8, learning_rate=0.01))
