"""Requests for jobs that the fake training child (fake_trainer.py) runs."""

from __future__ import annotations

from gpjobs.catalog import MODEL_TYPES
from gpjobs.tasks.train import Context, DataFolder, OutputTarget, PretrainedModel, TrainingRequest


def fake_request(
    behaviour: str = "ok",
    *,
    name: str = "model",
    max_epochs: int = 2,
    output: dict | None = None,
    overwrite: bool = False,
    pretrained_item: str | None = None,
) -> TrainingRequest:
    """A TrainingRequest for a job this fake runs (no export folder behind it; `behaviour` rides in context)."""
    return TrainingRequest(
        model_type=MODEL_TYPES["FEATURE_CLASSIFIER"],
        backbone="RESNET18",
        given_arguments={},
        in_folders=(DataFolder("/fileShares/default/nowhere", "/nowhere", "/"),),
        data_format="Labeled_Tiles",
        output=OutputTarget(**(output or {"kind": "item", "name": name})),
        batch_size=2,
        max_epochs=max_epochs,
        learning_rate=None,
        validation_percent=10.0,
        pretrained=PretrainedModel(item_id=pretrained_item) if pretrained_item else None,
        stop_training=True,
        overwrite_model=overwrite,
        freeze_model=True,
        context=Context(values={"fake_behaviour": behaviour}),
    )
