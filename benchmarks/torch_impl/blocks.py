"""Shared torch.nn building blocks mirroring ``coseg_jax.nn`` (NCHW layout).

Every block has the layers, shapes and *attribute names* of its Flax
counterpart, so that :func:`flax_to_torch_state_dict` can copy a Flax variable
tree into the torch module one to one (for the output-parity tests) and the
parameter counts agree exactly. Flax auto-names (``Conv_0``,
``BatchNorm_0``, ``RegionCorrespondence_0``) are kept as torch attribute
names; the torchvision-layout backbones (``backbones.py``) are reached by
``coseg_jax.backbones.weights.torch_key`` (``layer1_0`` -> ``layer1.0``).

Numerical conventions copied from the Flax side (see each Flax module's
docstring for why):

* ``bilinear``: half-pixel bilinear resizing = ``F.interpolate(...,
  align_corners=False)``; equal to ``jax.image.resize(..., 'bilinear')`` for
  the upsampling the decoders do (no antialiasing is involved).
* Adaptive pooling uses torch's bins, which ``coseg_jax.nn.roi_pool`` copies.
* BatchNorm: eps 1e-5, torch momentum 0.1 (= Flax momentum 0.9).
* ConvLSTM gates in the order i, f, o, g; an input conv with bias and a hidden
  conv without.
* RCM softmax in float32.
"""

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_impl import backbones

DECODER_STRIDES = (16, 8, 4, 2, 1)
DECODER_LEVELS = ("stride16", "stride8", "stride4", "stride2", "full")


# ----------------------------------------------------------------------------
# Flax -> torch weights and parameter counts.

_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}


def _flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _to_torch_layout(a: np.ndarray, transposed: bool = False) -> np.ndarray:
  """Flax kernel layouts -> torch: HWIO -> OIHW, (in, out) -> (out, in).

  A Flax ``ConvTranspose`` kernel (HWIO, ``transpose_kernel=False``: a
  forward conv over the dilated input) is torch ``ConvTranspose2d``'s
  (in, out, kH, kW) spatially flipped.
  """
  if a.ndim == 4:
    if transposed:
      return np.transpose(a, (2, 3, 0, 1))[:, :, ::-1, ::-1]
    return np.transpose(a, (3, 2, 0, 1))
  if a.ndim == 2:
    return a.T
  return a


def flax_to_torch_state_dict(variables, module: nn.Module
                             ) -> Dict[str, torch.Tensor]:
  """Maps a Flax variable tree onto ``module``'s state-dict keys, strictly.

  A Flax leaf ``collection/a/b_0/c/kernel`` goes to torch key ``a.b_0.c.weight``
  when the module has it, else to ``weights.torch_key``'s ``a.b.0.c.weight``
  (torchvision layout). Leaves named other than kernel/scale/bias/mean/var
  (e.g. ConvLSTM peepholes) keep their name.

  Raises:
    KeyError: listing Flax leaves without a torch key and torch parameters or
      buffers (other than BN's ``num_batches_tracked``) without a Flax leaf.
    ValueError: on a shape mismatch.
  """
  from coseg_jax.backbones import weights  # pylint: disable=g-import-not-at-top
  target = module.state_dict()
  transposed = {name for name, m in module.named_modules()
                if isinstance(m, nn.ConvTranspose2d)}
  out, unmatched = {}, []
  for collection in ("params", "batch_stats"):
    for path, leaf in _flat(dict(variables.get(collection, {}))):
      name = _LEAF.get((collection, path[-1]), path[-1])
      direct = ".".join(path[:-1] + (name,))
      key = direct if direct in target else None
      if key is None:
        try:
          key = weights.torch_key(collection, path)
        except Exception:  # pylint: disable=broad-except
          key = None
        if key is not None and key not in target:
          # Mixed: torchvision layout inside a Flax-named parent.
          key = None
      if key is None:
        unmatched.append("/".join((collection,) + path))
        continue
      value = _to_torch_layout(np.asarray(leaf, np.float32),
                               key.rsplit(".", 1)[0] in transposed)
      if tuple(value.shape) != tuple(target[key].shape):
        raise ValueError(f"{key}: flax {np.shape(leaf)} -> {value.shape}, "
                         f"torch {tuple(target[key].shape)}")
      out[key] = torch.from_numpy(np.array(value, np.float32, copy=True))
  missing = [k for k in target
             if k not in out and not k.endswith("num_batches_tracked")]
  if unmatched or missing:
    raise KeyError(f"Flax leaves without a torch key: {unmatched[:20]} "
                   f"({len(unmatched)}); torch keys without a Flax leaf: "
                   f"{missing[:20]} ({len(missing)})")
  return out


