"""Depthwise convolution that is fast on every backend.

A depthwise k x k convolution (one filter per channel, MobileNet /
EfficientNet) is ``lax.conv_general_dilated`` with ``feature_group_count =
C``. XLA's CPU backend runs that grouped convolution 7-40x slower than the
same arithmetic written as k x k shifted multiply-adds, which XLA fuses into
one loop over the tensor (measured on 2 CPU cores: [8, 112, 112, 96] k=3,
374 ms -> 50 ms; [8, 14, 14, 720] k=3, 53 ms -> 1.3 ms); accelerators run the
grouped convolution well. :class:`DepthwiseConv` therefore chooses the
formulation by backend (``method='auto'``) and keeps ``nn.Conv``'s parameter
layout, so the two are interchangeable and pretrained weights load into
either.

Padding is lax/TF 'SAME': for input size n, stride s and effective kernel
size (k - 1) d + 1, the output has ceil(n / s) positions and the padding
total max((ceil(n / s) - 1) s + (k - 1) d + 1 - n, 0) is split with the
extra pixel at the end (bottom/right), as TF and efficientnet_pytorch's
``Conv2dStaticSamePadding`` do.
"""

import functools
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

METHODS = ("auto", "shift", "lax")


def same_padding(size: int, kernel: int, stride: int,
                 dilation: int = 1) -> Tuple[int, int]:
  """(before, after) padding of one axis for 'SAME' (module docstring)."""
  out = -(-size // stride)
  effective = (kernel - 1) * dilation + 1
  total = max((out - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
                   dilation: int = 1, method: str = "auto") -> jax.Array:
  """Depthwise 'SAME' convolution.

  Args:
    x: [N, H, W, C].
    kernel: [k, k, 1, C] (``nn.Conv(feature_group_count=C)``'s layout).
    stride: spatial stride.
    dilation: kernel dilation.
    method: 'shift' (k*k shifted multiply-adds), 'lax' (grouped
      convolution) or 'auto' ('shift' on CPU, 'lax' elsewhere).

  Returns:
    [N, ceil(H / stride), ceil(W / stride), C].
  """
  if method not in METHODS:
    raise ValueError(f"depthwise method must be one of {METHODS}, got "
                     f"{method!r}")
  kh, kw, one, c = kernel.shape
  if one != 1 or c != x.shape[-1] or kh != kw:
    raise ValueError(f"depthwise kernel must be [k, k, 1, {x.shape[-1]}], "
                     f"got {kernel.shape}")
  if method == "auto":
    method = "shift" if jax.default_backend() == "cpu" else "lax"
  if method == "lax":
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
  return _shift(x, kernel, stride, dilation)


def _shift_forward(x: jax.Array, kernel: jax.Array, stride: int,
                   dilation: int) -> jax.Array:
  """The k*k shifted multiply-adds (shapes as :func:`depthwise_conv`)."""
  k = kernel.shape[0]
  _, h, w, _ = x.shape
  xp, _, _ = _pad_same(x, k, stride, dilation)
  out_h, out_w = -(-h // stride), -(-w // stride)
  acc = None
  for i, j, tap in _taps(xp, k, stride, dilation, out_h, out_w):
    term = tap * kernel[i, j, 0]
    acc = term if acc is None else acc + term
  return acc


def _pad_same(x: jax.Array, k: int, stride: int,
              dilation: int) -> Tuple[jax.Array, Tuple[int, int],
                                      Tuple[int, int]]:
  """(x padded for 'SAME', (top, bottom), (left, right) padding)."""
  _, h, w, _ = x.shape
  pad_h = same_padding(h, k, stride, dilation)
  pad_w = same_padding(w, k, stride, dilation)
  return jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0))), pad_h, pad_w


def _taps(xp: jax.Array, k: int, stride: int, dilation: int, out_h: int,
          out_w: int):
  """Yields (i, j, [N, out_h, out_w, C] tap (i, j) of the padded input)."""
  for i in range(k):
    for j in range(k):
      y0, x0 = i * dilation, j * dilation
      yield i, j, xp[:, y0:y0 + (out_h - 1) * stride + 1:stride,
                     x0:x0 + (out_w - 1) * stride + 1:stride, :]


