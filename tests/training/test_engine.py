"""The engine's mechanics on a tiny in-memory family: LR rule, early stopping, best epoch, resume, stop, NaN."""

from __future__ import annotations

import math
import zipfile
from types import SimpleNamespace

import pytest
import torch
import torch.utils.serialization
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gpjobs.catalog import lookup_model_type
from gpjobs.training.checkpoint import load_checkpoint
from gpjobs.training.engine import BackbonePolicy, FitConfig, NaNLossError, augment_policy, backbone_policy, fit
from gpjobs.training.events import ListReporter, StopRequested
from gpjobs.training.lr_finder import lr_range_test, pick_learning_rate, sweep_points
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.protocol import ExitCode
from gpjobs.training.weights import WeightsPolicy

torch.set_num_threads(1)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))


class TinyFamily(ModelFamily):
    """Two-class problem on 4 features; `scripted` replaces the validation loss per epoch when given."""

    scripted: list[float] | None = None
    nan_at: int | None = None

    def build(self):
        return TinyNet()

    def training_loss(self, model, batch, device):
        x, y = batch
        self.steps = getattr(self, "steps", 0) + 1
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        if self.nan_at is not None and self.steps >= self.nan_at:
            return loss * float("nan")
        return loss

    def validate(self, model, loader, device):
        total, n, correct = 0.0, 0, 0
        for x, y in loader:
            out = model(x)
            total += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
        self.epoch = getattr(self, "epoch", 0) + 1
        loss = self.scripted[self.epoch - 1] if self.scripted else total / n
        return loss, {"accuracy": correct / n, "per_class_metrics": {}}

    def predict(self, model, images):
        return [{"class": int(i)} for i in model(images).argmax(1)]


class TinyData:
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 4, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        self.train, self.valid = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])

    def loaders(self, batch_size, *, num_workers=0, pin_memory=False, shard=None):
        assert shard is None  # one device: the engine shards only on several ranks
        gen = torch.Generator().manual_seed(1)
        return (
            DataLoader(self.train, batch_size, shuffle=True, drop_last=True, generator=gen),
            DataLoader(self.valid, batch_size),
        )


def family(**attrs) -> TinyFamily:
    info = SimpleNamespace(bands=4, extract_bands=None, classes=[1, 2], chip_size=(1, 1), task="classification")
    fam = TinyFamily(
        lookup_model_type("FEATURE_CLASSIFIER"), info, "RESNET18", {}, WeightsPolicy(), lambda level, text: None
    )
    for key, value in attrs.items():
        setattr(fam, key, value)
    return fam


def run(fam, cfg, reporter=None):
    torch.manual_seed(0)
    model = fam.build()
    reporter = reporter or ListReporter()
    return model, fit(fam, model, TinyData(), cfg, reporter), reporter


def _sweep(points: int = 60):
    lrs = [1e-7 * (1e8) ** (i / (points - 1)) for i in range(points)]
    return lrs, torch.Generator().manual_seed(0)


def test_lr_rule_takes_a_tenth_of_where_the_fall_ends():
    lrs, g = _sweep()
    # flat at 1.0 up to 1e-4, falls linearly in log10(lr) to 0.2 at 1e-2, then a noisy plateau
    clean = [1.0 if lr <= 1e-4 else max(0.2, 1.0 - 0.4 * math.log10(lr / 1e-4)) for lr in lrs]
    raw = [v + 0.01 * float(torch.randn(1, generator=g)) for v in clean]
    chosen, why = pick_learning_rate(lrs, raw)
    assert 5e-4 <= chosen <= 2e-3 and "stopped falling" in why  # a tenth of ~1e-2
    raw[45] = 50.0  # one wild batch in the plateau moves nothing (running median)
    assert pick_learning_rate(lrs, raw)[0] == chosen
    still_falling = [1.0 if lr <= 1e-4 else 1.0 - 0.1 * math.log10(lr / 1e-4) for lr in lrs]  # down to lr 10
    chosen, why = pick_learning_rate(lrs, still_falling)
    assert chosen == 0.01 and why.endswith("capped at 1e-02")


def test_lr_rule_on_noise_keeps_the_default_or_a_tenth_of_the_rise():
    lrs, g = _sweep()
    noise = [0.8 + 0.2 * float(torch.randn(1, generator=g)) for _ in lrs]  # batch 8 on a model that barely moves
    chosen, why = pick_learning_rate(lrs, noise)
    assert chosen == 1e-3 and "default" in why  # arcgis.learn's rule picked ~1e-5 on such curves (issue #17)
    rising = [v + (0.0 if lr < 1e-4 else 5.0 * math.log10(lr / 1e-4)) for v, lr in zip(noise, lrs)]
    chosen, why = pick_learning_rate(lrs, rising)
    assert 1e-6 < chosen < 1e-4 and "rose" in why  # diverges from ~1e-4 on: a tenth of that


