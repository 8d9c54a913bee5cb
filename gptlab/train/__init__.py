"""Training: configuration and presets, optimizers and schedule, checkpoints, and the loop."""

from gptlab.train.config import PRESETS, TrainConfig
from gptlab.train.loop import TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "train"]
