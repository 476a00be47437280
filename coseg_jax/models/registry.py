"""The method registry: a name -> everything the runtime needs of a method.

A method is a :class:`MethodSpec`: how to build its Flax module from
``config.model``, its pure loss, an optional prediction post-processing and an
optional sharding-rules hook. The runtime (``coseg_jax.runtime``) only ever
talks to methods through this registry, so a new method is one module that
calls :func:`register_method` at import time and one import line in
``coseg_jax/models/__init__.py``.

Model contract: ``model.apply(variables, images, train=bool, rngs=...)`` with
``images`` float32 [B, K, H, W, 3] in [0, 1] returns a ``flax.struct.dataclass``
with ``mask_logits`` [B, K, H, W, 1] at input resolution plus method-specific
fields. A model that can train from the frozen-encoder feature cache also
accepts ``features={level: [B, K, h, w, C]}`` (then only the shape of
``images`` is read) and has the attributes ``backbone``, ``dtype``,
``encoder_kwargs`` (its encoder's attributes) and ``feature_levels`` (the
encoder levels it reads). Loss contract: ``loss_fn(*, outputs, batch, loss_config) -> (total,
terms)`` with ``total`` a float32 scalar and ``terms`` a dict of float32
scalars (logged as they are).
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

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
  """
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]
  loss_fn: LossFn
  predict_fn: Optional[Callable[..., jax.Array]] = None
  param_sharding_rules: Optional[Callable[..., Any]] = None
  default_loss: Mapping[str, float] = dataclasses.field(default_factory=dict)
  description: str = ""


_REGISTRY: Dict[str, MethodSpec] = {}


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
  return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
  """Returns the MethodSpec registered as ``name``.

  Raises:
    ValueError: one line naming the unknown method and listing the known ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; available: "
                     f"{', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


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
