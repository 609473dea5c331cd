"""The engine's CUDA paths, through real tiny jobs on cuda:0 (marked `gpu`: skipped without a CUDA device).

Mixed precision: autocast in bfloat16 where the GPU supports it, else float16 with the GradScaler (forced here
by reporting no bfloat16 support), `mixed_precision=false` turning both off; the multi-network (GAN) hook
under float16, stepping each optimizer through the one scaler; a package trained on the GPU predicts on the
CPU. The probes wrap the family's own methods, so they see what the engine hands the family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gpjobs.training.models import family_for
from gpjobs.training.package import load_model, open_package
from tests.builders.exports import write_classified_tiles, write_labeled_tiles, write_pascal_voc, write_pix2pix
from tests.training.helpers import train_and_package

pytestmark = pytest.mark.gpu


def _first_tensor(batch: Any) -> torch.Tensor | None:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return first if isinstance(first, torch.Tensor) else None


@pytest.fixture
def probe(monkeypatch):
    """probe(model_type, *methods): each time the family of `model_type` runs one of `methods` (training_loss,
    validate, training_step), records the autocast state, the device it was asked to use and, for a batch that
    arrives on the CPU, whether it is in pinned memory."""
    seen: dict[str, list[dict[str, Any]]] = {}

    def install(model_type: str, *methods: str) -> dict[str, list[dict[str, Any]]]:
        family = family_for(model_type)
        for name in methods:
            original = getattr(family, name)
            seen[name] = []

            def wrapper(self, model, batch_or_loader, device, *rest, _original=original, _name=name):
                first = _first_tensor(batch_or_loader) if _name != "validate" else None
                seen[_name].append(
                    {
                        "enabled": torch.is_autocast_enabled("cuda"),
                        "dtype": torch.get_autocast_dtype("cuda"),
                        "device": torch.device(device).type,
                        "pinned": first.is_pinned() if first is not None and not first.is_cuda else None,
                    }
                )
                return _original(self, model, batch_or_loader, device, *rest)

            monkeypatch.setattr(family, name, wrapper)
        return seen

    return install


@pytest.fixture
def scaler_steps(monkeypatch):
    """Every GradScaler.step: (enabled, scale before the step, id of the optimizer)."""
    steps: list[tuple[bool, float, int]] = []
    original = torch.amp.GradScaler.step

    def step(self, optimizer, *args, **kwargs):
        steps.append((self.is_enabled(), self.get_scale() if self.is_enabled() else 1.0, id(optimizer)))
        return original(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    return steps


@pytest.fixture
def no_bfloat16(monkeypatch):
    """The GPU 'lacks' bfloat16: the engine falls back to float16 autocast with loss scaling."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: False)


def test_classifier_trains_under_autocast_on_cuda_and_predicts_on_the_cpu(tmp_path, probe, scaler_steps):
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    seen = probe("FEATURE_CLASSIFIER", "training_loss", "validate")
    folder = write_labeled_tiles(tmp_path, n=16, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        max_epochs=2,
        freeze_model=False,
        device="cuda:0",
    )
    # CUDA batches come from pinned host memory (the copy to the GPU can then overlap the compute)
    assert seen["training_loss"] and all(
        s == {"enabled": True, "dtype": expected, "device": "cuda", "pinned": True} for s in seen["training_loss"]
    )
    assert len(seen["validate"]) == len(run.epochs) == 2
    assert all(s["enabled"] and s["dtype"] == expected for s in seen["validate"])
    # loss scaling only with float16 (bfloat16 has float32's range)
    assert scaler_steps and all(enabled == (expected == torch.float16) for enabled, _, _ in scaler_steps)
    dtype_name = str(expected).split(".")[-1]
    assert any("on cuda:0" in t and f"with {dtype_name} autocast" in t for t in run.messages), run.messages
    assert all(np.isfinite(e["train_loss"]) and np.isfinite(e["valid_loss"]) for e in run.epochs)
    with open_package(run.package) as package:  # trained on the GPU, packaged for any machine
        family, model = load_model(package)
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
        prediction = family.predict(model, torch.rand(1, 3, 32, 32))[0]
    assert prediction["class_name"] in {c["Name"] for c in run.emd["Classes"]}


