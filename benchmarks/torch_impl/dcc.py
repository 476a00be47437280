"""DCC (depth-wise cross-correlation pair network) in plain PyTorch.

Mirrors ``coseg_jax.models.dcc.DCCNet`` with the same parameter tree:
VGG16-BN encoder (torchvision layout; or EfficientNet-Lite, the tiny CNN)
truncated after the matched level (default 'stride16' = relu5_3, pool5 not
computed), parameter-free matching (features L2-normalised over channels,
eps 1e-6 inside the sqrt; the other images' maps adaptively average-pooled
to k x k for k in ``kernel_sizes``, averaged over the K - 1 others, used as
depth-wise kernels over this image's map with XLA 'SAME' zero padding,
divided by k*k; scales concatenated), the matched map normalised as
``match_norm`` says ('batchnorm': ``BatchNorm2d`` named ``match_norm``, eps
1e-10; 'rms': unit root mean square over channels per position; 'none'),
[F_A ; responses] (or the responses alone, ``include_features=False``) into
the ``UpsampleDecoder`` with skips (VGG's floor-sized skips resized
bilinearly to the decoder's ceil grid) and a 1x1 head. Loss CE_A + CE_B
(per-image mean pixel BCE, summed over K).

The depth-wise correlation is ``F.conv2d`` with ``groups = N * C`` on the
batch folded into channels (the usual PyTorch way to use per-sample
kernels); matching runs in float32 like the Flax model.
"""

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks

MATCH_BN_EPSILON = 1e-10  # coseg_jax.models.dcc.MATCH_BN_EPSILON
MATCH_RMS_EPSILON = 1e-12
_VGG_WIDTHS = {"stride2": 128, "stride4": 256, "stride8": 512,
               "stride16": 512, "stride32": 512}
LEVELS = ("stride2", "stride4", "stride8", "stride16", "stride32")


def make_encoder(name: str, level: str, kwargs=None):
  """(encoder -> feats dict, widths, normaliser), computing up to ``level``
  (Lite: ``kwargs`` = the Flax ``backbone_kwargs``)."""
  if name in ("vgg16", "vgg16_bn"):
    vgg = backbones.VGG(batch_norm=name == "vgg16_bn", with_head=False)
    # Drop every layer after the level's last ReLU (the Flax truncate_at).
    last = max(i for i, lv in vgg.level_after.items() if lv == level)
    vgg.features = nn.Sequential(*list(vgg.features)[:last + 1])
    return vgg, _VGG_WIDTHS, blocks.imagenet_normalize
  if name == "tiny":
    return (backbones.TinyCNN(truncate_at=level),
            dict(zip(LEVELS, (8, 16, 32, 64, 64))),
            lambda x: x)
  if name.startswith("efficientnet_lite"):
    return backbones.headless_lite(name, kwargs, truncate_at=level)
  raise ValueError(f"torch DCC: unsupported backbone {name!r}")


def l2_normalize(x, eps=1e-6):
  """Over channels (dim 1): x / sqrt(sum x^2 + eps)."""
  return x / torch.sqrt((x * x).sum(1, keepdim=True) + eps)


def depthwise_xcorr(features, kernels):
  """features [N, C, h, w], kernels [N, C, k, k] -> [N, C, h, w] / k^2."""
  n, c, h, w = features.shape
  kh, kw = kernels.shape[-2:]
  top, left = (kh - 1) // 2, (kw - 1) // 2
  x = F.pad(features, (left, kw - 1 - left, top, kh - 1 - top))
  out = F.conv2d(x.reshape(1, n * c, *x.shape[-2:]),
                 kernels.reshape(n * c, 1, kh, kw), groups=n * c)
  return out.reshape(n, c, h, w) / (kh * kw)


