"""A 2x transposed convolution computed in sub-pixel form.

A stride-2 transposed convolution is, by definition, a stride-1 convolution
of the input dilated with zeros (``lhs_dilation=2`` in XLA). XLA:CPU runs it
that way, so three quarters of its multiply-adds are by inserted zeros: in
MaCoSNet's decoder the last such layer ([8, 120, 120, C] -> [8, 240, 240,
32], 3x3) was about a third of the decoder's convolution time at 240 px
(``benchmarks.profile_step``).

Along one axis, output pixel ``2 i + r`` (phase r) only meets the taps t of
the kernel that land on real input pixels: those with ``r + t - pad_lo``
even, which read input pixel ``i + (r + t - pad_lo) / 2``. So each of the
four output phases (r_h, r_w) is a small stride-1 convolution of the
undilated input, and all four are one convolution whose output channels
are stacked by phase, followed by a depth-to-space interleave. For the 3x3
kernel with padding (1, 2) that is a 2x2 convolution to 4 x C channels: 16
multiply-adds per input pixel and channel pair instead of 36.

The parameters (a ``kernel`` [k, k, C_in, C_out] and an optional ``bias``)
and their initialisation are those of ``flax.linen.ConvTranspose``, so
checkpoints and weight conversions are unchanged and the two modules give
the same outputs to float rounding (tested).
"""

from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

PaddingPair = Tuple[int, int]


def _phase_taps(kernel_size: int, pad: PaddingPair):
  """Taps of each output phase along one axis of a 2x transposed conv.

  Returns:
    (taps, lo, hi): ``taps[r]`` lists (t, a) pairs: kernel tap t feeds
    phase r from position a of the sub-pixel kernel; the sub-pixel kernel
    has ``lo + hi + 1`` positions and the input is padded by (lo, hi).
  """
  offsets = {}
  for r in (0, 1):
    for t in range(kernel_size):
      if (r + t - pad[0]) % 2 == 0:
        offsets.setdefault(r, []).append((t, (r + t - pad[0]) // 2))
  all_d = [d for pairs in offsets.values() for _, d in pairs]
  lo, hi = -min(all_d), max(all_d)
  taps = [[(t, d + lo) for t, d in offsets.get(r, [])] for r in (0, 1)]
  return taps, lo, hi


def subpixel_kernel(kernel: jax.Array,
                    padding: Sequence[PaddingPair]) -> Tuple[jax.Array, list]:
  """Rearranges a 2x transposed-conv kernel into its sub-pixel form.

  Args:
    kernel: [k_h, k_w, C_in, C_out], as ``nn.ConvTranspose`` stores it.
    padding: ((lo_h, hi_h), (lo_w, hi_w)) of the transposed convolution.

  Returns:
    (w, pads): w [a_h, a_w, C_in, 4 * C_out] with output channels ordered
    (phase_h, phase_w, C_out), and the input padding ``[(lo_h, hi_h),
    (lo_w, hi_w)]`` of the stride-1 convolution that uses it.
  """
  k_h, k_w, c_in, c_out = kernel.shape
  (taps_h, lo_h, hi_h), (taps_w, lo_w, hi_w) = (
      _phase_taps(k_h, padding[0]), _phase_taps(k_w, padding[1]))
  w = jnp.zeros((lo_h + hi_h + 1, lo_w + hi_w + 1, c_in, 2, 2, c_out),
                kernel.dtype)
  for r_h in (0, 1):
    for t_h, a_h in taps_h[r_h]:
      for r_w in (0, 1):
        for t_w, a_w in taps_w[r_w]:
          w = w.at[a_h, a_w, :, r_h, r_w, :].set(kernel[t_h, t_w])
  return w.reshape(w.shape[:3] + (4 * c_out,)), [(lo_h, hi_h), (lo_w, hi_w)]


class ConvTranspose2x(nn.Module):
  """``nn.ConvTranspose`` with stride 2 and an exactly 2x output, sub-pixel.

  Attributes:
    features: output channels.
    kernel_size: (k_h, k_w).
    padding: ((lo_h, hi_h), (lo_w, hi_w)) as for ``nn.ConvTranspose``; must
      give an output of exactly twice the input size (``lo + hi = k``
      per axis; e.g. (1, 2) for k = 3, torch's ``padding=1,
      output_padding=1``).
    use_bias: add a learnt bias.
    dtype: computation dtype (None: from the inputs and parameters).
    param_dtype: parameter dtype.
    kernel_init: as ``nn.ConvTranspose``'s default.
    bias_init: as ``nn.ConvTranspose``'s default.
  """
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  padding: Tuple[PaddingPair, PaddingPair] = ((1, 2), (1, 2))
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[N, h, w, C_in] -> [N, 2h, 2w, features]."""
    for k, (lo, hi), axis in zip(self.kernel_size, self.padding, "hw"):
      if lo + hi != k:
        raise ValueError(
            f"ConvTranspose2x: padding ({lo}, {hi}) on axis {axis} with a "
            f"kernel of {k} does not give a 2x output (needs lo + hi = "
            f"{k})")
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (c_in, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    sub, pads = subpixel_kernel(kernel, self.padding)
    y = lax.conv_general_dilated(x, sub, (1, 1), pads,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(n, h, w, 2, 2, self.features)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features)
    if bias is not None:
      y = y + bias
    return y
