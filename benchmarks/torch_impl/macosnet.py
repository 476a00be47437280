"""MaCoSNet (Chen et al., TPAMI) network in plain PyTorch: architecture and
co-segmentation inference; the joint training step is NOT implemented.

Mirrors ``coseg_jax.models.macosnet.MaCoSNet`` (mode 'joint') with the same
parameter tree, so the parameter counts match exactly: frozen encoder E
(torchvision-layout ResNet or EfficientNet-Lite truncated at
``feature_level``, or the tiny test CNN), the affine and TPS regressors G
(conv7x7 VALID + BN + ReLU, conv5x5 VALID + BN + ReLU, linear 64 (h-10)
(w-10) -> 6 / 18, flattened in the Flax h, w, c order), the mask decoder D
(four blocks: a k3 s2 p1 output_padding-1 transposed conv + BN + ReLU, the
additive skip from 'stride8', 'stride4', 'stride2' with bilinear resizes
where sizes differ, then ``decoder_convs`` 3x3 convs + BN + ReLU; 1x1 logit)
and the frozen perceptual network F (headless).

``infer`` computes what the JAX inference benchmark computes after XLA's
dead-code elimination: encoder, the stage-1 correlation of the partner
((k + 1) mod K) to each image (CNNGeo layout: L2-normalised features, A's
positions as channels in column-major order, ReLU, channel L2 norm) and the
decoder. The training objective (two-stage warps with re-encoding, matching /
cycle / transitivity / contrastive / cross-consistency losses) has no torch
port here: ``train_loss`` is None and the benchmark reports its training
cells as n/a.
"""

from typing import Any, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks
from benchmarks.torch_impl import coattention as _coatt


def make_encoder(name: str, level: str, kwargs=None):
  """(encoder, widths per level, normaliser) computing up to ``level``
  (Lite: ``kwargs`` = the Flax ``backbone_kwargs``)."""
  encoder = backbones.headless(name, kwargs, truncate_at=level)
  if encoder is None:
    raise ValueError(f"torch MaCoSNet: unsupported backbone {name!r}")
  return encoder


def feature_l2_norm(x, eps=1e-6):
  return x / torch.sqrt((x * x).sum(1, keepdim=True) + eps)


def feature_correlation(f_a, f_b):
  """f_a, f_b [N, C, h, w] -> [N, h_a * w_a, h_b, w_b] (CNNGeo layout)."""
  f_a, f_b = feature_l2_norm(f_a), feature_l2_norm(f_b)
  n, c, h, w = f_a.shape
  a_flat = f_a.transpose(2, 3).reshape(n, c, w * h)  # k = x * h_a + y
  corr = torch.einsum("bcij,bck->bkij", f_b, a_flat)
  return feature_l2_norm(F.relu(corr))


