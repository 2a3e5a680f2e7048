"""Training: the loop (trainer.py) and its checkpoints (checkpoint.py).

Named `training`, not `train`, so that the package never shadows the function `candorlm.train`.
"""

from candorlm.training.trainer import TrainResult, Trainer, train

__all__ = ["TrainResult", "Trainer", "train"]
