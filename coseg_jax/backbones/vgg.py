"""VGG16 and VGG16-BN in torchvision's layout (Flax Linen, NHWC).

``features`` is torchvision's ``nn.Sequential``: per conv either (conv, ReLU)
or (conv, BN, ReLU), a 2x2/2 max-pool after each of the five blocks; Flax
submodules are named by the Sequential index (``features_0``, ``features_28``,
...). Then ``AdaptiveAvgPool2d((7, 7))`` (torch's bin edges floor(i*H/7) ..
ceil((i+1)*H/7), so any input size reaches the classifier), a flatten in
torch's NCHW order (so fc6 weights load unchanged) and the classifier fc6
(``classifier_0``) -> ReLU -> Dropout(0.5) -> fc7 (``classifier_3``) -> ReLU ->
Dropout(0.5) -> fc8 (``classifier_6``); dropout only with ``train=True``.

Feature levels (coherent with ``base``'s naming: the deepest map at each
stride). Block 1 runs at stride 1 and is not a level. For a block b = 2..5 the
level is its last conv's ReLU output, before the block's max-pool:
'stride2' = relu2_2 (128 ch), 'stride4' = relu3_3 (256), 'stride8' = relu4_3
(512), 'stride16' = relu5_3 (512); 'stride32' = pool5 (512; 7x7 at a 224
input, CoSegNet's bottleneck). Sizes are floor(H/S) because torch's pools
floor; they equal ceil(H/S) when H and W are multiples of 32 (use such sizes).

``pooled``: with ``with_head`` the fc7 activation (4096-d, after ReLU, before
dropout: the vector fc8 reads); otherwise the global average of the last
returned level.

Dense use: ``output_stride`` 16 drops pool5 and 8 drops pool4 and pool5; the
convs after a dropped pool are dilated by the stride it removed (DeepLab-style
"hole" algorithm), and levels past the output stride keep their names at the
output stride (e.g. 'stride32' = 'stride16' = relu5_3 with output_stride 16).
``truncate_at`` stops after a level (e.g. 'stride16' for a conv5_3 encoder).

Input: images in [0, 1], normalised inside with the ImageNet mean/std.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from coseg_jax.backbones import base
from coseg_jax.backbones.resnet import imagenet_normalize

# torchvision cfg "D": channels per conv, "M" = max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M")
_BLOCK_LEVELS = (None, "stride2", "stride4", "stride8", "stride16")


def _adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] averaging matrix with torch's adaptive-pool bin edges."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x, out_hw=(7, 7)):
  """torch ``AdaptiveAvgPool2d``: [N, H, W, C] -> [N, oh, ow, C]."""
  ph = jnp.asarray(_adaptive_matrix(x.shape[1], out_hw[0]), x.dtype)
  pw = jnp.asarray(_adaptive_matrix(x.shape[2], out_hw[1]), x.dtype)
  return jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x)


class VGG(nn.Module):
  """torchvision VGG16 / VGG16-BN with the common backbone interface.

  Attributes:
    batch_norm: VGG16-BN (BN eps 1e-5 after every conv) instead of VGG16.
    truncate_at: last level to compute; None = all (through pool5).
    output_stride: 32, 16 or 8 (drop the last pools, dilate after them).
    with_head: compute the classifier (adaptive pool 7x7, fc6, fc7, fc8).
    num_classes: fc8 width.
    dtype: computation dtype (parameters float32).
  """
  batch_norm: bool = False
  truncate_at: Optional[str] = None
  output_stride: int = 32
  with_head: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> base.BackboneOutput:
    """Args: images [N, H, W, 3] in [0, 1]; train: BN statistics, dropout.

    Returns:
      BackboneOutput: features {'stride2': [N, H/2, W/2, 128], 'stride4':
      [.., 256], 'stride8': [.., 512], 'stride16': [.., 512], 'stride32':
      [N, H/32, W/32, 512]}, pooled ([N, 4096] fc7 with the head, else
      [N, C_last]) and logits [N, num_classes] with the head.
    """
    last = base.check_call(self, images, head_needs_stride32=True)
    x = imagenet_normalize(images, self.dtype)
    features = {}
    index, block, stride, dilation = 0, 0, 1, 1
    done = False
    for item in VGG16_CFG:
      if item == "M":
        level = _BLOCK_LEVELS[block]
        if level is not None:
          features[level] = x
          if level == last:
            done = True
            break
        if stride * 2 <= self.output_stride:
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
          stride *= 2
        else:
          dilation *= 2
        index += 1
        block += 1
        continue
      x = nn.Conv(item, (3, 3), padding=((dilation, dilation),) * 2,
                  kernel_dilation=(dilation, dilation), dtype=self.dtype,
                  name=f"features_{index}")(x)
      index += 1
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype,
                         name=f"features_{index}")(x)
        index += 1
      x = nn.relu(x)
      index += 1
    if not done:
      features["stride32"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.with_head:
      y = adaptive_avg_pool(x, (7, 7))
      # torch flattens NCHW; matching its order keeps fc6 weights unpermuted.
      y = jnp.transpose(y, (0, 3, 1, 2)).reshape(y.shape[0], -1)
      y = nn.relu(nn.Dense(4096, dtype=self.dtype, name="classifier_0")(y))
      y = nn.Dropout(0.5, deterministic=not train)(y)
      pooled = nn.relu(nn.Dense(4096, dtype=self.dtype, name="classifier_3")(y))
      y = nn.Dropout(0.5, deterministic=not train)(pooled)
      logits = nn.Dense(self.num_classes, dtype=self.dtype,
                        name="classifier_6")(y)
    return base.BackboneOutput(features=features, pooled=pooled, logits=logits)


vgg16 = functools.partial(VGG, batch_norm=False)
vgg16_bn = functools.partial(VGG, batch_norm=True)
