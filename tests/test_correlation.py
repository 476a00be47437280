"""Tests for coseg_jax.nn.correlation against naive loop references."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import optional_import
from coseg_jax.nn import correlation


def _np_l2(x, eps=1e-6):
  return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def _np_feature_correlation(fa, fb, normalize_features, normalize_matches):
  """Loop reference: channel k = x_a * h_a + y_a (CNNGeo order)."""
  if normalize_features:
    fa, fb = _np_l2(fa), _np_l2(fb)
  b, h_a, w_a, _ = fa.shape
  _, h_b, w_b, _ = fb.shape
  out = np.zeros((b, h_b, w_b, h_a * w_a))
  for n in range(b):
    for i in range(h_b):
      for j in range(w_b):
        for ya in range(h_a):
          for xa in range(w_a):
            out[n, i, j, xa * h_a + ya] = fb[n, i, j] @ fa[n, ya, xa]
  if normalize_matches:
    out = _np_l2(np.maximum(out, 0))
  return out


@pytest.mark.parametrize("norm_f,norm_m", [(True, True), (False, False),
                                           (False, True)])
def test_feature_correlation_matches_loops(norm_f, norm_m):
  rng = np.random.default_rng(0)
  fa = rng.normal(size=(2, 3, 4, 5))
  fb = rng.normal(size=(2, 2, 3, 5))
  out = correlation.feature_correlation(
      features_a=jnp.asarray(fa, jnp.float32),
      features_b=jnp.asarray(fb, jnp.float32), normalize_features=norm_f,
      normalize_matches=norm_m)
  ref = _np_feature_correlation(fa, fb, norm_f, norm_m)
  assert out.shape == (2, 2, 3, 12)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_feature_correlation_matches_cnngeo_torch_layout():
  """Same numbers as CNNGeo's FeatureCorrelation(shape='3D') written in torch."""
  torch = optional_import("torch")
  rng = np.random.default_rng(1)
  fa = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  fb = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  ta = torch.from_numpy(fa).permute(0, 3, 1, 2)
  tb = torch.from_numpy(fb).permute(0, 3, 1, 2)
  l2 = lambda t: t / torch.sqrt(torch.sum(t ** 2, 1, keepdim=True) + 1e-6)
  ta, tb = l2(ta), l2(tb)
  b, c, h, w = ta.shape
  a_flat = ta.transpose(2, 3).contiguous().view(b, c, h * w)
  b_flat = tb.view(b, c, h * w).transpose(1, 2)
  corr = torch.bmm(b_flat, a_flat).view(b, h, w, h * w)
  corr = corr.transpose(2, 3).transpose(1, 2)  # [b, h*w (A), h, w (B)]
  corr = l2(torch.relu(corr)).permute(0, 2, 3, 1).numpy()
  out = correlation.feature_correlation(features_a=jnp.asarray(fa),
                                        features_b=jnp.asarray(fb))
  np.testing.assert_allclose(np.asarray(out), corr, atol=1e-6)


def test_correlation_index_is_column_major():
  fa = np.zeros((1, 3, 4, 2), np.float32)
  fa[0, 2, 1] = [1.0, 0.0]  # only A's position (y=2, x=1) is non-zero
  fb = np.ones((1, 2, 2, 2), np.float32)
  out = correlation.feature_correlation(
      features_a=jnp.asarray(fa), features_b=jnp.asarray(fb),
      normalize_features=False, normalize_matches=False)
  k = correlation.correlation_index(2, 1, 3)
  assert k == 5
  np.testing.assert_array_equal(np.nonzero(np.asarray(out)[0, 0, 0])[0], [k])


def _np_depthwise(features, kernels, normalize):
  b, h, w, c = features.shape
  _, kh, kw, _ = kernels.shape
  # XLA 'SAME': total padding k-1, the extra one after.
  top, left = (kh - 1) // 2, (kw - 1) // 2
  out = np.zeros(features.shape)
  for n in range(b):
    for y in range(h):
      for x in range(w):
        for u in range(kh):
          for v in range(kw):
            yy, xx = y + u - top, x + v - left
            if 0 <= yy < h and 0 <= xx < w:
              out[n, y, x] += features[n, yy, xx] * kernels[n, u, v]
  return out / (kh * kw) if normalize else out