class FeatureRegressor(nn.Module):

  def __init__(self, cin: int, grid: Sequence[int], out_dim: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, 128, 7)
    self.bn1 = blocks.bn(128)
    self.conv2 = nn.Conv2d(128, 64, 5)
    self.bn2 = blocks.bn(64)
    self.linear = nn.Linear(64 * (grid[0] - 10) * (grid[1] - 10), out_dim)

  def forward(self, corr):
    x = F.relu(self.bn1(self.conv1(corr)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.linear(x.permute(0, 2, 3, 1).flatten(1).float())


class MaskDecoder(nn.Module):

  def __init__(self, cin: int, widths: Sequence[int],
               convs_per_block: int = 2):
    super().__init__()
    self.widths = tuple(widths)
    self.convs_per_block = convs_per_block
    c = cin
    for i, w in enumerate(self.widths):
      setattr(self, f"deconv{i + 1}", nn.ConvTranspose2d(
          c, w, 3, 2, 1, output_padding=1, bias=False))
      setattr(self, f"bn{i + 1}", blocks.bn(w))
      for j in range(convs_per_block):
        setattr(self, f"conv{i + 1}_{j + 1}",
                nn.Conv2d(w, w, 3, padding=1, bias=False))
        setattr(self, f"bn{i + 1}_{j + 1}", blocks.bn(w))
      c = w
    self.logit = nn.Conv2d(c, 1, 1)

  def forward(self, x, skips: Sequence[torch.Tensor], output_size):
    for i in range(len(self.widths)):
      x = F.relu(getattr(self, f"bn{i + 1}")(getattr(self, f"deconv{i + 1}")(x)))
      if i < len(skips):
        x = blocks.bilinear(x, skips[i].shape[-2:]) + skips[i].to(x.dtype)
      for j in range(self.convs_per_block):
        x = F.relu(getattr(self, f"bn{i + 1}_{j + 1}")(
            getattr(self, f"conv{i + 1}_{j + 1}")(x)))
    x = blocks.bilinear(x, output_size)
    return blocks.float32_head(self.logit, x)


class MaCoSNet(nn.Module):
  """Network of the joint mode; ``forward`` = co-segmentation logits."""

  def __init__(self, backbone: str = "resnet101",
               feature_level: str = "stride16",
               perceptual: str = "efficientnet_lite0",
               decoder_final_width: int = 32, decoder_convs: int = 2,
               margin: Any = 2.0, image_size: int = 240,
               backbone_kwargs: Any = None, **unused: Any):
    super().__init__()
    self.encoder, widths, self._normalize = make_encoder(
        backbone, feature_level, backbone_kwargs)
    for p in self.encoder.parameters():
      p.requires_grad_(False)
    self.level = feature_level
    stride = int(feature_level[len("stride"):])
    g = -(-image_size // stride)
    self.affine_regressor = FeatureRegressor(g * g, (g, g), 6)
    self.tps_regressor = FeatureRegressor(g * g, (g, g), 18)
    self.skip_levels = ("stride8", "stride4", "stride2")
    self.decoder = MaskDecoder(
        widths[feature_level] + g * g,
        tuple(widths[s] for s in self.skip_levels) + (decoder_final_width,),
        decoder_convs)
    if perceptual and margin == "auto":
      # The calibrated margin's running statistics (Flax 'batch_stats').
      self.register_buffer("margin_ref_sum", torch.zeros(()))
      self.register_buffer("margin_ref_count", torch.zeros(()))
    if perceptual:
      self.perceptual_net, _, _ = _coatt.make_backbone(perceptual)
      for p in self.perceptual_net.parameters():
        p.requires_grad_(False)

  def train(self, mode: bool = True):
    super().train(mode)
    self.encoder.eval()  # frozen: BN running statistics
    if hasattr(self, "perceptual_net"):
      self.perceptual_net.eval()
    return self

  def forward(self, images):
    b, k, _, h, w = images.shape
    feats, _ = self.encoder(self._normalize(images.reshape(b * k, 3, h, w)))
    f = feats[self.level]
    fg = f.reshape(b, k, *f.shape[1:])
    partner = torch.roll(fg, -1, dims=1).reshape(f.shape)  # (m + 1) mod K
    corr = feature_correlation(partner.float(), f.float()).to(f.dtype)
    x = torch.cat([f, corr], 1)
    logits = self.decoder(x, [feats[s] for s in self.skip_levels], (h, w))
    return logits.reshape(b, k, 1, h, w)


def build_model(model_config, image_size: int = None) -> MaCoSNet:
  cfg = dict(model_config)
  keep = ("backbone", "feature_level", "perceptual", "decoder_final_width",
          "decoder_convs", "margin", "backbone_kwargs")
  kwargs = {k: cfg[k] for k in keep if k in cfg}
  if image_size is not None:
    kwargs["image_size"] = image_size
  return MaCoSNet(**kwargs)


train_loss = None  # the joint objective is not ported (see module docstring)


def infer(model: MaCoSNet, images):
  return torch.sigmoid(model(images))
