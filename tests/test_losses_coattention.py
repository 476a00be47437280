"""Co-attention loss (Hsu et al. eq. 3-6) and mask loss (eq. 7) vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import losses
from coseg_jax.losses import coattention

RTOL = 1e-5


def np_coattention(fo, fb, squared=True, reduction="mean", log_space=False):
  """Literal eq. 3-6: a double loop over ordered pairs n != m."""
  fo = np.asarray(fo, np.float64)
  fb = np.asarray(fb, np.float64)
  n, c = fo.shape
  def dist(u, v):
    d2 = np.sum((u - v) ** 2)
    return d2 if squared else np.sqrt(d2)
  total = 0.0
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      d_pos = dist(fo[i], fo[j]) / c
      d_neg = (dist(fo[i], fb[i]) + dist(fo[j], fb[j])) / (2 * c)
      if log_space:
        total += np.logaddexp(0.0, d_pos - d_neg)
      else:
        p = np.exp(-d_pos) / (np.exp(-d_pos) + np.exp(-d_neg))
        total += -np.log(p)
  return total if reduction == "sum" else total / (n * (n - 1))


def fd_grad(f, x, h=1e-6):
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def _features(seed, n=4, c=6, scale=1.0):
  rng = np.random.RandomState(seed)
  fo = (rng.randn(n, c) * scale).astype(np.float32)
  fb = (rng.randn(n, c) * scale).astype(np.float32)
  return fo, fb


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_coattention_matches_numpy(squared, reduction):
  fo, fb = _features(0, scale=2.0)
  got = jax.jit(lambda a, b: coattention.coattention_loss(
      object_features=a, background_features=b, squared=squared,
      reduction=reduction))(fo, fb)
  want = np_coattention(fo, fb, squared, reduction)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  assert got.dtype == jnp.float32


def test_coattention_pair_matrix():
  fo, fb = _features(1, n=3)
  pair = np.asarray(coattention.coattention_pair_losses(
      object_features=fo, background_features=fb))
  np.testing.assert_array_equal(np.diag(pair), 0.0)
  np.testing.assert_allclose(pair, pair.T, rtol=1e-6)  # l(n,m) = l(m,n).
  np.testing.assert_allclose(
      pair[0, 2], np_coattention(fo[[0, 2]], fb[[0, 2]], reduction="sum") / 2,
      rtol=RTOL)


def test_coattention_stable_for_large_distances():
  # d+ - d- of order 1e4: the naive exp(-d) form gives 0/0 here.
  fo, fb = _features(2, scale=300.0)
  got, g = jax.jit(jax.value_and_grad(lambda a: coattention.coattention_loss(
      object_features=a, background_features=fb)))(jnp.asarray(fo))
  with np.errstate(all="ignore"):
    naive = np_coattention(fo, fb)
  assert not np.isfinite(naive)
  want = np_coattention(fo, fb, log_space=True)
  assert np.isfinite(float(got))
  np.testing.assert_allclose(got, want, rtol=RTOL)
  assert np.all(np.isfinite(np.asarray(g)))


def test_coattention_vmap_and_order_invariance():
  sets = [_features(s, n=3, c=5) for s in range(3)]
  FO, FB = (np.stack(v) for v in zip(*sets))
  got = jax.vmap(lambda a, b: coattention.coattention_loss(
      object_features=a, background_features=b))(FO, FB)
  np.testing.assert_allclose(got, [np_coattention(a, b) for a, b in sets],
                             rtol=RTOL)
  perm = np.array([2, 0, 1])
  np.testing.assert_allclose(
      coattention.coattention_loss(object_features=FO[0][perm],
                                   background_features=FB[0][perm]),
      got[0], rtol=RTOL)


@pytest.mark.parametrize("squared", [True, False])
def test_coattention_gradient_vs_finite_differences(squared):
  fo, fb = _features(3, n=3, c=4)
  ga, gb = jax.jit(jax.grad(lambda a, b: coattention.coattention_loss(
      object_features=a, background_features=b, squared=squared),
                            argnums=(0, 1)))(fo, fb)
  np.testing.assert_allclose(
      ga, fd_grad(lambda x: np_coattention(x, fb, squared), fo), rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      gb, fd_grad(lambda x: np_coattention(fo, x, squared), fb), rtol=1e-4,
      atol=1e-6)


def test_coattention_plain_distance_gradient_finite_at_coincident_features():
  fo, fb = _features(4, n=3, c=4)
  fo[1] = fo[0]  # d+ = 0 for the pair (0, 1): sqrt would give inf * 0.
  g = jax.grad(lambda a: coattention.coattention_loss(
      object_features=a, background_features=fb, squared=False))(
          jnp.asarray(fo))
  assert np.all(np.isfinite(np.asarray(g)))


def test_coattention_bad_inputs():
  with pytest.raises(ValueError, match="at least 2"):
    coattention.coattention_loss(object_features=jnp.zeros((1, 3)),
                                 background_features=jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="background_features shape"):
    coattention.coattention_loss(object_features=jnp.zeros((2, 3)),
                                 background_features=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"\[N, c\]"):
    coattention.coattention_loss(object_features=jnp.zeros((2, 3, 1)),
                                 background_features=jnp.zeros((2, 3, 1)))


# ----------------------------------------------------------------------------
def np_mask_loss(s, o, beta=0.95, valid=None, reduction="mean", logits=False,
                 eps=1e-6):
  s = np.asarray(s, np.float64)
  o = np.asarray(o, np.float64)
  if logits:
    log_s, log_1ms = -np.logaddexp(0, -s), -np.logaddexp(0, s)
    prob = 1 / (1 + np.exp(-s))
  else:
    prob = np.clip(s, eps, 1 - eps)
    log_s, log_1ms = np.log(prob), np.log(1 - prob)
  t = beta * o + (1 - beta) * prob
  per = -(t * log_s + (1 - t) * log_1ms)
  n = s.shape[0]
  v = np.ones(s.shape, bool) if valid is None else np.broadcast_to(valid,
                                                                   s.shape)
  per_image = []
  for i in range(n):
    cnt = v[i].sum()
    per_image.append(per[i][v[i]].sum() / max(cnt, 1))
  return np.sum(per_image) if reduction == "sum" else np.mean(per_image)


def _maps(seed, shape=(3, 4, 5, 1)):
  rng = np.random.RandomState(seed)
  logits = (rng.randn(*shape) * 2).astype(np.float32)
  mask = (rng.rand(*shape) > 0.5).astype(np.float32)
  valid = rng.rand(*shape) > 0.2
  return logits, mask, valid


@pytest.mark.parametrize("beta", [0.95, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mask_loss_matches_numpy(beta, reduction):
  logits, mask, valid = _maps(5)
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  got_l = jax.jit(lambda x: coattention.mask_loss(
      attention_logits=x, object_mask=mask, beta=beta, valid=valid,
      reduction=reduction))(logits)
  np.testing.assert_allclose(
      got_l, np_mask_loss(logits, mask, beta, valid, reduction, logits=True),
      rtol=RTOL)
  got_p = jax.jit(lambda s: coattention.mask_loss(
      attention=s, object_mask=mask, beta=beta, valid=valid,
      reduction=reduction))(probs.astype(np.float32))
  np.testing.assert_allclose(
      got_p, np_mask_loss(probs, mask, beta, valid, reduction), rtol=RTOL)


def test_mask_loss_is_bce_plus_entropy():
  # t log S mixes: beta * BCE(S, O) + (1 - beta) * binary entropy H(S).
  logits, mask, _ = _maps(6)
  beta = 0.8
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(mask * np.log(p) + (1 - mask) * np.log(1 - p))
  ent = -(p * np.log(p) + (1 - p) * np.log(1 - p))
  want = (beta * bce + (1 - beta) * ent).reshape(3, -1).mean(-1).mean()
  got = coattention.mask_loss(attention_logits=logits, object_mask=mask,
                              beta=beta)
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_mask_loss_vmap_empty_image_and_gradient():
  logits, mask, valid = _maps(7, shape=(2, 2, 3, 3))
  valid[0, 1] = False  # Second image of the first set has no valid pixel.
  got = jax.vmap(lambda x, o, v: coattention.mask_loss(
      attention_logits=x, object_mask=o, valid=v))(logits, mask, valid)
  want = [np_mask_loss(x, o, valid=v, logits=True)
          for x, o, v in zip(logits, mask, valid)]
  np.testing.assert_allclose(got, want, rtol=RTOL)
  f = lambda x: coattention.mask_loss(attention_logits=x, object_mask=mask[0],
                                      valid=valid[0])
  g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(logits[0])))
  np.testing.assert_array_equal(g[1], 0.0)
  want_g = fd_grad(lambda x: np_mask_loss(x, mask[0], valid=valid[0],
                                          logits=True), logits[0])
  np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-7)


def test_mask_loss_bad_inputs():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="exactly one"):
    coattention.mask_loss(object_mask=z)
  with pytest.raises(ValueError, match="exactly one"):
    coattention.mask_loss(object_mask=z, attention=z, attention_logits=z)
  with pytest.raises(ValueError, match="object_mask shape"):
    coattention.mask_loss(object_mask=jnp.zeros((2, 4)), attention=z)
  with pytest.raises(ValueError, match="valid shape"):
    coattention.mask_loss(object_mask=z, attention=z, valid=jnp.ones(4))


def test_registered():
  assert losses.get_loss("coattention") is coattention.coattention_loss
  assert losses.get_loss("coattention_mask") is coattention.mask_loss
