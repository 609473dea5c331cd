"""One training loop for every model type (models.md §2, with the improvements §2.10 lists).

AdamW (wd 0.01) + one-cycle (fastai's shape), discriminative LR (backbone lr/10), LR range test when no
learning rate is given, early stopping on a monitored value (auto mode), the best epoch's weights kept
and restored at the end, a full-state checkpoint written atomically at each epoch end (resume continues
exactly where it stopped: every epoch reseeds all RNGs from (seed, epoch)), mixed precision on CUDA,
cancellation at batch boundaries, NaN loss and out-of-memory reported as such.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpjobs.training.checkpoint import CheckpointWriter, cpu_state_dict, load_checkpoint, rng_state, set_rng_state
from gpjobs.training.events import Reporter
from gpjobs.training.lr_finder import lr_range_test
from gpjobs.training.metrics import scalar_metrics
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.multi_network import MultiNetworkStepper, is_multi_network

TRAIN_SHARE = 95.0  # progress percent at the end of training; packaging takes the rest
LR_FIND_SHARE = 5.0  # the part of TRAIN_SHARE the learning-rate range test takes when it runs


class NaNLossError(RuntimeError):
    """The loss became NaN or infinite."""


class OutOfMemory(RuntimeError):
    """The device (or host) ran out of memory."""


@dataclass
class FitConfig:
    max_epochs: int = 20
    batch_size: int = 2
    learning_rate: float | None = None  # None or <= 0: LR range test
    stop_training: bool = True
    monitor: str = "valid_loss"
    patience: int = 5
    min_delta: float = 0.001
    seed: int = 42
    device: str = "cpu"
    mixed_precision: bool = True
    num_workers: int = 0
    checkpoint_path: Path | None = None
    resume: bool = True
    fingerprint: dict[str, Any] = field(default_factory=dict)  # a checkpoint of another job is not resumed
    lr_find_iterations: int = 100
    # Gradient-norm clipping: None = the `clip_grad_norm` argument, else the family's default; 0 = off.
    clip_grad_norm: float | None = None


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    batch_losses: list[float]
    best_epoch: int
    best_metrics: dict[str, Any]
    best_valid_loss: float
    best_score: float
    monitor: str
    learning_rate: float
    lr_find: dict[str, Any] | None
    stopped_early: bool
    epochs_run: int
    resumed_from_epoch: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Trainer:
    """Runs `fit` for one family/model/data; separate object so tests can drive the pieces."""

    def __init__(self, family: ModelFamily, model: torch.nn.Module, data: Any, config: FitConfig,
                 reporter: Reporter) -> None:
        self.family, self.model, self.data, self.config, self.reporter = family, model, data, config, reporter
        self.device = torch.device(config.device)
        self.use_amp = self.device.type == "cuda" and config.mixed_precision
        self.amp_dtype = (torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.sync_every = 1 if self.device.type == "cpu" else 25  # host syncs cost on CUDA; batch them
        self.clip = self.clip_norm()

    def clip_norm(self) -> float:
        """Max gradient norm per step (0: no clipping). Detectors clip by default: their box/class losses
        spike in the first steps of a random-initialised network and one spike can wreck the Adam moments."""
        value = self.config.clip_grad_norm
        if value is None:
            value = (getattr(self.family, "args", None) or {}).get("clip_grad_norm")
        if value is None:
            value = getattr(self.family, "default_clip_grad_norm", None)
        return float(value or 0.0)

    # --- pieces ---

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        backbone = self.family.backbone_parameters(self.model)
        head = self.family.head_parameters(self.model)
        groups = [{"params": backbone, "lr": lr / 10}, {"params": head, "lr": lr}]
        return [g for g in groups if g["params"]]

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.param_groups(lr), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(1, self.config.max_epochs * steps_per_epoch), pct_start=0.3, div_factor=25.0,
            final_div_factor=1e4, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
            max_momentum=0.95)

    def loaders(self):
        pin = self.device.type == "cuda"
        train, valid = self.data.loaders(self.config.batch_size, num_workers=self.config.num_workers,
                                         pin_memory=pin)
        custom = self.family.train_loader(self.data, self.config.batch_size,
                                          num_workers=self.config.num_workers, pin_memory=pin)
        return (custom or train), valid

    def seed_epoch(self, epoch: int, loader: Any) -> None:
        seed = self.config.seed * 1000 + epoch
        seed_everything(seed)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
        sampler_gen = getattr(getattr(loader, "sampler", None), "generator", None)
        if isinstance(sampler_gen, torch.Generator):
            sampler_gen.manual_seed(seed)

    def find_lr(self, train_loader: Any) -> dict[str, Any]:
        self.reporter.say("info", "learning_rate not set: running the learning-rate range test")
        self.reporter.progress(0.0, "lr_find")
        seed_everything(self.config.seed)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

        def step(batch: Any) -> torch.Tensor:
            with self.autocast():
                loss = self.family.training_loss(self.model, batch, self.device)
            scaler.scale(loss).backward()
            return loss

        class _Opt:  # route optimizer.step through the grad scaler
            def __init__(inner, opt):
                inner.opt, inner.param_groups = opt, opt.param_groups

            def zero_grad(inner, set_to_none=True):
                inner.opt.zero_grad(set_to_none=set_to_none)

            def step(inner):
                scaler.step(inner.opt)
                scaler.update()

        self.model.train()
        last = [time.perf_counter()]

        def on_step(i: int, total: int) -> None:  # keep the poller's progress moving during the sweep
            if time.perf_counter() - last[0] > 2.0:
                last[0] = time.perf_counter()
                self.reporter.progress(LR_FIND_SHARE * (i + 1) / total, "lr_find")

        curve = lr_range_test(self.model, lambda: _Opt(self.make_optimizer(1e-7)), step, lambda: train_loader,
                              num_it=self.config.lr_find_iterations, check_stop=self.reporter.check_stop,
                              on_step=on_step)
        lrs, losses = curve["lrs"], curve["losses"]
        best_i = min(range(len(losses)), key=losses.__getitem__)
        self.reporter.say("info", (
            f"LR finder: {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e}; lowest smoothed loss "
            f"{losses[best_i]:.4f} at {lrs[best_i]:.1e}; chosen learning rate {curve['chosen']:.4e} "
            f"(backbone {curve['chosen'] / 10:.4e})"))
        return curve

    # --- the loop ---

    def fit(self) -> FitResult:
        cfg, reporter, family, model = self.config, self.reporter, self.family, self.model
        monitor = cfg.monitor or "valid_loss"
        minimise = "loss" in monitor
        model.to(self.device)
        train_loader, valid_loader = self.loaders()
        steps = len(train_loader)
        if steps == 0:
            raise ValueError("no training batches: fewer training chips than batch_size")

        state = load_checkpoint(cfg.checkpoint_path) if (cfg.checkpoint_path and cfg.resume) else None
        if state is not None and state.get("fingerprint") != cfg.fingerprint:
            reporter.say("warning", "a checkpoint from a different configuration was found and ignored")
            state = None

        lr_curve = None
        if state is not None:
            lr = float(state["lr"])
            lr_curve = state.get("lr_find")
        elif cfg.learning_rate and cfg.learning_rate > 0:
            lr = float(cfg.learning_rate)
        elif is_multi_network(family):
            lr = float(getattr(family, "default_learning_rate", 2e-4))
            reporter.say("info", f"learning_rate not set: {family.model_type.name} trains at {lr:.1e} (the LR range "
                                 "test needs a loss with a minimum; adversarial losses have none)")
        else:
            lr_curve = self.find_lr(train_loader)
            lr = lr_curve["chosen"]
        # The sweep (run now or before a resume) owns the first LR_FIND_SHARE percent of the bar.
        start_share = LR_FIND_SHARE if lr_curve is not None else 0.0
        train_share = TRAIN_SHARE - start_share

        optimizer = self.make_optimizer(lr)
        scheduler = self.make_scheduler(optimizer, steps)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        multi = (MultiNetworkStepper(family, model, lr, cfg.max_epochs * steps, self.device, scaler, self.autocast)
                 if is_multi_network(family) else None)  # several networks, one optimizer each
        history: list[dict[str, Any]] = []
        batch_losses: list[float] = []
        best_state = None
        best_score = math.inf if minimise else -math.inf
        best_epoch, best_metrics, best_valid_loss = 0, {}, math.nan
        bad_epochs, start_epoch, stopped = 0, 0, False
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if multi is not None:
                multi.load_state_dict(state["multi"])
            set_rng_state(state["rng"])
            history, batch_losses = state["history"], state["batch_losses"]
            best_state = state["best_state"] if state["best_state"] is not None else state["model"]
            best_score, best_epoch = state["best_score"], state["best_epoch"]
            best_metrics, best_valid_loss = state["best_metrics"], state["best_valid_loss"]
            bad_epochs, start_epoch, stopped = state["bad_epochs"], state["epoch"], state["stopped"]
            monitor = state.get("monitor", monitor)
            minimise = "loss" in monitor
            reporter.say("info", f"resumed from the checkpoint after epoch {start_epoch}")

        reporter.say("info", (f"Training {family.model_type.name} ({family.backbone}) for up to {cfg.max_epochs} "
                              f"epochs, {steps} batches of {cfg.batch_size} per epoch, learning rate {lr:.4e} "
                              f"(backbone {lr / 10:.4e}), on {self.device}"
                              + (f" with {str(self.amp_dtype).split('.')[-1]} autocast" if self.use_amp else "")))
        epoch = start_epoch
        last_progress = time.perf_counter()
        writer = (CheckpointWriter(cfg.checkpoint_path, lambda e: reporter.emit("checkpoint", epoch=e))
                  if cfg.checkpoint_path else None)
        try:
            while not stopped and epoch < cfg.max_epochs:
                epoch += 1
                started = time.perf_counter()
                self.seed_epoch(epoch, train_loader)
                model.train()
                pending: list[torch.Tensor] = []
                for i, batch in enumerate(train_loader):
                    reporter.check_stop()
                    if multi is not None:  # the family steps its own optimizers (multi_network.py)
                        pending.append(multi.step(batch))
                        if len(pending) >= self.sync_every:
                            self._flush(pending, batch_losses, epoch, i)
                        if time.perf_counter() - last_progress > 2.0:
                            last_progress = time.perf_counter()
                            reporter.progress(start_share + train_share * ((epoch - 1) + (i + 1) / steps)
                                              / cfg.max_epochs, "train", epoch=epoch, max_epochs=cfg.max_epochs)
                        continue
                    with self.autocast():
                        loss = family.training_loss(model, batch, self.device)
                    pending.append(loss.detach())
                    if len(pending) >= self.sync_every:
                        self._flush(pending, batch_losses, epoch, i)
                    scaler.scale(loss).backward()
                    if self.clip > 0:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
                        torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if time.perf_counter() - last_progress > 2.0:
                        last_progress = time.perf_counter()
                        reporter.progress(start_share + train_share * ((epoch - 1) + (i + 1) / steps) / cfg.max_epochs,
                                          "train", epoch=epoch, max_epochs=cfg.max_epochs)
                self._flush(pending, batch_losses, epoch, steps)
                train_loss = float(np.mean(batch_losses[-steps:])) if batch_losses else math.nan
                reporter.check_stop()
                model.eval()
                with torch.no_grad(), self.autocast():
                    valid_loss, metrics = family.validate(model, valid_loader, self.device)
                model.train()
                if not math.isfinite(valid_loss):
                    raise NaNLossError(f"the validation loss is {valid_loss} after epoch {epoch}")
                scalars = scalar_metrics(metrics)
                if monitor != "valid_loss" and monitor not in scalars:
                    reporter.say("warning", f"monitor '{monitor}' is not a metric of {family.model_type.name} "
                                            f"(available: valid_loss, {', '.join(scalars)}); using valid_loss")
                    monitor, minimise = "valid_loss", True
                    best_score = valid_loss + 1.0 if best_state is None else best_valid_loss
                score = valid_loss if monitor == "valid_loss" else scalars[monitor]
                improved = (score < best_score - cfg.min_delta) if minimise else (score > best_score + cfg.min_delta)
                if best_state is None or improved:
                    best_state, best_score, best_epoch = cpu_state_dict(model), score, epoch
                    best_metrics, best_valid_loss, bad_epochs = metrics, valid_loss, 0
                else:
                    bad_epochs += 1
                seconds = time.perf_counter() - started
                history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss, **scalars,
                                **(multi.epoch_means() if multi is not None else {}), "seconds": round(seconds, 3)})
                # The server (and the console reporter) render this as "Epoch 3/10: train_loss ..." lines.
                reporter.emit("epoch", epoch=epoch, max_epochs=cfg.max_epochs, train_loss=train_loss,
                              valid_loss=valid_loss, metrics=scalars, seconds=round(seconds, 3),
                              best=best_epoch == epoch)
                if cfg.stop_training and bad_epochs >= cfg.patience and epoch < cfg.max_epochs:
                    stopped = True
                    reporter.say("info", f"Early stopping: {monitor} did not improve by {cfg.min_delta} for "
                                         f"{cfg.patience} epochs; best epoch {best_epoch} ({monitor} {best_score:.4f})")
                if writer is not None:
                    writer.submit(epoch, {
                        "fingerprint": cfg.fingerprint, "epoch": epoch, "lr": lr, "lr_find": lr_curve,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                        "multi": multi.state_dict() if multi is not None else None,
                        "history": history, "batch_losses": batch_losses,
                        # the best epoch is usually this one: don't write the same weights twice
                        "best_state": None if best_epoch == epoch else best_state,
                        "best_score": best_score, "best_epoch": best_epoch, "best_metrics": best_metrics,
                        "best_valid_loss": best_valid_loss, "bad_epochs": bad_epochs, "stopped": stopped,
                        "monitor": monitor})
                reporter.progress(start_share + train_share * epoch / cfg.max_epochs, "train", epoch=epoch,
                                  max_epochs=cfg.max_epochs)
        except (RuntimeError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or _is_oom(exc):
                raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from exc
            raise
        finally:
            if writer is not None:  # the last epoch's checkpoint is on disk before we return or fail
                writer.wait()
        if best_state is not None:
            model.load_state_dict(best_state)
            if best_epoch != epoch:
                reporter.say("info", f"Restored the best epoch ({best_epoch}, {monitor} {best_score:.4f})")
        return FitResult(history=history, batch_losses=batch_losses, best_epoch=best_epoch,
                         best_metrics=best_metrics, best_valid_loss=best_valid_loss, best_score=best_score,
                         monitor=monitor, learning_rate=lr, lr_find=lr_curve, stopped_early=stopped,
                         epochs_run=epoch, resumed_from_epoch=start_epoch)

    def _flush(self, pending: list[torch.Tensor], batch_losses: list[float], epoch: int, index: int) -> None:
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        pending.clear()
        for value in values:
            if not math.isfinite(value):
                raise NaNLossError(
                    f"the training loss became {value} in epoch {epoch} (batch {index + 1}); lower learning_rate, "
                    "check the labels, or use a smaller batch_size")
        batch_losses.extend(values)


def fit(family: ModelFamily, model: torch.nn.Module, data: Any, config: FitConfig, reporter: Reporter) -> FitResult:
    """Train `model` (in place) and return the run's record; the model ends with the best epoch's weights."""
    return Trainer(family, model, data, config, reporter).fit()
