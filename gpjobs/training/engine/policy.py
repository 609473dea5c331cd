"""What trains how fast: the backbone's policy (frozen or not, its share of the learning rate) and whether the
training chips are augmented."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackbonePolicy:
    """How the backbone trains: frozen or not, its learning rate as a share of the head's, and why."""

    frozen: bool
    lr_factor: float
    reason: str = ""


def backbone_policy(backbone: str, *, pretrained: bool, freeze_model: bool) -> BackbonePolicy:
    """Esri's semantics for a pretrained backbone (frozen when freeze_model=true; discriminative learning rate,
    backbone at lr/10); a backbone without pretrained weights is never frozen and trains at the full rate:
    fixed random features learn nothing, and a tenth of the rate only slows the part that must learn most."""
    if not pretrained:
        ignored = "freeze_model=true is ignored: " if freeze_model else ""
        return BackbonePolicy(
            False,
            1.0,
            f"{ignored}the {backbone} backbone has no pretrained weights, so it is "
            "trained whole at the full learning rate",
        )
    if freeze_model:
        return BackbonePolicy(
            True,
            0.1,
            f"freeze_model=true: the pretrained {backbone} backbone stays frozen "
            "(its BatchNorm layers train, at a tenth of the learning rate)",
        )
    return BackbonePolicy(
        False,
        0.1,
        f"freeze_model=false: the pretrained {backbone} backbone is trained whole, at a tenth of the learning rate",
    )


@dataclass(frozen=True)
class AugmentPolicy:
    """Whether training chips get flips and 90-degree turns, and why."""

    on: bool
    reason: str


def augment_policy(given: bool | None, *, pretrained: bool) -> AugmentPolicy:
    """`augment` as given; else on for a pretrained backbone (arcgis.learn's default) and off for a network
    trained from random weights: it is still learning what the classes look like, and flipped and turned
    chips only slow that (bench/quality.py roads, our UNET, held-out road IoU without / with them: 0.37 / 0.12
    and 0.24 / 0.07 in 5 epochs (seeds 42, 43), 0.47 / 0.22 in 15 epochs)."""
    if given is not None:
        return AugmentPolicy(
            bool(given),
            f"augment={str(bool(given)).lower()}: training chips are "
            + ("flipped and turned" if given else "used as they are"),
        )
    if pretrained:
        return AugmentPolicy(True, "augment not set: training chips are flipped and turned (pretrained backbone)")
    return AugmentPolicy(
        False,
        "augment not set: training chips are used as they are (a network trained from "
        "random weights learns the classes faster without flips and turns; "
        "augment=true turns them on)",
    )
