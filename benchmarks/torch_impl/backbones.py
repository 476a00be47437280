"""Plain-torch backbones in torchvision / efficientnet_pytorch key layout.

Shared by the parity tests (``tests/torch_refs.py`` re-exports this module)
and the PyTorch benchmark implementations of ``benchmarks/torch_impl``.
Written independently of the Flax code, after torchvision's ``resnet.py`` and
``vgg.py`` and efficientnet_pytorch's ``model.py``, with exactly their
``state_dict()`` key names (``layer1.0.downsample.0.weight``,
``features.0.weight``, ``classifier.6.bias``,
``_blocks.3._depthwise_conv.weight`` ...). Each ``forward`` returns
(dict level -> NCHW feature map, logits), plus fc7 for VGG (headless
Lite returns its pooled vector in place of the logits), with the level
definitions of the Flax backbones' docstrings.

``torch.nn`` only (no torchvision). ``with_head=False`` (ResNet, VGG, Lite)
drops the classifier so that a headless backbone has exactly the parameters of
the Flax backbone built without ``with_head`` (logits are then None); ResNet's
and Lite's ``truncate_at`` stop after a level like the Flax ``truncate_at``.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random BN affine params and running statistics (the default init has
  weight 1, bias 0, mean 0, var 1, which would hide layout mistakes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
        m.num_batches_tracked.fill_(7)
      elif isinstance(m, nn.Linear) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
  return model.eval()


# ----------------------------------------------------------------------------
# ResNet (torchvision layout).

class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, block, layers, replace_stride_with_dilation=(False,) * 3,
               num_classes=1000, with_head=True, truncate_at=None):
    super().__init__()
    self.with_head = with_head
    self.truncate_at = truncate_at
    self.inplanes, self.dilation = 64, 1
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    names = ("stride4", "stride8", "stride16", "stride32")
    self.num_stages = (names.index(truncate_at) + 1) if truncate_at else 4
    dilate = (False,) + tuple(replace_stride_with_dilation)
    for i in range(self.num_stages):
      setattr(self, f"layer{i + 1}", self._make_layer(
          block, 64 * 2 ** i, layers[i], 1 if i == 0 else 2, dilate[i]))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    if with_head:
      self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                    bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample,
                    previous_dilation)]
    self.inplanes = planes * block.expansion
    for _ in range(1, blocks):
      layers.append(block(self.inplanes, planes, dilation=self.dilation))
    return nn.Sequential(*layers)

  def forward(self, x):
    feats = {}
    x = self.relu(self.bn1(self.conv1(x)))
    feats["stride2"] = x
    x = self.maxpool(x)
    for i, name in enumerate(("stride4", "stride8", "stride16",
                              "stride32")[:self.num_stages]):
      x = getattr(self, f"layer{i + 1}")(x)
      feats[name] = x
    if not self.with_head:
      return feats, None
    return feats, self.fc(torch.flatten(self.avgpool(x), 1))


RESNET_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def resnet(name, replace_stride_with_dilation=(False,) * 3, with_head=True,
           truncate_at=None):
  block, layers = RESNET_SPECS[name]
  return ResNet(block, layers, replace_stride_with_dilation,
                with_head=with_head, truncate_at=truncate_at)


# ----------------------------------------------------------------------------
# VGG16 (torchvision layout).

class VGG(nn.Module):
  CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
         512, 512, 512, "M", 512, 512, 512, "M")

  def __init__(self, batch_norm=False, num_classes=1000, with_head=True):
    super().__init__()
    self.with_head = with_head
    layers, in_ch = [], 3
    self.level_after = {}  # features index of each level's output
    block = 0
    for v in self.CFG:
      if v == "M":
        if block >= 1:
          self.level_after[len(layers) - 1] = f"stride{2 ** block}"
        layers.append(nn.MaxPool2d(2, 2))
        block += 1
        continue
      layers.append(nn.Conv2d(in_ch, v, 3, padding=1))
      if batch_norm:
        layers.append(nn.BatchNorm2d(v))
      layers.append(nn.ReLU(inplace=False))
      in_ch = v
    self.level_after[len(layers) - 1] = "stride32"
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    if not with_head:
      return
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    feats = {}
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in self.level_after:
        feats[self.level_after[i]] = x
    if not self.with_head:
      return feats, None, None
    y = torch.flatten(self.avgpool(x), 1)
    fc7 = self.classifier[:5](y)
    return feats, self.classifier[5:](fc7), fc7


# ----------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (efficientnet_pytorch layout, TF "same" padding).

class SameConv2d(nn.Conv2d):
  """Conv2d with TF 'SAME' padding computed from the input size
  (efficientnet_pytorch's Conv2dDynamicSamePadding)."""

  def forward(self, x):
    ih, iw = x.shape[-2:]
    kh, kw = self.weight.shape[-2:]
    sh, sw = self.stride
    dh, dw = self.dilation
    ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
    pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation,
                    self.groups)


def _bn(c):
  return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)


