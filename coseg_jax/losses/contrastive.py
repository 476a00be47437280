"""MaCoSNet co-segmentation losses (Chen et al., "Show, Match and Segment").

**Perceptual contrastive loss (eq. 8-10), :func:`perceptual_contrastive_loss`.**
Each image I is split by its predicted mask M into an object image M * I and a
background image (1 - M) * I (:func:`object_background_images`); a fixed
ImageNet network F maps each to a feature vector of dimension c. With
o_A = F(M_A I_A), b_A = F((1 - M_A) I_A) and likewise for B:

  d+ = ||o_A - o_B||^2 / c                                    (eq. 8)
  d- = (||o_A - b_A||^2 + ||o_B - b_B||^2) / c                (eq. 9)
  L  = mean_batch [ d+ + max(0, m - d-) ],  m = 2             (eq. 10)

The paper leaves the combination of the two within-image terms open; the sum
(no 1/2) follows the authors' code (``CosegLoss``). Their code averages d- over
the batch *before* the hinge; here the hinge is applied per pair and then
averaged, the usual contrastive form (identical for batch size 1).

**Cross-network consistency (eq. 11-12), :func:`cross_consistency_loss`.**
The matching network's transformations supervise the masks: A's mask warped
onto B (``warp(sigmoid(l_A), theta_ab)``) should agree with B's mask and vice
versa, with binary cross-entropy of the predicted logits against the warped
probabilities of the other image:

  L = 1/2 [ BCE(l_B, W_AB(M_A)) + BCE(l_A, W_BA(M_B)) ],

each BCE averaged over pixels and the batch, computed from logits in a stable
form. The authors' ``TaskLoss`` adds BCE(1 - M, 1 - W), which equals BCE(M, W),
so theirs is exactly twice this. Out-of-view pixels of the warp read 0
(background), as in their code (zeros padding, align_corners=True);
``ignore_outside=True`` instead drops them from the average. Gradients flow
into both the prediction and the warped target unless
``stop_gradient_targets``.
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from coseg_jax.losses.registry import register_loss
from coseg_jax.nn import geometry

MARGIN = 2.0


def object_background_images(*, images: jax.Array,
                             masks: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Eq. 7: (M * I, (1 - M) * I) for images [..., H, W, 3], masks [..., 1]."""
  return images * masks, images * (1.0 - masks)


@register_loss("macos_contrastive")
def perceptual_contrastive_loss(*, object_a: jax.Array, object_b: jax.Array,
                                background_a: jax.Array,
                                background_b: jax.Array,
                                margin: float = MARGIN) -> jax.Array:
  """Perceptual contrastive loss (eq. 8-10).

  Args:
    object_a: [B, c] F(M_A * I_A).
    object_b: [B, c] F(M_B * I_B).
    background_a: [B, c] F((1 - M_A) * I_A).
    background_b: [B, c] F((1 - M_B) * I_B).
    margin: m (2 in the paper).

  Returns:
    Scalar mean over the batch of d+ + max(0, m - d-).
  """
  shapes = {a.shape for a in (object_a, object_b, background_a, background_b)}
  if len(shapes) != 1 or object_a.ndim != 2:
    raise ValueError(f"object/background features must all be [B, c], got "
                     f"{[a.shape for a in (object_a, object_b, background_a, background_b)]}")
  c = object_a.shape[-1]
  sq = lambda u, v: jnp.sum((u - v) ** 2, axis=-1)
  d_pos = sq(object_a, object_b) / c
  d_neg = (sq(object_a, background_a) + sq(object_b, background_b)) / c
  return jnp.mean(d_pos + jax.nn.relu(margin - d_neg))


def _bce_with_logits(logits, targets):
  """-(t log sigmoid(l) + (1 - t) log(1 - sigmoid(l))), elementwise."""
  return (jax.nn.relu(logits) - logits * targets +
          jnp.log1p(jnp.exp(-jnp.abs(logits))))


@register_loss("macos_cross_consistency")
def cross_consistency_loss(*, mask_logits_a: jax.Array,
                           mask_logits_b: jax.Array, theta_ab: jax.Array,
                           theta_ba: jax.Array, kind: str,
                           ignore_outside: bool = False,
                           stop_gradient_targets: bool = False) -> jax.Array:
  """Cross-network consistency (eq. 11-12), symmetric BCE.

  Args:
    mask_logits_a: [B, H, W, 1] logits of A's mask.
    mask_logits_b: [B, H, W, 1] logits of B's mask (same size as A's).
    theta_ab: [B, D] warping A onto B.
    theta_ba: [B, D] warping B onto A.
    kind: geometry kind of the thetas.
    ignore_outside: average only over pixels whose sample lies in the image
      (weights = the warp of an all-ones map).
    stop_gradient_targets: treat the warped masks as constants.

  Returns:
    Scalar loss.
  """
  if mask_logits_a.shape != mask_logits_b.shape or mask_logits_a.ndim != 4:
    raise ValueError(f"mask_logits_a {mask_logits_a.shape} and mask_logits_b "
                     f"{mask_logits_b.shape} must be equal [B, H, W, 1]")
  # At least float32 (bf16 logits from a mixed-precision model are upcast).
  dtype = jnp.promote_types(mask_logits_a.dtype, jnp.float32)
  logits_a = mask_logits_a.astype(dtype)
  logits_b = mask_logits_b.astype(dtype)
  a_in_b = geometry.warp(image=jax.nn.sigmoid(logits_a), theta=theta_ab,
                         kind=kind)
  b_in_a = geometry.warp(image=jax.nn.sigmoid(logits_b), theta=theta_ba,
                         kind=kind)
  if stop_gradient_targets:
    a_in_b = jax.lax.stop_gradient(a_in_b)
    b_in_a = jax.lax.stop_gradient(b_in_a)
  bce_b = _bce_with_logits(logits_b, a_in_b)
  bce_a = _bce_with_logits(logits_a, b_in_a)
  if ignore_outside:
    ones = jnp.ones_like(logits_a)
    w_b = jax.lax.stop_gradient(geometry.warp(image=ones, theta=theta_ab,
                                              kind=kind))
    w_a = jax.lax.stop_gradient(geometry.warp(image=ones, theta=theta_ba,
                                              kind=kind))
    term_b = jnp.sum(bce_b * w_b) / jnp.maximum(jnp.sum(w_b), 1e-6)
    term_a = jnp.sum(bce_a * w_a) / jnp.maximum(jnp.sum(w_a), 1e-6)
  else:
    term_b = jnp.mean(bce_b)
    term_a = jnp.mean(bce_a)
  return 0.5 * (term_a + term_b)
