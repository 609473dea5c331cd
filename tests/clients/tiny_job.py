"""The tiny job every client test submits, and what its answer must look like.

A 2-class Labeled_Tiles export of 8 chips, 32 px, in the file share `share`; one epoch of FEATURE_CLASSIFIER on
RESNET18 (a fixed learning rate skips the LR finder). Cheap on a 2-core box, yet a real training run end to end.
"""

from __future__ import annotations

from pathlib import Path

SHARE = "share"
EXPORT_NAME = "labeled_tiles"
EXPORT = f"/fileShares/{SHARE}/{EXPORT_NAME}"  # the tiny export as clients name it
MODEL_TYPE = "FEATURE_CLASSIFIER"
BACKBONE = "RESNET18"


def write_exports(share_dir: Path) -> None:
    from tests.builders.exports import write_labeled_tiles

    write_labeled_tiles(share_dir, n=8, size=32, name=EXPORT_NAME)


def is_item_reference(value: object) -> bool:
    """The out_item value of a published item: `{"id"}` (Esri's script) optionally with the same `itemId`
    (which arcgis' RA post-processing also understands), and never a `url` key (arcgis would return just it)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and len(value["id"]) == 32
        and value.get("itemId", value["id"]) == value["id"]
        and "url" not in value
        and set(value) <= {"id", "itemId"}
    )
