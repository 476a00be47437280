"""A name -> loss-function registry and the weighted sum of loss terms.

Configs pick losses and their weights by name (``config.losses = {'lovasz':
1.0, ...}``); a method's train step computes each named term and hands the
terms and the config's weights to :func:`compute_total_loss`, which returns the
total and every weighted term for logging.

Semantics of :func:`compute_total_loss` (nothing is dropped silently):

* The two mappings must have exactly the same keys. A weight naming a term that
  was not computed raises ``ValueError`` naming it, and so does a computed term
  that has no weight (write an explicit ``0.0`` to switch a term off).
* Every term must be a scalar; it is cast to float32 before weighting, so a
  model computing in bf16 still sums its losses in float32.
* A weight of exactly 0 removes the term from the total: with a static (Python
  or concrete NumPy) weight the term is not part of the total's graph at all, so
  its gradient is exactly zero even when the term or its derivative is NaN or
  inf (``0 * nan`` would otherwise poison both). The term is still reported,
  with weighted value 0. Weights that are traced JAX values (e.g. a schedule
  inside ``jit``) are supported with ``jnp.where``: the total stays finite for a
  zero weight, but a NaN *inside* the term's own backward pass can still reach
  the gradient, so prefer static weights to switch terms off.
* Non-finite static weights raise ``ValueError``.
"""

from typing import Callable, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

_LOSSES: Dict[str, Callable] = {}


def register_loss(name: str) -> Callable[[Callable], Callable]:
  """Decorator registering a loss function under ``name``.

  Args:
    name: the name configs use for the loss; must be new.

  Returns:
    A decorator that records the function and returns it unchanged.

  Raises:
    ValueError: if ``name`` is already registered.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"loss name must be a non-empty string, got {name!r}")

  def decorator(fn: Callable) -> Callable:
    if name in _LOSSES:
      raise ValueError(
          f"loss {name!r} is already registered (by "
          f"{_LOSSES[name].__module__}.{_LOSSES[name].__qualname__})")
    _LOSSES[name] = fn
    return fn

  return decorator


def get_loss(name: str) -> Callable:
  """Returns the loss function registered under ``name``.

  Raises:
    ValueError: for an unknown name; the message lists the known ones.
  """
  try:
    return _LOSSES[name]
  except KeyError:
    raise ValueError(
        f"unknown loss {name!r}; known losses: {available_losses()}") from None


def available_losses() -> List[str]:
  """Sorted names of every registered loss."""
  return sorted(_LOSSES)


def _static_weight(name: str, weight):
  """Returns the weight as a Python float, or None when it is traced."""
  if isinstance(weight, jax.core.Tracer):
    return None
  try:
    value = float(np.asarray(weight))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"weight for loss term {name!r} must be a scalar number, got "
        f"{weight!r}") from e
  if not np.isfinite(value):
    raise ValueError(f"weight for loss term {name!r} is not finite: {value}")
  return value


def compute_total_loss(
    terms: Mapping[str, jax.Array], weights: Mapping[str, float]
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Weighted sum of named loss terms.

  total = sum_k weights[k] * terms[k], in float32. See the module docstring for
  the exact rules (same keys in both mappings, zero weights, NaN safety).

  Args:
    terms: name -> scalar loss value (any float dtype).
    weights: name -> scalar weight (Python number, or a JAX scalar).

  Returns:
    ``(total, weighted)`` where ``total`` is a float32 scalar and ``weighted``
    maps every name in ``terms`` to its float32 weighted value (0 for a zero
    weight).

  Raises:
    ValueError: a weight without a term, a term without a weight, a non-scalar
      term or a non-finite static weight; the message names the key.
  """
  missing_terms = sorted(set(weights) - set(terms))
  if missing_terms:
    raise ValueError(
        f"loss weights name terms that were not computed: {missing_terms}; "
        f"computed terms: {sorted(terms)}")
  missing_weights = sorted(set(terms) - set(weights))
  if missing_weights:
    raise ValueError(
        f"loss terms without a weight: {missing_weights}; give each one a "
        f"weight (0.0 to switch it off)")

  total = jnp.zeros((), jnp.float32)
  weighted = {}
  for name in sorted(terms):  # Sorted: the summation order is deterministic.
    term = jnp.asarray(terms[name])
    if term.shape != ():
      raise ValueError(
          f"loss term {name!r} must be a scalar, got shape {term.shape}")
    term = term.astype(jnp.float32)
    w = _static_weight(name, weights[name])
    if w is None:
      w = jnp.asarray(weights[name], jnp.float32)
      is_zero = w == 0
      # Inner where keeps the multiply NaN-free, outer one forces exact 0.
      value = jnp.where(is_zero, 0.0, w * jnp.where(is_zero, 0.0, term))
    elif w == 0.0:
      # Not connected to the total: exact zero gradient, NaN cannot leak.
      weighted[name] = jnp.zeros((), jnp.float32)
      continue
    else:
      value = jnp.float32(w) * term
    weighted[name] = value
    total = total + value
  return total, weighted