# Reverse mode of the shifted form, written out. Differentiating the loop
# above as it stands makes every tap (a strided slice of the padded input) a
# residual that XLA writes to memory, and transposes each slice into a pad of
# the whole padded input; on XLA:CPU that backward pass cost ~10x the forward
# ([8, 112, 112, 96], k = 3: 75 ms forward, 720 ms forward + backward). Here
# the only residual is the input, and the input gradient is itself a
# shifted-form correlation: the output gradient, dilated by the stride and
# padded, taken against the flipped kernel, which XLA fuses into one loop
# like the forward pass, and the kernel gradient is one fused reduction,
# accumulated in float32 (same layer: 265 ms). Forward-mode differentiation
# (jax.jvp) is not defined for it.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift(x, kernel, stride, dilation):
  return _shift_forward(x, kernel, stride, dilation)


def _shift_fwd(x, kernel, stride, dilation):
  return _shift_forward(x, kernel, stride, dilation), (x, kernel)


def _shift_bwd(stride, dilation, residuals, g):
  """Cotangents of (x, kernel) for the output cotangent g [N, oh, ow, C]."""
  x, kernel = residuals
  k = kernel.shape[0]
  _, h, w, _ = x.shape
  _, out_h, out_w, _ = g.shape
  xp, pad_h, pad_w = _pad_same(x, k, stride, dilation)
  # One variadic reduction over (N, oh) for all k*k taps, then over ow: XLA
  # emits it as a single loop that reads g once and keeps every tap a fused
  # slice. k*k separate multiply-reductions are each matched to a library
  # reduction that takes its operands from memory, so XLA would write all k*k
  # taps out first (3-5x slower, and the taps' memory).
  f32 = jnp.float32
  products = tuple(tap.astype(f32) * g.astype(f32)
                   for _, _, tap in _taps(xp, k, stride, dilation, out_h,
                                          out_w))
  partial = jax.lax.reduce(products, (jnp.zeros((), f32),) * len(products),
                           lambda a, b: tuple(u + v for u, v in zip(a, b)),
                           (0, 1))  # k*k x [ow, C]
  d_kernel = jnp.stack([p.sum(0) for p in partial]).reshape(
      kernel.shape).astype(kernel.dtype)
  # Padded-input position p = y * stride + i * dilation receives
  # g[y] * kernel[i]. With g dilated by the stride and padded by
  # e = (k - 1) * dilation in front (gd[e + y * stride] = g[y]), that is
  # sum_i gd[p + e - i * dilation] * kernel[i]; the input gradient is the
  # padded one from offset pad_before on.
  e = (k - 1) * dilation
  hp, wp = xp.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  gd = jax.lax.pad(g, zero, ((0, 0, 0),
                             (e, hp - (out_h - 1) * stride - 1, stride - 1),
                             (e, wp - (out_w - 1) * stride - 1, stride - 1),
                             (0, 0, 0)))
  dx = None
  for i in range(k):
    for j in range(k):
      y0 = e - i * dilation + pad_h[0]
      x0 = e - j * dilation + pad_w[0]
      term = gd[:, y0:y0 + h, x0:x0 + w, :] * kernel[i, j, 0]
      dx = term if dx is None else dx + term
  return dx, d_kernel


_shift.defvjp(_shift_fwd, _shift_bwd)


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution with ``nn.Conv``'s parameters.

  Attributes:
    kernel_size: k.
    strides: spatial stride.
    dilation: kernel dilation.
    use_bias: add a per-channel bias.
    method: see :func:`depthwise_conv`.
    dtype: computation dtype (parameters stay float32).
  """
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  use_bias: bool = False
  method: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, ceil(H / strides), ceil(W / strides), C]."""
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, 1, c), jnp.float32)
    y = depthwise_conv(jnp.asarray(x, self.dtype),
                       jnp.asarray(kernel, self.dtype), stride=self.strides,
                       dilation=self.dilation, method=self.method)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
      y = y + jnp.asarray(bias, self.dtype)
    return y
