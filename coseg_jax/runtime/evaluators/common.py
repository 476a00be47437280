"""Pieces every evaluator shares: the binarizer of a config, batch sizes."""

from typing import Callable, Optional

import numpy as np

from coseg_jax import postprocess


def binarizer(eval_config=None) -> Callable[[np.ndarray, np.ndarray],
                                            np.ndarray]:
  """``(image [H, W, 3], probability [H, W]) -> bool [H, W]`` of a config.

  ``eval.postprocess`` names the conversion (``coseg_jax.postprocess.
  METHODS``; 'threshold' keeps ``probability >= eval.threshold``) and
  ``eval.postprocess_kwargs`` holds its options. Every evaluator and
  ``--mode predict`` binarise through this, i.e. through
  ``postprocess.binarize``.

  Raises:
    ValueError: naming ``eval.postprocess`` or ``eval.postprocess_kwargs``.
  """
  get = eval_config.get if eval_config is not None else (
      lambda key, default=None: default)
  method = get("postprocess", "threshold") or "threshold"
  if method not in postprocess.METHODS:
    raise ValueError(f"config.eval.postprocess must be one of "
                     f"{postprocess.METHODS}, got {method!r}")
  options = get("postprocess_kwargs", None)
  options = dict(options.to_dict() if hasattr(options, "to_dict") else
                 (options or {}))
  if method == "threshold":
    if options:
      raise ValueError("config.eval.postprocess_kwargs: 'threshold' takes no "
                       f"options (set eval.threshold), got {sorted(options)}")
    options = {"t": float(get("threshold", 0.5))}
  return lambda image, prob: postprocess.binarize(method, image, prob,
                                                  **options)


def binarizer_rule(eval_config=None) -> str:
  """How :func:`binarizer` decides foreground, in words."""
  get = eval_config.get if eval_config is not None else (
      lambda key, default=None: default)
  method = get("postprocess", "threshold") or "threshold"
  if method == "threshold":
    return f"probability >= {float(get('threshold', 0.5)):g}"
  return f"{method} of the probability map"


def eval_data_config(config):
  """``config.data`` with ``config.eval.data``'s fields overridden: the data
  an evaluation reads (e.g. the unseen classes, or the held-out part)."""
  data = config.data.copy_and_resolve_references()
  overrides = config.eval.get("data") or {}
  unknown = sorted(set(overrides) - set(data))
  if unknown:
    raise ValueError(f"config.eval.data: unknown data field(s) {unknown}")
  with data.unlocked():
    for key, value in overrides.items():
      data[key] = value
  return data


def eval_batch_size(config, mesh=None) -> int:
  """``config.eval.batch_size`` rounded up to a multiple of the mesh's
  'data' axis (batches are sharded over it)."""
  batch_size = int(config.eval.get("batch_size", 8))
  if mesh is not None:
    n = mesh.shape["data"]
    batch_size = max(n, (batch_size + n - 1) // n * n)
  return batch_size