def load_flax_variables(module: nn.Module, variables) -> nn.Module:
  """Copies Flax ``variables`` into ``module`` (strict; see above)."""
  sd = flax_to_torch_state_dict(variables, module)
  result = module.load_state_dict(sd, strict=False)
  bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
  if bad or result.unexpected_keys:
    raise KeyError(f"load_state_dict: missing {bad}, unexpected "
                   f"{result.unexpected_keys}")
  return module


def torch_param_count(module: nn.Module) -> int:
  """Number of trainable-or-not parameters (buffers excluded)."""
  return sum(p.numel() for p in module.parameters())


def jax_param_count(params) -> int:
  """Number of parameters in a Flax ``params`` tree (BN statistics excluded)."""
  return int(sum(np.prod(np.shape(v)) for _, v in _flat(dict(params))))


# ----------------------------------------------------------------------------
# Small functional helpers.

# NCHW images in [0, 1] -> ImageNet-standardised (the encoders' normaliser).
imagenet_normalize = backbones.imagenet_normalize


def bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
  """Half-pixel bilinear resize of NCHW ``x`` to ``size``."""
  if tuple(x.shape[-2:]) == tuple(size):
    return x
  return F.interpolate(x, size=tuple(size), mode="bilinear",
                       align_corners=False)


def same_conv(cin, cout, k, bias=True, stride=1):
  """Conv with Flax 'SAME' padding for odd ``k`` and stride 1."""
  return nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)


def bn(c):
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


# ----------------------------------------------------------------------------
# Losses (float32, same algorithms as coseg_jax.losses).

