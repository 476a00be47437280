"""Evaluators, chosen by ``config.eval.evaluators``.

Each evaluator is a module with ``evaluate(*, config, model, variables,
mesh=None) -> dict`` and ``format_results(dict) -> str``:

* ``coseg``: P and J per class over evaluation groups, with the
  all-foreground and centre-prior references (:mod:`.coseg`);
* ``matching``: keypoint PCK and TSS flow-PCK of predicted transformations
  (:mod:`.matching`, MaCoSNet);
* ``decision``: accuracy of a has-common-object decision (:mod:`.decision`,
  CoSegNet);
* ``partner``: how much the prediction depends on the partner image
  (:mod:`.partner`: the partner replaced by another class, grey, noise);
* ``composite``: composites of two objects of different classes, each
  co-segmented with a partner of either class (:mod:`.composite`:
  conditional J, wrong-object and both-objects rates).

:func:`evaluate` runs the configured ones; ``--mode eval``, the periodic
evaluation of the trainers and the experiments all call it.
"""

from typing import Any, Dict, Optional, Sequence

from coseg_jax.runtime import console
from coseg_jax.runtime.evaluators import composite
from coseg_jax.runtime.evaluators import coseg
from coseg_jax.runtime.evaluators import decision
from coseg_jax.runtime.evaluators import matching
from coseg_jax.runtime.evaluators import partner

EVALUATORS = {
    "composite": composite,
    "coseg": coseg,
    "decision": decision,
    "matching": matching,
    "partner": partner,
}


def available_evaluators() -> Sequence[str]:
  return tuple(sorted(EVALUATORS))


def configured(config) -> Sequence[str]:
  """``config.eval.evaluators`` (default ``('coseg',)``), validated.

  Raises:
    ValueError: naming an unknown evaluator.
  """
  names = tuple(config.eval.get("evaluators", None) or ("coseg",))
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"config.eval.evaluators: unknown {unknown}; available: "
                     f"{', '.join(available_evaluators())}")
  return names


def evaluate(*, config, model, variables, mesh=None,
             names: Optional[Sequence[str]] = None,
             verbose: bool = True) -> Dict[str, Dict[str, Any]]:
  """Runs the evaluators ``names`` (default: the configured ones).

  Returns:
    {evaluator name: its figures}; with ``verbose`` each table is printed.
  """
  names = tuple(names) if names is not None else configured(config)
  results = {}
  for name in names:
    module = EVALUATORS[name]
    results[name] = module.evaluate(config=config, model=model,
                                    variables=variables, mesh=mesh)
    if verbose:
      console.info(f"[{name}] {config.method} on {config.data.name}/"
                   f"{config.eval.split}")
      console.info(module.format_results(results[name]))
  return results
