"""BCE losses (pixel and decision) and the triplet loss vs float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import losses
from coseg_jax.losses import classification
from coseg_jax.losses import metric_learning
from numeric_helpers import fd_grad

RTOL = 1e-5


def np_bce(x, y):
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  # log sigmoid(x) = -log1p(exp(-x)), written stably for both signs.
  log_p = -np.logaddexp(0.0, -x)
  log_1mp = -np.logaddexp(0.0, x)
  return -(y * log_p + (1 - y) * log_1mp)


def np_sigmoid_bce(x, y, valid=None, weights=None, reduction="mean"):
  per = np_bce(x, y)
  if weights is not None:
    per = per * np.broadcast_to(weights, per.shape)
  v = np.ones(per.shape, bool) if valid is None else np.broadcast_to(
      np.asarray(valid, bool), per.shape)
  per = np.where(v, per, 0.0)
  if reduction == "none":
    return per
  if reduction == "sum":
    return per.sum()
  return per.sum() / max(v.sum(), 1)


def _inputs(seed, shape=(2, 4, 5, 1)):
  rng = np.random.RandomState(seed)
  logits = (rng.randn(*shape) * 3).astype(np.float32)
  labels = rng.rand(*shape).astype(np.float32)  # Soft targets.
  valid = rng.rand(*shape) > 0.3
  weights = rng.rand(*shape).astype(np.float32) * 2
  return logits, labels, valid, weights


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_valid,use_weights",
                         [(False, False), (True, False), (True, True)])
def test_sigmoid_bce_matches_numpy(reduction, use_valid, use_weights):
  logits, labels, valid, weights = _inputs(0)
  valid = valid if use_valid else None
  weights = weights if use_weights else None
  got = jax.jit(lambda x, y: classification.sigmoid_bce(
      logits=x, labels=y, valid=valid, weights=weights,
      reduction=reduction))(logits, labels)
  want = np_sigmoid_bce(logits, labels, valid, weights, reduction)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
  assert got.dtype == jnp.float32


def test_sigmoid_bce_broadcast_valid_and_bf16_input():
  logits, labels, _, _ = _inputs(1)
  valid = np.array([True, False])[:, None, None, None]  # Per image.
  got = classification.sigmoid_bce(logits=jnp.asarray(logits, jnp.bfloat16),
                                   labels=labels, valid=valid)
  want = np_sigmoid_bce(jnp.asarray(logits, jnp.bfloat16).astype(np.float32),
                        labels, valid)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_sigmoid_bce_vmap():
  logits, labels, valid, weights = _inputs(2, shape=(3, 2, 4, 4, 1))
  got = jax.vmap(lambda x, y, v, w: classification.sigmoid_bce(
      logits=x, labels=y, valid=v, weights=w))(logits, labels, valid, weights)
  want = [np_sigmoid_bce(*a) for a in zip(logits, labels, valid, weights)]
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_sigmoid_bce_no_valid_pixel_is_zero_with_zero_gradient():
  logits, labels, _, _ = _inputs(3)
  valid = np.zeros(logits.shape, bool)
  f = lambda x: classification.sigmoid_bce(logits=x, labels=labels,
                                           valid=valid)
  assert float(f(logits)) == 0.0
  np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(logits)), 0.0)


def test_sigmoid_bce_invalid_pixel_cannot_poison_the_loss():
  logits, labels, valid, _ = _inputs(4)
  valid[0, 0, 0, 0] = False
  logits[0, 0, 0, 0] = np.nan
  got = classification.sigmoid_bce(logits=logits, labels=labels, valid=valid)
  logits[0, 0, 0, 0] = 0.0
  want = np_sigmoid_bce(logits, labels, valid)
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_sigmoid_bce_gradient_vs_finite_differences():
  logits, labels, valid, weights = _inputs(5, shape=(2, 3, 3, 1))
  g = jax.grad(lambda x: classification.sigmoid_bce(
      logits=x, labels=labels, valid=valid, weights=weights))(
          jnp.asarray(logits))
  want = fd_grad(lambda x: np_sigmoid_bce(x, labels, valid, weights), logits)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


def test_sigmoid_bce_bad_inputs():
  with pytest.raises(ValueError, match="labels shape"):
    classification.sigmoid_bce(logits=jnp.zeros((2, 3)),
                               labels=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="valid shape"):
    classification.sigmoid_bce(logits=jnp.zeros((2, 3)),
                               labels=jnp.zeros((2, 3)), valid=jnp.ones(4))
  with pytest.raises(ValueError, match="reduction"):
    classification.sigmoid_bce(logits=jnp.zeros((2, 3)),
                               labels=jnp.zeros((2, 3)), reduction="avg")


def test_decision_bce_matches_numpy_and_gradient():
  rng = np.random.RandomState(6)
  logits = (rng.randn(5, 1) * 2).astype(np.float32)
  labels = (rng.rand(5, 1) > 0.5).astype(np.float32)
  got = jax.jit(lambda x: classification.decision_bce(logits=x,
                                                      labels=labels))(logits)
  np.testing.assert_allclose(got, np_bce(logits, labels).mean(), rtol=RTOL)
  g = jax.grad(lambda x: classification.decision_bce(logits=x,
                                                     labels=labels))(
                                                         jnp.asarray(logits))
  want = fd_grad(lambda x: np_bce(x, labels).mean(), logits)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)
  vm = jax.vmap(lambda x, y: classification.decision_bce(logits=x, labels=y))(
      logits.reshape(5, 1), labels.reshape(5, 1))
  np.testing.assert_allclose(vm, np_bce(logits, labels)[:, 0], rtol=RTOL)
  with pytest.raises(ValueError, match="labels shape"):
    classification.decision_bce(logits=logits, labels=labels[:, 0])
  # CoSegNet's eq. 4 sums over the pairs.
  np.testing.assert_allclose(
      classification.decision_bce(logits=logits, labels=labels,
                                  reduction="sum"),
      np_bce(logits, labels).sum(), rtol=RTOL)
  with pytest.raises(ValueError, match="reduction"):
    classification.decision_bce(logits=logits, labels=labels,
                                reduction="none")


def np_triplet(a, p, n, margin, reduction="mean"):
  a, p, n = (np.asarray(v, np.float64) for v in (a, p, n))
  d_pos = ((a - p) ** 2).sum(-1)
  d_neg = ((a - n) ** 2).sum(-1)
  hinge = np.maximum(d_pos - d_neg + margin, 0.0)
  return hinge.sum() if reduction == "sum" else hinge.mean()


def _triplets(seed, b=6, d=8):
  rng = np.random.RandomState(seed)
  a = rng.randn(b, d).astype(np.float32) * 0.5
  p = (a + rng.randn(b, d) * 0.3).astype(np.float32)
  n = rng.randn(b, d).astype(np.float32) * 0.5
  return a, p, n


@pytest.mark.parametrize("margin", [1.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_triplet_matches_numpy(margin, reduction):
  a, p, n = _triplets(7)
  got = jax.jit(lambda a, p, n: metric_learning.triplet_loss(
      anchor=a, positive=p, negative=n, margin=margin,
      reduction=reduction))(a, p, n)
  want = np_triplet(a, p, n, margin, reduction)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # Some triplets are active and some are not: the hinge is exercised.
  args = ((a - p) ** 2).sum(-1) - ((a - n) ** 2).sum(-1) + margin
  assert (args > 0).any() and (args < 0).any()


def test_triplet_hinge_and_vmap():
  a, p, n = _triplets(8, b=4)
  # Far negatives: every hinge inactive -> exactly 0.
  assert float(metric_learning.triplet_loss(
      anchor=a, positive=a, negative=a + 10.0)) == 0.0
  batches = [_triplets(s, b=3) for s in range(3)]
  A, P, N = (np.stack(v) for v in zip(*batches))
  got = jax.vmap(lambda a, p, n: metric_learning.triplet_loss(
      anchor=a, positive=p, negative=n))(A, P, N)
  want = [np_triplet(a, p, n, 1.0) for a, p, n in batches]
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_triplet_gradient_vs_finite_differences():
  a, p, n = _triplets(9, b=5, d=4)
  margins = (((a - p) ** 2).sum(-1) - ((a - n) ** 2).sum(-1) + 1.0)
  assert np.min(np.abs(margins)) > 1e-2  # No kink within the FD step.
  assert (margins > 0).any() and (margins < 0).any()
  ga, gp, gn = jax.grad(lambda a, p, n: metric_learning.triplet_loss(
      anchor=a, positive=p, negative=n), argnums=(0, 1, 2))(a, p, n)
  np.testing.assert_allclose(
      ga, fd_grad(lambda x: np_triplet(x, p, n, 1.0), a), rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      gp, fd_grad(lambda x: np_triplet(a, x, n, 1.0), p), rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      gn, fd_grad(lambda x: np_triplet(a, p, x, 1.0), n), rtol=1e-4,
      atol=1e-6)


def test_triplet_bad_shapes():
  with pytest.raises(ValueError, match="anchor must be"):
    metric_learning.triplet_loss(anchor=jnp.zeros(3), positive=jnp.zeros(3),
                                 negative=jnp.zeros(3))
  with pytest.raises(ValueError, match="negative shape"):
    metric_learning.triplet_loss(anchor=jnp.zeros((2, 3)),
                                 positive=jnp.zeros((2, 3)),
                                 negative=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="reduction"):
    metric_learning.triplet_loss(anchor=jnp.zeros((2, 3)),
                                 positive=jnp.zeros((2, 3)),
                                 negative=jnp.zeros((2, 3)), reduction="max")


def test_registered():
  assert losses.get_loss("sigmoid_bce") is classification.sigmoid_bce
  assert losses.get_loss("decision_bce") is classification.decision_bce
  assert losses.get_loss("triplet") is metric_learning.triplet_loss
