"""CycleSegNet in plain PyTorch, layer for layer as ``coseg_jax.models.cyclesegnet``.

Same architecture and parameter tree as the Flax model built from the same
``config.model`` fields (ResNet, EfficientNet-Lite and tiny backbones):
torchvision-layout ResNet or efficientnet_pytorch-layout Lite encoder
(headless; Lite's drop-connect from ``backbone_kwargs`` in training mode),
optional 1x1 projections (``crm_features``), one Cycle Refinement Module per
refined level (group-form RCM + ConvLSTM, N steps, a
Python loop: the usual eager-PyTorch way to write a recurrence), the
single-level ``UpsampleDecoder`` or the multi-level fusion decoder, and a 1x1
logit head. The RCM's value projection follows ``value_projection`` (eq. 11
without it, the paper config's setting). The training step is forward + Lovász-Softmax (all pixels pooled,
as the Flax loss) + backward + ``torch.optim.Adam`` with L2 weight decay (the
paper's Adam, lr 1e-5, wd 5e-4; the same semantics as
``coseg_jax.train.make_optimizer`` with ``decoupled_weight_decay=False``).

Layout: images [B, K, 3, H, W] (NCHW per image); logits [B, K, 1, H, W].
Mixed precision: ``torch.autocast(dtype=torch.bfloat16)`` around the forward
pass (params float32, the head and the loss in float32), the counterpart of
the Flax ``dtype`` field.
"""

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks

MULTI_LEVELS = ("stride8", "stride16", "stride32")
def make_backbone(name: str, kwargs: Optional[Mapping[str, Any]] = None):
  """(headless torch backbone, channels per level, input normaliser) for
  ``name`` with the Flax ``backbone_kwargs`` (Lite: drop-connect rate)."""
  encoder = backbones.headless(name, kwargs)
  if encoder is None:
    raise ValueError(f"torch implementation: unsupported backbone {name!r} "
                     f"(tiny, resnet18/34/50/101, efficientnet_lite0/1/2)")
  return encoder


class _LSTM(nn.Module):
  """Holds the cell under the Flax name ``lstm/cell``."""

  def __init__(self, cell):
    super().__init__()
    self.cell = cell


class CycleRefinement(nn.Module):
  """CRM of one level: ``forward(x, k)`` with x [B*K, C, h, w] -> H_N."""

  def __init__(self, features: int, *, num_steps: int = 7,
               exchange: str = "cycle", lstm_kernel: int = 3,
               forget_bias: float = 0.0, peephole: bool = False,
               region_size=(2, 2), regions: str = "pooled",
               key_features: Optional[int] = None, fuse_kernel: int = 1,
               value_projection: bool = True, scale_attention: bool = False,
               match_score: bool = False):
    super().__init__()
    self.num_steps, self.exchange = num_steps, exchange
    rcm = blocks.RegionCorrespondence(
        features, key_features=key_features, region_size=region_size,
        regions=regions, fuse_kernel=fuse_kernel,
        project_value=value_projection, scale=scale_attention,
        match_score=match_score)
    self.rcm = rcm  # Flax: crm_<level>/rcm, shared by the N steps
    if exchange != "cross":
      self.lstm = _LSTM(blocks.ConvLSTMCell(features + int(match_score),
                                            features, lstm_kernel,
                                            peephole, forget_bias))

  def forward(self, x, k):
    if self.exchange == "cross":
      return torch.cat([x, self.rcm(x, k)], 1)
    c, h = x, x  # H_0 = C_0 = encoder features
    for _ in range(self.num_steps):
      c, h = self.lstm.cell((c, h), self.rcm(c, k))
    return h


