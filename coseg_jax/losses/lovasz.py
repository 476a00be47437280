"""Lovász hinge and Lovász-Softmax losses (Berman et al., CVPR 2018).

The Lovász extension of the Jaccard loss is piecewise linear in the pixel
errors: sort the errors in decreasing order, and weight the k-th largest by the
increase of the Jaccard loss when the k-th pixel joins the mispredicted set
(:func:`lovasz_grad`). We follow the semantics of the authors' public PyTorch
code (bermanmaxim/LovaszSoftmax):

* binary hinge: errors ``1 - logit * (2y - 1)``, loss
  ``dot(relu(sorted errors), lovasz_grad(sorted labels))``; ``per_image=True``
  by default (mean over images of each image's loss).
* softmax: for class c, errors ``|fg_c - p_c|`` with ``fg_c = [label == c]``;
  loss = mean over the classes that count of ``dot(sorted errors,
  lovasz_grad(sorted fg_c))``. ``classes='present'`` counts the classes present
  in the (valid) labels, ``'all'`` every class, a list exactly the listed ones.
  ``per_image=False`` by default. No class counting gives loss 0 (the
  reference's empty mean).
* one-class (sigmoid) case: :func:`lovasz_softmax_binary` builds the two-class
  probabilities ``[1 - sigmoid(x), sigmoid(x)]`` from one logit per pixel and
  applies the softmax loss (what CycleSegNet trains with).

Choices where the reference uses dynamic shapes or leaves a gap:

* Ignored pixels (``labels == ignore``) cannot be removed under ``jit``.
  Instead they get sort key ``-inf`` (so they sort after every valid pixel),
  label 0 and error value 0. After the last valid pixel the intersection term
  of :func:`lovasz_grad` is already 0, so every ignored position gets weight
  exactly 0: the loss equals the reference that drops them (tested).
* An image with no valid pixel contributes 0 and still counts in the mean over
  images (the reference hinge does this; its softmax code breaks there).
* The value is independent of how ties are ordered (a property of the Lovász
  extension); the gradient is not. The reference returns the gradient of
  whatever order its sort left the tied errors in. Here a block of equal
  errors is ordered positives first (a fixed order, so the gradient is the
  extension's gradient for that order and does not depend on the sort),
  and the pixels of one label within the block share the mean of their
  weights (the mean over the orders of those interchangeable pixels).
  Untied pixels get the reference's gradient exactly.
* Cumulative label counts are int32, so ``lovasz_grad`` is exact for any image
  size (float32 cumsums lose integers beyond 2**24 pixels).
* Inputs are cast to float32: losses are always computed in float32.

How the sort is done (:func:`lovasz_weights`): the loss needs, for each
pixel, the weight of its rank, and the labels in sorted order. Sorting the
errors together with the labels and the tangents (a multi-operand
``lax.sort``, as autodiff of a sort gives) was the slowest part of a
CycleSegNet train step on XLA:CPU (about 300 ms for 8 x 224 x 224 pixels).
XLA:CPU sorts one int32 operand with a plain comparison several times
faster than one float operand (JAX's float comparator orders NaN and -0,
which takes the slow path) and than several operands. So the errors are
mapped to int32 keys of the same order and sorted alone; a binary search
gives each pixel the block [l, r) of positions holding its key; the labels
are added at the block starts, and a cumulative sum gives exact label
counts before every block. The Jaccard loss after the first i sorted
pixels depends only on i and those counts, so with the block's n1
positives first, a positive pixel's weight is ``(J_{l+n1} - J_l) / n1``
and another's ``(J_r - J_{l+n1}) / (r - l - n1)`` (``lovasz_grad`` at its
rank when it is untied).
The weights are constants of the loss (the Lovász extension is linear in
the errors for a fixed order), so the loss is ``dot(errors, weights)``
and autodiff never differentiates the sort. On the 2-core CPU,
value-and-gradient of ``lovasz_softmax_binary`` over [8, 224, 224] went
from about 250 ms to about 45 ms.

Layout: the leading axis indexes images; every other axis (except the trailing
class axis of ``probs``) indexes pixels, so [B, H, W], [B, H, W, 1] logits and
[B, K, H, W, 1] groups all work (for groups, ``per_image`` then means per
group: reshape to [B * K, ...] for per-image).
"""

from typing import Optional, Sequence, Union

import jax
from jax import lax
import jax.numpy as jnp

