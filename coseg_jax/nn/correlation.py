"""Correlation operators between two feature maps (no learned parameters).

**All-pairs correlation** (:func:`feature_correlation`), as CNNGeo's
``FeatureCorrelation(shape='3D')`` used by MaCoSNet. Both feature maps are
first L2-normalised per spatial position over channels (CNNGeo's
``FeatureExtraction(normalization=True)`` applies ``featureL2Norm`` to the
backbone output), then every position of ``features_b`` is dotted with every
position of ``features_a``::

  corr[n, i, j, k] = <f_b[n, i, j], f_a[n, y_k, x_k]>,   k = x_k * h_a + y_k

The spatial axes are those of B (the *target*: for ``theta_AB``, which warps A
onto B, the regressor sees B's layout) and the channel k enumerates A's
positions **column-major** (x slow, y fast). That odd order is CNNGeo's
(``feature_A.transpose(2, 3).view(b, c, h*w)``) and the regressor's first conv
as well as weakalign's inlier mask depend on it, so it is kept here. The result
then goes through ReLU and ``featureL2Norm`` over the channel axis:
x / sqrt(sum_k x_k^2 + 1e-6) (eps inside the sqrt, as CNNGeo).

**Depth-wise cross-correlation** (:func:`depthwise_xcorr`, for DCC). The other
image's feature map, resized to k x k (:func:`multiscale_kernels`, adaptive
average pooling with torch's bin edges), is used channel by channel as a
depth-wise kernel over this image's map: out[n, y, x, c] = sum_{u,v}
f[n, y+u-r, x+v-r, c] * K[n, u, v, c] / (k*k) with 'SAME' zero padding
(r = (k-1)//2; for even k the extra row/column of padding goes after, XLA's
SAME). The 1/(k*k) normalisation keeps the responses of the different scales
on the same footing (a 1x1 kernel is the other image's global average); it is
the choice made here, no paper fixes it. Two equal implementations:
``method='shift'`` (default) sums k*k shifted products of the padded map
(XLA fuses them into one loop; ~100x faster than the grouped convolution on
CPU at 20x20x512, k=5; ``benchmarks/ops_correlation.py`` measures it), and
``method='conv'``, one
grouped ``conv_general_dilated`` with the batch folded into the channels. No
Python loop over the batch either way.

**Local correlation** (:func:`local_correlation`, DOCS / FlowNet style):
out[n, y, x, d] = mean_c a[n, y, x, c] * b[n, y + dy, x + dx, c] for the
displacements (dy, dx) in range(-D, D+1, stride), row-major (dy slow), zero
padding outside b.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

L2_EPS = 1e-6



def _check_pair(x, y, x_name: str, y_name: str):
  """Both arrays rank 4 with the same batch and channel sizes."""
  if x.ndim != 4 or y.ndim != 4:
    raise ValueError(f"{x_name} and {y_name} expected, got {x.shape} and "
                     f"{y.shape}")
  if x.shape[0] != y.shape[0] or x.shape[-1] != y.shape[-1]:
    raise ValueError(f"{x_name} {x.shape} and {y_name} {y.shape} must share "
                     f"batch and channels")

def feature_l2_norm(x: jax.Array, *, eps: float = L2_EPS) -> jax.Array:
  """CNNGeo ``featureL2Norm`` over the last axis: x / sqrt(sum x^2 + eps)."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def feature_correlation(*, features_a: jax.Array, features_b: jax.Array,
                        normalize_features: bool = True,
                        normalize_matches: bool = True) -> jax.Array:
  """All-pairs correlation in CNNGeo / MaCoSNet's layout.

  Args:
    features_a: [B, h_a, w_a, C] source features (their positions become
      channels, column-major: k = x * h_a + y).
    features_b: [B, h_b, w_b, C] target features (their positions stay
      spatial).
    normalize_features: L2-normalise each feature vector first (CNNGeo's
      default).
    normalize_matches: apply ReLU then ``featureL2Norm`` over the channel axis
      (CNNGeo's default).

  Returns:
    [B, h_b, w_b, h_a * w_a] correlation.
  """
  _check_pair(features_a, features_b, "features_a [B,h,w,C]",
              "features_b [B,h,w,C]")
  if normalize_features:
    features_a = feature_l2_norm(features_a)
    features_b = feature_l2_norm(features_b)
  batch, h_a, w_a, c = features_a.shape
  # [B, w_a, h_a, C] -> rows in column-major order of A's positions.
  a_flat = jnp.swapaxes(features_a, 1, 2).reshape(batch, h_a * w_a, c)
  corr = jnp.einsum("bijc,bkc->bijk", features_b, a_flat)
  if normalize_matches:
    corr = feature_l2_norm(jax.nn.relu(corr))
  return corr


