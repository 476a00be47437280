"""EfficientNet-Lite0/1/2 in the efficientnet_pytorch layout (Flax Linen, NHWC).

EfficientNet-Lite (Tan & Le; TF's ``efficientnet/lite``) is B0 made friendly
to integer accelerators: ReLU6 instead of swish and no squeeze-excite. The
family scales B0's widths and depths like EfficientNet (TF's
``efficientnet_lite_builder``; width, depth, native resolution, dropout):

    Lite0: 1.0, 1.0, 224, 0.2    Lite1: 1.0, 1.1, 240, 0.2
    Lite2: 1.1, 1.2, 260, 0.3

with EfficientNet's rules: channels ``round_filters`` (c x width rounded to
the nearest multiple of 8, at least 8, plus 8 when the rounding lost more
than 10%) and repeats ``round_repeats`` (ceil(r x depth)). Lite's
``fix_head_stem`` keeps the stem (32 ch), the head (1280 ch) and the repeats
of the first and last stages unscaled (their channels are still rounded).
B0's MBConv stages (repeats, kernel, stride, expand ratio, in, out):

    1 x (3, 1, 1, 32, 16)    2 x (3, 2, 6, 16, 24)   2 x (5, 2, 6, 24, 40)
    3 x (3, 2, 6, 40, 80)    3 x (5, 1, 6, 80, 112)  4 x (5, 2, 6, 112, 192)
    1 x (3, 1, 6, 192, 320)

Lite0 has 16 blocks; Lite1 21 (repeats 1, 3, 3, 4, 4, 5, 1; B0's channels);
Lite2 21 with channels 16, 24, 48, 88, 120, 208, 352. Each block: [1x1
expand conv, BN, ReLU6] (when expand != 1), depthwise kxk conv (stride), BN,
ReLU6, 1x1 project conv, BN, and an identity skip when stride 1 and in ==
out, with drop-connect (rate 0.2 * block / number of blocks, as
efficientnet_pytorch) only with ``train=True`` (needs a 'dropout' rng).
BatchNorm eps 1e-3, momentum 0.99 (TF's). Convolutions use TF "SAME"
padding: for stride 2 the extra pixel goes to the bottom/right, as TF and
efficientnet_pytorch's ``Conv2dStaticSamePadding`` do (this is lax's
'SAME'). The head is a 1x1 conv to 1280, BN, ReLU6, global average, dropout
(train only) and the 1000-way fc ``_fc``.

Input: images in [0, 1] are mapped to ``(255 x - 127) / 128`` inside, the
preprocessing the TF Lite checkpoints were trained with.

Flax names mirror the state dict (``_conv_stem``, ``_bn0``, ``_blocks_N`` with
``_expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/``_project_conv``/
``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``); see ``weights.py``.

Feature levels: the output of the last block at each stride. Lite0:
'stride2' = block 0 (16 ch), 'stride4' = block 2 (24), 'stride8' = block 4
(40), 'stride16' = block 10 (112); Lite1: blocks 0, 3, 6, 14 (16, 24, 40,
112); Lite2: blocks 0, 3, 6, 14 (16, 24, 48, 120). 'stride32' is the head
activation (1280 ch, after BN + ReLU6), not the last block (320 / 352 ch):
this keeps ``pooled`` = global average of the last level = the 1280-d vector
the classifier reads, the feature the perceptual losses use. With
``truncate_at`` the head is not built.

``output_stride`` 16/8 replaces the stride of the later stride-2 blocks by
dilation of their depthwise convs (the first block of a dilated stage keeps
the previous dilation, as torchvision's ResNets do); an extension, no
pretrained model was trained that way.
"""

import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.backbones import base
from coseg_jax.nn import depthwise