def test_range_test_gets_a_share_of_the_job():
    assert sweep_points(5000) == 100 and sweep_points(400) == 40  # at most 100, at most 10 % of the steps
    assert sweep_points(150) == 0  # 15 points cannot tell a minimum from noise: no sweep


def test_lr_range_test_restores_weights_and_stops_on_divergence():
    bowl = nn.Linear(1, 1, bias=False)  # loss 50 w^2: SGD diverges once lr > 0.02
    before = bowl.weight.detach().clone()

    def step(batch):
        loss = 50 * bowl.weight.pow(2).sum()
        loss.backward()
        return loss

    curve = lr_range_test(
        bowl, lambda: torch.optim.SGD(bowl.parameters(), lr=1e-7), step, lambda: [None] * 4, num_it=60
    )
    assert torch.equal(bowl.weight, before) and bowl.weight.grad is None
    assert curve["lrs"][0] == pytest.approx(1e-7) and curve["diverged"]
    assert 0.02 < curve["lrs"][-1] < 1.0 and len(curve["lrs"]) < 60  # stopped soon after lr passed 0.02
    assert curve["chosen"] < 0.02 and len(curve["raw"]) == len(curve["losses"])


def test_lr_finder_runs_within_its_share_of_the_job():
    fam = family()
    _, result, reporter = run(fam, FitConfig(max_epochs=2, batch_size=8, learning_rate=None, lr_find_share=2.5))
    assert result.lr_find is not None and result.learning_rate == result.lr_find["chosen"]
    assert result.lr_find["points"] == 30  # 2.5 x the 12 planned steps
    assert fam.steps == len(result.lr_find["lrs"]) + 12  # the sweep's steps, then the job's
    assert result.lr_how.startswith("LR range test: ")
    texts = [e["text"] for e in reporter.events if e["type"] == "message"]
    assert any(t.startswith("LR finder:") and "chosen learning rate" in t for t in texts)


def test_the_range_test_leaves_no_trace_on_training():
    """Training after the sweep is training at the chosen rate from the start: weights, buffers and gradients
    (the sweep's last gradient once leaked into the first training step) are as before the sweep."""
    swept_model, swept, _ = run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=None, lr_find_share=2.5))
    given_model, given, _ = run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=swept.learning_rate))
    assert swept.batch_losses == given.batch_losses
    assert all(torch.equal(v, given_model.state_dict()[k]) for k, v in swept_model.state_dict().items())


def test_a_job_too_short_for_a_range_test_trains_at_the_default_and_says_so():
    fam = family()
    _, result, reporter = run(fam, FitConfig(max_epochs=2, batch_size=8, learning_rate=None))
    assert result.lr_find is None and result.learning_rate == 1e-3 and fam.steps == 12  # no sweep steps
    assert any("too few for a learning-rate range test" in e.get("text", "") for e in reporter.events)
    assert result.schedule["learning_rate_how"].startswith("default: the job plans 12 training steps")


def test_lr_finder_takes_the_start_of_the_progress_bar():
    """Pollers see progress move through the sweep, then training continues from there, never backwards."""
    from gpjobs.training.engine import LR_FIND_SHARE

    run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=None, lr_find_share=2.5))
    _, _, reporter = run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=None, lr_find_share=2.5))
    percents = [(e["phase"], e["percent"]) for e in reporter.events if e["type"] == "progress"]
    assert [p for _, p in percents] == sorted(p for _, p in percents)
    assert all(p >= LR_FIND_SHARE for phase, p in percents if phase == "train")
    steps = []
    lr_range_test(
        TinyNet(),
        lambda: torch.optim.SGD(TinyNet().parameters(), lr=0.1),
        lambda b: torch.tensor(1.0, requires_grad=True) * 1,
        lambda: [None] * 5,
        num_it=7,
        on_step=lambda i, total: steps.append((i, total)),
    )
    assert steps and steps[-1][1] == 7 and [i for i, _ in steps] == list(range(len(steps)))


def test_backbone_policy():
    random_frozen = backbone_policy("RESNET18", pretrained=False, freeze_model=True)
    assert (random_frozen.frozen, random_frozen.lr_factor) == (False, 1.0)
    assert "freeze_model=true is ignored" in random_frozen.reason and "full learning rate" in random_frozen.reason
    assert backbone_policy("RESNET18", pretrained=False, freeze_model=False).lr_factor == 1.0
    pretrained = backbone_policy("RESNET18", pretrained=True, freeze_model=True)
    assert (pretrained.frozen, pretrained.lr_factor) == (True, 0.1)  # Esri's semantics
    assert (backbone_policy("RESNET18", pretrained=True, freeze_model=False).frozen) is False


