"""Trainers, chosen by ``config.trainer``.

* ``supervised`` (:mod:`.supervised`): the generic data-parallel loop over
  the training stream, for every supervised or weakly supervised method and
  for the pre-training stages.
* ``collection`` (:mod:`.collection`): the co-attention method's
  per-collection two-stage trainer (unsupervised and transductive: a fresh
  generator per image collection).

A trainer is a :class:`Trainer`: ``train(config, workdir)`` runs it and
``build_program(config, mesh=None)`` returns the
``coseg_jax.runtime.steps.TrainProgram`` it steps, which is what ``--mode
benchmark`` times.
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

from coseg_jax.runtime import steps
from coseg_jax.runtime.trainers import collection
from coseg_jax.runtime.trainers import supervised


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A registered trainer.

  Attributes:
    train: ``(config, workdir) -> result``.
    build_program: ``(config, *, mesh=None) -> steps.TrainProgram`` (the
      compiled step and its fresh state, as ``train`` assembles them).
    description: one line.
  """
  train: Callable[..., Any]
  build_program: Callable[..., steps.TrainProgram]
  description: str = ""


_TRAINERS: Dict[str, Trainer] = {
    "supervised": Trainer(
        train=supervised.train_and_evaluate,
        build_program=lambda config, *, mesh=None: steps.build_train_program(
            config, mesh=mesh),
        description="generic data-parallel loop over the training stream"),
    "collection": Trainer(
        train=collection.train_collections,
        build_program=collection.build_program,
        description="per-collection two-stage trainer (co-attention)"),
}


def available_trainers() -> Tuple[str, ...]:
  return tuple(sorted(_TRAINERS))


def get_trainer(name: str) -> Trainer:
  """The trainer registered as ``name``.

  Raises:
    ValueError: one line naming the unknown trainer and the known ones.
  """
  if name not in _TRAINERS:
    raise ValueError(f"config.trainer: unknown trainer {name!r}; available: "
                     f"{', '.join(available_trainers())}")
  return _TRAINERS[name]
