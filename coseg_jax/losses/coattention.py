"""Losses of the co-attention CNN (Hsu, Lin and Chuang, IJCAI 2018).

A generator g predicts a co-attention map S_n in [0, 1] for every image I_n of
a collection; a fixed classifier f embeds the object image S_n * I_n and the
background image (1 - S_n) * I_n into c-dimensional features f_n^o and f_n^b.

Co-attention loss (paper eq. 3-6), over all ordered pairs n != m:

    L_c = sum_{n != m} l_c(n, m)                                       (3)
    l_c(n, m) = -log p(n, m),
    p(n, m) = exp(-d+_nm) / (exp(-d+_nm) + exp(-d-_nm))                (4)
    d+_nm = (1 / c) ||f_n^o - f_m^o||^2                                (5)
    d-_nm = (1 / 2c) (||f_n^o - f_n^b||^2 + ||f_m^o - f_m^b||^2)       (6)

d+ is the inter-image object distance (to be small); d- the intra-image
figure-ground distance of the two images (to be large). We evaluate
``-log p = softplus(d+ - d-)`` (``jnp.logaddexp(0, .)``), which never forms
``exp(-d)`` and stays finite for any distance. Pairwise distances are taken as
explicit differences ([N, N, c]), not via the Gram expansion, to avoid
cancellation when features are close; the diagonal n = m is masked out.
``squared=False`` uses the plain Euclidean distance instead (the paper's
squared form is the default; the gradient at a zero distance is then taken
as 0).

Note on the wording "object vs background": eq. 6 compares each object with
the background of *its own* image (intra-image separation), which is what is
implemented; nothing compares f_n^o with f_m^b.

Mask loss (paper Sec. 3.3, eq. 7): a binary cross-entropy between S_n and a
target that mixes two object masks chosen from unsupervised proposals:

    t = beta * M~_n + (1 - beta) * M_n,    beta = 0.95,
    l_m(n) = -(1 / |K|) sum_{k in K} [t log S_n(k) + (1 - t) log(1 - S_n(k))],

where M~_n is the proposal picked once from the stage-1 maps S~_n (at the end
of the first stage) and kept fixed for the whole second stage, and M_n is the
mask re-selected from the current map S_n (with the iterative multi-object
refinement) at every stage-2 epoch. Both masks are data: the target is built
under ``jax.lax.stop_gradient`` and only S_n receives gradient
(``target='paper'``, the default). The paper calls this bootstrapping after
Reed et al. (2015): the fixed early selection is the "label", the current
selection the model's own, slowly moving estimate.

``target='self_bootstrap'`` keeps this library's earlier form, Reed et al.'s
soft bootstrapping with the current selection as the label,
``t = beta * M_n + (1 - beta) * S_n``, with the gradient flowing through the
``(1 - beta) * S_n`` part (a minimum-entropy term that sharpens S). It needs
no fixed mask.

The paper's total objective is L_c + lambda * sum_n l_m(n) with lambda = 9
(eq. 1): apply lambda through :func:`coseg_jax.losses.compute_total_loss`,
e.g. ``weights={'coattention': 1.0, 'coattention_mask': 9.0}`` (and weight 0
for the mask loss in the first training stage).

Reductions: eq. 3 sums over ordered pairs and eq. 1 over images; eq. 7
averages over the pixels of an image (the 1/|K|). ``reduction='sum'`` with
``pixel_reduction='mean'`` is the paper's form; ``reduction='mean'`` (over
ordered pairs, over images) keeps the scale independent of the collection
batch size, and ``pixel_reduction='sum'`` (MatConvNet's loss layers sum over
pixels) weighs the mask term |K| times more. The relative weight lambda = 9
only matches the paper with its reductions; state the choice in the config.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from coseg_jax.losses.registry import register_loss

_REDUCTIONS = ("mean", "sum")
MASK_TARGETS = ("paper", "self_bootstrap")


def _check_reduction(fn, reduction):
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _distance(sq, squared):
  """sq: squared distances -> squared or plain distances (grad-safe at 0)."""
  if squared:
    return sq
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def coattention_pair_losses(
    *,
    object_features: jax.Array,
    background_features: jax.Array,
    squared: bool = True,
) -> jax.Array:
  """Per-pair co-attention losses l_c(n, m) = -log p(n, m) (eq. 4-6).

  Args:
    object_features: [N, c] features f(S_n * I_n) of the N images.
    background_features: [N, c] features f((1 - S_n) * I_n).
    squared: squared Euclidean distances (paper) or plain ones.

  Returns:
    [N, N] float32 matrix of l_c(n, m); the diagonal (n = m) is 0.
  """
  shape = jnp.shape(object_features)
  if len(shape) != 2:
    raise ValueError(
        f"coattention_loss: object_features must be [N, c], got shape {shape}")
  if jnp.shape(background_features) != shape:
    raise ValueError(
        f"coattention_loss: background_features shape "
        f"{jnp.shape(background_features)} must equal object_features shape "
        f"{shape}")
  n, c = shape
  if n < 2:
    raise ValueError(
        f"coattention_loss: needs at least 2 images to form pairs, got N={n}")
  fo = jnp.asarray(object_features, jnp.float32)
  fb = jnp.asarray(background_features, jnp.float32)
  obj_sq = jnp.sum(jnp.square(fo[:, None, :] - fo[None, :, :]), -1)  # [N, N]
  fg_bg_sq = jnp.sum(jnp.square(fo - fb), -1)  # [N]
  d_pos = _distance(obj_sq, squared) / c
  intra = _distance(fg_bg_sq, squared) / c
  d_neg = 0.5 * (intra[:, None] + intra[None, :])
  off_diagonal = ~jnp.eye(n, dtype=bool)
  # -log(e^-a / (e^-a + e^-b)) = log(1 + e^(a - b)).
  return jnp.where(off_diagonal, jnp.logaddexp(0.0, d_pos - d_neg), 0.0)


@register_loss("coattention")
def coattention_loss(
    *,
    object_features: jax.Array,
    background_features: jax.Array,
    squared: bool = True,
    reduction: str = "mean",
) -> jax.Array:
  """Co-attention loss over all ordered pairs of a collection (eq. 3-6).

  Args:
    object_features: [N, c] features f(S_n * I_n), N >= 2.
    background_features: [N, c] features f((1 - S_n) * I_n).
    squared: squared Euclidean distances (paper) or plain ones.
    reduction: 'mean' over the N (N - 1) ordered pairs, or 'sum' (eq. 3).

  Returns:
    Scalar float32 loss.
  """
  _check_reduction("coattention_loss", reduction)
  pair = coattention_pair_losses(object_features=object_features,
                                 background_features=background_features,
                                 squared=squared)
  total = jnp.sum(pair)
  if reduction == "sum":
    return total
  n = pair.shape[0]
  return total / (n * (n - 1))


@register_loss("coattention_mask")
def mask_loss(
    *,
    object_mask: jax.Array,
    attention: Optional[jax.Array] = None,
    attention_logits: Optional[jax.Array] = None,
    fixed_mask: Optional[jax.Array] = None,
    beta: float = 0.95,
    target: str = "paper",
    valid: Optional[jax.Array] = None,
    reduction: str = "mean",
    eps: float = 1e-6,
    pixel_reduction: str = "mean",
) -> jax.Array:
  """Mask loss between co-attention maps and selected proposals (eq. 7).

  Give exactly one of ``attention`` (probabilities S, clipped to
  [eps, 1 - eps] before the logs) or ``attention_logits`` (the pre-sigmoid
  map; preferred: exact, log-sigmoid form, no clipping).

  Args:
    object_mask: [N, ...] M_n, the mask selected from the current maps (in
      {0, 1}, or [0, 1]).
    attention: [N, ...] co-attention maps S_n in [0, 1], same shape.
    attention_logits: [N, ...] logits of S_n, same shape.
    fixed_mask: [N, ...] M~_n, the proposal picked once from the stage-1
      maps (``target='paper'``; must be None for 'self_bootstrap').
    beta: weight of M~_n ('paper') or of M_n ('self_bootstrap') in the
      target (paper: 0.95).
    target: 'paper': t = stop_gradient(beta M~ + (1 - beta) M) (eq. 7);
      'self_bootstrap': t = beta M + (1 - beta) S, gradient through S (see
      the module docstring).
    valid: optional [N, ...] bool mask of pixels that count (broadcastable).
    reduction: per-image loss, then 'mean' or 'sum' over the N images. An
      image without valid pixels contributes 0.
    eps: clipping of ``attention`` (unused with ``attention_logits``).
    pixel_reduction: the per-image loss is the 'mean' over valid pixels (eq.
      7's 1/|K|, the paper) or their 'sum' (MatConvNet's loss layers).

  Returns:
    Scalar float32 loss.
  """
  _check_reduction("mask_loss", reduction)
  _check_reduction("mask_loss pixel", pixel_reduction)
  if target not in MASK_TARGETS:
    raise ValueError(f"mask_loss: target must be one of {MASK_TARGETS}, got "
                     f"{target!r}")
  if (attention is None) == (attention_logits is None):
    raise ValueError(
        "mask_loss: give exactly one of attention= or attention_logits=")
  pred = attention if attention is not None else attention_logits
  name = "attention" if attention is not None else "attention_logits"
  shape = jnp.shape(pred)
  if jnp.shape(object_mask) != shape:
    raise ValueError(
        f"mask_loss: object_mask shape {jnp.shape(object_mask)} must equal "
        f"{name} shape {shape}")
  if target == "paper":
    if fixed_mask is None:
      raise ValueError(
          "mask_loss: target='paper' needs fixed_mask= (M~, the proposal "
          "picked from the stage-1 maps); target='self_bootstrap' does not")
    if jnp.shape(fixed_mask) != shape:
      raise ValueError(
          f"mask_loss: fixed_mask shape {jnp.shape(fixed_mask)} must equal "
          f"{name} shape {shape}")
  elif fixed_mask is not None:
    raise ValueError("mask_loss: target='self_bootstrap' takes no fixed_mask")
  if len(shape) < 1:
    raise ValueError(f"mask_loss: {name} needs a leading image axis")
  pred = jnp.asarray(pred, jnp.float32)
  if attention is not None:
    s = jnp.clip(pred, eps, 1.0 - eps)
    log_s, log_1ms = jnp.log(s), jnp.log1p(-s)
  else:
    s = jax.nn.sigmoid(pred)
    log_s, log_1ms = jax.nn.log_sigmoid(pred), jax.nn.log_sigmoid(-pred)
  current = jnp.asarray(object_mask, jnp.float32)
  if target == "paper":
    # Eq. 7: both masks are selections (data), so the target is a constant
    # of the step; stop_gradient also keeps d loss / d mask exactly 0 when a
    # caller differentiates with respect to the masks.
    t = jax.lax.stop_gradient(
        beta * jnp.asarray(fixed_mask, jnp.float32) + (1.0 - beta) * current)
  else:
    t = beta * current + (1.0 - beta) * s
  per_pixel = -(t * log_s + (1.0 - t) * log_1ms)
  if valid is None:
    mask = jnp.ones(shape, bool)
  else:
    try:
      mask = jnp.broadcast_to(jnp.asarray(valid), shape).astype(bool)
    except ValueError:
      raise ValueError(
          f"mask_loss: valid shape {jnp.shape(valid)} does not broadcast to "
          f"{name} shape {shape}") from None
  per_pixel = jnp.where(mask, per_pixel, 0.0)
  n = shape[0]
  per_image = jnp.sum(per_pixel.reshape(n, -1), -1)
  if pixel_reduction == "mean":
    per_image = per_image / jnp.maximum(
        jnp.sum(mask.reshape(n, -1), -1, dtype=jnp.float32), 1.0)
  return jnp.sum(per_image) if reduction == "sum" else jnp.mean(per_image)
