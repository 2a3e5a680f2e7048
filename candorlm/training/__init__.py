"""Training: the one loop (loop.py) that takes a step function, pretraining on it (trainer.py),
the agreement between processes (agreement.py), objectives, the optimizer and schedule.

`candorlm.train` (candorlm/pretrain.py) is the trainer with the ledger and DP-SGD attached: this
package imports neither. Named `training`, not `train`, so that it never shadows that function.
"""

from candorlm.training.trainer import TrainResult, Trainer

__all__ = ["TrainResult", "Trainer"]
