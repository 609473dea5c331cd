"""Device questions asked by the command line, answered on the training side (the only place torch is imported)."""

from __future__ import annotations


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