def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
  gts = gt_sorted.sum()
  intersection = gts - gt_sorted.cumsum(0)
  union = gts + (1 - gt_sorted).cumsum(0)
  jaccard = 1.0 - intersection / union
  return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_binary(logits: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
  """Lovász-Softmax on one foreground logit per pixel, all pixels pooled.

  Same single-sort algorithm as ``coseg_jax.losses.lovasz_softmax_binary``
  (``per_image=False``, classes 'present', no void pixels): both classes
  share the per-pixel errors sigmoid(-x) on fg / sigmoid(x) on bg.
  """
  logits = logits.float().reshape(-1)
  fg = labels.float().reshape(-1)
  errors = torch.where(fg > 0.5, torch.sigmoid(-logits), torch.sigmoid(logits))
  errors_sorted, perm = torch.sort(errors, descending=True)
  fg_sorted = fg[perm]
  bg_sorted = 1.0 - fg_sorted
  per_class = torch.stack([torch.dot(errors_sorted, lovasz_grad(bg_sorted)),
                           torch.dot(errors_sorted, lovasz_grad(fg_sorted))])
  present = torch.stack([(bg_sorted.sum() > 0), (fg_sorted.sum() > 0)]).float()
  return (present * per_class).sum() / present.sum().clamp(min=1.0)


def sigmoid_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


# ----------------------------------------------------------------------------
# Layers.

def float32_head(head: nn.Module, y: torch.Tensor) -> torch.Tensor:
  """``head(y)`` in float32 outside autocast, as the Flax models compute
  their logits."""
  with torch.autocast(device_type=y.device.type, enabled=False):
    return head(y.float())


def model_kwargs(model_config, drop=()) -> dict:
  """``config.model`` (ConfigDict or dict, Flax field names) as a torch
  model's constructor arguments: a plain ``backbone_kwargs`` dict, without
  the Flax-only fields named in ``drop``."""
  cfg = dict(model_config)
  cfg["backbone_kwargs"] = dict(cfg.get("backbone_kwargs") or {})
  return {k: v for k, v in cfg.items() if k not in drop}


class FrozenBackboneMixin:
  """For a group model with ``backbone``, ``_normalize`` and
  ``backbone_eval_mode`` (the Flax models' attribute): ``train()`` keeps a
  frozen backbone in evaluation mode, and ``encode_group`` runs it on every
  image of a group. List it before ``nn.Module`` among the bases."""

  def train(self, mode: bool = True):
    super().train(mode)
    if self.backbone_eval_mode:
      self.backbone.eval()  # BN running statistics, no drop-connect
    return self

  def encode_group(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """[B, K, 3, H, W] in [0, 1] -> the backbone's {level: [B*K, C, h, w]}."""
    b, k, _, h, w = images.shape
    feats, *_ = self.backbone(self._normalize(images.reshape(b * k, 3, h, w)))
    return feats


class ConvBNReLU(nn.Module):
  """``coseg_jax.nn.decoders.ConvBNReLU``: 3x3 conv (no bias) + BN + ReLU."""

  def __init__(self, cin: int, cout: int, use_bn: bool = True):
    super().__init__()
    self.use_bn = use_bn
    self.Conv_0 = same_conv(cin, cout, 3, bias=not use_bn)  # pylint: disable=invalid-name
    if use_bn:
      self.BatchNorm_0 = bn(cout)  # pylint: disable=invalid-name

  def forward(self, x):
    x = self.Conv_0(x)
    if self.use_bn:
      x = self.BatchNorm_0(x)
    return F.relu(x)


class UpsampleDecoder(nn.Module):
  """``coseg_jax.nn.decoders.UpsampleDecoder``: five bilinear + conv blocks.

  Args:
    cin: channels of the stride-32 input.
    widths: output channels of the five blocks (strides 16, 8, 4, 2, 1).
    convs_per_block: 3x3 conv layers per block.
    skip_channels: level -> channels of the concatenated skip (use_skips), or
      None.
  """

  def __init__(self, cin: int, widths: Sequence[int] = (256, 128, 64, 32, 16),
               convs_per_block: int = 1,
               skip_channels: Optional[Mapping[str, int]] = None,
               use_bn: bool = True):
    super().__init__()
    self.widths = tuple(widths)
    self.convs_per_block = convs_per_block
    self.skip_channels = dict(skip_channels) if skip_channels else None
    c = cin
    for i, (level, width) in enumerate(zip(DECODER_LEVELS, self.widths)):
      if self.skip_channels is not None and level != "full":
        c += self.skip_channels[level]
      for j in range(convs_per_block):
        setattr(self, f"block{i}_conv{j}", ConvBNReLU(c, width, use_bn))
        c = width

  def forward(self, x, output_size, skips=None):
    h, w = output_size
    for i, (level, stride) in enumerate(zip(DECODER_LEVELS, DECODER_STRIDES)):
      x = bilinear(x, (math.ceil(h / stride), math.ceil(w / stride)))
      if self.skip_channels is not None and stride > 1:
        x = torch.cat([x, skips[level].to(x.dtype)], 1)
      for j in range(self.convs_per_block):
        x = getattr(self, f"block{i}_conv{j}")(x)
    return x


class ChannelAttentionFusion(nn.Module):
  """``coseg_jax.nn.fusion.ChannelAttentionFusion`` (DFN channel attention)."""

  def __init__(self, fine_ch: int, coarse_ch: int, features: int,
               reduction: int = 1):
    super().__init__()
    self.fine_proj = nn.Conv2d(fine_ch, features, 1)
    self.coarse_proj = nn.Conv2d(coarse_ch, features, 1)
    self.fc1 = nn.Linear(2 * features, features // reduction)
    self.fc2 = nn.Linear(features // reduction, features)

  def forward(self, fine, coarse):
    coarse = bilinear(coarse, fine.shape[-2:])
    f = self.fine_proj(fine)
    c = self.coarse_proj(coarse)
    s = torch.cat([f, c], 1).mean((2, 3))
    weights = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
    return f * weights[:, :, None, None] + c


class ConvLSTMCell(nn.Module):
  """``coseg_jax.nn.convlstm.ConvLSTMCell`` (eq. 1-6, gates i, f, o, g)."""

  def __init__(self, cin: int, features: int, kernel_size: int = 3,
               peephole: bool = False, forget_bias: float = 0.0):
    super().__init__()
    self.features, self.forget_bias, self.peephole = (features, forget_bias,
                                                      peephole)
    self.input_conv = same_conv(cin, 4 * features, kernel_size, bias=True)
    self.hidden_conv = same_conv(features, 4 * features, kernel_size,
                                 bias=False)
    if peephole:
      for g in "ifo":
        setattr(self, f"peephole_{g}", nn.Parameter(torch.zeros(features)))

  def forward(self, carry, x):
    c, h = carry
    z = self.input_conv(x) + self.hidden_conv(h)
    zi, zf, zo, zg = torch.chunk(z, 4, dim=1)
    c_prev = c.to(z.dtype)
    if self.peephole:
      zi = zi + self.peephole_i.view(1, -1, 1, 1).to(z.dtype) * c_prev
      zf = zf + self.peephole_f.view(1, -1, 1, 1).to(z.dtype) * c_prev
    c_new = (torch.sigmoid(zf + self.forget_bias) * c_prev +
             torch.sigmoid(zi) * torch.tanh(zg))
    if self.peephole:
      zo = zo + self.peephole_o.view(1, -1, 1, 1).to(z.dtype) * c_new
    h_new = torch.sigmoid(zo) * torch.tanh(c_new)
    return c_new, h_new


class RegionCorrespondence(nn.Module):
  """``coseg_jax.nn.region_attention.RegionCorrespondence``, group form.

  ``forward(x, k)``: x [B*K, C, h, w] (groups of K consecutive images) ->
  [B*K, C, h, w]; image k attends to the regions of the other K-1 images and
  adds the mean of their global averages, halved (eq. 9-14).
  """

  def __init__(self, features: int, key_features: Optional[int] = None,
               region_size: Tuple[int, int] = (2, 2), regions: str = "pooled",
               fuse_kernel: int = 1, project_value: bool = True,
               scale: bool = False, match_score: bool = False):
    super().__init__()
    d = key_features or features
    self.region_size, self.regions = tuple(region_size), regions
    self.scale, self.project_value = scale, project_value
    self.match_score = match_score
    self.fuse = same_conv(2 * features, features, fuse_kernel)
    self.query = nn.Conv2d(features, d, 1)
    self.key = nn.Conv2d(features, d, 1)
    if project_value:
      self.value = nn.Conv2d(features, features, 1)

  @staticmethod
  def _linear(conv, r):
    return F.linear(r, conv.weight[:, :, 0, 0], conv.bias)

  def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
    bk, c, h, w = x.shape
    b = bk // k
    if self.regions == "raw":
      pooled = torch.cat([x, x], 1)
    else:
      pooled = torch.cat([F.adaptive_avg_pool2d(x, self.region_size),
                          F.adaptive_max_pool2d(x, self.region_size)], 1)
    r = self.fuse(pooled)  # [BK, C, rh, rw]
    n = r.shape[2] * r.shape[3]
    r = r.flatten(2).transpose(1, 2).reshape(b, k * n, c)  # [B, KN, C]
    keys = F.relu(self._linear(self.key, r))  # [B, KN, d]
    values = F.relu(self._linear(self.value, r)) if self.project_value else r
    q = F.relu(self.query(x))  # [BK, d, h, w]
    q = q.reshape(b, k, q.shape[1], h * w)
    logits = torch.einsum("bkdp,bmd->bkpm", q, keys).float()
    if self.scale:
      logits = logits / math.sqrt(q.shape[2])
    own = (torch.arange(k * n, device=x.device) // n)[None, :] == torch.arange(
        k, device=x.device)[:, None]  # [K, KN]
    logits = logits.masked_fill(own[None, :, None, :], float("-inf"))
    attn = torch.softmax(logits, dim=-1).to(values.dtype)
    local = torch.einsum("bkpm,bmc->bkcp", attn, values)  # [B, K, C, hw]
    gap = x.mean((2, 3)).reshape(b, k, c)
    others = (gap.sum(1, keepdim=True) - gap) / (k - 1)
    out = 0.5 * (local + others[..., None].to(local.dtype))
    out = out.reshape(bk, c, h, w)
    if not self.match_score:
      return out
    # One more channel: each query's best cosine similarity over the other
    # images' keys (rsqrt(|v|^2 + 1e-12), as the Flax module).
    def unit(v):
      v = v.float()
      return v * torch.rsqrt((v * v).sum(-1 if v.dim() == 3 else 2,
                                         keepdim=True) + 1e-12)
    sims = torch.einsum("bkdp,bmd->bkpm", unit(q), unit(keys))
    sims = sims.masked_fill(own[None, :, None, :], -1.0)
    best = sims.amax(-1).reshape(bk, 1, h, w).to(out.dtype)
    return torch.cat([out, best], 1)
