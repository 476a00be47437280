"""Co-attention loss (Hsu et al. eq. 3-6) and mask loss (eq. 7) vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import losses
from coseg_jax.losses import coattention
from numeric_helpers import fd_grad

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
                 eps=1e-6, fixed=None, target="paper", pixel_reduction="mean"):
  """Literal eq. 7 ('paper': t = beta M~ + (1 - beta) M with M~ = ``fixed``,
  M = ``o``) or the earlier 'self_bootstrap' form (t = beta M + (1 - beta) S),
  per image over valid pixels (mean = the 1/|K|, or sum), then over images."""
  s = np.asarray(s, np.float64)
  o = np.asarray(o, np.float64)
  if logits:
    log_s, log_1ms = -np.logaddexp(0, -s), -np.logaddexp(0, s)
    prob = 1 / (1 + np.exp(-s))
  else:
    prob = np.clip(s, eps, 1 - eps)
    log_s, log_1ms = np.log(prob), np.log(1 - prob)
  if target == "paper":
    t = beta * np.asarray(fixed, np.float64) + (1 - beta) * o
  else:
    t = beta * o + (1 - beta) * prob
  per = -(t * log_s + (1 - t) * log_1ms)
  n = s.shape[0]
  v = np.ones(s.shape, bool) if valid is None else np.broadcast_to(valid,
                                                                   s.shape)
  per_image = []
  for i in range(n):
    total = 0.0
    for k in zip(*np.nonzero(v[i])):  # the sum over k in K
      total += per[i][k]
    count = v[i].sum()
    per_image.append(total / max(count, 1) if pixel_reduction == "mean"
                     else total)
  return np.sum(per_image) if reduction == "sum" else np.mean(per_image)


def _maps(seed, shape=(3, 4, 5, 1)):
  rng = np.random.RandomState(seed)
  logits = (rng.randn(*shape) * 2).astype(np.float32)
  mask = (rng.rand(*shape) > 0.5).astype(np.float32)
  valid = rng.rand(*shape) > 0.2
  return logits, mask, valid


@pytest.mark.parametrize("beta", [0.95, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mask_loss_self_bootstrap_matches_numpy(beta, reduction):
  logits, mask, valid = _maps(5)
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  got_l = jax.jit(lambda x: coattention.mask_loss(
      attention_logits=x, object_mask=mask, beta=beta, valid=valid,
      reduction=reduction, target="self_bootstrap"))(logits)
  np.testing.assert_allclose(
      got_l, np_mask_loss(logits, mask, beta, valid, reduction, logits=True,
                          target="self_bootstrap"), rtol=RTOL)
  got_p = jax.jit(lambda s: coattention.mask_loss(
      attention=s, object_mask=mask, beta=beta, valid=valid,
      reduction=reduction, target="self_bootstrap"))(probs.astype(np.float32))
  np.testing.assert_allclose(
      got_p, np_mask_loss(probs, mask, beta, valid, reduction,
                          target="self_bootstrap"), rtol=RTOL)


@pytest.mark.parametrize("beta", [0.95, 0.5])
@pytest.mark.parametrize("reduction,pixels", [("mean", "mean"),
                                              ("sum", "mean"),
                                              ("sum", "sum")])
def test_mask_loss_paper_eq7_matches_numpy(beta, reduction, pixels):
  """Eq. 7 with a fixed M~ and a different current M (they disagree on
  about half of the pixels, so both enter the target)."""
  logits, current, valid = _maps(8)
  fixed = (np.random.RandomState(9).rand(*logits.shape) > 0.5).astype(
      np.float32)
  assert 0.2 < np.mean(fixed != current) < 0.8
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  kw = dict(object_mask=current, fixed_mask=fixed, beta=beta, valid=valid,
            reduction=reduction, pixel_reduction=pixels)
  got_l = jax.jit(lambda x: coattention.mask_loss(attention_logits=x, **kw))(
      logits)
  want = np_mask_loss(logits, current, beta, valid, reduction, logits=True,
                      fixed=fixed, pixel_reduction=pixels)
  np.testing.assert_allclose(got_l, want, rtol=RTOL)
  got_p = coattention.mask_loss(attention=probs.astype(np.float32), **kw)
  np.testing.assert_allclose(
      got_p, np_mask_loss(probs, current, beta, valid, reduction, fixed=fixed,
                          pixel_reduction=pixels), rtol=RTOL)
  # The default target is the paper's.
  np.testing.assert_allclose(coattention.mask_loss(
      attention_logits=logits, **kw), want, rtol=RTOL)
  # M~ and M are not interchangeable: the weights beta and 1 - beta differ.
  swapped = np_mask_loss(logits, fixed, beta, valid, reduction, logits=True,
                         fixed=current, pixel_reduction=pixels)
  if beta != 0.5:
    assert abs(swapped - want) > 1e-3 * abs(want)


def test_mask_loss_paper_gradient_flows_into_s_only():
  """No gradient through the target: d loss / d M~ = d loss / d M = 0 and
  d loss / d logit = (S - t) / (|K| N), the gradient of a BCE against a
  constant target."""
  logits, current, _ = _maps(10, shape=(2, 3, 4, 1))
  fixed = (np.random.RandomState(11).rand(*logits.shape) > 0.5).astype(
      np.float32)
  beta = 0.95

  def f(x, m_fixed, m_current):
    return coattention.mask_loss(attention_logits=x, fixed_mask=m_fixed,
                                 object_mask=m_current, beta=beta)

  gx, gf, gc = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(
      jnp.asarray(logits), jnp.asarray(fixed), jnp.asarray(current))
  np.testing.assert_array_equal(np.asarray(gf), 0.0)
  np.testing.assert_array_equal(np.asarray(gc), 0.0)
  t = beta * fixed + (1 - beta) * current
  s = 1 / (1 + np.exp(-logits.astype(np.float64)))
  n, pixels = logits.shape[0], np.prod(logits.shape[1:])
  np.testing.assert_allclose(gx, (s - t) / (pixels * n), rtol=1e-5,
                             atol=1e-9)
  # Probabilities in: the gradient reaches S (and only S).
  gs = jax.grad(lambda p: coattention.mask_loss(
      attention=p, fixed_mask=fixed, object_mask=current, beta=beta))(
          jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(gs, (s - t) / (s * (1 - s)) / (pixels * n),
                             rtol=1e-4)
  # The earlier form differentiates through its target (entropy term): the
  # same maps give another gradient.
  g_self = jax.grad(lambda x: coattention.mask_loss(
      attention_logits=x, object_mask=current, beta=beta,
      target="self_bootstrap"))(jnp.asarray(logits))
  want_self = fd_grad(lambda x: np_mask_loss(
      x, current, beta, logits=True, target="self_bootstrap"), logits)
  np.testing.assert_allclose(g_self, want_self, rtol=1e-4, atol=1e-7)
  assert not np.allclose(g_self, (s - current) / (pixels * n), atol=1e-6)


@pytest.mark.parametrize("target", ["paper", "self_bootstrap"])
def test_mask_loss_per_pixel_mean_does_not_depend_on_image_size(target):
  """Eq. 7's 1/|K|: a constant map against constant masks gives the same
  loss at 8 x 8 and 32 x 32; the pixel sum grows with |K|."""
  def loss(side, pixels):
    shape = (3, side, side, 1)
    extra = {"fixed_mask": jnp.ones(shape)} if target == "paper" else {}
    return float(coattention.mask_loss(
        attention_logits=jnp.full(shape, 0.3), object_mask=jnp.zeros(shape),
        target=target, pixel_reduction=pixels, **extra))
  np.testing.assert_allclose(loss(8, "mean"), loss(32, "mean"), rtol=1e-6)
  np.testing.assert_allclose(loss(32, "sum"), 16 * loss(8, "sum"), rtol=1e-6)
  np.testing.assert_allclose(loss(8, "sum"), 64 * loss(8, "mean"), rtol=1e-6)


def test_mask_loss_is_bce_plus_entropy():
  # Self-bootstrapping: t log S mixes beta * BCE(S, O) + (1 - beta) * H(S).
  logits, mask, _ = _maps(6)
  beta = 0.8
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(mask * np.log(p) + (1 - mask) * np.log(1 - p))
  ent = -(p * np.log(p) + (1 - p) * np.log(1 - p))
  want = (beta * bce + (1 - beta) * ent).reshape(3, -1).mean(-1).mean()
  got = coattention.mask_loss(attention_logits=logits, object_mask=mask,
                              beta=beta, target="self_bootstrap")
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_mask_loss_vmap_empty_image_and_gradient():
  logits, mask, valid = _maps(7, shape=(2, 2, 3, 3))
  fixed = 1.0 - mask[:, ::-1]  # another mask of the same shape
  valid[0, 1] = False  # Second image of the first set has no valid pixel.
  got = jax.vmap(lambda x, o, m, v: coattention.mask_loss(
      attention_logits=x, object_mask=o, fixed_mask=m, valid=v))(
          logits, mask, fixed, valid)
  want = [np_mask_loss(x, o, valid=v, logits=True, fixed=m)
          for x, o, m, v in zip(logits, mask, fixed, valid)]
  np.testing.assert_allclose(got, want, rtol=RTOL)
  f = lambda x: coattention.mask_loss(attention_logits=x, object_mask=mask[0],
                                      fixed_mask=fixed[0], valid=valid[0])
  g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(logits[0])))
  np.testing.assert_array_equal(g[1], 0.0)
  want_g = fd_grad(lambda x: np_mask_loss(x, mask[0], valid=valid[0],
                                          logits=True, fixed=fixed[0]),
                   logits[0])
  np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-7)


def test_mask_loss_bad_inputs():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="exactly one"):
    coattention.mask_loss(object_mask=z, fixed_mask=z)
  with pytest.raises(ValueError, match="exactly one"):
    coattention.mask_loss(object_mask=z, fixed_mask=z, attention=z,
                          attention_logits=z)
  with pytest.raises(ValueError, match="object_mask shape"):
    coattention.mask_loss(object_mask=jnp.zeros((2, 4)), fixed_mask=z,
                          attention=z)
  with pytest.raises(ValueError, match="valid shape"):
    coattention.mask_loss(object_mask=z, fixed_mask=z, attention=z,
                          valid=jnp.ones(4))
  with pytest.raises(ValueError, match="needs fixed_mask"):
    coattention.mask_loss(object_mask=z, attention=z)
  with pytest.raises(ValueError, match="fixed_mask shape"):
    coattention.mask_loss(object_mask=z, fixed_mask=jnp.zeros((2, 4)),
                          attention=z)
  with pytest.raises(ValueError, match="takes no fixed_mask"):
    coattention.mask_loss(object_mask=z, fixed_mask=z, attention=z,
                          target="self_bootstrap")
  with pytest.raises(ValueError, match="target must be one of"):
    coattention.mask_loss(object_mask=z, fixed_mask=z, attention=z,
                          target="reed")


def test_registered():
  assert losses.get_loss("coattention") is coattention.coattention_loss
  assert losses.get_loss("coattention_mask") is coattention.mask_loss
