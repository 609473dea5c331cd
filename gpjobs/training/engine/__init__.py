"""One training loop for every model type (models.md §2, with the improvements §2.10 lists).

AdamW (wd 0.01) + one-cycle (fastai's shape), discriminative LR for pretrained backbones (backbone lr/10; a
random backbone trains whole at the full rate), an LR range test bounded to a share of the job when no learning
rate is given, early stopping on a monitored value (auto mode), the best epoch's weights kept
and restored at the end, a full-state checkpoint written atomically at each epoch end (resume continues
exactly where it stopped: every epoch reseeds all RNGs from (seed, epoch)), mixed precision on CUDA,
cancellation at batch boundaries, NaN loss and out-of-memory reported as such.

Modules, in the order a fit uses them:
  config    FitConfig / FitResult and the errors;
  policy    the backbone's policy (frozen or not, its share of the learning rate), augmentation on or off;
  runtime   device, autocast, loaders, seeding;
  schedule  optimizer groups, one-cycle, clipping, the learning rate (LR range test glue);
  steppers  one training step per batch (one optimizer, or a multi-network family's several);
  state     TrainState and its checkpoint;
  loop      train_one_epoch, evaluate, fit.
"""

from __future__ import annotations

from gpjobs.training.engine.config import FitConfig, FitResult, NaNLossError, OutOfMemory
from gpjobs.training.engine.loop import TRAIN_SHARE, evaluate, fit, train_one_epoch
from gpjobs.training.engine.policy import AugmentPolicy, BackbonePolicy, augment_policy, backbone_policy
from gpjobs.training.engine.runtime import seed_everything
from gpjobs.training.engine.schedule import LR_FIND_SHARE, clip_norm

__all__ = [
    "LR_FIND_SHARE",
    "TRAIN_SHARE",
    "AugmentPolicy",
    "BackbonePolicy",
    "FitConfig",
    "FitResult",
    "NaNLossError",
    "OutOfMemory",
    "augment_policy",
    "backbone_policy",
    "clip_norm",
    "evaluate",
    "fit",
    "seed_everything",
    "train_one_epoch",
]