class CycleSegNet(blocks.FrozenBackboneMixin, nn.Module):
  """torch CycleSegNet; constructor arguments = ``config.model`` fields."""

  def __init__(self, backbone: str = "resnet34", multi_level: bool = False,
               exchange: str = "cycle", num_steps: int = 7,
               crm_features: Optional[int] = None, lstm_kernel: int = 3,
               forget_bias: float = 0.0, peephole: bool = False,
               region_size=(2, 2), regions: str = "pooled",
               key_features: Optional[int] = None, fuse_kernel: int = 1,
               value_projection: bool = True, scale_attention: bool = False,
               match_score: bool = False,
               decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
               convs_per_block: int = 1, use_skips: bool = False,
               fusion_features: Optional[int] = None,
               backbone_kwargs: Optional[Mapping[str, Any]] = None,
               backbone_eval_mode: bool = False, **unused: Any):
    super().__init__()
    self.backbone_eval_mode = backbone_eval_mode
    self.multi_level, self.use_skips = multi_level, use_skips
    self.crm_features = crm_features
    self.convs_per_block = convs_per_block
    self.levels = MULTI_LEVELS if multi_level else ("stride32",)
    self.backbone, widths, self._normalize = make_backbone(backbone,
                                                           backbone_kwargs)
    refined_ch = {}
    for level in self.levels:
      c = widths[level]
      if crm_features:
        setattr(self, f"proj_{level}",
                nn.Conv2d(c, crm_features, 1, bias=False))
        setattr(self, f"proj_{level}_bn", blocks.bn(crm_features))
        c = crm_features
      setattr(self, f"crm_{level}", CycleRefinement(
          c, num_steps=num_steps, exchange=exchange, lstm_kernel=lstm_kernel,
          forget_bias=forget_bias, peephole=peephole,
          region_size=tuple(region_size), regions=regions,
          key_features=key_features, fuse_kernel=fuse_kernel,
          value_projection=value_projection,
          scale_attention=scale_attention, match_score=match_score))
      refined_ch[level] = (2 * c + int(match_score) if exchange == "cross"
                           else c)
    skip_ch = {k: v for k, v in widths.items()}
    if not multi_level:
      self.decoder = blocks.UpsampleDecoder(
          refined_ch["stride32"], decoder_widths, convs_per_block,
          skip_channels=skip_ch if use_skips else None)
    else:
      c = refined_ch["stride32"]
      for i, (level, width) in enumerate(zip(blocks.DECODER_LEVELS,
                                             decoder_widths)):
        if level in refined_ch:
          f = fusion_features or width
          setattr(self, f"fuse_{level}", blocks.ChannelAttentionFusion(
              refined_ch[level], c, f))
          c = f
        elif use_skips and level != "full":
          c += skip_ch[level]
        for j in range(convs_per_block):
          setattr(self, f"decoder_block{i}_conv{j}",
                  blocks.ConvBNReLU(c, width))
          c = width
    self.head = nn.Conv2d(decoder_widths[-1], 1, 1)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    """images [B, K, 3, H, W] in [0, 1] -> logits [B, K, 1, H, W] float32."""
    b, k, _, h, w = images.shape
    x = self._normalize(images.reshape(b * k, 3, h, w))
    feats, _ = self.backbone(x)
    refined = {}
    for level in self.levels:
      y = feats[level]
      if self.crm_features:
        y = torch.relu(getattr(self, f"proj_{level}_bn")(
            getattr(self, f"proj_{level}")(y)))
      refined[level] = getattr(self, f"crm_{level}")(y, k)
    if not self.multi_level:
      y = self.decoder(refined["stride32"], (h, w),
                       skips=feats if self.use_skips else None)
    else:
      y = refined["stride32"]
      for i, (level, stride) in enumerate(zip(blocks.DECODER_LEVELS,
                                              blocks.DECODER_STRIDES)):
        if level in refined:
          y = getattr(self, f"fuse_{level}")(refined[level], y)
        else:
          y = blocks.bilinear(y, (-(-h // stride), -(-w // stride)))
          if self.use_skips and stride > 1:
            y = torch.cat([y, feats[level].to(y.dtype)], 1)
        for j in range(self.convs_per_block):
          y = getattr(self, f"decoder_block{i}_conv{j}")(y)
    return blocks.float32_head(self.head, y).reshape(b, k, 1, h, w)


def build_model(model_config) -> CycleSegNet:
  """From ``config.model`` (a ConfigDict or dict with the Flax field names)."""
  cfg = blocks.model_kwargs(model_config)
  if cfg.get("decode_all_steps"):
    raise ValueError("torch CycleSegNet: decode_all_steps is not implemented")
  return CycleSegNet(**cfg)


def loss_fn(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
  """Lovász-Softmax over all pixels of the batch (the paper's loss)."""
  return blocks.lovasz_softmax_binary(logits, masks)


def train_loss(model: CycleSegNet, images: torch.Tensor,
               batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
  """The training objective on one batch (``batch['masks']`` [B, K, 1, H, W])."""
  return loss_fn(model(images), batch["masks"])


def infer(model: CycleSegNet, images: torch.Tensor) -> torch.Tensor:
  """Foreground probabilities [B, K, 1, H, W]."""
  return torch.sigmoid(model(images))
