"""The trainer's public names, in one import: `train.run(config, workdir)` trains.

The trainer is three modules, one per concept:
  mmvit/experiment.py  the config (validated, completed), tasks, schedule, mesh, model, state
                       and the compiled-step wrappers: everything built before the first step;
  mmvit/steps.py       the step functions (loss, gradients, guarded update, accumulated update,
                       evaluation) at module level, and the thin wrappers that jit them;
  mmvit/loop.py        restore, schedule, log, evaluate, save, preempt, test.
"""

from mmvit import sharding  # noqa: F401  (tests/tiny_run.py slows train.sharding.shard_batch)
from mmvit.experiment import (Experiment, build, build_model, check_batch,  # noqa: F401
                              explicit_steps, make_schedule, parameter_report, prepare,
                              steps_per_task, task_seed, train_iterators)
from mmvit.loop import NonFiniteError, Preempted, Stopped, evaluate_all, run  # noqa: F401
from mmvit.steps import derive_key, mixup  # noqa: F401
