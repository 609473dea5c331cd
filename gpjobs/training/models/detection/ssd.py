"""SSD (arcgis.learn SingleShotDetector): grids x zooms x ratios anchors over any classification backbone."""

from __future__ import annotations

from typing import Any

from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.anchors import auto_ssd_grids
from gpjobs.training.models.detection.common import DetectionFamily, training_box_sizes
from gpjobs.training.models.detection.ssd_net import SSDNet


class SSDFamily(DetectionFamily):
    emd_model_configuration = "_DynamicSSD"
    detect_thresh = 0.2

    def attach_data(self, data: Any) -> None:
        self.box_sizes = training_box_sizes(data)
        if not self.args.get("grids"):
            grids = auto_ssd_grids(self.box_sizes, self.chip, seed=int(self.args.get("seed") or 0))
            self.say("info", f"SSD grids chosen from {len(self.box_sizes)} training boxes: {grids}")
            self.args["grids"] = grids

    @property
    def grids(self) -> list[int]:
        return [int(g) for g in (self.args.get("grids") or [4])]

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import DenseDetections

        return DenseDetections(model, "ssd")

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        from gpjobs.training.models.detection.deploy import dense_spec

        return {**super().inference_spec(network), **dense_spec("ssd")}

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        factor = self.args.get("location_loss_factor")
        if factor is not None and not 0.0 <= float(factor) <= 1.0:
            from gpjobs.catalog import ArgumentError

            raise ArgumentError(f"location_loss_factor must be between 0 and 1, got {factor}")
        return SSDNet(
            body,
            self.num_classes,
            self.chip,
            self.grids,
            list(self.args.get("zooms") or [1.0]),
            [list(r) for r in (self.args.get("ratios") or [[1.0, 1.0]])],
            drop=float(self.args.get("drop", 0.3)),
            bias=float(self.args.get("bias", -4.0)),
            focal=bool(self.args.get("focal_loss")),
            location_factor=None if factor is None else float(factor),
        )

    def extra_parameters(self) -> dict[str, Any]:
        return {
            "grids": self.grids,
            "zooms": list(self.args.get("zooms") or [1.0]),
            "ratios": [list(r) for r in (self.args.get("ratios") or [[1.0, 1.0]])],
            "drop": self.args.get("drop"),
            "bias": self.args.get("bias"),
            "focal_loss": bool(self.args.get("focal_loss")),
            "location_loss_factor": self.args.get("location_loss_factor"),
            "ssd_version": int(self.args.get("ssd_version") or 2),
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        params = self.extra_parameters()
        fields.update(
            {
                "Grids": params["grids"],
                "Zooms": params["zooms"],
                "Ratios": params["ratios"],
                "SSDVersion": params["ssd_version"],
            }
        )
        return fields