def test_augment_policy():
    scratch = augment_policy(None, pretrained=False)
    assert scratch.on is False and "augment=true" in scratch.reason  # the message says how to turn it on
    assert augment_policy(None, pretrained=True).on is True  # arcgis.learn's default
    assert augment_policy(True, pretrained=False).on is True  # given wins either way
    assert augment_policy(False, pretrained=True).on is False


@pytest.mark.parametrize("factor", [0.1, 1.0])
def test_backbone_group_trains_at_its_share_of_the_rate(tmp_path, factor):
    path = tmp_path / "c.pt"
    _, result, _ = run(
        family(),
        FitConfig(
            max_epochs=1, batch_size=8, learning_rate=0.02, checkpoint_path=path, backbone=BackbonePolicy(False, factor)
        ),
    )
    groups = load_checkpoint(path)["stepper"]["optimizer"]["param_groups"]
    assert [g["max_lr"] for g in groups] == pytest.approx([0.02 * factor, 0.02])  # backbone, head
    assert result.backbone_learning_rate == pytest.approx(0.02 * factor)


def test_warmup_share_sets_where_the_rate_peaks(tmp_path):
    path = tmp_path / "c.pt"
    run(family(), FitConfig(max_epochs=4, batch_size=8, learning_rate=0.02, checkpoint_path=path, warmup_share=0.25))
    scheduler = load_checkpoint(path)["stepper"]["scheduler"]
    assert scheduler["total_steps"] == 24 and scheduler["_schedule_phases"][0]["end_step"] == pytest.approx(5.0)