def correlation_index(y: int, x: int, h_a: int) -> int:
  """Channel of :func:`feature_correlation` holding A's position (y, x)."""
  return x * h_a + y


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] averaging matrix with torch AdaptiveAvgPool bin edges."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, out_size: Tuple[int, int]) -> jax.Array:
  """torch ``AdaptiveAvgPool2d`` on [B, H, W, C] -> [B, oh, ow, C]."""
  ph = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out_size[0]), x.dtype)
  pw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out_size[1]), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", ph, pw, x)


def multiscale_kernels(*, features: jax.Array,
                       sizes: Sequence[int] = (1, 3, 5)) -> Tuple[jax.Array,
                                                                  ...]:
  """Resizes the other image's features to k x k kernels, one per size.

  Args:
    features: [B, H, W, C] the other image's feature map.
    sizes: kernel sizes k (each <= min(H, W) is sensible, not required).

  Returns:
    A tuple of [B, k, k, C] kernels (adaptive average pooling).
  """
  if features.ndim != 4:
    raise ValueError(f"features must be [B, H, W, C], got {features.shape}")
  return tuple(adaptive_avg_pool(features, (k, k)) for k in sizes)


def depthwise_xcorr(*, features: jax.Array, kernels: jax.Array,
                    normalize: bool = True, method: str = "shift") -> jax.Array:
  """Per-sample depth-wise cross-correlation with 'SAME' padding.

  Args:
    features: [B, H, W, C] this image's feature map.
    kernels: [B, k, k, C] one k x k kernel per channel and batch element
      (typically from :func:`multiscale_kernels` of the other image).
    normalize: divide by k*k.
    method: 'shift' (sum of k*k shifted products) or 'conv' (grouped
      convolution); the results are equal.

  Returns:
    [B, H, W, C].
  """
  if method not in ("shift", "conv"):
    raise ValueError(f"method must be 'shift' or 'conv', got {method!r}")
  _check_pair(features, kernels, "features [B,H,W,C]", "kernels [B,k,k,C]")
  batch, height, width, chans = features.shape
  kh, kw = kernels.shape[1:3]
  if method == "shift":
    top, left = (kh - 1) // 2, (kw - 1) // 2  # XLA 'SAME': extra pad after.
    padded = jnp.pad(features, ((0, 0), (top, kh - 1 - top),
                                (left, kw - 1 - left), (0, 0)))
    out = 0.0
    for u in range(kh):  # Static k*k taps, fused by XLA.
      for v in range(kw):
        out = out + (padded[:, u:u + height, v:v + width] *
                     kernels[:, u, v][:, None, None, :].astype(features.dtype))
    return out / (kh * kw) if normalize else out
  # Fold batch into channels: one grouped conv does every (sample, channel).
  x = jnp.transpose(features, (1, 2, 0, 3)).reshape(1, height, width,
                                                   batch * chans)
  k = jnp.transpose(kernels, (1, 2, 0, 3)).reshape(kh, kw, 1, batch * chans)
  out = jax.lax.conv_general_dilated(
      x, k.astype(x.dtype), window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=batch * chans)
  out = jnp.transpose(out.reshape(height, width, batch, chans), (2, 0, 1, 3))
  if normalize:
    out = out / (kh * kw)
  return out


def multiscale_xcorr(*, features: jax.Array, other: jax.Array,
                     sizes: Sequence[int] = (1, 3, 5), normalize: bool = True,
                     method: str = "shift") -> jax.Array:
  """DCC matching: xcorr with the other map's kernels at every size.

  Args:
    features: [B, H, W, C] this image's features.
    other: [B, H', W', C] the other image's features.
    sizes: kernel sizes.
    normalize: divide each response by k*k.
    method: see :func:`depthwise_xcorr`.

  Returns:
    [B, H, W, C * len(sizes)], the scales concatenated in ``sizes`` order.
  """
  outs = [depthwise_xcorr(features=features, kernels=k, normalize=normalize,
                          method=method)
          for k in multiscale_kernels(features=other, sizes=sizes)]
  return jnp.concatenate(outs, axis=-1)


def local_correlation(*, a: jax.Array, b: jax.Array, max_displacement: int,
                      stride: int = 1) -> jax.Array:
  """Local-displacement correlation (channel mean of products).

  Args:
    a: [B, H, W, C].
    b: [B, H, W, C].
    max_displacement: D, displacements in [-D, D] along each axis.
    stride: step between displacements.

  Returns:
    [B, H, W, n*n] with n = len(range(-D, D + 1, stride)); channel
    iy * n + ix holds displacement (dy, dx) = (offsets[iy], offsets[ix]).
  """
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"a and b must be equal [B, H, W, C], got {a.shape} and "
                     f"{b.shape}")
  d = int(max_displacement)
  height, width = a.shape[1:3]
  padded = jnp.pad(b, ((0, 0), (d, d), (d, d), (0, 0)))
  offsets = range(-d, d + 1, stride)
  # Loop over the (few, static) displacements only.
  outs = [jnp.mean(a * padded[:, d + dy:d + dy + height, d + dx:d + dx + width],
                   axis=-1)
          for dy in offsets for dx in offsets]
  return jnp.stack(outs, axis=-1)
