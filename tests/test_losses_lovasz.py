"""Lovász losses against a float64 NumPy port of the reference semantics.

The NumPy reference below removes ignored pixels with boolean indexing (dynamic
shapes), exactly as bermanmaxim/LovaszSoftmax does, so agreement proves the
static-shape masking in ``coseg_jax.losses.lovasz`` contributes nothing.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optional_import
from coseg_jax import losses
from coseg_jax.losses import lovasz
from numeric_helpers import fd_grad

RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------
# NumPy float64 reference.
def np_lovasz_grad(gt):
  gt = np.asarray(gt, np.float64)
  gts = gt.sum()
  inter = gts - np.cumsum(gt)
  union = gts + np.cumsum(1.0 - gt)
  jac = 1.0 - inter / union
  if len(gt) > 1:
    jac[1:] = jac[1:] - jac[:-1]
  return jac


def np_hinge_flat(logits, labels, order="stable"):
  if len(labels) == 0:
    return 0.0
  errors = 1.0 - logits * (2.0 * labels - 1.0)
  perm = _desc_perm(errors, order)
  return float(np.dot(np.maximum(errors[perm], 0.0),
                      np_lovasz_grad(labels[perm])))


def _desc_perm(errors, order):
  """Descending order; ties broken first-come ('stable') or last-come."""
  if order == "stable":
    return np.argsort(-errors, kind="stable")
  rev = np.argsort(-errors[::-1], kind="stable")
  return len(errors) - 1 - rev


def np_lovasz_hinge(logits, labels, per_image=True, ignore=None,
                    order="stable"):
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  def flat(lg, lb):
    lg, lb = lg.reshape(-1), lb.reshape(-1)
    if ignore is not None:
      keep = lb != ignore
      lg, lb = lg[keep], lb[keep]
    return np_hinge_flat(lg, lb.astype(np.float64), order)
  if per_image:
    return float(np.mean([flat(lg, lb) for lg, lb in zip(logits, labels)]))
  return flat(logits, labels)


def np_softmax_flat(probs, labels, classes, order="stable"):
  if len(labels) == 0:
    return 0.0
  c_total = probs.shape[1]
  todo = list(range(c_total)) if classes in ("all", "present") else classes
  out = []
  for c in todo:
    fg = (labels == c).astype(np.float64)
    if classes == "present" and fg.sum() == 0:
      continue
    errors = np.abs(fg - probs[:, c])
    perm = _desc_perm(errors, order)
    out.append(np.dot(errors[perm], np_lovasz_grad(fg[perm])))
  return float(np.mean(out)) if out else 0.0


def np_lovasz_softmax(probs, labels, classes="present", per_image=False,
                      ignore=None, order="stable"):
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  c = probs.shape[-1]
  def flat(p, lb):
    p, lb = p.reshape(-1, c), lb.reshape(-1)
    if ignore is not None:
      keep = lb != ignore
      p, lb = p[keep], lb[keep]
    return np_softmax_flat(p, lb, classes, order)
  if per_image:
    return float(np.mean([flat(p, lb) for p, lb in zip(probs, labels)]))
  return flat(probs, labels)


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------
def _binary_inputs(seed, shape=(3, 5, 6), ignore=None):
  rng = np.random.RandomState(seed)
  logits = rng.randn(*shape).astype(np.float32) * 2.0
  labels = (rng.rand(*shape) > 0.5).astype(np.int32)
  if ignore is not None:
    labels = np.where(rng.rand(*shape) < 0.25, ignore, labels)
  return logits, labels


def test_lovasz_grad_matches_reference():
  rng = np.random.RandomState(0)
  for p in (1, 2, 7, 50):
    gt = (rng.rand(p) > 0.4).astype(np.int32)
    np.testing.assert_allclose(lovasz.lovasz_grad(jnp.asarray(gt)),
                               np_lovasz_grad(gt), rtol=RTOL, atol=ATOL)
  # No foreground at all: weight 1 on the largest error, 0 elsewhere.
  np.testing.assert_array_equal(lovasz.lovasz_grad(jnp.zeros(4, jnp.int32)),
                                [1, 0, 0, 0])


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_hinge_matches_reference(per_image, ignore):
  logits, labels = _binary_inputs(1, ignore=ignore)
  fn = jax.jit(lambda lg, lb: lovasz.lovasz_hinge(
      logits=lg, labels=lb, per_image=per_image, ignore=ignore))
  got = fn(logits, labels)
  want = np_lovasz_hinge(logits, labels, per_image=per_image, ignore=ignore)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert got.dtype == jnp.float32


def test_lovasz_hinge_vmap_over_batches():
  logits, labels = _binary_inputs(2, shape=(4, 2, 5, 5), ignore=255)
  got = jax.vmap(lambda lg, lb: lovasz.lovasz_hinge(
      logits=lg, labels=lb, per_image=True, ignore=255))(logits, labels)
  want = [np_lovasz_hinge(lg, lb, True, 255) for lg, lb in zip(logits, labels)]
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_reference_modes_differ_on_the_test_inputs():
  # Guards the comparisons above against inputs where modes coincide.
  logits, labels = _binary_inputs(1, ignore=255)
  assert abs(np_lovasz_hinge(logits, labels, True, 255) -
             np_lovasz_hinge(logits, labels, False, 255)) > 1e-3
  probs, labels = _multiclass_inputs(7, ignore=255)
  values = [np_lovasz_softmax(probs, labels, c, p, 255)
            for c in ("present", "all", [0, 3], [2]) for p in (True, False)]
  assert np.min(np.abs(np.subtract.outer(values, values))
                + np.eye(len(values))) > 1e-4


def test_lovasz_hinge_with_ties_independent_of_tie_order():
  rng = np.random.RandomState(4)
  # Logits in {-1, 0, 1}: errors take 3 values, so almost everything ties.
  logits = rng.randint(-1, 2, size=(2, 6, 6)).astype(np.float32)
  labels = (rng.rand(2, 6, 6) > 0.5).astype(np.int32)
  labels[0, 0, :3] = 255
  for per_image in (True, False):
    want_a = np_lovasz_hinge(logits, labels, per_image, 255, order="stable")
    want_b = np_lovasz_hinge(logits, labels, per_image, 255, order="reverse")
    np.testing.assert_allclose(want_a, want_b, rtol=1e-12)
    got = jax.jit(lambda lg, lb, p=per_image: lovasz.lovasz_hinge(
        logits=lg, labels=lb, per_image=p, ignore=255))(logits, labels)
    np.testing.assert_allclose(got, want_a, rtol=RTOL, atol=ATOL)


def _np_hinge_grad(logits, labels, positives_first=True):
  """d(hinge loss of one flat image)/d logits, float64, ties by label."""
  errors = 1.0 - logits * (2.0 * labels - 1.0)
  tie_key = -labels if positives_first else labels
  perm = np.lexsort((tie_key, -errors))  # errors down, then by label
  w = np.zeros_like(errors)
  w[perm] = np_lovasz_grad(labels[perm])
  return w * (errors > 0) * -(2.0 * labels - 1.0)


def test_lovasz_hinge_gradient_at_ties_orders_positives_first():
  rng = np.random.RandomState(8)
  # Each error value twice, once on a positive and once on a negative
  # pixel: the tie order decides both pixels' weights.
  base = rng.permutation(20).astype(np.float32) * 0.1 - 0.9
  labels = np.concatenate([np.ones(20, np.int32), np.zeros(20, np.int32)])
  logits = np.concatenate([base, -base])  # equal errors per base value
  perm = rng.permutation(40)
  logits, labels = logits[perm], labels[perm]
  g = jax.grad(lambda lg: lovasz.lovasz_hinge(
      logits=lg[None], labels=labels[None]))(jnp.asarray(logits))
  want = _np_hinge_grad(logits.astype(np.float64), labels)
  other = _np_hinge_grad(logits.astype(np.float64), labels, False)
  assert np.abs(want - other).max() > 1e-3  # the tie order matters here
  np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL)


def test_lovasz_weights_of_untied_errors_are_lovasz_grad_at_each_rank():
  rng = np.random.RandomState(9)
  errors = rng.randn(64).astype(np.float32)
  errors[:4] = [0.0, -0.0, 3.0, -3.0]  # -0.0 ties with 0.0
  labels = (rng.rand(64, 2) > 0.5).astype(np.int32)
  labels[:2] = [[1, 0], [0, 1]]  # the tie: positive first in either set
  valid = rng.rand(64) > 0.2
  valid[:2] = True
  labels[~valid] = 0
  got = np.asarray(lovasz.lovasz_weights(
      jnp.asarray(errors), jnp.asarray(labels), jnp.asarray(valid)))
  assert np.all(got[~valid] == 0)
  keep = np.flatnonzero(valid)
  for c in range(2):
    perm = keep[np.lexsort((-labels[keep, c], -errors[keep]))]
    want = np.zeros(64)
    want[perm] = np_lovasz_grad(labels[perm, c])
    np.testing.assert_allclose(got[:, c], want, rtol=RTOL, atol=ATOL)


def test_lovasz_weights_share_within_a_label_of_a_tie():
  errors = jnp.asarray([0.5, 0.5, 0.5, 0.5, 0.9, 0.1], jnp.float32)
  labels = jnp.asarray([[1], [0], [1], [0], [0], [1]], jnp.int32)
  got = np.asarray(lovasz.lovasz_weights(errors, labels,
                                         jnp.ones(6, bool)))[:, 0]
  # Order: 0.9 (neg), then the tie as pos, pos, neg, neg, then 0.1 (pos).
  ref = np_lovasz_grad(np.array([0, 1, 1, 0, 0, 1]))
  want = [(ref[1] + ref[2]) / 2, (ref[3] + ref[4]) / 2] * 2 + [ref[0], ref[5]]
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert got[0] != got[1]


def test_lovasz_losses_sort_one_int32_operand():
  # The fast path (module docstring): one single-operand int32 sort per
  # image, in the forward pass and under autodiff alike.
  logits, labels = _binary_inputs(3, shape=(2, 8, 8))
  fns = [lambda lg: lovasz.lovasz_hinge(logits=lg, labels=labels),
         lambda lg: lovasz.lovasz_softmax_binary(logits=lg, labels=labels)]
  for fn in fns:
    hlo = jax.jit(jax.value_and_grad(fn)).lower(
        jnp.asarray(logits)).compile().as_text()
    sorts = [line for line in hlo.splitlines() if " sort(" in line]
    assert len(sorts) == 1, sorts
    # One s32 result, not a tuple: one operand.
    assert re.search(r"= s32\[[0-9,]+\]\{[0-9,]+\} sort\(", sorts[0]), (
        sorts[0])


def test_lovasz_hinge_ignored_pixels_get_zero_gradient_and_empty_image():
  logits, labels = _binary_inputs(5, shape=(2, 4, 4))
  labels[1] = 255  # Second image entirely void.
  labels[0, 0, 0] = 255
  f = lambda lg: lovasz.lovasz_hinge(logits=lg, labels=labels, ignore=255)
  value, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(logits))
  g = np.asarray(g)
  assert np.all(g[1] == 0) and g[0, 0, 0] == 0
  # The empty image contributes 0 but counts in the mean over images.
  want = np_lovasz_hinge(logits[:1], labels[:1], True, 255) / 2
  np.testing.assert_allclose(value, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(
      lovasz.lovasz_hinge(logits=logits[1:], labels=labels[1:], ignore=255), 0)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_hinge_gradient_vs_finite_differences(per_image):
  rng = np.random.RandomState(6)
  shape = (2, 3, 4)
  # Distinct, well-separated errors: no ties, no kink within the FD step.
  logits = (rng.permutation(np.prod(shape)).reshape(shape) * 0.1 - 1.2
            + 0.013).astype(np.float64)
  labels = (rng.rand(*shape) > 0.5).astype(np.int32)
  labels[0, 0, 0] = 255
  g = jax.jit(jax.grad(lambda lg: lovasz.lovasz_hinge(
      logits=lg, labels=labels, per_image=per_image, ignore=255)))(
          jnp.asarray(logits, jnp.float32))
  want = fd_grad(lambda lg: np_lovasz_hinge(lg, labels, per_image, 255), logits)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
  assert np.abs(want).sum() > 0


def _multiclass_inputs(seed, shape=(3, 4, 5), c=4, ignore=None):
  rng = np.random.RandomState(seed)
  probs = np_softmax(rng.randn(*shape, c)).astype(np.float32)
  # Class 3 never appears: 'present' and 'all' then differ.
  labels = rng.randint(0, c - 1, size=shape).astype(np.int32)
  if ignore is not None:
    labels = np.where(rng.rand(*shape) < 0.25, ignore, labels)
  return probs, labels


@pytest.mark.parametrize("classes", ["present", "all", [0, 3], [2]])
@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_softmax_matches_reference(classes, per_image):
  probs, labels = _multiclass_inputs(7, ignore=255)
  got = jax.jit(lambda p, lb: lovasz.lovasz_softmax(
      probs=p, labels=lb, classes=classes, per_image=per_image, ignore=255))(
          probs, labels)
  want = np_lovasz_softmax(probs, labels, classes, per_image, 255)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)



def test_lovasz_softmax_vmap_and_ties():
  rng = np.random.RandomState(9)
  # Probabilities on a coarse grid: many tied errors.
  raw = rng.randint(1, 4, size=(3, 2, 4, 4, 3)).astype(np.float64)
  probs = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)
  labels = rng.randint(0, 3, size=(3, 2, 4, 4)).astype(np.int32)
  got = jax.vmap(lambda p, lb: lovasz.lovasz_softmax(
      probs=p, labels=lb, per_image=True))(probs, labels)
  for i in range(3):
    want_a = np_lovasz_softmax(probs[i], labels[i], per_image=True)
    want_b = np_lovasz_softmax(probs[i], labels[i], per_image=True,
                               order="reverse")
    np.testing.assert_allclose(want_a, want_b, rtol=1e-12)
    np.testing.assert_allclose(got[i], want_a, rtol=RTOL, atol=ATOL)


def test_lovasz_softmax_empty_image_contributes_zero():
  probs, labels = _multiclass_inputs(10, shape=(2, 3, 3))
  labels[0] = 255
  got, g = jax.jit(jax.value_and_grad(lambda p: lovasz.lovasz_softmax(
      probs=p, labels=labels, classes="all", per_image=True, ignore=255)))(
          jnp.asarray(probs))
  want = np_lovasz_softmax(probs[1:], labels[1:], "all", per_image=True,
                           ignore=255) / 2
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert np.all(np.asarray(g[0]) == 0)


def test_lovasz_softmax_gradient_vs_finite_differences():
  rng = np.random.RandomState(11)
  logits = rng.randn(2, 3, 3, 3)
  labels = rng.randint(0, 3, size=(2, 3, 3)).astype(np.int32)
  labels[1, 0, 0] = 255
  f = lambda lg: lovasz.lovasz_softmax(
      probs=jax.nn.softmax(lg, axis=-1), labels=labels, ignore=255)
  g = jax.jit(jax.grad(f))(jnp.asarray(logits, jnp.float32))
  want = fd_grad(lambda lg: np_lovasz_softmax(np_softmax(lg), labels,
                                              ignore=255), logits)
  np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_softmax_binary_matches_reference(per_image):
  logits, labels = _binary_inputs(12, shape=(2, 3, 3, 1), ignore=255)
  got = jax.jit(lambda lg, lb: lovasz.lovasz_softmax_binary(
      logits=lg, labels=lb, per_image=per_image, ignore=255))(logits, labels)
  p = np_sigmoid(logits.astype(np.float64))
  probs = np.concatenate([1 - p, p], axis=-1)
  want = np_lovasz_softmax(probs, labels[..., 0], per_image=per_image,
                           ignore=255)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  g = jax.jit(jax.grad(lambda lg: lovasz.lovasz_softmax_binary(
      logits=lg, labels=labels, per_image=per_image, ignore=255)))(
          jnp.asarray(logits))
  want_g = fd_grad(lambda lg: np_lovasz_softmax(
      np.concatenate([1 - np_sigmoid(lg), np_sigmoid(lg)], -1),
      labels[..., 0], per_image=per_image, ignore=255), logits)
  np.testing.assert_allclose(g, want_g, rtol=1e-3, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="labels shape"):
    lovasz.lovasz_hinge(logits=jnp.zeros((2, 3)), labels=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="classes"):
    lovasz.lovasz_softmax(probs=jnp.zeros((1, 2, 3)),
                          labels=jnp.zeros((1, 2), jnp.int32), classes="some")
  with pytest.raises(ValueError, match="out of range"):
    lovasz.lovasz_softmax(probs=jnp.zeros((1, 2, 3)),
                          labels=jnp.zeros((1, 2), jnp.int32), classes=[3])


def test_registered_names():
  assert losses.get_loss("lovasz_hinge") is lovasz.lovasz_hinge
  assert losses.get_loss("lovasz_softmax") is lovasz.lovasz_softmax
  assert (losses.get_loss("lovasz_softmax_binary")
          is lovasz.lovasz_softmax_binary)


def test_lovasz_softmax_binary_vmap():
  logits, labels = _binary_inputs(13, shape=(3, 2, 3, 3), ignore=255)
  got = jax.vmap(lambda lg, lb: lovasz.lovasz_softmax_binary(
      logits=lg, labels=lb, per_image=True, ignore=255))(logits, labels)
  for i in range(3):
    p = np_sigmoid(logits[i].astype(np.float64))[..., None]
    want = np_lovasz_softmax(np.concatenate([1 - p, p], -1), labels[i],
                             per_image=True, ignore=255)
    np.testing.assert_allclose(got[i], want, rtol=RTOL, atol=ATOL)


def _torch_lovasz(torch, errors, gt, hinge):
  """Reference Lovász on one flat set, in torch (autograd through sort)."""
  if errors.numel() == 0:
    return errors.sum() * 0.0
  errors_sorted, perm = torch.sort(errors, descending=True)
  gt_sorted = gt[perm].double()
  gts = gt_sorted.sum()
  inter = gts - gt_sorted.cumsum(0)
  union = gts + (1 - gt_sorted).cumsum(0)
  jac = 1.0 - inter / union
  jac = torch.cat([jac[:1], jac[1:] - jac[:-1]])
  if hinge:
    errors_sorted = torch.relu(errors_sorted)
  return torch.dot(errors_sorted, jac)


def test_gradients_match_torch_autograd_reference():
  torch = optional_import("torch")
  rng = np.random.RandomState(14)
  shape = (2, 4, 4)
  logits = rng.randn(*shape)
  labels = (rng.rand(*shape) > 0.5).astype(np.int64)
  labels[0, :2, :2] = 255
  # Hinge, per image, through torch autograd with ignored pixels dropped.
  t_logits = torch.tensor(logits, requires_grad=True)
  t_labels = torch.tensor(labels)
  per = []
  for i in range(shape[0]):
    keep = t_labels[i].reshape(-1) != 255
    lg = t_logits[i].reshape(-1)[keep]
    lb = t_labels[i].reshape(-1)[keep].double()
    per.append(_torch_lovasz(torch, 1.0 - lg * (2 * lb - 1), lb, hinge=True))
  torch.stack(per).mean().backward()
  g = jax.jit(jax.grad(lambda lg: lovasz.lovasz_hinge(
      logits=lg, labels=labels, ignore=255)))(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(g, t_logits.grad.numpy(), rtol=1e-4, atol=1e-6)
  # Softmax over logits, batch mode, 'present' classes.
  c_logits = rng.randn(*shape, 3)
  c_labels = rng.randint(0, 2, size=shape)  # Class 2 absent.
  c_labels[1, 0] = 255
  t_cl = torch.tensor(c_logits, requires_grad=True)
  probs = torch.softmax(t_cl, -1).reshape(-1, 3)
  lb = torch.tensor(c_labels).reshape(-1)
  keep = lb != 255
  probs, lb = probs[keep], lb[keep]
  terms = []
  for c in range(3):
    fg = (lb == c).double()
    if fg.sum() == 0:
      continue
    terms.append(_torch_lovasz(torch, (fg - probs[:, c]).abs(), fg,
                               hinge=False))
  torch.stack(terms).mean().backward()
  g = jax.jit(jax.grad(lambda x: lovasz.lovasz_softmax(
      probs=jax.nn.softmax(x, -1), labels=c_labels, ignore=255)))(
          jnp.asarray(c_logits, jnp.float32))
  np.testing.assert_allclose(g, t_cl.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_lovasz_softmax_binary_classes_and_generic_path_agree():
  logits, labels = _binary_inputs(15, shape=(2, 3, 4), ignore=255)
  labels[0] = np.where(labels[0] == 255, 255, 1)  # Image 0: no background.
  p = np_sigmoid(logits.astype(np.float64))[..., None]
  probs = np.concatenate([1 - p, p], -1)
  for classes, per_image in (("present", True), ("all", False), ([1], True),
                             ([0], False)):
    def both(lg, p, c=classes, pi=per_image):
      return (lovasz.lovasz_softmax_binary(logits=lg, labels=labels, classes=c,
                                           per_image=pi, ignore=255),
              lovasz.lovasz_softmax(probs=p, labels=labels, classes=c,
                                    per_image=pi, ignore=255))
    got, generic = jax.jit(both)(logits, probs.astype(np.float32))
    want = np_lovasz_softmax(probs, labels, classes, per_image, 255)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, generic, rtol=RTOL, atol=ATOL)
