"""Partner similarity: how well each pixel matches anything in the other images.

A parameter-free cue for co-segmentation on a group of K >= 2 feature maps
(not from any of the five papers; ``config.model.partner_prior_levels`` adds
it to CycleSegNet). For image k and position p,

  s_k(p) = max over the other images j != k and their positions q of
           cos(f_k(p) - mu, f_j(q) - mu),

with mu the mean feature over every position of the group's K maps. The
centring matters for the backbones used here: their features are ReLU or
ReLU6 outputs, non-negative, so raw cosines of any two positions share a large
positive floor; subtracting the group mean leaves what sets positions apart.

Why a fixed cue: the learnt attention of a co-segmentation model starts from
random projections, so at initialisation its view of the partner carries no
information about which object the images share, and a model trained on a few
hundred steps reaches a single-image foreground segmenter first and stays
there. s_k is informative from the first step on a pretrained encoder. How far
it can go is a property of the encoder's features: on unseen-class
PASCAL-VOC composites at 224 px the frozen EfficientNet-Lite2's stride-16
features give the partner's object the higher mean s in about three cases out
of four (docs/results.md#cyclesegnet).
"""

import jax
import jax.numpy as jnp


def partner_similarity(features: jax.Array, *, center: bool = True,
                       eps: float = 1e-12) -> jax.Array:
  """Best centred cosine similarity of every position to the other images.

  Args:
    features: [B, K, h, w, C] feature maps of B groups of K >= 2 images.
    center: subtract each group's mean feature (over its K*h*w positions)
      before the cosine.
    eps: added to the squared norm (a zero vector then has cosine 0 and a
      finite gradient).

  Returns:
    [B, K, h, w, 1] float32 in [-1, 1]: s_k(p) of the module docstring.
  """
  if features.ndim != 5:
    raise ValueError(f"partner_similarity expects [B, K, h, w, C], got shape "
                     f"{features.shape}")
  b, k, h, w, c = features.shape
  if k < 2:
    raise ValueError(f"partner_similarity needs K >= 2 images per group, got "
                     f"K={k}")
  x = features.astype(jnp.float32).reshape(b, k, h * w, c)
  if center:
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)
  # sims[b, k, p, j, q]: position p of image k against position q of image j.
  sims = jnp.einsum("bkpc,bjqc->bkpjq", x, x)
  best = jnp.max(sims, axis=-1)  # [B, K, P, K]: best match in each image j
  other = ~jnp.eye(k, dtype=bool)[None, :, None, :]
  best = jnp.max(jnp.where(other, best, -jnp.inf), axis=-1)
  return best.reshape(b, k, h, w, 1)