# (repeats, kernel, stride, expand_ratio, in, out): EfficientNet-B0's blocks.
B0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
             (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112),
             (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# name -> (width coefficient, depth coefficient, native resolution, dropout
# before the classifier): TF's efficientnet_lite_builder.
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
# The colour that the input mapping below sends to 0 (per channel).
INPUT_MEAN = (127.0 / 255.0,) * 3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
_BN = functools.partial(nn.BatchNorm, momentum=0.99, epsilon=1e-3)
# Levels a forward pass can resume from (``input_level``): every block
# output; 'stride32' is the head, after the last block.
RESUMABLE_LEVELS = ("stride2", "stride4", "stride8", "stride16")


def lite_normalize(images, dtype):
  """[N, H, W, 3] in [0, 1] -> (255 x - 127) / 128 (TF Lite's), as ``dtype``."""
  return ((jnp.asarray(images, jnp.float32) * 255.0 - 127.0) / 128.0).astype(
      dtype)


def round_filters(channels: int, width_coefficient: float,
                  divisor: int = 8) -> int:
  """EfficientNet's channel scaling: nearest multiple of ``divisor``.

  The result is at least ``divisor``, and one ``divisor`` is added back when
  rounding down lost more than 10% of ``channels * width_coefficient``.
  """
  scaled = channels * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """EfficientNet's depth scaling: ceil(repeats * depth_coefficient)."""
  return int(math.ceil(depth_coefficient * repeats))


def lite_blocks(width_coefficient: float = 1.0,
                depth_coefficient: float = 1.0):
  """Flat block list of a Lite model: (kernel, stride, expand, out) each.

  Blocks are in order, the stage's stride on its first block only. Lite's
  ``fix_head_stem`` keeps B0's repeats in the first and last stages (the
  stem and head widths are fixed by the caller); every stage's channels are
  scaled with ``round_filters``. A block's input width is the previous
  block's output (the stem's for block 0).
  """
  blocks = []
  for stage, (repeats, kernel, stride, expand, _, out_ch) in enumerate(
      B0_BLOCKS):
    out_ch = round_filters(out_ch, width_coefficient)
    if 0 < stage < len(B0_BLOCKS) - 1:
      repeats = round_repeats(repeats, depth_coefficient)
    for j in range(repeats):
      blocks.append((kernel, stride if j == 0 else 1, expand, out_ch))
  return tuple(blocks)


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
    # nn.Conv(feature_group_count=width)'s parameters, computed as shifted
    # multiply-adds on CPU (coseg_jax.nn.depthwise: XLA's grouped
    # convolution is several times slower there).
    y = depthwise.DepthwiseConv(self.kernel, strides=self.stride,
                                dilation=self.dilation, dtype=self.dtype,
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


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite (0, 1 or 2) with the common backbone interface.

  The defaults are Lite0; ``efficientnet_lite0/1/2`` below set each model's
  coefficients and dropout (``LITE_VARIANTS``).

  Attributes:
    width_coefficient: channel multiplier of the blocks (``round_filters``).
    depth_coefficient: repeat multiplier of the middle stages.
    truncate_at: last level to compute; None = all (with the 1280 head).
    output_stride: 32, 16 or 8.
    with_head: compute the 1000-way fc logits from the pooled 1280-d vector.
    num_classes: classifier width.
    drop_connect_rate: global stochastic-depth rate (scaled per block).
    dropout_rate: dropout before the classifier (training only).
    dtype: computation dtype (parameters float32).
  """
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  truncate_at: Optional[str] = None
  output_stride: int = 32
  with_head: bool = False
  num_classes: int = 1000
  drop_connect_rate: float = 0.2
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  def _block_specs(self):
    """(kernel, stride, expand, out channels, nominal stride) per block.

    The nominal stride ignores dilation; it names the levels: a level is
    the last block at its stride.
    """
    specs, nominal = [], 2
    for kernel, stride, expand, out_ch in lite_blocks(
        self.width_coefficient, self.depth_coefficient):
      nominal *= stride
      specs.append((kernel, stride, expand, out_ch, nominal))
    return specs

  def _level_end(self, level: str) -> int:
    """Index of the block whose output is ``level`` ('stride2'..'stride16')."""
    ends = [i for i, spec in enumerate(self._block_specs())
            if f"stride{spec[4]}" == level]
    if level == "stride32" or not ends:
      raise ValueError(f"input_level must be one of {RESUMABLE_LEVELS}, got "
                       f"{level!r}")
    return ends[-1]

  def modules_through(self, level: str) -> Tuple[str, ...]:
    """Names of the submodules that compute ``level`` (stem and blocks).

    The parameters that a frozen prefix of the network holds: what a run
    that fine-tunes only the blocks past ``level`` keeps fixed.
    """
    end = self._level_end(level)
    return ("_conv_stem", "_bn0") + tuple(f"_blocks_{i}"
                                          for i in range(end + 1))

  @nn.compact
  def __call__(self, images, train: bool = False, *,
               input_level: Optional[str] = None) -> base.BackboneOutput:
    """Args: images [N, H, W, 3] in [0, 1]; train: BN stats, drop-connect.

    With ``input_level`` (one of ``RESUMABLE_LEVELS``), ``images`` is
    instead that level's feature map [N, h, w, C_level], as this network
    computed it, and only the blocks after it run: the levels past it are
    returned (the stem and earlier blocks are not called, so ``init`` with
    it creates only the later parameters). This resumes a forward pass from
    a stored level, e.g. to fine-tune the top of a network whose bottom is
    frozen and cached.

    Returns:
      BackboneOutput: features {'stride2': [N, H/2, W/2, 16], 'stride4':
      [.., 24], 'stride8': [.., 40 (Lite2: 48)], 'stride16': [.., 112
      (Lite2: 120)], 'stride32': [N, H/32, W/32, 1280]} (sizes rounded up;
      with ``input_level`` only the levels after it), pooled [N, C_last]
      (1280 untruncated) and logits [N, num_classes] with the head.
    """
    bn = functools.partial(_BN, use_running_average=not train, dtype=self.dtype)
    specs = self._block_specs()
    if input_level is None:
      last = base.check_call(self, images)
      first_block = 0
      x = lite_normalize(images, self.dtype)
      x = nn.Conv(STEM_CHANNELS, (3, 3), strides=(2, 2), padding="SAME",
                  use_bias=False, dtype=self.dtype, name="_conv_stem")(x)
      x = nn.relu6(bn(name="_bn0")(x))
    else:
      last = base.check_level(self.truncate_at or base.FEATURE_LEVELS[-1])
      first_block = self._level_end(input_level) + 1
      want = specs[first_block - 1][3]
      if images.ndim != 4 or images.shape[-1] != want:
        raise ValueError(f"input_level={input_level!r} expects [N, h, w, "
                         f"{want}] features, got {images.shape}")
      if base.FEATURE_LEVELS.index(last) <= base.FEATURE_LEVELS.index(
          input_level):
        raise ValueError(f"input_level={input_level!r} is not before "
                         f"truncate_at={self.truncate_at!r}")
      x = images.astype(self.dtype)
    features = {}
    current_stride, dilation = 2, 1
    for index, (kernel, stride, expand, out_ch, nominal) in enumerate(specs):
      block_dilation = dilation
      if stride == 2 and current_stride >= self.output_stride:
        dilation *= 2  # later blocks use the new dilation, this one the old
        stride = 1
      current_stride *= stride
      if index < first_block:
        continue
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
    x = nn.Conv(HEAD_CHANNELS, (1, 1), use_bias=False, dtype=self.dtype,
                name="_conv_head")(x)
    x = nn.relu6(bn(name="_bn1")(x))
    features["stride32"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.with_head:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="_fc")(y)
    return base.BackboneOutput(features=features, pooled=pooled, logits=logits)


def _variant(name):
  width, depth, _, dropout = LITE_VARIANTS[name]
  return functools.partial(EfficientNetLite, width_coefficient=width,
                           depth_coefficient=depth, dropout_rate=dropout)


efficientnet_lite0 = _variant("efficientnet_lite0")
efficientnet_lite1 = _variant("efficientnet_lite1")
efficientnet_lite2 = _variant("efficientnet_lite2")
