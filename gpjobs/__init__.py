"""gpjobs: an on-prem TrainDeepLearningModel server (Esri GP REST protocol, PyTorch training, .dlpk output)."""

__version__ = "0.1.0"
