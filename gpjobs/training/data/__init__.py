"""Training data in the child: datasets, batching and loaders over the readers of `gpjobs.export`."""

from __future__ import annotations

from gpjobs.training.data.datasets import collate_detection, to_model_input
from gpjobs.training.data.loading import TrainingData, open_training_data

__all__ = ["TrainingData", "collate_detection", "open_training_data", "to_model_input"]
