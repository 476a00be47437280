"""Binary cross-entropy losses on logits: per-pixel masks and pair decisions.

* :func:`sigmoid_bce` is the per-pixel mask loss (DCC's CE_A + CE_B, CoSegNet's
  mask term, MaCoSNet's consistency terms build on it). Pixels can be excluded
  with a ``valid`` mask (void labels, padding) and reweighted with ``weights``.
  ``reduction='mean'`` divides the weighted sum by the number of *valid pixels*
  (not by the sum of the weights), as ``torch.nn.BCEWithLogitsLoss(weight=...)``
  does; with no valid pixel at all the loss is 0 with zero gradient instead of
  0/0.
* :func:`decision_bce` is CoSegNet's "do these images share an object" loss on
  one logit per pair, averaged (or, as the paper's eq. 4, summed) over the
  batch.

Both use ``optax.sigmoid_binary_cross_entropy`` (the log-sum-exp stable form)
and compute in float32 whatever the input dtype.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from coseg_jax.losses.registry import register_loss

_REDUCTIONS = ("mean", "sum", "none")


def _broadcast_to(name, x, shape):
  try:
    return jnp.broadcast_to(x, shape)
  except ValueError:
    raise ValueError(
        f"sigmoid_bce: {name} shape {jnp.shape(x)} does not broadcast to the "
        f"logits shape {shape}") from None


def _same_shape_float32(fn, logits, labels):
  """(logits, labels) as float32; refuses labels shaped unlike logits."""
  if jnp.shape(labels) != jnp.shape(logits):
    raise ValueError(
        f"{fn}: labels shape {jnp.shape(labels)} must equal logits "
        f"shape {jnp.shape(logits)}")
  return jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)


@register_loss("sigmoid_bce")
def sigmoid_bce(
    *,
    logits: jax.Array,
    labels: jax.Array,
    valid: Optional[jax.Array] = None,
    weights: Optional[jax.Array] = None,
    reduction: str = "mean",
) -> jax.Array:
  """Per-pixel binary cross-entropy on logits.

  loss_p = -[y_p log sigmoid(x_p) + (1 - y_p) log sigmoid(-x_p)].

  Args:
    logits: [...] foreground logits, e.g. [B, H, W, 1] or [B, K, H, W, 1].
    labels: [...] same shape, targets in [0, 1] (soft targets allowed).
    valid: optional [...] bool/{0,1} mask broadcastable to ``logits``; pixels
      with 0 contribute nothing. Default: every pixel valid.
    weights: optional [...] non-negative per-pixel weights broadcastable to
      ``logits``. Default: 1.
    reduction: 'mean' (weighted sum / number of valid pixels; 0 when there is
      none), 'sum', or 'none' (the [...] weighted per-pixel losses, 0 where
      invalid).

  Returns:
    A float32 scalar, or an array shaped like ``logits`` for 'none'.
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f"sigmoid_bce: reduction must be one of {_REDUCTIONS}, got "
        f"{reduction!r}")
  logits, labels = _same_shape_float32("sigmoid_bce", logits, labels)
  per_pixel = optax.sigmoid_binary_cross_entropy(logits, labels)
  if weights is not None:
    per_pixel = per_pixel * _broadcast_to(
        "weights", jnp.asarray(weights, jnp.float32), logits.shape)
  if valid is None:
    mask = jnp.ones(logits.shape, bool)
  else:
    mask = _broadcast_to("valid", jnp.asarray(valid), logits.shape).astype(
        bool)
  # where, not multiply: an inf/NaN loss at an invalid pixel must not leak.
  per_pixel = jnp.where(mask, per_pixel, 0.0)
  if reduction == "none":
    return per_pixel
  total = jnp.sum(per_pixel)
  if reduction == "sum":
    return total
  return total / jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)


@register_loss("decision_bce")
def decision_bce(*, logits: jax.Array, labels: jax.Array,
                 reduction: str = "mean") -> jax.Array:
  """Binary cross-entropy of per-pair decision logits (CoSegNet).

  Args:
    logits: [B] or [B, 1] logits of "the pair shares an object".
    labels: same shape, {0, 1} (1 = positive pair).
    reduction: 'mean' or 'sum' (CoSegNet eq. 4) over the pairs.

  Returns:
    Scalar float32 mean (or sum) over the batch.
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"decision_bce: reduction must be 'mean' or 'sum', got "
                     f"{reduction!r}")
  logits, labels = _same_shape_float32("decision_bce", logits, labels)
  per_pair = optax.sigmoid_binary_cross_entropy(logits, labels)
  return jnp.sum(per_pair) if reduction == "sum" else jnp.mean(per_pair)
