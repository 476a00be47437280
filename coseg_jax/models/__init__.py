"""Method registry: a name -> everything the runtime needs to train a method.

A method is a :class:`MethodSpec`: how to build its Flax module from
``config.model``, its pure loss, an optional prediction post-processing and an
optional sharding-rules hook. ``coseg_jax.train``, ``coseg_jax.evaluate`` and
``coseg_jax.predict`` only ever talk to methods through this registry, so a new
method is one module that calls :func:`register_method` at import time and one
line in ``_METHOD_MODULES`` below.

Model contract: ``model.apply(variables, images, train=bool, rngs=...)`` with
``images`` float32 [B, K, H, W, 3] in [0, 1] returns a ``flax.struct.dataclass``
with ``mask_logits`` [B, K, H, W, 1] at input resolution plus method-specific
fields. Loss contract: ``loss_fn(*, outputs, batch, loss_config) -> (total,
terms)`` with ``total`` a float32 scalar and ``terms`` a dict of float32
scalars (logged as they are).

Modules are imported lazily (on the first registry query) so that importing
``coseg_jax.models`` stays cheap and a broken method module cannot break the
others' import.
"""

import dataclasses
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

LossFn = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything the runtime needs to know about one method.

  Attributes:
    build_model: ``model_config -> nn.Module`` (the module honours the model
      contract in the module docstring).
    loss_fn: pure ``(*, outputs, batch, loss_config) -> (total, terms)``;
      ``batch`` is the data contract's dict, ``loss_config`` the config's
      ``loss`` section (weights by term name).
    predict_fn: optional ``(*, outputs, batch, config) -> probabilities
      [B, K, H, W, 1]`` post-processing; default ``sigmoid(mask_logits)``.
    param_sharding_rules: optional ``(params, mesh) -> pytree of
      jax.sharding.PartitionSpec`` (same structure as ``params``) for methods
      whose parameters should not be replicated; default: all replicated.
    default_loss: the ``loss`` weights the method expects when a config gives
      none (term name -> weight).
    description: one line for ``--help`` listings.
    train_fn: optional ``(config, workdir) -> Any`` for a method that does not
      train with the generic loop (e.g. unsupervised methods trained per
      image collection); ``main --mode train`` calls it instead of
      ``coseg_jax.train.train_and_evaluate``.
  """
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]
  loss_fn: LossFn
  predict_fn: Optional[Callable[..., jax.Array]] = None
  param_sharding_rules: Optional[Callable[..., Any]] = None
  default_loss: Mapping[str, float] = dataclasses.field(default_factory=dict)
  description: str = ""
  train_fn: Optional[Callable[..., Any]] = None


_REGISTRY: Dict[str, MethodSpec] = {}

# Modules that register methods when imported. Later methods add their module
# here (one line each).
_METHOD_MODULES = (
    "coseg_jax.models.baselines",
    "coseg_jax.models.cosegnet",
    "coseg_jax.models.dcc",
    "coseg_jax.models.coattention",
    "coseg_jax.models.cyclesegnet",
    "coseg_jax.models.macosnet",
    "coseg_jax.models.dense_category",
)
_loaded = False


# module -> "ExceptionType: message" for method modules that failed to import.
_IMPORT_ERRORS: Dict[str, str] = {}


def _load_builtin_methods():
  """Imports every method module once.

  A module that fails to import (not written yet, or broken) does not take the
  other methods down: its error is logged and kept in ``_IMPORT_ERRORS``, and
  ``get_method`` repeats it in the unknown-method message, so nothing
  disappears silently.
  """
  global _loaded
  if _loaded:
    return
  _loaded = True
  for module in _METHOD_MODULES:
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      _IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"
      logging.warning("method module %s failed to import: %s", module,
                      _IMPORT_ERRORS[module])


def register_method(name: str, spec: MethodSpec) -> MethodSpec:
  """Registers ``spec`` under ``name``; re-registering a name is an error."""
  if not isinstance(spec, MethodSpec):
    raise TypeError(f"register_method({name!r}): expected a MethodSpec, got "
                    f"{type(spec).__name__}")
  existing = _REGISTRY.get(name)
  if existing is not None and existing is not spec:
    raise ValueError(f"method {name!r} is already registered")
  _REGISTRY[name] = spec
  return spec


def available_methods():
  """Sorted names of every registered method."""
  _load_builtin_methods()
  return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
  """Returns the MethodSpec registered as ``name``.

  Raises:
    ValueError: one line naming the unknown method and listing the known ones.
  """
  _load_builtin_methods()
  if name not in _REGISTRY:
    failed = "".join(f"; {m} failed to import ({err})"
                     for m, err in sorted(_IMPORT_ERRORS.items()))
    raise ValueError(f"unknown method {name!r}; available: "
                     f"{', '.join(sorted(_REGISTRY))}{failed}")
  return _REGISTRY[name]


def import_errors() -> Dict[str, str]:
  """Method modules that failed to import: module -> error (a copy)."""
  _load_builtin_methods()
  return dict(_IMPORT_ERRORS)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
                  "float16": jnp.float16}


def config_dtype(name) -> Any:
  """``config.model.dtype`` (a name, or already a dtype) -> a JAX dtype.

  Every method's ``build_model`` uses this, so the accepted names and the
  error are the same for all of them.
  """
  if not isinstance(name, str):
    return name
  try:
    return COMPUTE_DTYPES[name]
  except KeyError:
    raise ValueError(f"config.model.dtype must be one of "
                     f"{sorted(COMPUTE_DTYPES)}, got {name!r}") from None