def test_early_stopping_restores_best_epoch():
    fam = family(scripted=[1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    saved = {}
    original = fam.validate

    def validate(model, loader, device):  # remember the weights of each epoch
        out = original(model, loader, device)
        saved[fam.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return out

    fam.validate = validate
    model, result, reporter = run(fam, FitConfig(max_epochs=6, batch_size=8, learning_rate=0.01, patience=2))
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 2
    assert all(torch.equal(saved[2][k], v) for k, v in model.state_dict().items())
    assert [e["best"] for e in reporter.events if e["type"] == "epoch"] == [True, True, False, False]


def test_monitor_metric_is_maximised_and_min_delta_counts():
    fam = family(scripted=[0.1] * 4)
    _, result, _ = run(
        fam,
        FitConfig(
            max_epochs=4, batch_size=8, learning_rate=0.05, monitor="accuracy", stop_training=False, min_delta=0.0
        ),
    )
    assert result.monitor == "accuracy" and result.best_score == max(h["accuracy"] for h in result.history)
    # As fastai's callbacks (arcgis.learn): improving by less than min_delta keeps the epoch as the best but
    # counts against early stopping's patience.
    _, flat, reporter = run(
        family(scripted=[1.0, 0.9996, 0.9993, 0.9990]),
        FitConfig(max_epochs=4, batch_size=8, learning_rate=0.01, patience=2, min_delta=0.001),
    )
    assert flat.best_epoch == 3 and flat.best_valid_loss == 0.9993 and flat.stopped_early and flat.epochs_run == 3
    assert [e["best"] for e in reporter.events if e["type"] == "epoch"] == [True, True, True]


def test_unknown_monitor_falls_back_to_valid_loss():
    _, result, reporter = run(family(), FitConfig(max_epochs=1, batch_size=8, learning_rate=0.01, monitor="dice"))
    assert result.monitor == "valid_loss"
    assert any("monitor 'dice'" in e.get("text", "") for e in reporter.events)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = {"max_epochs": 4, "batch_size": 8, "learning_rate": 0.02, "stop_training": False}
    straight_model, straight, _ = run(family(), FitConfig(**cfg))

    class StopAfterFirstCheckpoint(ListReporter):
        # Ask on the main thread's epoch-1 event: the checkpoint event comes from the writer thread and may
        # land after epoch 2 has already trained on a loaded machine. The engine waits for the pending write
        # before it stops, so the epoch-1 checkpoint is on disk either way.
        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "epoch" and fields["epoch"] == 1:
                self.request_cancel()

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(StopRequested) as stop:
        run(family(), FitConfig(**cfg, checkpoint_path=path), StopAfterFirstCheckpoint())
    assert stop.value.exit_code == ExitCode.CANCELLED and path.is_file()
    resumed_model, resumed, reporter = run(family(), FitConfig(**cfg, checkpoint_path=path))
    assert resumed.resumed_from_epoch == 1
    assert [e["epoch"] for e in reporter.events if e["type"] == "epoch"] == [2, 3, 4]
    assert [h["valid_loss"] for h in resumed.history] == [h["valid_loss"] for h in straight.history]
    assert all(torch.equal(v, resumed_model.state_dict()[k]) for k, v in straight_model.state_dict().items())


def test_checkpoint_of_another_configuration_is_ignored(tmp_path):
    path = tmp_path / "checkpoint.pt"
    run(
        family(),
        FitConfig(max_epochs=1, batch_size=8, learning_rate=0.01, checkpoint_path=path, fingerprint={"job": "a"}),
    )
    _, result, reporter = run(
        family(),
        FitConfig(max_epochs=1, batch_size=8, learning_rate=0.01, checkpoint_path=path, fingerprint={"job": "b"}),
    )
    assert result.resumed_from_epoch == 0
    assert any("different configuration" in e.get("text", "") for e in reporter.events)


def test_cancel_is_honoured_at_a_batch_boundary():
    reporter = ListReporter()
    reporter.request_cancel()
    with pytest.raises(StopRequested) as stop:
        run(family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=0.01), reporter)
    assert stop.value.exit_code == ExitCode.CANCELLED
    assert not [e for e in reporter.events if e["type"] == "epoch"]


def test_nan_loss_is_reported_as_such():
    with pytest.raises(NaNLossError, match="learning_rate"):
        run(family(nan_at=3), FitConfig(max_epochs=2, batch_size=8, learning_rate=0.01))


def test_progress_and_checkpoint_events(tmp_path):
    _, result, reporter = run(
        family(), FitConfig(max_epochs=2, batch_size=8, learning_rate=0.01, checkpoint_path=tmp_path / "c.pt")
    )
    kinds = [e["type"] for e in reporter.events]
    assert kinds.count("epoch") == 2 and kinds.count("checkpoint") == 2
    progress = [e["percent"] for e in reporter.events if e["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(95.0)
    assert all(math.isfinite(loss) for loss in result.batch_losses) and len(result.batch_losses) == 2 * 6


@pytest.mark.parametrize("serialize_now", [False, True])
def test_checkpoint_writes_the_best_copy_once_and_snapshots_the_rest(tmp_path, serialize_now):
    """An improving epoch's checkpoint takes its weights from the best-epoch copy (no second copy); a later
    epoch writes the live weights beside the best ones as they were at submit, though training goes on changing
    them (copied first, or serialised at once when they are CPU tensors)."""
    from gpjobs.training.checkpoint import CheckpointWriter
    from gpjobs.training.engine.state import TrainState

    model = nn.Linear(2, 1)
    stepper = SimpleNamespace(state_dict=lambda: {"moments": [model.weight.detach()]})
    state = TrainState(monitor="valid_loss", lr=1e-3)
    state.end_epoch({"epoch": 1, "valid_loss": 1.0}, {}, 1.0, model, 0.0)
    first = state.checkpoint({}, model, stepper)
    assert first["model"] is state.best_state and first["best_state"] is None
    assert state.frozen_entries() == ("best_state", "model")
    best_weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state.end_epoch({"epoch": 2, "valid_loss": 2.0}, {}, 2.0, model, 0.0)  # worse: epoch 1 stays the best
    assert state.frozen_entries() == ("best_state",)
    written: list[int] = []
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", written.append, serialize_now=serialize_now)
    writer.submit(2, state.checkpoint({}, model, stepper), frozen=state.frozen_entries())
    live_weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the checkpoint is written
    writer.wait()
    assert written == [2] and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(saved["model"]["weight"], live_weight)
    assert torch.equal(saved["stepper"]["moments"][0], live_weight)
    assert torch.equal(saved["best_state"]["weight"], best_weight)
    # written without torch.save's per-record CRC32 (torch.load never reads it; it doubled the cost of writing)
    with zipfile.ZipFile(tmp_path / "checkpoint.pt") as archive:
        assert {record.CRC for record in archive.infolist()} == {0}
    assert torch.utils.serialization.config.save.compute_crc32  # other saves keep torch's default


def test_detectors_keep_the_epoch_with_the_best_validation_ap_by_default():
    from gpjobs.catalog import MODEL_TYPES

    detectors = [m for m in MODEL_TYPES.values() if m.task in ("detection", "instance")]
    assert {"FASTERRCNN", "YOLOV3", "MASKRCNN", "SSD", "RETINANET"} <= {m.name for m in detectors}
    assert {m.arguments["monitor"].default for m in detectors} == {"average_precision"}
    assert MODEL_TYPES["UNET"].arguments["monitor"].default == "valid_loss"
