"""MaCoSNet co-segmentation losses (Chen et al., "Show, Match and Segment").

**Object and background images (eq. 7), :func:`object_background_images`.**
I^o = M (x) I and I^b = (1 - M) (x) I, the product taken on the image as F
receives it: the paper's network F reads ImageNet-normalised images, so a
removed pixel becomes 0 after normalisation, i.e. the *mean colour* of F's
training images. Our images are in [0, 1] and every backbone normalises
inside, so the same images are I^o = mu + M (I - mu) and
I^b = mu + (1 - M)(I - mu) with mu the colour F's normalisation maps to 0
(``coseg_jax.backbones.input_mean``; ``fill``). ``fill=0`` gives black
removed pixels (multiplying the raw [0, 1] image).

**Perceptual contrastive loss (eq. 8-10), :func:`perceptual_contrastive_loss`.**
A fixed ImageNet network F maps each object and background image to a
feature vector of dimension c. With o_A = F(I^o_A), b_A = F(I^b_A) and
likewise for B:

  L  = d+ + d-                                                 (eq. 8)
  d+ = ||o_A - o_B||^2 / c                                     (eq. 9)
  d- = max(0, m - (||o_A - b_A||^2 + ||o_B - b_B||^2) / (2c))  (eq. 10)

averaged over the batch (the hinge per pair, the usual contrastive form; the
authors' code averages before the hinge, identical for batch size 1).
``reduction='mean'`` is eq. 10's 1/(2c), the mean of the two images'
figure-ground distances; ``'sum'`` divides by c only (the authors' code,
``CosegLoss``), doubling that distance for the same margin. m = 2 in the
paper, for its F (ResNet-50, c = 2048); :func:`image_distance_reference` is
the scale a margin for another F is calibrated against (see
``coseg_jax.models.macosnet``).

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
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from coseg_jax.losses.registry import register_loss
from coseg_jax.nn import geometry

MARGIN = 2.0
REDUCTIONS = ("mean", "sum")


def object_background_images(
    *, images: jax.Array, masks: jax.Array,
    fill: Union[float, Sequence[float]] = 0.0) -> Tuple[jax.Array, jax.Array]:
  """Eq. 7: the object and background images of ``images`` under ``masks``.

  Args:
    images: [..., H, W, 3] in [0, 1].
    masks: [..., H, W, 1] in [0, 1].
    fill: the colour of removed pixels, a scalar or an RGB triple: the
      colour F's input normalisation maps to 0 for the paper's product on
      normalised images (``backbones.input_mean(F)``), 0 for black.

  Returns:
    (fill + M (I - fill), fill + (1 - M)(I - fill)), each like ``images``.
  """
  images = jnp.asarray(images)
  fill = jnp.asarray(fill, images.dtype)
  centred = images - fill
  return fill + masks * centred, fill + (1.0 - masks) * centred


def image_distance_reference(features: jax.Array) -> jax.Array:
  """Mean over pairs of distinct rows of ||f_i - f_j||^2 / c.

  How different two different images look to F, per feature dimension: the
  scale of eq. 9-10's distances for a given F and data set.

  Args:
    features: [N, c] F of N >= 2 whole images.

  Returns:
    Scalar float32.
  """
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N >= 2, c], got {features.shape}")
  f = features.astype(jnp.float32)
  n, c = f.shape
  # sum_{i != j} ||f_i - f_j||^2 = 2 n sum_i ||f_i||^2 - 2 ||sum_i f_i||^2.
  total = 2.0 * n * jnp.sum(f * f) - 2.0 * jnp.sum(jnp.sum(f, 0) ** 2)
  return jnp.maximum(total, 0.0) / (n * (n - 1) * c)


@register_loss("macos_contrastive")
def perceptual_contrastive_loss(*, object_a: jax.Array, object_b: jax.Array,
                                background_a: jax.Array,
                                background_b: jax.Array,
                                margin: Union[float, jax.Array] = MARGIN,
                                reduction: str = "mean") -> jax.Array:
  """Perceptual contrastive loss (eq. 8-10).

  Args:
    object_a: [B, c] F(I^o_A).
    object_b: [B, c] F(I^o_B).
    background_a: [B, c] F(I^b_A).
    background_b: [B, c] F(I^b_B).
    margin: m (2 in the paper), a number or a scalar array.
    reduction: 'mean' (eq. 10: the two figure-ground distances / 2c) or
      'sum' (/ c, the authors' code).

  Returns:
    Scalar mean over the batch of d+ + max(0, m - d-).
  """
  shapes = {a.shape for a in (object_a, object_b, background_a, background_b)}
  if len(shapes) != 1 or object_a.ndim != 2:
    raise ValueError(f"object/background features must all be [B, c], got "
                     f"{[a.shape for a in (object_a, object_b, background_a, background_b)]}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got "
                     f"{reduction!r}")
  c = object_a.shape[-1]
  sq = lambda u, v: jnp.sum((u - v) ** 2, axis=-1)
  d_pos = sq(object_a, object_b) / c
  d_neg = (sq(object_a, background_a) + sq(object_b, background_b)) / c
  if reduction == "mean":
    d_neg = 0.5 * d_neg
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