from coseg_jax.losses.registry import register_loss

ClassSpec = Union[str, Sequence[int]]


def _jaccard_after(count: jax.Array, total: jax.Array,
                   num: jax.Array) -> jax.Array:
  """Jaccard loss when the first ``num`` sorted pixels are the mispredicted set.

  Args:
    count: [...] int32: positive pixels among those first ``num`` pixels.
    total: int32 broadcastable to ``count``: positive pixels in all.
    num: int32 broadcastable to ``count``: how many sorted pixels are
      mispredicted.

  Returns:
    [...] float32 ``1 - |gt minus top| / |gt union top|``, and 0 where
    ``num`` is 0 (nothing mispredicted, even with no positive pixel).
  """
  intersection = total - count
  union = jnp.maximum(total + num - count, 1)
  jaccard = 1.0 - intersection.astype(jnp.float32) / union.astype(jnp.float32)
  return jnp.where(num == 0, 0.0, jaccard)


def lovasz_grad(gt_sorted: jax.Array) -> jax.Array:
  """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors.

  Args:
    gt_sorted: [P] binary ground truth ({0, 1}, any numeric or bool dtype),
      ordered by decreasing error.

  Returns:
    [P] float32 weights: ``J_k - J_{k-1}`` where ``J_k = 1 - |gt \\ top_k| /
    |gt U top_k|`` is the Jaccard loss when the k largest errors are the
    mispredicted pixels (and ``J_0 = 0``).
  """
  gt = gt_sorted.astype(jnp.int32)
  num = jnp.arange(1, gt.shape[0] + 1, dtype=jnp.int32)
  jaccard = _jaccard_after(jnp.cumsum(gt), jnp.sum(gt), num)
  return jnp.concatenate([jaccard[:1], jnp.diff(jaccard)])


def _order_key(errors: jax.Array, valid: jax.Array) -> jax.Array:
  """int32 keys whose ascending order is the errors' descending order.

  Float32 bit patterns order like sign-magnitude integers; flipping the
  magnitude bits of negative values makes them order like two's-complement
  int32. Adding 0.0 first turns -0.0 into +0.0 so the two zeros tie, as
  they compare. Invalid pixels get the largest key and sort last.
  """
  bits = lax.bitcast_convert_type(-errors + 0.0, jnp.int32)
  key = bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))
  return jnp.where(valid, key, jnp.iinfo(jnp.int32).max)


def lovasz_weights(errors: jax.Array, labels: jax.Array,
                   valid: jax.Array) -> jax.Array:
  """Per-pixel Lovász weights: ``lovasz_grad`` of each label set, unsorted.

  Pixel p gets ``lovasz_grad(labels sorted by decreasing error)[rank(p)]``,
  where equal errors are ordered positives first and the pixels of one
  label within a block of equal errors share the mean of their weights
  (module docstring). Ignored pixels get weight 0.

  Args:
    errors: [P] float32 per-pixel errors (no gradient flows through here).
    labels: [P, L] binary label sets sharing the order, 0 where ~valid.
    valid: [P] bool.

  Returns:
    [P, L] float32 weights, constants (``stop_gradient``).
  """
  key = _order_key(lax.stop_gradient(errors), valid)
  sorted_key = lax.sort(key)
  lo = jnp.searchsorted(sorted_key, key, side="left", method="scan")
  hi = jnp.searchsorted(sorted_key, key, side="right", method="scan")
  labels = labels.astype(jnp.int32)
  at_start = jnp.zeros_like(labels).at[lo].add(labels)
  # before[i]: positives among the first i sorted pixels, exact at every
  # block boundary (the only places it is read).
  before = jnp.concatenate(
      [jnp.zeros_like(labels[:1]), jnp.cumsum(at_start, axis=0)], axis=0)
  total = jnp.sum(labels, axis=0)  # [L]
  # Within a block of ties the positives come first: n1 positives, then
  # the n0 others; each pixel gets the mean weight of its label's run.
  lo2, hi2 = lo[:, None], hi[:, None]
  before_lo = before[lo]  # [P, L]
  before_hi = before[hi]
  n1 = before_hi - before_lo
  n0 = hi2 - lo2 - n1
  j_lo = _jaccard_after(before_lo, total, lo2)
  j_hi = _jaccard_after(before_hi, total, hi2)
  j_mid = _jaccard_after(before_hi, total, lo2 + n1)
  weights = jnp.where(
      labels == 1, (j_mid - j_lo) / jnp.maximum(n1, 1).astype(jnp.float32),
      (j_hi - j_mid) / jnp.maximum(n0, 1).astype(jnp.float32))
  return lax.stop_gradient(jnp.where(valid[:, None], weights, 0.0))


