"""Channel-attention fusion of a coarse decoded feature with a finer one.

CycleSegNet's multi-level variant runs a Cycle Refinement Module on res3, res4
and res5 independently and merges the three refined maps while decoding, coarse
to fine, with a "channel attention" fusion module; the paper names the module
but gives no layer list. We use the Channel Attention Block of DFN (Yu et al.,
"Learning a Discriminative Feature Network for Semantic Segmentation", CVPR
2018), the usual reading of such a module:

1. Upsample the coarse map bilinearly to the fine map's size (half-pixel
   centres, i.e. torch ``align_corners=False``; ``jax.image.resize``).
2. Project both to ``features`` channels with 1x1 convs (the levels have
   different widths: 128/256/512 for ResNet-34).
3. Global-average-pool the concatenation [fine ; coarse] -> [2F], then
   FC(2F -> F / reduction) + ReLU, FC(-> F) + sigmoid gives a weight per channel.
   Here the coarse, more semantic level decides which channels of the fine
   level matter.
4. Output = weights * fine + coarse, [B, H, W, F].

``reduction`` (default 1, as DFN) narrows the hidden FC. The FCs are 1x1 convs
on the pooled vector, written as Dense layers (same parameters).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.nn import resize


class ChannelAttentionFusion(nn.Module):
  """Fuses ``coarse`` [B, h, w, Cc] into ``fine`` [B, H, W, Cf] -> [B, H, W, F].

  Attributes:
    features: F, output channels (both inputs are projected to F).
    reduction: hidden width of the attention MLP is F // reduction.
    resize_method: ``jax.image.resize`` method for the coarse map
      ('bilinear' goes through ``coseg_jax.nn.resize.bilinear_resize``).
    dtype: computation dtype (parameters float32).
  """
  features: int
  reduction: int = 1
  resize_method: str = "bilinear"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, fine: jnp.ndarray, coarse: jnp.ndarray) -> jnp.ndarray:
    if fine.ndim != 4 or coarse.ndim != 4:
      raise ValueError(
          f"ChannelAttentionFusion expects [B, H, W, C] maps, got fine "
          f"{fine.shape} and coarse {coarse.shape}")
    if fine.shape[0] != coarse.shape[0]:
      raise ValueError(f"batch sizes differ: fine {fine.shape}, coarse "
                       f"{coarse.shape}")
    if self.features % self.reduction:
      raise ValueError(f"features={self.features} is not divisible by "
                       f"reduction={self.reduction}")
    b, h, w, _ = fine.shape
    if coarse.shape[1:3] != (h, w):
      if self.resize_method == "bilinear":
        coarse = resize.bilinear_resize(coarse, (h, w))
      else:
        coarse = jax.image.resize(coarse, (b, h, w, coarse.shape[-1]),
                                  self.resize_method)
    f = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="fine_proj")(fine)
    c = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                name="coarse_proj")(coarse)
    s = jnp.mean(jnp.concatenate([f, c], axis=-1), axis=(1, 2))
    s = nn.relu(nn.Dense(self.features // self.reduction, dtype=self.dtype,
                         name="fc1")(s))
    weights = nn.sigmoid(nn.Dense(self.features, dtype=self.dtype,
                                  name="fc2")(s))
    return f * weights[:, None, None, :] + c