def test_float16_autocast_steps_through_the_grad_scaler(tmp_path, probe, scaler_steps, no_bfloat16):
    seen = probe("UNET", "training_loss")
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "UNET",
        backbone_model="RESNET18",
        max_epochs=4,
        batch_size=4,
        stop_training=False,
        device="cuda:0",
    )
    assert seen["training_loss"] and all(s["enabled"] and s["dtype"] == torch.float16 for s in seen["training_loss"])
    # one scaled step per training batch, at a real (finite, positive) loss scale
    assert len(scaler_steps) == len(seen["training_loss"])
    assert all(enabled and 0 < scale < float("inf") for enabled, scale, _ in scaler_steps)
    assert any("with float16 autocast" in t for t in run.messages), run.messages
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert 0.0 <= run.metrics["accuracy"] <= 1.0 and np.isfinite(run.metrics["valid_loss"])


def test_mixed_precision_false_trains_in_float32_on_cuda(tmp_path, probe, scaler_steps):
    seen = probe("UNET", "training_loss")
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "UNET",
        backbone_model="RESNET18",
        max_epochs=1,
        device="cuda:0",
        arguments={"mixed_precision": False},
    )
    assert seen["training_loss"] and not any(s["enabled"] for s in seen["training_loss"])
    assert all(s["device"] == "cuda" for s in seen["training_loss"])
    assert scaler_steps and not any(enabled for enabled, _, _ in scaler_steps)
    assert not any("autocast" in t for t in run.messages) and any("on cuda:0" in t for t in run.messages)


def test_gan_hook_steps_both_optimizers_through_the_scaler_in_float16(tmp_path, probe, scaler_steps, no_bfloat16):
    seen = probe("PIX2PIX", "training_step")
    folder = write_pix2pix(tmp_path, n=12, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "PIX2PIX",
        max_epochs=2,
        batch_size=4,
        stop_training=False,
        learning_rate=0.002,
        device="cuda:0",
        arguments={"n_gen_filters": 8, "n_dscr_filters": 8},
    )
    batches = len(seen["training_step"])
    assert batches and all(s["enabled"] and s["dtype"] == torch.float16 for s in seen["training_step"])
    # the discriminator's and the generator's optimizer, each once per batch, both loss-scaled
    assert len(scaler_steps) == 2 * batches and len({opt for _, _, opt in scaler_steps}) == 2
    assert all(enabled and 0 < scale < float("inf") for enabled, scale, _ in scaler_steps)
    history = run.packaged_json("training_log.json")["history"]
    assert all(np.isfinite(h[k]) for h in history for k in ("train_d", "train_g_gan", "train_l1"))
    assert 0 < run.metrics["PSNR"] < 100
    with open_package(run.package) as package:
        family, model = load_model(package)
        image = family.predict(model, torch.rand(1, 3, 32, 32))[0]["_image"]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("model_type", ["YOLOV3", "FASTERRCNN"])
def test_detectors_validate_and_package_under_autocast_on_cuda(tmp_path, probe, model_type):
    # the detectors' validation scores each epoch's boxes (AP monitor): under bfloat16 autocast that once failed
    # in YOLOV3 with "unsupported ScalarType BFloat16" before the first epoch ended
    seen = probe(model_type, "validate")
    folder = write_pascal_voc(tmp_path, n=16, size=64)
    run = train_and_package(
        tmp_path,
        folder,
        model_type,
        backbone_model=None if model_type == "YOLOV3" else "RESNET18",
        max_epochs=2,
        batch_size=4,
        stop_training=False,
        device="cuda:0",
    )
    assert len(seen["validate"]) == 2 and all(s["enabled"] and s["device"] == "cuda" for s in seen["validate"])
    assert 0.0 <= run.metrics["average_precision"] <= 1.0
    with open_package(run.package) as package:
        family, model = load_model(package)
        found = family.predict(model, torch.rand(1, 3, 64, 64))[0]
    boxes = np.asarray(found["boxes"], np.float64).reshape(-1, 4)
    assert len(boxes) == len(found["scores"]) == len(found["class_values"]) and np.isfinite(boxes).all()
