"""Metric-learning losses: the CoSegNet triplet loss.

CoSegNet (Banerjee et al., IJCAI 2019) embeds each image of a pair with a
siamese metric network (GAP of decoder layer cT9 -> FC128-ReLU-FC64) and trains
it with a triplet loss of margin 1 so that images sharing an object embed close
together. The paper does not say whether the distance is squared; we use the
squared Euclidean distance (FaceNet's form, and the usual reading of "triplet
loss with margin"):

    L = mean_b max(0, ||a_b - p_b||^2 - ||a_b - n_b||^2 + margin),

or the sum over the batch (``reduction='sum'``, CoSegNet's eq. 3).

The squared form is smooth everywhere (no sqrt singularity at a = p), so the
gradient is defined for coincident embeddings.
"""

import jax
import jax.numpy as jnp

from coseg_jax.losses.registry import register_loss


@register_loss("triplet")
def triplet_loss(
    *,
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    margin: float = 1.0,
    reduction: str = "mean",
) -> jax.Array:
  """Triplet margin loss with squared Euclidean distances.

  Args:
    anchor: [B, D] embeddings.
    positive: [B, D] embeddings of images sharing the anchor's object.
    negative: [B, D] embeddings of images that do not.
    margin: the hinge margin (CoSegNet: 1).
    reduction: 'mean' or 'sum' (CoSegNet eq. 3) over the batch.

  Returns:
    Scalar float32: mean (or sum) over the batch of
    relu(||a - p||^2 - ||a - n||^2 + margin).
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"triplet_loss: reduction must be 'mean' or 'sum', got "
                     f"{reduction!r}")
  shape = jnp.shape(anchor)
  if len(shape) != 2:
    raise ValueError(f"triplet_loss: anchor must be [B, D], got shape {shape}")
  for name, x in (("positive", positive), ("negative", negative)):
    if jnp.shape(x) != shape:
      raise ValueError(
          f"triplet_loss: {name} shape {jnp.shape(x)} must equal anchor shape "
          f"{shape}")
  anchor = jnp.asarray(anchor, jnp.float32)
  d_pos = jnp.sum(jnp.square(anchor - jnp.asarray(positive, jnp.float32)), -1)
  d_neg = jnp.sum(jnp.square(anchor - jnp.asarray(negative, jnp.float32)), -1)
  per_triplet = jax.nn.relu(d_pos - d_neg + margin)
  return jnp.sum(per_triplet) if reduction == "sum" else jnp.mean(per_triplet)