class MBConvBlock(nn.Module):

  def __init__(self, in_ch, out_ch, kernel, stride, expand,
               drop_connect_rate=0.0):
    super().__init__()
    mid = in_ch * expand
    self.expand = expand
    if expand != 1:
      self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
      self._bn0 = _bn(mid)
    self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid,
                                      bias=False)
    self._bn1 = _bn(mid)
    self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
    self._bn2 = _bn(out_ch)
    self.skip = stride == 1 and in_ch == out_ch
    self.drop_connect_rate = drop_connect_rate

  def forward(self, x):
    y = x
    if self.expand != 1:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    if not self.skip:
      return y
    if self.training and self.drop_connect_rate > 0:
      # efficientnet_pytorch's drop_connect: one keep draw per sample.
      keep = 1.0 - self.drop_connect_rate
      mask = torch.floor(keep + torch.rand(
          (y.shape[0], 1, 1, 1), dtype=y.dtype, device=y.device))
      y = y / keep * mask
    return y + x


def _round_filters(channels, width):
  """efficientnet_pytorch's ``round_filters`` (divisor 8, min_depth None)."""
  scaled = channels * width
  new = max(8, int(scaled + 4) // 8 * 8)
  return int(new + 8 if new < 0.9 * scaled else new)


LEVELS = ("stride2", "stride4", "stride8", "stride16", "stride32")


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite0/1/2: B0's stages scaled by (width, depth), TF's Lite
  ``fix_head_stem`` (stem 32, head 1280 and the repeats of the first and last
  stages unscaled). The defaults are Lite0.

  ``truncate_at`` stops after that level's last block (no head, like the
  Flax ``truncate_at``; the pooled vector is then the level's mean).
  Drop-connect (rate ``drop_connect_rate`` x block index / block count,
  counted over the full network as the Flax module and efficientnet_pytorch
  do) acts in training mode only.
  """
  BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
            (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112),
            (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
  # name -> (width, depth, dropout), from TF's efficientnet_lite_builder
  VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 0.2),
              "efficientnet_lite1": (1.0, 1.1, 0.2),
              "efficientnet_lite2": (1.1, 1.2, 0.3)}

  def __init__(self, width=1.0, depth=1.0, dropout=0.2, num_classes=1000,
               with_head=True, truncate_at=None, drop_connect_rate=0.2):
    super().__init__()
    if truncate_at is not None and with_head:
      raise ValueError("with_head=True needs the full network")
    self.with_head = with_head
    self.truncate_at = truncate_at
    self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
    self._bn0 = _bn(32)
    specs, strides, stride = [], [], 2
    for stage, (repeats, k, s, e, _, o) in enumerate(self.BLOCKS):
      o = _round_filters(o, width)
      if 0 < stage < len(self.BLOCKS) - 1:
        repeats = int(math.ceil(depth * repeats))
      for j in range(repeats):
        specs.append((k, s if j == 0 else 1, e, o))
        stride *= s if j == 0 else 1
        strides.append(stride)
    # index of the last block at strides 2, 4, 8, 16 (Lite0: 0, 2, 4, 10)
    self.level_blocks = {i: f"stride{s}" for i, s in enumerate(strides)
                         if s < 32 and (i + 1 == len(strides)
                                        or strides[i + 1] != s)}
    n_blocks = len(specs)
    if truncate_at is not None:
      if truncate_at not in LEVELS[:-1]:
        raise ValueError(f"truncate_at must be one of {LEVELS[:-1]}, got "
                         f"{truncate_at!r}")
      n_blocks = 1 + next(i for i, lv in self.level_blocks.items()
                          if lv == truncate_at)
    blocks, in_ch = [], 32
    self.widths = {}
    for i, (k, s, e, o) in enumerate(specs[:n_blocks]):
      blocks.append(MBConvBlock(in_ch, o, k, s, e,
                                drop_connect_rate * i / len(specs)))
      in_ch = o
      if i in self.level_blocks:
        self.widths[self.level_blocks[i]] = o
    self._blocks = nn.ModuleList(blocks)
    if truncate_at is not None:
      return
    self.widths["stride32"] = 1280
    self._conv_head = SameConv2d(in_ch, 1280, 1, bias=False)
    self._bn1 = _bn(1280)
    self._avg_pooling = nn.AdaptiveAvgPool2d(1)
    if with_head:
      self._dropout = nn.Dropout(dropout)
      self._fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    """x: NCHW images already mapped to (255 x - 127) / 128."""
    feats = {}
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for idx, block in enumerate(self._blocks):
      x = block(x)
      if idx in self.level_blocks:
        feats[self.level_blocks[idx]] = x
    if self.truncate_at is not None:
      return feats, x.mean((2, 3))
    x = F.relu6(self._bn1(self._conv_head(x)))
    feats["stride32"] = x
    pooled = torch.flatten(self._avg_pooling(x), 1)
    if not self.with_head:
      return feats, pooled
    return feats, self._fc(self._dropout(pooled))


EfficientNetLite0 = EfficientNetLite  # the defaults are Lite0's


def efficientnet_lite(name, with_head=True, truncate_at=None,
                      drop_connect_rate=0.2):
  """``efficientnet_lite0`` / ``1`` / ``2`` by name."""
  width, depth, dropout = EfficientNetLite.VARIANTS[name]
  return EfficientNetLite(width, depth, dropout, with_head=with_head,
                          truncate_at=truncate_at,
                          drop_connect_rate=drop_connect_rate)


def lite_normalize(x):
  """NCHW images in [0, 1] -> (255 x - 127) / 128 (TF Lite's input)."""
  return (x * 255.0 - 127.0) / 128.0


def headless_lite(name, kwargs=None, truncate_at=None):
  """(headless Lite backbone, channels per level, input normaliser).

  ``kwargs``: the Flax backbone attributes of ``config.model.
  backbone_kwargs`` (``drop_connect_rate``, ``truncate_at``); ``truncate_at``
  is the model's default for the latter.
  """
  kwargs = dict(kwargs or {})
  unknown = set(kwargs) - {"drop_connect_rate", "truncate_at"}
  if unknown:
    raise ValueError(f"torch {name}: unsupported backbone_kwargs "
                     f"{sorted(unknown)}")
  model = efficientnet_lite(
      name, with_head=False,
      truncate_at=kwargs.get("truncate_at", truncate_at),
      drop_connect_rate=float(kwargs.get("drop_connect_rate", 0.2)))
  return model, dict(model.widths), lite_normalize


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_input(images_nhwc):
  """NumPy [N, H, W, 3] in [0, 1] -> normalised NCHW torch tensor."""
  x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float()
  mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
  return (x - mean) / std


def lite_input(images_nhwc):
  return lite_normalize(
      torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float())


# ----------------------------------------------------------------------------
# The tiny test CNN (coseg_jax.backbones.tiny.TinyCNN, Flax names).

class TinyCNN(nn.Module):
  """Five stages of (3x3 stride-2 conv + BN + ReLU, 3x3 conv + BN + ReLU).

  TF/XLA 'SAME' padding (more padding after than before for stride 2), BN
  eps 1e-5; input in [0, 1] standardised inside as (x - 0.5) / 0.25, like
  the Flax module. Attribute names are the Flax ones (``stride2_conv1`` ...).
  """
  LEVELS = ("stride2", "stride4", "stride8", "stride16", "stride32")

  def __init__(self, widths=(8, 16, 32, 64, 64), truncate_at=None):
    super().__init__()
    self.widths = tuple(widths)
    self.levels = self.LEVELS[:self.LEVELS.index(truncate_at or "stride32")
                              + 1]
    c = 3
    for level, w in zip(self.levels, self.widths):
      setattr(self, f"{level}_conv1", SameConv2d(c, w, 3, 2, bias=False))
      setattr(self, f"{level}_bn1", nn.BatchNorm2d(w))
      setattr(self, f"{level}_conv2", SameConv2d(w, w, 3, 1, bias=False))
      setattr(self, f"{level}_bn2", nn.BatchNorm2d(w))
      c = w

  def forward(self, x):
    """x: NCHW images in [0, 1] (not standardised) -> (features, pooled)."""
    x = (x - 0.5) / 0.25
    feats = {}
    for level in self.levels:
      x = F.relu(getattr(self, f"{level}_bn1")(
          getattr(self, f"{level}_conv1")(x)))
      x = F.relu(getattr(self, f"{level}_bn2")(
          getattr(self, f"{level}_conv2")(x)))
      feats[level] = x
    return feats, x.mean((2, 3))  # the Flax module's ``pooled``


# ----------------------------------------------------------------------------
# The encoders of the method ports.

RESNET_WIDTHS = {"stride2": 64, "stride4": 64, "stride8": 128,
                 "stride16": 256, "stride32": 512}


def backbone_widths(name: str):
  """Channels of each feature level of the tiny CNN or a ResNet."""
  if name == "tiny":
    return dict(zip(TinyCNN.LEVELS, (8, 16, 32, 64, 64)))
  e = 4 if name in ("resnet50", "resnet101") else 1
  return {k: v if k == "stride2" else v * e for k, v in RESNET_WIDTHS.items()}


def headless(name, kwargs=None, truncate_at=None):
  """(headless backbone, channels per level, NCHW input normaliser) for the
  tiny CNN, a ResNet or a Lite computing up to ``truncate_at`` (None: all);
  None for another name (the caller names what it supports).

  ``kwargs``: the Flax ``backbone_kwargs`` (Lite: drop-connect rate).
  """
  if name == "tiny":
    return (TinyCNN(truncate_at=truncate_at), backbone_widths(name),
            lambda x: x)
  if name.startswith("resnet"):
    return (resnet(name, with_head=False, truncate_at=truncate_at),
            backbone_widths(name), imagenet_normalize)
  if name.startswith("efficientnet_lite"):
    return headless_lite(name, kwargs, truncate_at=truncate_at)
  return None


def imagenet_normalize(x):
  """NCHW images in [0, 1] -> ImageNet-standardised."""
  mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)
  std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)
  return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
