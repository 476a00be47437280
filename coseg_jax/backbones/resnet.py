"""ResNet-18/34/50/101 in torchvision's architecture (Flax Linen, NHWC).

The layer layout, names and numerics follow ``torchvision.models.resnet`` so
that its ImageNet state dicts load one to one (see ``weights.py``): a 7x7
stride-2 stem conv, 3x3 stride-2 max-pool, four stages of BasicBlocks (18/34)
or Bottlenecks (50/101) with the stride on the bottleneck's 3x3 conv ("ResNet
v1.5"), a 1x1 conv + BN projection shortcut where shape changes, BatchNorm with
eps 1e-5 (running averages unless ``train=True``; torch momentum 0.1 = Flax
0.9), global average pooling and a 1000-way fc.

Feature levels (the naming scheme of ``base``): 'stride2' = stem conv+BN+ReLU
(before the max-pool), 'stride4' = layer1, 'stride8' = layer2, 'stride16' =
layer3, 'stride32' = layer4. Sizes are ceil(H/S) as in torch (conv padding
k//2). ``pooled`` is the global average of the last returned level (2048-d for
ResNet-50/101 untruncated: what the fc reads).

``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by
dilation exactly as torchvision's ``replace_stride_with_dilation``: the first
block of a dilated stage keeps the previous dilation, the following ones use
the new one; the 1x1 shortcut loses its stride. torchvision refuses dilation in
BasicBlocks; here ResNet-18/34 accept it too (both 3x3 convs of a block use
that block's dilation), a documented extension.

Input: images in [0, 1], normalised inside with the ImageNet mean/std.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from coseg_jax.backbones import base

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images, dtype):
  """[N, H, W, 3] in [0, 1] -> ImageNet-standardised, cast to ``dtype``."""
  x = jnp.asarray(images, jnp.float32)
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  return x.astype(dtype)


def _conv(features, kernel, stride=1, dilation=1, dtype=jnp.float32, name=None):
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=False,
                 dtype=dtype, name=name)


def _bn(train, dtype, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)


class _ResidualBlock(nn.Module):
  """The attributes and the shortcut of both block kinds.

  Attributes:
    planes: the block's width (see the subclass).
    stride: stride of the strided conv and of the shortcut projection.
    dilation: dilation of the 3x3 conv(s).
    project: whether the shortcut is a 1x1 conv + BN ('downsample').
    dtype: computation dtype.
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  project: bool = False
  dtype: Any = jnp.float32

  def shortcut_sum(self, y, x, train: bool):
    """relu(y + shortcut(x)); call inside the compact ``__call__``.

    Args:
      y: [N, H', W', C_out] residual branch.
      x: [N, H, W, C_in] block input (projected to C_out when ``project``).
      train: BN batch statistics.
    """
    if self.project:
      x = _conv(y.shape[-1], 1, self.stride, 1, self.dtype, "downsample_0")(x)
      x = _bn(train, self.dtype, "downsample_1")(x)
    return nn.relu(y + x)


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs + identity/projection shortcut (ResNet-18/34).

  ``planes`` is the output width; ``stride`` strides the first conv and
  ``dilation`` dilates both (see ``_ResidualBlock``).
  """
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    """[N, H, W, C_in] -> [N, H/stride, W/stride, planes]."""
    y = _conv(self.planes, 3, self.stride, self.dilation, self.dtype,
              "conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, 1, self.dilation, self.dtype, "conv2")(y)
    y = _bn(train, self.dtype, "bn2")(y)
    return self.shortcut_sum(y, x, train)


class Bottleneck(_ResidualBlock):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4) + shortcut (ResNet-50/101).

  ``planes`` is the width of the 3x3 conv (which ``stride`` strides and
  ``dilation`` dilates); the output has 4 * planes channels.
  """
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    """[N, H, W, C_in] -> [N, H/stride, W/stride, 4 * planes]."""
    out = self.planes * 4
    y = _conv(self.planes, 1, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.stride, self.dilation, self.dtype,
              "conv2")(y)
    y = nn.relu(_bn(train, self.dtype, "bn2")(y))
    y = _conv(out, 1, 1, 1, self.dtype, "conv3")(y)
    y = _bn(train, self.dtype, "bn3")(y)
    return self.shortcut_sum(y, x, train)


class ResNet(nn.Module):
  """torchvision ResNet with the common backbone interface.

  Attributes:
    block: ``BasicBlock`` or ``Bottleneck``.
    layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    truncate_at: last level to compute ('stride16' = up to layer3, as
      MaCoSNet uses ResNet-101); None = all.
    output_stride: 32, 16 or 8 (dilation replaces the later strides).
    with_head: also compute the 1000-class fc logits (needs no truncation).
    dtype: computation dtype (parameters float32).
  """
  block: Any = Bottleneck
  layers: Sequence[int] = (3, 4, 6, 3)
  truncate_at: Optional[str] = None
  output_stride: int = 32
  with_head: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> base.BackboneOutput:
    """Args: images [N, H, W, 3] in [0, 1]; train: BN batch statistics.

    Returns:
      BackboneOutput: features {'stride2': [N, H/2, W/2, 64], 'stride4':
      [N, H/4, W/4, 64 e], 'stride8': [.., 128 e], 'stride16': [.., 256 e],
      'stride32': [.., 512 e]} (e = block expansion, 1 or 4), pooled [N, 512 e]
      and logits [N, num_classes] when ``with_head``.
    """
    last = base.check_call(self, images)
    x = imagenet_normalize(images, self.dtype)
    x = _conv(64, 7, 2, 1, self.dtype, "conv1")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1")(x))
    features = {"stride2": x}
    if last != "stride2":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      in_ch, current_stride, dilation = 64, 4, 1
      for i, (n_blocks, planes) in enumerate(zip(self.layers,
                                                 (64, 128, 256, 512))):
        level = base.FEATURE_LEVELS[i + 1]
        stride = 1 if i == 0 else 2
        previous_dilation = dilation
        if stride == 2 and current_stride >= self.output_stride:
          dilation *= stride
          stride = 1
        current_stride *= stride
        out_ch = planes * self.block.expansion
        for j in range(n_blocks):
          x = self.block(
              planes=planes, stride=stride if j == 0 else 1,
              dilation=previous_dilation if j == 0 else dilation,
              project=(j == 0 and (stride != 1 or in_ch != out_ch)),
              dtype=self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        in_ch = out_ch
        features[level] = x
        if level == last:
          break
    pooled = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.with_head:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    return base.BackboneOutput(features=features, pooled=pooled, logits=logits)


resnet18 = functools.partial(ResNet, block=BasicBlock, layers=(2, 2, 2, 2))
resnet34 = functools.partial(ResNet, block=BasicBlock, layers=(3, 4, 6, 3))
resnet50 = functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3))
resnet101 = functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 23, 3))
