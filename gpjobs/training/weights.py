"""Pretrained backbone weights from a local directory only (nothing is ever downloaded).

Files use torchvision's names (`resnet18-f37072fd.pth`, see catalog.TORCHVISION_WEIGHT_FILES), so an
administrator can copy torchvision's own cache (`~/.cache/torch/hub/checkpoints/`) into the weights dir, or
install files with `gpjobs weights add` (which checks them first, see weights_install.py). torchvision's COCO
detectors and DeepLabV3 (catalog.TORCHVISION_COCO_WEIGHT_FILES) are loaded by pretrained.py after the model is
built; when one of them is present for a backbone whose ImageNet file is missing, missing_weights = "fail" waits
for it (`pending`) instead of failing at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpjobs.catalog import TORCHVISION_COCO_WEIGHT_FILES, TORCHVISION_WEIGHT_FILES

Say = Callable[[str, str], None]


class WeightsMissing(RuntimeError):
    """Pretrained weights were required (on_missing="fail") but could not be loaded."""


@dataclass
class WeightsPolicy:
    """Where ImageNet weights come from and what to do when they are absent.

    `outcome` records what happened for the job messages and the `.emd` key `PretrainedWeights`:
    "loaded <file>" or "none: <why>".
    """

    weights_dir: str | None = None
    on_missing: str = "random"  # "random": train from scratch and say so; "fail": fail the job
    skip_reason: str | None = None  # set when weights come from elsewhere (fine-tuning a package)
    outcome: str = "none: not requested"
    history: list[str] = field(default_factory=list)
    pending: str | None = None  # a "fail" deferred to COCO weights (pretrained.start_from_pretrained settles it)

    @classmethod
    def skip(cls, reason: str) -> WeightsPolicy:
        """A policy that never loads ImageNet weights (e.g. the weights come from a pretrained package)."""
        policy = cls(None, "random", skip_reason=reason)
        policy.outcome = f"none: {reason}"
        return policy

    def find_file(self, backbone: str) -> Path | None:
        """The local weights file for a backbone name (exact torchvision name first, then `<arch>-*.pth`)."""
        if not self.weights_dir:
            return None
        folder = Path(self.weights_dir)
        expected = TORCHVISION_WEIGHT_FILES.get(backbone.upper())
        if expected and (folder / expected).is_file():
            return folder / expected
        arch = (expected or backbone.lower()).split("-")[0].removesuffix(".pth")
        candidates = sorted(folder.glob(f"{arch}-*.pth")) + sorted(folder.glob(f"{arch}.pth"))
        return candidates[0] if candidates else None

    def _record(self, text: str, say: Say | None, level: str = "info") -> None:
        self.outcome = text
        self.history.append(text)
        if say is not None:
            say(level, f"Pretrained weights: {text}")

    def load_into(self, backbone: str, module, say: Say | None = None) -> bool:
        """Load the backbone's weights into `module` (a torchvision model with torchvision's key names).

        Returns True when weights were loaded. Missing weights either fail (WeightsMissing) or leave the
        random initialisation in place, and the outcome says which.
        """
        import torch

        if self.skip_reason is not None:
            self._record(f"none: {self.skip_reason}", say)
            return False
        path = self.find_file(backbone)
        if path is None:
            expected = TORCHVISION_WEIGHT_FILES.get(backbone.upper(), f"{backbone.lower()}.pth")
            why = (
                "no weights directory is configured"
                if not self.weights_dir
                else f"{expected} not found in {self.weights_dir}"
            )
            coco = self.coco_files_for(backbone)
            if coco:  # settled by settle_pending() once the model is built and the COCO file tried
                self.pending = (
                    f"ImageNet weights for {backbone}: {why}, and the COCO weights present "
                    f"({', '.join(coco)}) are for other model types"
                )
                self._record(f"none: {why}; COCO weights {', '.join(coco)} are used if they fit this model", say)
                return False
            if self.on_missing == "fail":
                raise WeightsMissing(
                    f"ImageNet weights for {backbone} are required but {why}. Copy torchvision's file "
                    f'{expected} into the weights directory, or set missing_weights = "random" to train '
                    "from scratch."
                )
            self._record(f"none: {why}; training {backbone} from random initialisation", say, "warning")
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            module.load_state_dict(torchvision_key_names(state), strict=True)
        except Exception as exc:  # corrupt or mismatched file: same policy as missing
            if self.on_missing == "fail":
                raise WeightsMissing(f"could not load {path} for {backbone}: {exc}") from exc
            self._record(f"none: {path.name} could not be loaded ({exc}); random initialisation", say, "warning")
            return False
        self._record(f"loaded {path.name}", say)
        return True

    def settle_pending(self, say: Say | None = None) -> None:
        """No COCO weights fitted the model after all: fail, or say the backbone trains from scratch."""
        if self.pending is None:
            return
        text, self.pending = self.pending, None
        if self.on_missing == "fail":
            raise WeightsMissing(
                f"{text}. Install the ImageNet file (gpjobs weights add), or set "
                'missing_weights = "random" to train from scratch.'
            )
        self._record(f"none: {text}; training from random initialisation", say, "warning")

    def coco_files_for(self, backbone: str) -> list[str]:
        """COCO weight files in the weights directory whose backbone is `backbone`."""
        if not self.weights_dir:
            return []
        return sorted(
            name
            for (_, arch), name in TORCHVISION_COCO_WEIGHT_FILES.items()
            if arch == backbone.upper() and (Path(self.weights_dir) / name).is_file()
        )


# torchvision's DenseNet files predate its module names ("norm.1" instead of "norm1");
# torchvision renames the keys when it loads them, and so do we.
def torchvision_key_names(state: dict) -> dict:
    """`state` with torchvision's legacy DenseNet key names ("norm.1") renamed to its module names ("norm1")."""
    import re

    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
    )
    renamed = {}
    for key, value in state.items():
        match = pattern.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed
