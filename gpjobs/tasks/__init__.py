"""The GP tasks this server runs: each task's parameters, declared once, and the typed request a
submission becomes (`train`: TrainDeepLearningModel)."""