def match(f, k, kernel_sizes, normalize=True):
  """f [B*K, C, h, w] -> [B*K, C * S, h, w] (scales concatenated)."""
  f = f.float()
  if normalize:
    f = l2_normalize(f)
  bk, c = f.shape[:2]
  b = bk // k
  out = []
  for s in kernel_sizes:
    kern = F.adaptive_avg_pool2d(f, s).reshape(b, k, c, s, s)
    others = (kern.sum(1, keepdim=True) - kern) / (k - 1)
    out.append(depthwise_xcorr(f, others.reshape(bk, c, s, s)))
  return torch.cat(out, 1)


class DCCNet(blocks.FrozenBackboneMixin, nn.Module):
  """``forward(images [B, K, 3, H, W])`` -> logits [B, K, 1, H, W]."""

  def __init__(self, backbone: str = "vgg16_bn",
               feature_level: str = "stride16",
               kernel_sizes: Sequence[int] = (1, 3, 5),
               combine: str = "concat", normalize_features: bool = True,
               match_norm: str = "batchnorm",
               include_features: bool = False,
               decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
               convs_per_block: int = 1, use_skips: bool = True,
               backbone_kwargs: Optional[Mapping[str, Any]] = None,
               backbone_eval_mode: bool = False, **unused: Any):
    super().__init__()
    self.backbone_eval_mode = backbone_eval_mode
    if combine != "concat":
      raise ValueError("torch DCC implements combine='concat' (the default)")
    self.backbone, widths, self._normalize = make_encoder(
        backbone, feature_level, backbone_kwargs)
    self.level, self.kernel_sizes = feature_level, tuple(kernel_sizes)
    self.normalize, self.include_features = normalize_features, include_features
    self.use_skips = use_skips
    c = widths[feature_level]
    matched = c * len(self.kernel_sizes)
    if match_norm not in ("none", "rms", "batchnorm"):
      raise ValueError(f"torch DCC: unknown match_norm {match_norm!r}")
    self.match_norm_mode = match_norm
    if match_norm == "batchnorm":
      self.match_norm = nn.BatchNorm2d(matched, eps=MATCH_BN_EPSILON,
                                       momentum=0.1)
    cin = matched + (c if include_features else 0)
    skip_ch = None
    if use_skips:
      skip_ch = {lv: widths[lv] for lv in ("stride8", "stride4", "stride2")}
      skip_ch["stride16"] = 0
    self.decoder = blocks.UpsampleDecoder(cin, decoder_widths, convs_per_block,
                                          skip_channels=skip_ch)
    self.head = nn.Conv2d(decoder_widths[-1], 1, 1)

  def forward(self, images):
    b, k, _, h, w = images.shape
    feats = self.encode_group(images)
    f = feats[self.level]
    x = match(f, k, self.kernel_sizes, self.normalize)
    with torch.autocast(device_type=images.device.type, enabled=False):
      if self.match_norm_mode == "batchnorm":
        x = self.match_norm(x)
      elif self.match_norm_mode == "rms":
        x = x * torch.rsqrt(x.square().mean(1, keepdim=True) +
                            MATCH_RMS_EPSILON)
    x = x.to(f.dtype)
    if self.include_features:
      x = torch.cat([f, x], 1)
    skips = None
    if self.use_skips:
      skips = {}
      for lv, stride in (("stride8", 8), ("stride4", 4), ("stride2", 2)):
        skips[lv] = blocks.bilinear(feats[lv], (-(-h // stride),
                                                -(-w // stride)))
      skips["stride16"] = x.new_zeros((b * k, 0, -(-h // 16), -(-w // 16)))
    y = self.decoder(x, (h, w), skips=skips)
    return blocks.float32_head(self.head, y).reshape(b, k, 1, h, w)


def build_model(model_config) -> DCCNet:
  return DCCNet(**blocks.model_kwargs(model_config,
                                      drop=("dtype", "xcorr_method")))


def train_loss(model: DCCNet, images, batch: Mapping[str, Any]):
  """CE_A + CE_B (weight 1)."""
  logits = model(images).float()
  masks = batch["masks"].float()
  return sum(F.binary_cross_entropy_with_logits(logits[:, i], masks[:, i])
             for i in range(logits.shape[1]))


def infer(model: DCCNet, images):
  return torch.sigmoid(model(images))
