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
        return BackbonePolicy(False, 1.0, f"{ignored}the {backbone} backbone has no pretrained weights, so it is "
                                          "trained whole at the full learning rate")
    if freeze_model:
        return BackbonePolicy(True, 0.1, f"freeze_model=true: the pretrained {backbone} backbone stays frozen "
                                         "(its BatchNorm layers train, at a tenth of the learning rate)")
    return BackbonePolicy(False, 0.1, f"freeze_model=false: the pretrained {backbone} backbone is trained whole, "
                                      "at a tenth of the learning rate")


# A random network needs this many passes over the chips before flips and turns help it: in shorter jobs it is
# still learning the classes at all and augmented chips only slow that (bench/quality.py, roads, 5 epochs:
# held-out road IoU 0.37 / 0.24 without augmentation, 0.12 / 0.07 with it, seeds 42 / 43).
AUGMENT_FROM_EPOCHS = 10


@dataclass(frozen=True)
class AugmentPolicy:
    """Whether training chips get flips and 90-degree turns, and why."""

    on: bool
    reason: str


def augment_policy(given: bool | None, *, pretrained: bool, max_epochs: int) -> AugmentPolicy:
    """`augment` as given; else on for a pretrained backbone (arcgis.learn's default) and for a random one
    that trains at least AUGMENT_FROM_EPOCHS epochs, off for shorter from-scratch jobs."""
    if given is not None:
        return AugmentPolicy(bool(given), f"augment={str(bool(given)).lower()}: training chips are "
                                          + ("flipped and turned" if given else "used as they are"))
    if pretrained:
        return AugmentPolicy(True, "augment not set: training chips are flipped and turned (pretrained backbone)")
    if max_epochs >= AUGMENT_FROM_EPOCHS:
        return AugmentPolicy(True, f"augment not set: training chips are flipped and turned ({max_epochs} epochs "
                                   "from random weights)")
    return AugmentPolicy(False, f"augment not set: training chips are used as they are; a network trained from "
                                f"random weights for {max_epochs} epochs (under {AUGMENT_FROM_EPOCHS}) is still "
                                "learning the classes, and flips and turns only slow that (augment=true turns "
                                "them on)")
