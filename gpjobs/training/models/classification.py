"""FEATURE_CLASSIFIER: one class per chip (Labeled_Tiles, Imagenet) or several (MultiLabeled_Tiles)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.losses import mixup
from gpjobs.training.metrics import Confusion, classification_metrics, multilabel_metrics
from gpjobs.training.models.base import ModelFamily


class ConcatPool(nn.Module):
    """fastai AdaptiveConcatPool2d: average and max pooling side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1).flatten(1)


def classifier_head(cin: int, num_classes: int) -> nn.Sequential:
    """fastai create_head: concat pool, BN, dropout 0.25, 512 hidden, BN, dropout 0.5, linear."""
    return nn.Sequential(
        ConcatPool(),
        nn.BatchNorm1d(2 * cin),
        nn.Dropout(0.25),
        nn.Linear(2 * cin, 512),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )


class FeatureClassifierNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head(feats[next(reversed(feats))])


class FeatureClassifierFamily(ModelFamily):
    emd_model_type = "ObjectClassification"
    emd_model_configuration = "_FeatureClassifier"
    inference_function = "GpjobsObjectClassifier.py"
    default_monitor = "valid_loss"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.multilabel = self.info.task == "multilabel"
        self.class_names = [c.name for c in self.info.classes]
        if self.multilabel and self.args.get("oversample"):
            self.say("warning", "oversample is not available for multi-label data; ignored")

    def build(self) -> nn.Module:
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return FeatureClassifierNet(backbone, classifier_head(backbone.out_channels[-1], self.num_classes))

    # --- data ---

    def train_loader(self, data: Any, batch_size: int, **loader_kw: Any):
        """oversample=true: draw training chips with probability 1/class frequency (single-label only)."""
        if not self.args.get("oversample") or self.multilabel:
            return None
        from torch.utils.data import DataLoader, WeightedRandomSampler

        values = [
            r.value if r.value is not None else (r.objects[0][0] if r.objects else None) for r in data.train.records
        ]
        counts: dict[Any, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        weights = [1.0 / counts[v] for v in values]
        generator = torch.Generator().manual_seed(int(self.args.get("seed") or 42))
        sampler = WeightedRandomSampler(weights, num_samples=len(values), replacement=True, generator=generator)
        self.say(
            "info",
            "oversample: training chips drawn by inverse class frequency "
            + ", ".join(f"{k}={n}" for k, n in sorted(counts.items(), key=lambda kv: str(kv[0]))),
        )
        return DataLoader(
            data.train, batch_size=batch_size, sampler=sampler, drop_last=len(values) >= 2 * batch_size, **loader_kw
        )

    # --- training ---

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss."""
        logits = logits.float()
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(1)
        return F.cross_entropy(logits, target, reduction="none")

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, target = batch
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if self.args.get("mixup") and images.shape[0] > 1:
            mixed, lam, perm = mixup(images)
            logits = model(mixed)
            if self.multilabel:  # fastai stack_y=False: mix the targets
                mixed_target = lam[:, None] * target + (1 - lam[:, None]) * target[perm]
                return self._loss(logits, mixed_target).mean()
            return (lam * self._loss(logits, target) + (1 - lam) * self._loss(logits, target[perm])).mean()
        return self._loss(model(images), target).mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        total, count = torch.zeros((), device=device), 0
        k = self.num_classes
        confusion = Confusion(k, device)
        tp = torch.zeros(k, device=device)
        fp, fn = tp.clone(), tp.clone()
        correct = torch.zeros((), device=device)
        for images, target in loader:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            logits = model(images)
            total += self._loss(logits, target).sum()
            count += images.shape[0]
            if self.multilabel:
                pred = logits.sigmoid() > 0.5
                truth = target > 0.5
                tp += (pred & truth).sum(0)
                fp += (pred & ~truth).sum(0)
                fn += (~pred & truth).sum(0)
                correct += (pred == truth).sum()
            else:
                confusion.update(target, logits.argmax(1))
        if self.multilabel:
            metrics = multilabel_metrics(tp.cpu(), fp.cpu(), fn.cpu(), int(correct), count * k, self.class_names)
        else:
            metrics = classification_metrics(confusion.result(), self.class_names)
        return float(total) / max(count, 1), metrics

    # --- inference ---

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        logits = model(images).float()
        results = []
        if self.multilabel:
            for probs in logits.sigmoid().cpu():
                present = [i for i, p in enumerate(probs.tolist()) if p > 0.5]
                results.append(
                    {
                        "classes": [self.class_names[i] for i in present],
                        "class_values": [self.info.classes[i].value for i in present],
                        "scores": {n: round(float(p), 6) for n, p in zip(self.class_names, probs)},
                    }
                )
            return results
        for probs in logits.softmax(1).cpu():
            best = int(probs.argmax())
            results.append(
                {
                    "class_value": self.info.classes[best].value,
                    "class_name": self.class_names[best],
                    "score": round(float(probs[best]), 6),
                    "scores": {n: round(float(p), 6) for n, p in zip(self.class_names, probs)},
                }
            )
        return results

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """forward() gives one logit per class: softmax (sigmoid when multi-label) in the PRF."""
        return {
            "output": "labels",
            "multilabel": self.multilabel,
            "index_values": [int(c.value) for c in self.info.classes],
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.update(
            {
                "MetaDataMode": self.info.format,
                "CropSizeFixed": 1,
                "BlackenAroundFeature": 0,
                "ImageSpaceUsed": "MAP_SPACE",
                "IsMultiLabel": self.multilabel,
            }
        )
        if "accuracy" in metrics:
            fields["accuracy"] = f"{metrics['accuracy']:.4e}"
        if "fbeta" in metrics:
            fields["fbeta"] = f"{metrics['fbeta']:.4e}"
        if "per_class_metrics" in metrics:
            fields["per_class_metrics"] = metrics["per_class_metrics"]
        if "confusion_matrix" in metrics:
            fields["confusion_matrix"] = {"classes": self.class_names, "matrix": metrics["confusion_matrix"]}
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.training.model_card import save_classification_grid

        images, target = batch
        predictions = self.predict(model.eval(), images)
        if self.multilabel:
            truth = [",".join(n for n, t in zip(self.class_names, row.tolist()) if t > 0.5) for row in target]
            shown = [",".join(p["classes"]) for p in predictions]
        else:
            truth = [self.class_names[int(t)] for t in target]
            shown = [p["class_name"] for p in predictions]
        save_classification_grid(images, truth, shown, path)

    def extra_characteristics(self, model: nn.Module, metrics: dict[str, Any], folder: Path) -> None:
        if "confusion_matrix" in metrics:
            from gpjobs.training.model_card import save_confusion_matrix

            save_confusion_matrix(metrics["confusion_matrix"], self.class_names, folder / "confusion_matrix.png")


FAMILIES: dict[str, type[ModelFamily]] = {"FEATURE_CLASSIFIER": FeatureClassifierFamily}
