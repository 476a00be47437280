"""EfficientNet-Lite0 in the efficientnet_pytorch layout (Flax Linen, NHWC).

EfficientNet-Lite (Tan & Le; TF's ``efficientnet/lite``) is B0 made friendly
to integer accelerators: ReLU6 instead of swish, no squeeze-excite, and the
stem (32 ch) and head (1280 ch) are not scaled with the width multiplier
(irrelevant for Lite0, width = depth = 1.0). Blocks are B0's MBConv arguments
(repeats, kernel, stride, expand ratio, in, out):

    1 x (3, 1, 1, 32, 16)    2 x (3, 2, 6, 16, 24)   2 x (5, 2, 6, 24, 40)
    3 x (3, 2, 6, 40, 80)    3 x (5, 1, 6, 80, 112)  4 x (5, 2, 6, 112, 192)
    1 x (3, 1, 6, 192, 320)

16 blocks in all. Each block: [1x1 expand conv, BN, ReLU6] (when expand != 1),
depthwise kxk conv (stride), BN, ReLU6, 1x1 project conv, BN, and an identity
skip when stride 1 and in == out, with drop-connect (rate 0.2 * block / 16,
as efficientnet_pytorch) only with ``train=True`` (needs a 'dropout' rng).
BatchNorm eps 1e-3, momentum 0.99 (TF's). Convolutions use TF "SAME" padding:
for stride 2 the extra pixel goes to the bottom/right, as TF and
efficientnet_pytorch's ``Conv2dStaticSamePadding`` do (this is lax's 'SAME').
The head is a 1x1 conv to 1280, BN, ReLU6, global average, dropout 0.2
(train only) and the 1000-way fc ``_fc``.

Input: images in [0, 1] are mapped to ``(255 x - 127) / 128`` inside, the
preprocessing the TF Lite checkpoints were trained with.

Flax names mirror the state dict (``_conv_stem``, ``_bn0``, ``_blocks_N`` with
``_expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/``_project_conv``/
``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``); see ``weights.py``.

Feature levels: the output of the last block at each stride: 'stride2' =
block 0 (16 ch), 'stride4' = block 2 (24), 'stride8' = block 4 (40),
'stride16' = block 10 (112). 'stride32' is the head activation (1280 ch,
after BN + ReLU6), not block 15 (320 ch): this keeps ``pooled`` = global
average of the last level = the 1280-d vector the classifier reads, the
feature the perceptual losses use. With ``truncate_at`` the head is not built.

``output_stride`` 16/8 replaces the stride of the later stride-2 blocks by
dilation of their depthwise convs (the first block of a dilated stage keeps
the previous dilation, as torchvision's ResNets do); an extension, no
pretrained model was trained that way.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.backbones import base

# (repeats, kernel, stride, expand_ratio, in, out): EfficientNet-B0's blocks.
B0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
             (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112),
             (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN = functools.partial(nn.BatchNorm, momentum=0.99, epsilon=1e-3)


class MBConvLite(nn.Module):
  """Inverted-residual block without squeeze-excite, ReLU6 activations.

  Attributes:
    out_channels: channels after the projection.
    kernel: depthwise kernel size.
    stride: depthwise stride.
    expand_ratio: expansion of the 1x1 conv (1: no expansion conv).
    dilation: depthwise dilation (output-stride option).
    drop_connect_rate: stochastic depth rate of the skip path (training).
    dtype: computation dtype.
  """
  out_channels: int
  kernel: int = 3
  stride: int = 1
  expand_ratio: int = 1
  dilation: int = 1
  drop_connect_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """[N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), out_channels]."""
    in_ch = x.shape[-1]
    bn = functools.partial(_BN, use_running_average=not train, dtype=self.dtype)
    y = x
    if self.expand_ratio != 1:
      y = nn.Conv(in_ch * self.expand_ratio, (1, 1), use_bias=False,
                  dtype=self.dtype, name="_expand_conv")(y)
      y = nn.relu6(bn(name="_bn0")(y))
    width = y.shape[-1]
    y = nn.Conv(width, (self.kernel, self.kernel),
                strides=(self.stride, self.stride), padding="SAME",
                kernel_dilation=(self.dilation, self.dilation),
                feature_group_count=width, use_bias=False, dtype=self.dtype,
                name="_depthwise_conv")(y)
    y = nn.relu6(bn(name="_bn1")(y))
    y = nn.Conv(self.out_channels, (1, 1), use_bias=False, dtype=self.dtype,
                name="_project_conv")(y)
    y = bn(name="_bn2")(y)
    if self.stride == 1 and in_ch == self.out_channels:
      if train and self.drop_connect_rate > 0:
        keep = 1.0 - self.drop_connect_rate
        rng = self.make_rng("dropout")
        mask = jax.random.bernoulli(rng, keep, (y.shape[0], 1, 1, 1))
        y = jnp.where(mask, y / keep, jnp.zeros_like(y))
      y = y + x
    return y


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 with the common backbone interface.

  Attributes:
    truncate_at: last level to compute; None = all (with the 1280 head).
    output_stride: 32, 16 or 8.
    with_head: compute the 1000-way fc logits from the pooled 1280-d vector.
    num_classes: classifier width.
    drop_connect_rate: global stochastic-depth rate (scaled per block).
    dropout_rate: dropout before the classifier (training only).
    dtype: computation dtype (parameters float32).
  """
  truncate_at: Optional[str] = None
  output_stride: int = 32
  with_head: bool = False
  num_classes: int = 1000
  drop_connect_rate: float = 0.2
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> base.BackboneOutput:
    """Args: images [N, H, W, 3] in [0, 1]; train: BN stats, drop-connect.

    Returns:
      BackboneOutput: features {'stride2': [N, H/2, W/2, 16], 'stride4':
      [.., 24], 'stride8': [.., 40], 'stride16': [.., 112], 'stride32':
      [N, H/32, W/32, 1280]} (sizes rounded up), pooled [N, C_last] (1280
      untruncated) and logits [N, num_classes] with the head.
    """
    last = base.check_level(self.truncate_at or base.FEATURE_LEVELS[-1])
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got "
                       f"{self.output_stride}")
    if self.with_head and last != "stride32":
      raise ValueError("with_head=True needs the full network (truncate_at "
                       f"is {self.truncate_at!r})")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [N, H, W, 3], got {images.shape}")
    bn = functools.partial(_BN, use_running_average=not train, dtype=self.dtype)
    x = ((jnp.asarray(images, jnp.float32) * 255.0 - 127.0) / 128.0).astype(
        self.dtype)
    x = nn.Conv(32, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                dtype=self.dtype, name="_conv_stem")(x)
    x = nn.relu6(bn(name="_bn0")(x))
    # Flat block list with each block's nominal stride (ignoring dilation),
    # which names the levels: a level is the last block at its stride.
    specs, nominal = [], 2
    for repeats, kernel, stride, expand, _, out_ch in B0_BLOCKS:
      for j in range(repeats):
        s = stride if j == 0 else 1
        nominal *= s
        specs.append((kernel, s, expand, out_ch, nominal))
    features = {}
    current_stride, dilation = 2, 1
    for index, (kernel, stride, expand, out_ch, nominal) in enumerate(specs):
      block_dilation = dilation
      if stride == 2 and current_stride >= self.output_stride:
        dilation *= 2  # later blocks use the new dilation, this one the old
        stride = 1
      current_stride *= stride
      x = MBConvLite(
          out_channels=out_ch, kernel=kernel, stride=stride,
          expand_ratio=expand,
          dilation=block_dilation,
          drop_connect_rate=self.drop_connect_rate * index / len(specs),
          dtype=self.dtype, name=f"_blocks_{index}")(x, train)
      is_last_at_stride = (index + 1 == len(specs)
                           or specs[index + 1][4] != nominal)
      level = f"stride{nominal}"
      if is_last_at_stride and level != "stride32":
        features[level] = x
        if level == last:
          return base.BackboneOutput(features=features,
                                     pooled=jnp.mean(x, axis=(1, 2)))
    x = nn.Conv(1280, (1, 1), use_bias=False, dtype=self.dtype,
                name="_conv_head")(x)
    x = nn.relu6(bn(name="_bn1")(x))
    features["stride32"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.with_head:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="_fc")(y)
    return base.BackboneOutput(features=features, pooled=pooled, logits=logits)
