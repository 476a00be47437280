"""CoSegNet (Banerjee et al., IJCAI 2019) in plain PyTorch.

Mirrors ``coseg_jax.models.cosegnet.CoSegNet`` ('conditional' variant) with
the same parameter tree: headless VGG16 encoder (torchvision layout; or
EfficientNet-Lite, whose 'stride32' is its 1280-channel head, or the tiny
test CNN), the 13-layer decoder of 3x3 stride-1 transposed convs
cT1..cT13 with a nearest-neighbour x2 upsampling (half-pixel centres,
``nearest-exact`` = ``jax.image.resize(..., 'nearest')``) before cT1, cT4,
cT7, cT10 and cT12, optional encoder levels joined after the upsamplings
(``skip_levels``), the metric net on the GAP of the tap layer (FC128-ReLU-
FC64) and the decision net on [e_0 ; e_j] or |e_0 - e_j| (FC32-ReLU-FC1).

Training step on triplets (K = 3: anchor, positive, negative), the paper's
weights (``PAPER_LOSS``): pixel BCE of the positive pair's masks, triplet
loss (margin 1, squared distances) and decision BCE of both pairs, summed
(eq. 2-4) or averaged as ``loss_reduction`` says — the formulas of
``coseg_jax.models.cosegnet.loss_fn``.
"""

import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks

DECODER_WIDTHS = (512, 512, 512, 512, 512, 256, 256, 256, 256, 128, 128, 64, 1)
UPSAMPLE_BEFORE = (0, 3, 6, 9, 11)
SKIP_BEFORE = {"stride16": 0, "stride8": 3, "stride4": 6, "stride2": 9}
VGG_CHANNELS = {"stride2": 128, "stride4": 256, "stride8": 512,
                "stride16": 512, "stride32": 512}
PAPER_LOSS = {"mask_pos": 0.33, "triplet_pos": 0.33, "decision_pos": 0.33,
              "mask_neg": 0.0, "triplet_neg": 0.5, "decision_neg": 0.5}


def scaled_widths(widths: Sequence[int], multiplier: float) -> tuple:
  widths = tuple(int(w) for w in widths)
  return tuple(max(1, int(round(w * multiplier))) for w in widths[:-1]) + (
      widths[-1],)


def make_encoder(name: str, kwargs=None):
  """(headless encoder returning {level: ...}, {level: channels},
  normaliser); ``kwargs``: the Flax ``backbone_kwargs`` (Lite)."""
  if name == "vgg16":
    return (backbones.VGG(with_head=False), dict(VGG_CHANNELS),
            blocks.imagenet_normalize)
  if name == "tiny":
    tiny = backbones.TinyCNN()
    return tiny, dict(zip(tiny.levels, tiny.widths)), lambda x: x
  if name.startswith("efficientnet_lite"):
    return backbones.headless_lite(name, kwargs)
  raise ValueError(f"torch CoSegNet: unsupported backbone {name!r}")


class Decoder(nn.Module):
  """cT1..cT13; ``forward(x, size)`` -> (logits [N, 1, H, W], taps)."""

  def __init__(self, cin: int, widths: Sequence[int],
               skip_channels: Optional[Mapping[str, int]] = None):
    super().__init__()
    self.widths = tuple(widths)
    skip_channels = dict(skip_channels or {})
    self.joins = {SKIP_BEFORE[level]: level for level in skip_channels}
    c = cin
    for i, w in enumerate(self.widths):
      if i in self.joins:
        c += skip_channels[self.joins[i]]
      setattr(self, f"cT{i + 1}", nn.ConvTranspose2d(c, w, 3, 1, 1))
      c = w

  def forward(self, x, output_size, skips=None):
    h, w = output_size
    n_up = len(UPSAMPLE_BEFORE)
    taps = {}
    for i in range(len(self.widths)):
      if i in UPSAMPLE_BEFORE:
        s = n_up - 1 - UPSAMPLE_BEFORE.index(i)
        x = F.interpolate(x, size=(math.ceil(h / 2**s), math.ceil(w / 2**s)),
                          mode="nearest-exact")
      if i in self.joins:
        x = torch.cat([x, skips[self.joins[i]].to(x.dtype)], 1)
      layer = getattr(self, f"cT{i + 1}")
      if i == len(self.widths) - 1:
        with torch.autocast(device_type=x.device.type, enabled=False):
          x = layer(x.float())
      else:
        x = F.relu(layer(x))
      taps[f"cT{i + 1}"] = x
    return x, taps