def _lovasz_flat(errors, gt, valid, *, hinge):
  """Lovász loss of one flat set of pixels, ignoring ``~valid`` ones.

  Args:
    errors: [P] float32 per-pixel errors.
    gt: [P] binary ground truth.
    valid: [P] bool.
    hinge: apply relu to the errors (the hinge variant).

  Returns:
    Scalar float32 loss; 0 when no pixel is valid.
  """
  gt = jnp.where(valid, gt.astype(jnp.int32), 0)
  weights = lovasz_weights(errors, gt[:, None], valid)[:, 0]
  values = jnp.where(valid, errors, 0.0)
  if hinge:
    values = jax.nn.relu(values)
  return jnp.dot(values, weights)


def _valid_mask(labels, ignore):
  if ignore is None:
    return jnp.ones(labels.shape, bool)
  return labels != ignore


def _check_same_shape(logits, labels, fn):
  if logits.shape != labels.shape:
    raise ValueError(
        f"{fn}: labels shape {labels.shape} must equal logits shape "
        f"{logits.shape}")
  if logits.ndim < 1:
    raise ValueError(f"{fn}: logits need a leading image axis, got a scalar")


@register_loss("lovasz_hinge")
def lovasz_hinge(
    *,
    logits: jax.Array,
    labels: jax.Array,
    per_image: bool = True,
    ignore: Optional[int] = None,
) -> jax.Array:
  """Binary Lovász hinge loss.

  Args:
    logits: [B, ...] real-valued foreground scores (one per pixel).
    labels: [B, ...] same shape, values in {0, 1} (or ``ignore``).
    per_image: if True, the mean over images of each image's loss; if False,
      one loss over all pixels of the batch.
    ignore: label value of void pixels, which contribute nothing.

  Returns:
    Scalar float32 loss.
  """
  _check_same_shape(logits, labels, "lovasz_hinge")
  logits = logits.astype(jnp.float32)
  valid = _valid_mask(labels, ignore)
  gt = jnp.where(valid, labels, 0).astype(jnp.float32)
  errors = 1.0 - logits * (2.0 * gt - 1.0)
  flat = lambda e, g, v: _lovasz_flat(e, g, v, hinge=True)
  if per_image:
    b = logits.shape[0]
    losses = jax.vmap(flat)(errors.reshape(b, -1), gt.reshape(b, -1),
                            valid.reshape(b, -1))
    return jnp.mean(losses)
  return flat(errors.reshape(-1), gt.reshape(-1), valid.reshape(-1))


def _class_weights(classes: ClassSpec, num_classes: int) -> Optional[jax.Array]:
  """Static [C] indicator of the classes that count; None for 'present'."""
  if isinstance(classes, str):
    if classes == "present":
      return None
    if classes == "all":
      return jnp.ones((num_classes,), jnp.float32)
    raise ValueError(
        f"lovasz_softmax: classes must be 'present', 'all' or a list of class "
        f"indices, got {classes!r}")
  classes = list(classes)
  bad = [c for c in classes if not 0 <= int(c) < num_classes]
  if bad:
    raise ValueError(
        f"lovasz_softmax: classes {bad} out of range for {num_classes} classes")
  indicator = [0.0] * num_classes
  for c in classes:
    indicator[int(c)] = 1.0
  return jnp.asarray(indicator, jnp.float32)


def _lovasz_softmax_flat(probs, labels, valid, class_weights):
  """probs [P, C], labels [P] int, valid [P] -> scalar (mean over classes)."""
  num_classes = probs.shape[-1]
  fg = labels[:, None] == jnp.arange(num_classes)[None, :]  # [P, C]
  fg = fg & valid[:, None]
  errors = jnp.abs(fg.astype(jnp.float32) - probs)
  per_class = jax.vmap(
      lambda e, g: _lovasz_flat(e, g, valid, hinge=False),
      in_axes=(1, 1))(errors, fg)  # [C]
  if class_weights is None:  # 'present': classes with a valid pixel.
    counts = jnp.any(fg, axis=0).astype(jnp.float32)
  else:
    counts = class_weights
  return jnp.sum(counts * per_class) / jnp.maximum(jnp.sum(counts), 1.0)


