"""Co-attention CNN (Hsu et al., IJCAI 2018) in plain PyTorch.

Mirrors ``coseg_jax.models.coattention.CoattentionNet`` with the same
parameter tree: generator g = backbone (headless; EfficientNet-Lite0 in the
config, Lite1/2, or the tiny test CNN / a ResNet) + ``UpsampleDecoder`` (FCN
skips) + 1x1 head; frozen extractor f (headless backbone, eval mode, no
gradient to its parameters, ``requires_grad=False``) on the object image
S*I + (1-S)*fill and the background image (1-S)*I + S*fill, features = its
pooled vector.
Generator BN in inference mode unless ``generator_bn_train`` (the config's
default keeps it in inference mode, as the Flax model).

Loss: the co-attention loss (eq. 3-6; mean over ordered pairs inside each
group, squared distances / c, softplus(d+ - d-)) and the mask loss (eq. 7,
beta 0.95; target beta * ``batch['fixed_masks']`` + (1 - beta) *
``batch['object_masks']``, no gradient through it), weighted by
``config.loss`` — the same formulas as ``coseg_jax.losses.coattention``
(``mask_loss(..., target='self_bootstrap')`` is the earlier form).
"""

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks

def make_backbone(name: str, kwargs=None):
  """(headless torch backbone, widths per level, input normaliser);
  ``kwargs``: the Flax backbone attributes (Lite: drop-connect rate)."""
  encoder = backbones.headless(name, kwargs)
  if encoder is None:
    raise ValueError(f"torch co-attention: unsupported backbone {name!r}")
  return encoder


class Generator(nn.Module):
  """g: images [N, 3, H, W] -> logits [N, 1, H, W] (float32)."""

  def __init__(self, backbone: str, decoder_widths: Sequence[int],
               convs_per_block: int, use_skips: bool, bn_train: bool,
               backbone_kwargs: Optional[Mapping[str, Any]] = None):
    super().__init__()
    self.backbone, widths, self._normalize = make_backbone(backbone,
                                                           backbone_kwargs)
    self.use_skips, self.bn_train = use_skips, bn_train
    self.decoder = blocks.UpsampleDecoder(
        widths["stride32"], decoder_widths, convs_per_block,
        skip_channels=widths if use_skips else None)
    self.head = nn.Conv2d(decoder_widths[-1], 1, 1)

  def train(self, mode: bool = True):
    # BN (and the backbone) in training mode only with bn_train.
    return super().train(mode and self.bn_train)

  def forward(self, x):
    h, w = x.shape[-2:]
    feats, _ = self.backbone(self._normalize(x))
    y = self.decoder(feats["stride32"], (h, w),
                     skips=feats if self.use_skips else None)
    return blocks.float32_head(self.head, y)


class CoattentionNet(nn.Module):
  """g + frozen f; ``forward(images [B, K, 3, H, W])`` -> (logits, fo, fb)."""

  def __init__(self, backbone: str = "tiny",
               decoder_widths: Sequence[int] = (64, 32, 32, 16, 16),
               convs_per_block: int = 1, use_skips: bool = True,
               generator_bn_train: bool = False,
               extractor: str = "efficientnet_lite0",
               extractor_size: Optional[int] = None, fill_value: float = 0.0,
               backbone_kwargs: Optional[Mapping[str, Any]] = None,
               extractor_kwargs: Optional[Mapping[str, Any]] = None,
               **unused: Any):
    super().__init__()
    self.generator = Generator(backbone, decoder_widths, convs_per_block,
                               use_skips, generator_bn_train, backbone_kwargs)
    self.extractor_net, _, self._extractor_normalize = make_backbone(
        extractor, extractor_kwargs)
    for p in self.extractor_net.parameters():
      p.requires_grad_(False)
    self.extractor_size, self.fill_value = extractor_size, fill_value

  def train(self, mode: bool = True):
    super().train(mode)
    self.extractor_net.eval()  # f is always in inference mode
    return self

  def forward(self, images):
    b, k, _, h, w = images.shape
    x = images.reshape(b * k, 3, h, w)
    logits = self.generator(x)
    s = torch.sigmoid(logits)
    obj = s * x + (1.0 - s) * self.fill_value
    bg = (1.0 - s) * x + s * self.fill_value
    z = torch.cat([obj, bg], 0)
    if self.extractor_size is not None:
      z = blocks.bilinear(z, (self.extractor_size, self.extractor_size))
    _, pooled = self.extractor_net(self._extractor_normalize(z))
    pooled = pooled.float()
    n = b * k
    return (logits.reshape(b, k, 1, h, w), pooled[:n].reshape(b, k, -1),
            pooled[n:].reshape(b, k, -1))


def coattention_loss(fo: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
  """Eq. 3-6 for one group: fo, fb [N, c]; mean over ordered pairs."""
  n, c = fo.shape
  d_pos = torch.cdist(fo, fo).square() / c  # squared distances / c
  intra = (fo - fb).square().sum(-1) / c
  d_neg = 0.5 * (intra[:, None] + intra[None, :])
  off = ~torch.eye(n, dtype=torch.bool, device=fo.device)
  return F.softplus(d_pos - d_neg)[off].sum() / (n * (n - 1))


def mask_loss(logits: torch.Tensor, object_mask: torch.Tensor,
              fixed_mask: Optional[torch.Tensor] = None, beta: float = 0.95,
              target: str = "paper") -> torch.Tensor:
  """Eq. 7, per-image mean over pixels, mean over images.

  'paper': t = beta * M~ (``fixed_mask``) + (1 - beta) * M, detached;
  'self_bootstrap': t = beta * M + (1 - beta) * S, gradient through S.
  """
  logits = logits.float()
  s = torch.sigmoid(logits)
  if target == "paper":
    t = (beta * fixed_mask.float() + (1.0 - beta) * object_mask.float()
         ).detach()
  elif target == "self_bootstrap":
    t = beta * object_mask.float() + (1.0 - beta) * s
  else:
    raise ValueError(f"torch mask_loss: unknown target {target!r}")
  per_pixel = -(t * F.logsigmoid(logits) + (1.0 - t) * F.logsigmoid(-logits))
  return per_pixel.flatten(1).mean(1).mean()


def build_model(model_config) -> CoattentionNet:
  cfg = dict(model_config)
  for key in ("backbone_kwargs", "extractor_kwargs"):
    cfg[key] = dict(cfg.get(key) or {})
  return CoattentionNet(**{k: v for k, v in cfg.items() if k not in (
      "backbone_weights", "extractor_weights", "dtype")})


LOSS_WEIGHTS = {"coattention": 1.0, "coattention_mask": 9.0}


def train_loss(model: CoattentionNet, images, batch: Mapping[str, Any],
               weights: Mapping[str, float] = None):
  weights = weights or LOSS_WEIGHTS
  logits, fo, fb = model(images)
  total = weights["coattention"] * torch.stack(
      [coattention_loss(fo[i], fb[i]) for i in range(fo.shape[0])]).mean()
  if weights.get("coattention_mask"):
    b, k = logits.shape[:2]
    total = total + weights["coattention_mask"] * mask_loss(
        logits.reshape(b * k, -1), batch["object_masks"].reshape(b * k, -1),
        batch["fixed_masks"].reshape(b * k, -1))
  return total


def infer(model: CoattentionNet, images):
  """Co-attention maps S [B, K, 1, H, W] (the generator alone)."""
  b, k, _, h, w = images.shape
  return torch.sigmoid(model.generator(images.reshape(b * k, 3, h, w))
                       ).reshape(b, k, 1, h, w)