class CoSegNet(blocks.FrozenBackboneMixin, nn.Module):
  """``forward(images [B, K, 3, H, W])`` -> (logits [B, K, 1, H, W],
  embeddings [B, K, 64], decision logits [B, K - 1])."""

  def __init__(self, backbone: str = "vgg16",
               decoder_widths: Sequence[int] = DECODER_WIDTHS,
               width_multiplier: float = 1.0, metric_layer: str = "cT9",
               metric_widths: Sequence[int] = (128, 64),
               decision_hidden: int = 32, loss_reduction: str = "sum",
               decision_input: str = "concat",
               skip_levels: Sequence[str] = (),
               backbone_kwargs: Optional[Mapping[str, Any]] = None,
               backbone_eval_mode: bool = False, **unused: Any):
    super().__init__()
    self.loss_reduction = loss_reduction
    self.backbone_eval_mode = backbone_eval_mode
    self.backbone, channels, self._normalize = make_encoder(backbone,
                                                            backbone_kwargs)
    cin = channels["stride32"]
    self.skip_levels = tuple(skip_levels)
    self.decision_input = decision_input
    widths = scaled_widths(decoder_widths, width_multiplier)
    self.decoder = Decoder(cin, widths,
                           {lv: channels[lv] for lv in self.skip_levels})
    self.metric_layer = metric_layer
    tap_ch = cin if metric_layer == "f" else widths[int(metric_layer[2:]) - 1]
    m1, m2 = metric_widths
    self.metric_fc1 = nn.Linear(tap_ch, m1)
    self.metric_fc2 = nn.Linear(m1, m2)
    self.decision_fc1 = nn.Linear(
        2 * m2 if decision_input == "concat" else m2, decision_hidden)
    self.decision_fc2 = nn.Linear(decision_hidden, 1)

  def forward(self, images):
    b, k, _, h, w = images.shape
    feats = self.encode_group(images)
    f = feats["stride32"]
    logits, taps = self.decoder(f, (h, w),
                                {lv: feats[lv] for lv in self.skip_levels})
    taps["f"] = f
    g = taps[self.metric_layer].float().mean((2, 3))
    with torch.autocast(device_type=images.device.type, enabled=False):
      e = self.metric_fc2(F.relu(self.metric_fc1(g))).reshape(b, k, -1)
      anchor = e[:, :1].expand(b, k - 1, e.shape[-1])
      if self.decision_input == "concat":
        pair = torch.cat([anchor, e[:, 1:]], -1)
      else:
        pair = (anchor - e[:, 1:]).abs()
      d = self.decision_fc2(F.relu(self.decision_fc1(pair)))[..., 0]
    return logits.float().reshape(b, k, 1, h, w), e, d


def build_model(model_config) -> CoSegNet:
  return CoSegNet(**blocks.model_kwargs(model_config, drop=("dtype",)))


def _bce(logits, labels, reduction="mean"):
  return F.binary_cross_entropy_with_logits(logits.float(), labels.float(),
                                            reduction=reduction)


def train_loss(model: CoSegNet, images, batch: Mapping[str, Any],
               weights: Optional[Mapping[str, float]] = None):
  """The triplet objective with the paper's weights (zero terms dropped)."""
  w = weights or PAPER_LOSS
  r = model.loss_reduction
  logits, e, d = model(images)
  masks = batch["masks"]
  hinge = F.relu((e[:, 0] - e[:, 1]).square().sum(-1) -
                 (e[:, 0] - e[:, 2]).square().sum(-1) + 1.0)
  trip = hinge.sum() if r == "sum" else hinge.mean()
  terms = {
      "mask_pos": lambda: _bce(logits[:, :2], masks[:, :2], r),
      "mask_neg": lambda: _bce(logits[:, 2], masks[:, 2], r),
      "triplet_pos": lambda: trip, "triplet_neg": lambda: trip,
      "decision_pos": lambda: _bce(d[:, 0], torch.ones_like(d[:, 0]), r),
      "decision_neg": lambda: _bce(d[:, 1], torch.zeros_like(d[:, 1]), r),
  }
  return sum(wt * terms[n]() for n, wt in w.items() if wt)


def infer(model: CoSegNet, images):
  """sigmoid(mask logits), ungated: the work ``coseg_jax.benchmark`` times."""
  return torch.sigmoid(model(images)[0])