@register_loss("lovasz_softmax")
def lovasz_softmax(
    *,
    probs: jax.Array,
    labels: jax.Array,
    classes: ClassSpec = "present",
    per_image: bool = False,
    ignore: Optional[int] = None,
) -> jax.Array:
  """Multi-class Lovász-Softmax loss.

  Args:
    probs: [B, ..., C] class probabilities (softmax output), channels-last.
    labels: [B, ...] integer labels in [0, C) (or ``ignore``).
    classes: 'present' (classes present in the valid labels count), 'all', or
      a list of class indices (exactly those count, present or not).
    per_image: if True, mean over images of each image's loss (classes
      'present' in that image); if False, one loss over the whole batch.
    ignore: label value of void pixels, which contribute nothing.

  Returns:
    Scalar float32 loss.
  """
  if probs.shape[:-1] != labels.shape:
    raise ValueError(
        f"lovasz_softmax: labels shape {labels.shape} must equal probs shape "
        f"without the class axis {probs.shape[:-1]}")
  if probs.ndim < 2:
    raise ValueError(
        f"lovasz_softmax: probs must be [B, ..., C], got shape {probs.shape}")
  num_classes = probs.shape[-1]
  class_weights = _class_weights(classes, num_classes)
  probs = probs.astype(jnp.float32)
  valid = _valid_mask(labels, ignore)
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  flat = lambda p, l, v: _lovasz_softmax_flat(p, l, v, class_weights)
  if per_image:
    b = probs.shape[0]
    losses = jax.vmap(flat)(probs.reshape(b, -1, num_classes),
                            labels.reshape(b, -1), valid.reshape(b, -1))
    return jnp.mean(losses)
  return flat(probs.reshape(-1, num_classes), labels.reshape(-1),
              valid.reshape(-1))


@register_loss("lovasz_softmax_binary")
def lovasz_softmax_binary(
    *,
    logits: jax.Array,
    labels: jax.Array,
    classes: ClassSpec = "present",
    per_image: bool = False,
    ignore: Optional[int] = None,
) -> jax.Array:
  """Lovász-Softmax on one foreground logit per pixel (the sigmoid case).

  Equals :func:`lovasz_softmax` on the two-class probabilities
  ``[1 - sigmoid(x), sigmoid(x)]`` (background is class 0, foreground class 1).
  Both classes have the same per-pixel errors (``sigmoid(-x)`` on foreground
  pixels, ``sigmoid(x)`` on background ones, computed without cancellation),
  so a single sort serves both classes: half the cost of the generic path.

  Args:
    logits: [B, ...] foreground logits (e.g. [B, H, W, 1] mask logits).
    labels: [B, ...] same shape, values in {0, 1} (or ``ignore``).
    classes: as in :func:`lovasz_softmax`, over the classes {0: bg, 1: fg}.
    per_image: as in :func:`lovasz_softmax`.
    ignore: label value of void pixels, which contribute nothing.

  Returns:
    Scalar float32 loss.
  """
  _check_same_shape(logits, labels, "lovasz_softmax_binary")
  class_weights = _class_weights(classes, 2)
  logits = logits.astype(jnp.float32)
  valid = _valid_mask(labels, ignore)
  fg = (labels == 1) & valid
  # |fg - sigmoid(x)| for the foreground class; the background class has the
  # same errors, |(1 - fg) - sigmoid(-x)|, so one sort serves both classes.
  errors = jnp.where(fg, jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits))

  def flat(e, f, v):
    weights = lovasz_weights(e, jnp.stack([v & ~f, f], axis=-1), v)
    per_class = jnp.dot(jnp.where(v, e, 0.0), weights)  # [bg, fg]
    if class_weights is None:  # 'present'.
      counts = jnp.stack([jnp.any(v & ~f), jnp.any(f)]).astype(jnp.float32)
    else:
      counts = class_weights
    return jnp.sum(counts * per_class) / jnp.maximum(jnp.sum(counts), 1.0)

  if per_image:
    b = logits.shape[0]
    return jnp.mean(jax.vmap(flat)(errors.reshape(b, -1), fg.reshape(b, -1),
                                   valid.reshape(b, -1)))
  return flat(errors.reshape(-1), fg.reshape(-1), valid.reshape(-1))