@pytest.mark.parametrize("method", ["shift", "conv"])
@pytest.mark.parametrize("k,normalize", [(1, True), (2, True), (3, False)])
def test_depthwise_xcorr_matches_loops(k, normalize, method):
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(3, 5, 6, 4))
  kernels = rng.normal(size=(3, k, k, 4))
  out = correlation.depthwise_xcorr(features=jnp.asarray(feats, jnp.float32),
                                    kernels=jnp.asarray(kernels, jnp.float32),
                                    normalize=normalize, method=method)
  np.testing.assert_allclose(np.asarray(out), _np_depthwise(feats, kernels,
                                                            normalize),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["shift", "conv"])
def test_depthwise_xcorr_jit_vmap(method):
  rng = np.random.default_rng(3)
  feats = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  kernels = jnp.asarray(rng.normal(size=(2, 3, 3, 3)), jnp.float32)
  f = lambda a, k: correlation.depthwise_xcorr(features=a, kernels=k,
                                               method=method)
  direct = f(feats, kernels)
  np.testing.assert_allclose(np.asarray(jax.jit(f)(feats, kernels)),
                             np.asarray(direct), atol=1e-6)
  mapped = jax.vmap(f)(feats[:, None], kernels[:, None])[:, 0]
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(direct), atol=1e-6)


def _np_adaptive_avg(x, out):
  b, h, w, c = x.shape
  res = np.zeros((b, out, out, c))
  for i in range(out):
    y0, y1 = (i * h) // out, -((-(i + 1) * h) // out)
    for j in range(out):
      x0, x1 = (j * w) // out, -((-(j + 1) * w) // out)
      res[:, i, j] = x[:, y0:y1, x0:x1].mean(axis=(1, 2))
  return res


def test_multiscale_kernels_are_adaptive_average_pools():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 7, 5, 3))
  ks = correlation.multiscale_kernels(features=jnp.asarray(x, jnp.float32),
                                      sizes=(1, 3, 5))
  assert [k.shape for k in ks] == [(2, 1, 1, 3), (2, 3, 3, 3), (2, 5, 5, 3)]
  for k, size in zip(ks, (1, 3, 5)):
    np.testing.assert_allclose(np.asarray(k), _np_adaptive_avg(x, size),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ks[0])[:, 0, 0], x.mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_adaptive_pool_matches_torch():
  torch = optional_import("torch")
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 7, 9, 2)).astype(np.float32)
  ref = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), (3, 4)).permute(0, 2, 3, 1)
  out = correlation.adaptive_avg_pool(jnp.asarray(x), (3, 4))
  np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=1e-6)


def test_multiscale_xcorr_concatenates_scales():
  rng = np.random.default_rng(6)
  a = rng.normal(size=(2, 5, 5, 3))
  b = rng.normal(size=(2, 6, 4, 3))
  out = correlation.multiscale_xcorr(features=jnp.asarray(a, jnp.float32),
                                     other=jnp.asarray(b, jnp.float32),
                                     sizes=(1, 3))
  assert out.shape == (2, 5, 5, 6)
  ref = np.concatenate([_np_depthwise(a, _np_adaptive_avg(b, s), True)
                        for s in (1, 3)], axis=-1)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d,stride", [(1, 1), (2, 2)])
def test_local_correlation_matches_loops(d, stride):
  rng = np.random.default_rng(7)
  a = rng.normal(size=(2, 4, 5, 3))
  b = rng.normal(size=(2, 4, 5, 3))
  out = correlation.local_correlation(a=jnp.asarray(a, jnp.float32),
                                      b=jnp.asarray(b, jnp.float32),
                                      max_displacement=d, stride=stride)
  offs = list(range(-d, d + 1, stride))
  ref = np.zeros((2, 4, 5, len(offs) ** 2))
  for n in range(2):
    for y in range(4):
      for x in range(5):
        for iy, dy in enumerate(offs):
          for ix, dx in enumerate(offs):
            if 0 <= y + dy < 4 and 0 <= x + dx < 5:
              ref[n, y, x, iy * len(offs) + ix] = np.mean(
                  a[n, y, x] * b[n, y + dy, x + dx])
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="share batch and channels"):
    correlation.feature_correlation(features_a=jnp.zeros((1, 2, 2, 3)),
                                    features_b=jnp.zeros((1, 2, 2, 4)))
  with pytest.raises(ValueError, match="method"):
    correlation.depthwise_xcorr(features=jnp.zeros((1, 4, 4, 3)),
                                kernels=jnp.zeros((1, 3, 3, 3)),
                                method="fft")
  with pytest.raises(ValueError, match="kernels"):
    correlation.depthwise_xcorr(features=jnp.zeros((2, 4, 4, 3)),
                                kernels=jnp.zeros((1, 3, 3, 3)))
