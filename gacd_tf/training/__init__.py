"""Training machinery every method shares: resumable fit, checkpoints,
several devices and machines, and learning-rate schedules.

- ``fit_resumable.py``: :func:`fit_resumable`, a ``fit`` that resumes after a kill;
- ``fit_multi_worker_resumable.py`` and ``multi_worker_loop.py``: the same on a
  ``MultiWorkerMirroredStrategy`` cluster (:func:`fit_multi_worker_resumable`);
- ``training_checkpoint.py``: :class:`TrainingCheckpoint`, the full training
  state every N steps and epochs, written atomically (``atomic_files.py``);
- ``epoch_end_logs.py``: :class:`EpochEndLogs`, a trainer's end-of-epoch figures in the logs;
- ``distribute.py``: strategies and the cross-replica helpers trainers and attacks use;
- ``schedules.py``: :func:`sgd_optimizer` and :func:`learning_rate_schedule`;
  ``torch_sgd.py``: :class:`TorchSGD`, SGD with PyTorch's momentum form;
  ``step_decay.py``: :class:`StepDecay`, a step schedule decaying at its
  boundary step as PyTorch's ``MultiStepLR``.
"""

from gacd_tf.training.distribute import (
    STRATEGIES,
    all_gather,
    configure_cpu_devices,
    local_rows,
    make_strategy,
    num_replicas,
    run_on_replicas,
)
from gacd_tf.training.epoch_end_logs import EpochEndLogs
from gacd_tf.training.fit_multi_worker_resumable import fit_multi_worker_resumable
from gacd_tf.training.fit_resumable import fit_resumable
from gacd_tf.training.multi_worker_loop import fit_multi_worker, is_chief_from_tf_config
from gacd_tf.training.schedules import (SCHEDULES, SGD_FORMS, learning_rate_schedule,
                                       sgd_optimizer)
from gacd_tf.training.step_decay import StepDecay
from gacd_tf.training.torch_sgd import TorchSGD
from gacd_tf.training.training_checkpoint import TrainingCheckpoint

__all__ = [
    "STRATEGIES", "SCHEDULES", "SGD_FORMS", "EpochEndLogs", "StepDecay", "TorchSGD",
    "TrainingCheckpoint", "all_gather",
    "configure_cpu_devices", "fit_multi_worker", "fit_multi_worker_resumable", "fit_resumable",
    "is_chief_from_tf_config", "learning_rate_schedule", "local_rows", "make_strategy",
    "num_replicas", "sgd_optimizer",
]
