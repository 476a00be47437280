"""CycleSegNet: cycle refinement and region correspondence (Zhang et al., TIP 2021).

Given a group of K >= 2 images, CycleSegNet segments the object they share:

1. **Siamese encoder.** One backbone from ``coseg_jax.backbones`` (ResNet-34 in
   the paper; any registered one by ``backbone``) encodes every image; the K
   images of a group are folded into the batch axis, so the weights are shared.
2. **Cycle Refinement Module (CRM, eq. 1-8).** A ConvLSTM per branch, with the
   parameters shared between branches, whose hidden state H_0 and cell state
   C_0 both start from the image's encoder features. At each of N steps
   (default 7) the input of branch A is the Region Correspondence Module of
   the cell states, X_A = RCM(C_A, C_B), and symmetrically X_B = RCM(C_B, C_A)
   (eq. 7-8); the ConvLSTM then updates (C, H) (eq. 1-6). The last hidden
   state H_N is decoded. The steps run under ``nn.scan`` (one copy of the step
   in the graph, weights shared over steps): ``coseg_jax.nn.convlstm.
   FeedbackConvLSTM`` with the group-form RCM as its input module.
3. **Region Correspondence Module (RCM, eq. 9-12)**:
   ``coseg_jax.nn.region_attention.RegionCorrespondence`` — the other image's
   features ROI avg- and max-pooled to a 2x2 grid, fused by a conv (C'_B);
   1x1 conv + ReLU projections W_A, W_B of queries and keys (eq. 10);
   softmax attention of every pixel over the regions, reading C'_B itself
   (eq. 11; ``value_projection=True`` reads ReLU(conv1x1(C'_B)) instead,
   ours); plus the other image's global average; the two terms averaged.
4. **Group mode (eq. 13-14).** For K > 2 every image attends to the regions
   of all other K-1 images at once, and its global term is the mean of theirs;
   the same parameters serve every K, so K is free at test time. K = 2 is
   exactly the pair form.
5. **Decoder.** Single-level: the CRM refines the last encoder stage
   (stride 32) and :class:`coseg_jax.nn.decoders.UpsampleDecoder` (five
   bilinear-upsampling + conv blocks) brings it to full resolution.
   Multi-level: three CRMs with separate parameters refine the last three
   stages (res3/res4/res5 = strides 8/16/32 for ResNet) independently; while
   decoding coarse to fine, the stride-16 and stride-8 blocks first fuse the
   decoded coarse map into the refined finer level with
   :class:`coseg_jax.nn.fusion.ChannelAttentionFusion`, then the remaining
   blocks upsample to full resolution. A 1x1 conv gives one foreground logit.

Ablations (``exchange``; the Table 1 baselines live in ``models/baselines.py``
as methods ``baseline``, ``mcat``, ``mmul``):

* ``'cycle'`` (Mcycle, the full model): the CRM above.
* ``'cross'`` (Mcross): one RCM exchange of the encoder features, no ConvLSTM;
  the decoder reads concat[x, RCM(x)] — Mcat's layout with the other image's
  pooled vector replaced by the region correspondence output.

Choices the paper leaves open (each is a field of :class:`CycleSegNet` and
of ``config.model``):

* ``crm_features``: None keeps the encoder width for the ConvLSTM states, as
  the paper initialises H_0 = C_0 = encoder features. An integer inserts a
  1x1 conv + BN + ReLU projecting the encoder features to that width first
  (a deviation for small CPU models: a ConvLSTM on ResNet-34's 512 channels
  costs 2 x 9 x 512 x 2048 weights per level).
* ConvLSTM kernel (``lstm_kernel``, default 3), forget bias (0), peepholes
  (off) and gate order: see ``coseg_jax.nn.convlstm``.
* RCM details (``region_size`` 2x2, ``regions`` 'pooled'/'raw', key width,
  fusion kernel, logit scaling): see ``coseg_jax.nn.region_attention``.
  ``value_projection`` is not a choice the paper leaves open (eq. 11 reads
  the fused regions); the module and ``build_model`` default to True so
  that configs and checkpoints from before the field keep their RCM, and
  the paper config sets False.
* ``decoder_widths`` / ``convs_per_block`` / ``use_skips``: the paper does not
  list its decoder; the defaults are five blocks of one 3x3 conv + BN + ReLU
  and no encoder skips (the paper decodes the refined features only).
* ``fusion_features``: width of the channel-attention fusion outputs in the
  multi-level decoder (default: the decoder width of that block).
* ``crm_levels``: the three levels the multi-level model refines (default
  the paper's strides 8/16/32). At 512 px the paper's stride-8 map is 64x64;
  for small inputs (the 64 px demo) strides 4/8/16 keep maps of 16x16 / 8x8
  / 4x4 instead of 8x8 / 4x4 / 2x2. Decoding starts at the coarsest refined
  level, and the decoder blocks coarser than it are dropped.
* ``decode_all_steps``: decode every step's hidden state (per-step logits
  [T, B, K, H, W, 1], for the per-step figure and optional deep supervision,
  loss term ``deep_lovasz``). The T steps are folded into the decoder's batch,
  so in training mode BatchNorm statistics are taken over all steps; at
  inference the last step's logits equal those of ``decode_all_steps=False``.

Loss: Lovász-Softmax over {background, foreground} (Sec. 4.1; term
``lovasz``, over all pixels of the batch; ``lovasz_image``, the mean of each
image's own loss, which weighs every image alike as the benchmarks' per-image
J does), pixel BCE for comparison (``bce``), and ``deep_lovasz``: the mean
Lovász loss over all decoded steps (needs ``decode_all_steps``).
"""

from typing import Any, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from coseg_jax import losses
from coseg_jax.models import baselines
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.nn import convlstm
from coseg_jax.nn import decoders
from coseg_jax.nn import fusion
from coseg_jax.nn import partner_similarity
from coseg_jax.nn import region_attention
from coseg_jax.nn import resize

EXCHANGES = ("cycle", "cross")
SINGLE_LEVELS = ("stride32",)
# res3, res4, res5 of ResNet (layer2..layer4); same names for every backbone.
MULTI_LEVELS = ("stride8", "stride16", "stride32")
LOSS_TERMS = ("lovasz", "lovasz_image", "bce", "deep_lovasz", "prior_bce")
# Output stride of every level a CRM may refine or the decoder may visit.
_LEVEL_STRIDES = dict(decoders.DECODER_LEVELS, stride32=32)


@flax.struct.dataclass
class CycleSegNetOutput:
  """Output of :class:`CycleSegNet`.

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 foreground logits (last step).
    step_logits: [T, B, K, H, W, 1] float32 logits of every refinement step
      (T = num_steps) when ``decode_all_steps``, else None.
    prior_logits: with ``partner_prior_levels``, one [B, K, h_l, w_l, 1]
      float32 map per prior level: a learnt affine map of that level's
      partner similarity standardised per image, the logit of "this
      position shows an object the partner holds too" (loss term
      ``prior_bce``); else None.
  """
  mask_logits: jax.Array
  step_logits: Optional[jax.Array] = None
  prior_logits: Optional[Tuple[jax.Array, ...]] = None


class CycleRefinement(nn.Module):
  """Cycle Refinement Module (eq. 1-8) on one feature level, group form.

  Call: ``h_last, hs = crm(x)`` with x [B, K, h, w, C] encoder features
  (K >= 2); h_last [B, K, h, w, C] is H_N; hs [N, B, K, h, w, C] stacks every
  step's hidden state (time first). With ``exchange='cross'`` there is one
  RCM exchange and no ConvLSTM: h_last = concat[x, RCM(x)] [B, K, h, w, 2C],
  hs = h_last[None].

  Parameters: ``rcm`` (the RCM) and, for exchange 'cycle', ``lstm/cell``
  (the ConvLSTM cell), shared by every step and every branch.

  Attributes:
    features: C, the width of the input features and of the states.
    num_steps: N refinement steps.
    exchange: 'cycle' or 'cross'.
    lstm_kernel: ConvLSTM gate-convolution kernel.
    forget_bias: constant added to the forget-gate pre-activation.
    peephole: Shi et al.'s peephole terms.
    region_size: RCM region grid (Ĥ, Ŵ).
    regions: 'pooled' or 'raw'.
    key_features: RCM query/key width (None: C).
    fuse_kernel: RCM region-fusion conv kernel.
    value_projection: RCM values ReLU(conv1x1(C'_B)) (ours) instead of the
      fused regions C'_B (eq. 11).
    scale_attention: scale RCM logits by 1/sqrt(d).
    match_score: append the RCM's best-match channel (not in the paper).
    dtype: computation dtype.
    scan_unroll: refinement steps unrolled per scan iteration (None: all,
      the fast choice for small N; see ``coseg_jax.nn.convlstm``).
  """
  features: int
  num_steps: int = 7
  exchange: str = "cycle"
  lstm_kernel: int = 3
  forget_bias: float = 0.0
  peephole: bool = False
  region_size: Tuple[int, int] = (2, 2)
  regions: str = "pooled"
  key_features: Optional[int] = None
  fuse_kernel: int = 1
  value_projection: bool = True
  scale_attention: bool = False
  match_score: bool = False
  dtype: Any = jnp.float32
  scan_unroll: Optional[int] = None

  def make_rcm(self, name=None) -> region_attention.RegionCorrespondence:
    """The RCM with this module's settings (call inside ``apply``)."""
    return region_attention.RegionCorrespondence(
        self.features, key_features=self.key_features,
        region_size=tuple(self.region_size), regions=self.regions,
        fuse_kernel=self.fuse_kernel, project_value=self.value_projection,
        scale=self.scale_attention, match_score=self.match_score,
        dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    if self.exchange not in EXCHANGES:
      raise ValueError(f"exchange must be one of {EXCHANGES}, got "
                       f"{self.exchange!r}")
    if x.ndim != 5:
      raise ValueError(f"CycleRefinement expects [B, K, h, w, C], got "
                       f"{x.shape}")
    if self.exchange == "cross":
      out = jnp.concatenate([x, self.make_rcm(name="rcm")(x)], axis=-1)
      return out, out[None]
    lstm = convlstm.FeedbackConvLSTM(
        self.features, input_module=self.make_rcm(name="rcm"),
        num_steps=self.num_steps,
        kernel_size=self.lstm_kernel, peephole=self.peephole,
        forget_bias=self.forget_bias, feed="cell", dtype=self.dtype,
        unroll=self.scan_unroll, name="lstm")
    # H_0 = C_0 = encoder features (the paper's initialisation).
    (_, h_last), hs = lstm((x, x))
    return h_last, hs


class CycleSegNet(nn.Module):
  """CycleSegNet for groups of K >= 2 images (pairs: K = 2).

  ``apply(variables, images [B, K, H, W, 3] in [0, 1], train=bool)`` returns
  :class:`CycleSegNetOutput`. Parameters: ``backbone``, ``proj_<level>``
  (with ``crm_features``), ``crm_<level>`` (one CRM per refined level),
  ``fuse_<level>`` (multi-level), ``decoder`` and ``head``.

  Attributes:
    backbone: name for ``coseg_jax.backbones.get_backbone``.
    backbone_kwargs: extra backbone attributes.
    backbone_eval_mode: run the backbone in evaluation mode during training
      too (``backbones.group_features``); for a frozen encoder.
    multi_level: refine strides 8/16/32 and fuse them while decoding.
    exchange: 'cycle' (Mcycle) or 'cross' (Mcross).
    num_steps: N, ConvLSTM refinement steps (paper: 7).
    crm_features: None (encoder width) or a projection width.
    feature_dropout: in training, the probability of zeroing each channel
      of each image's encoder level before the CRM (the same channel at
      every position; not in the paper).
    lstm_kernel, forget_bias, peephole: ConvLSTM settings.
    region_size, regions, key_features, fuse_kernel, value_projection,
      scale_attention, match_score: RCM settings (``value_projection`` and
      ``match_score`` are not in the paper).
    decoder_widths: channels of the five decoder blocks (strides 16..1).
    convs_per_block: 3x3 conv layers per decoder block.
    use_skips: concatenate encoder features at the decoder levels not fed
      by a CRM.
    fusion_features: width of the multi-level fusion outputs (None: the
      decoder width of the block).
    crm_levels: levels refined by the multi-level model (None: strides
      8/16/32); coarsest last.
    decode_all_steps: also decode every refinement step.
    dtype: computation dtype (params float32; logits float32).
    scan_unroll: refinement steps unrolled per scan iteration (None: all).
  """
  backbone: str = "resnet34"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_eval_mode: bool = False
  multi_level: bool = False
  exchange: str = "cycle"
  num_steps: int = 7
  crm_features: Optional[int] = None
  feature_dropout: float = 0.0
  lstm_kernel: int = 3
  forget_bias: float = 0.0
  peephole: bool = False
  region_size: Tuple[int, int] = (2, 2)
  regions: str = "pooled"
  key_features: Optional[int] = None
  fuse_kernel: int = 1
  value_projection: bool = True
  scale_attention: bool = False
  match_score: bool = False
  decoder_widths: Sequence[int] = (256, 128, 64, 32, 16)
  convs_per_block: int = 1
  use_skips: bool = False
  fusion_features: Optional[int] = None
  crm_levels: Optional[Sequence[str]] = None
  decode_all_steps: bool = False
  partner_prior_levels: Sequence[str] = ()
  partner_prior_features: Optional[int] = None
  dtype: Any = jnp.float32
  scan_unroll: Optional[int] = None

  @property
  def levels(self) -> Tuple[str, ...]:
    """The refined levels, finest first."""
    if self.crm_levels is None:
      return MULTI_LEVELS if self.multi_level else SINGLE_LEVELS
    levels = tuple(self.crm_levels)
    if not self.multi_level:
      raise ValueError("crm_levels needs multi_level=True (the single-level "
                       "model refines stride32 only)")
    if (len(levels) != 3 or any(_LEVEL_STRIDES.get(l, 0) < 2 for l in levels)
        or list(levels) != sorted(levels, key=_LEVEL_STRIDES.get)
        or len(set(levels)) != 3):
      raise ValueError(f"crm_levels must be three distinct levels among "
                       f"stride2..stride32, finest first, got {levels}")
    return levels

  @property
  def encoder_kwargs(self):
    """The backbone attributes the model builds its encoder with."""
    return dict(self.backbone_kwargs or {})

  @property
  def feature_levels(self) -> Tuple[str, ...]:
    """The backbone levels the model reads (what a feature cache stores):
    the refined levels and, with ``use_skips``, the decoder's skip levels
    below the coarsest refined level that no CRM feeds."""
    levels = set(self.levels)
    if self.use_skips:
      start = _LEVEL_STRIDES[self.levels[-1]] if self.multi_level else 32
      levels |= {l for l, s in decoders.DECODER_LEVELS
                 if 1 < s < start and l not in self.levels}
    levels |= set(self.prior_levels)
    return tuple(sorted(levels, key=_LEVEL_STRIDES.get))

  @property
  def prior_levels(self) -> Tuple[str, ...]:
    """The checked ``partner_prior_levels``."""
    levels = tuple(self.partner_prior_levels or ())
    for level in levels:
      if level not in _LEVEL_STRIDES or level == "full":
        raise ValueError(f"partner_prior_levels: unknown backbone level "
                         f"{level!r}; expected stride2..stride32")
    if len(set(levels)) != len(levels):
      raise ValueError(f"partner_prior_levels repeats a level: {levels}")
    return levels

  def partner_priors(self, feats: Mapping[str, jax.Array], b: int, k: int
                     ) -> Tuple[jax.Array, ...]:
    """The partner similarity of every prior level, each [B*K, h_l, w_l, 1]
    at its own level's resolution (empty when off). Call inside ``apply``."""
    maps = []
    for level in self.prior_levels:
      if level not in feats:
        raise ValueError(f"partner_prior_levels: backbone {self.backbone!r} "
                         f"returned no {level!r} features (got "
                         f"{sorted(feats)})")
      f = feats[level]
      if self.partner_prior_features:
        f = nn.Conv(int(self.partner_prior_features), (1, 1),
                    use_bias=False, dtype=self.dtype,
                    name=f"prior_proj_{level}")(f)
      s = partner_similarity.partner_similarity(f.reshape(b, k, *f.shape[1:]))
      maps.append(s.reshape(b * k, *s.shape[2:]))
    return tuple(maps)

  def prior_logits(self, priors: Sequence[jax.Array], b: int, k: int
                   ) -> Tuple[jax.Array, ...]:
    """Per prior level, its similarity map standardised over each image's
    positions, then a learnt scale and offset: ([B, K, h_l, w_l, 1]
    float32, ...). Call inside ``apply``.

    Raw similarities sit in a narrow band well above 0 (a best match over
    the partner's positions is rarely poor), so an affine map of them would
    start far from calibrated, and Adam moves a scalar offset by about the
    learning rate per step; standardising makes the logit start at "more
    similar to the partner than this image's average position", and needs
    no running statistics (the same in training and inference).
    """
    out = []
    for level, p in zip(self.prior_levels, priors):
      p = p.astype(jnp.float32)
      mean = jnp.mean(p, axis=(1, 2), keepdims=True)
      std = jnp.sqrt(jnp.var(p, axis=(1, 2), keepdims=True) + 1e-6)
      scale = self.param(f"prior_scale_{level}", nn.initializers.ones, ())
      offset = self.param(f"prior_offset_{level}", nn.initializers.zeros, ())
      out.append((scale * (p - mean) / std + offset).reshape(
          b, k, *p.shape[1:]))
    return tuple(out)

  def crm(self, features: int, name: Optional[str] = None) -> CycleRefinement:
    """The CRM of one level with this model's settings (inside ``apply``)."""
    return CycleRefinement(
        features, num_steps=self.num_steps, exchange=self.exchange,
        lstm_kernel=self.lstm_kernel, forget_bias=self.forget_bias,
        peephole=self.peephole, region_size=tuple(self.region_size),
        regions=self.regions, key_features=self.key_features,
        fuse_kernel=self.fuse_kernel, value_projection=self.value_projection,
        scale_attention=self.scale_attention, match_score=self.match_score,
        dtype=self.dtype, scan_unroll=self.scan_unroll, name=name)

  def encode(self, images: jax.Array, train: bool = False, features=None):
    """Encoder + optional projection: {level: [B, K, h, w, C]} and skips.

    ``features``: optional precomputed backbone levels {level: [B, K, h, w,
    C]} (the frozen-encoder feature cache); the backbone is then not run.

    Returns:
      (levels dict of [B, K, h_l, w_l, C_l (+ P partner-prior channels)]
      CRM inputs, all backbone features {level: [B*K, h, w, C]}, the
      partner-prior maps (:meth:`partner_priors`)).
    """
    b, k, h, w, _ = images.shape
    feats = common.encode_group(self, images, train=train,
                                features=features)
    priors = self.partner_priors(feats, b, k)
    out = {}
    for level in self.levels:
      if level not in feats:
        raise ValueError(f"backbone {self.backbone!r} returned no {level!r} "
                         f"features (got {sorted(feats)})")
      x = feats[level]
      if self.feature_dropout:
        # Channel dropout, meant to keep heads trained on a few classes
        # from leaning on a few class-specific channels of frozen ImageNet
        # features (on the PASCAL recipe it lowered unseen-class J).
        x = nn.Dropout(self.feature_dropout, broadcast_dims=(1, 2),
                       deterministic=not train)(x)
      if self.crm_features:
        x = nn.Conv(self.crm_features, (1, 1), use_bias=False,
                    dtype=self.dtype, name=f"proj_{level}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype,
                         name=f"proj_{level}_bn")(x)
        x = nn.relu(x)
      if priors:
        # One channel per prior level, resized to this level, after the
        # projection so that it enters the ConvLSTM states at cosine scale.
        x = jnp.concatenate(
            [x] + [resize.bilinear_resize(p, x.shape[1:3]).astype(x.dtype)
                   for p in priors], axis=-1)
      out[level] = x.reshape(b, k, *x.shape[1:])
    return out, feats, priors

  def refine(self, levels: Mapping[str, jax.Array]):
    """Runs the CRM of every level: {level: hs [T, B, K, h, w, C']}."""
    return {level: self.crm(x.shape[-1], name=f"crm_{level}")(x)[1]
            for level, x in levels.items()}

  def decode(self, refined: Mapping[str, jax.Array], skips, *,
             output_size: Tuple[int, int], train: bool = False) -> jax.Array:
    """Decodes refined maps {level: [N, h, w, C]} to logits [N, H, W, 1]."""
    h, w = output_size
    if not self.multi_level:
      y = common.decode(self, refined["stride32"], output_size=(h, w),
                        skips=skips, train=train)
    else:
      if len(self.decoder_widths) != len(decoders.DECODER_LEVELS):
        raise ValueError(f"decoder_widths needs {len(decoders.DECODER_LEVELS)}"
                         f" entries, got {tuple(self.decoder_widths)}")
      coarsest = self.levels[-1]
      y = refined[coarsest]
      start = _LEVEL_STRIDES[coarsest]
      for i, ((level, stride), width) in enumerate(
          zip(decoders.DECODER_LEVELS, self.decoder_widths)):
        size = (-(-h // stride), -(-w // stride))
        if stride > start:
          continue  # coarser than every refined level (crm_levels)
        if level == coarsest:
          pass  # decoding starts here
        elif level in refined:
          # The coarse decoded map is upsampled inside the fusion module and
          # decides which channels of the refined finer level to keep.
          y = fusion.ChannelAttentionFusion(
              self.fusion_features or width, dtype=self.dtype,
              name=f"fuse_{level}")(refined[level], y)
        else:
          y = resize.bilinear_resize(y, size)
          if self.use_skips and stride > 1:
            y = jnp.concatenate([y, jnp.asarray(skips[level], y.dtype)], -1)
        for j in range(self.convs_per_block):
          y = decoders.ConvBNReLU(width, dtype=self.dtype,
                                  name=f"decoder_block{i}_conv{j}")(
                                      y, train=train)
    return common.mask_head(y)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, features=None
               ) -> CycleSegNetOutput:
    """Args: images [B, K, H, W, 3] in [0, 1], K >= 2; optional ``features``
    {level: [B, K, h, w, C]} of the frozen backbone (then only the shape of
    ``images`` is used). Returns CycleSegNetOutput."""
    common.check_images(images, "CycleSegNet")
    b, k, h, w, _ = images.shape
    levels, feats, priors = self.encode(images, train=train,
                                        features=features)
    hs = self.refine(levels)
    t = next(iter(hs.values())).shape[0]
    if self.decode_all_steps:
      refined = {l: v.reshape(t * b * k, *v.shape[3:]) for l, v in hs.items()}
      skips = {l: jnp.concatenate([f] * t, axis=0) for l, f in feats.items()}
      n = t
    else:
      refined = {l: v[-1].reshape(b * k, *v.shape[3:]) for l, v in hs.items()}
      skips, n = feats, 1
    logits = self.decode(refined, skips, output_size=(h, w), train=train)
    logits = logits.reshape(n, b, k, h, w, 1)
    return CycleSegNetOutput(
        mask_logits=logits[-1],
        step_logits=logits if self.decode_all_steps else None,
        prior_logits=self.prior_logits(priors, b, k) if priors else None)


def build_model(model_config: ml_collections.ConfigDict) -> CycleSegNet:
  """Builds :class:`CycleSegNet` from ``config.model`` (same field names)."""
  get = model_config.get
  exchange = get("exchange", "cycle")
  if exchange not in EXCHANGES:
    raise ValueError(f"config.model.exchange must be one of {EXCHANGES} for "
                     f"method 'cyclesegnet' (baseline/mcat/mmul are methods "
                     f"of their own), got {exchange!r}")
  key_features = get("key_features", None)
  scan_unroll = get("scan_unroll", None)
  return CycleSegNet(
      backbone=get("backbone", "resnet34"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      backbone_eval_mode=bool(get("backbone_eval_mode", False)),
      multi_level=bool(get("multi_level", False)),
      exchange=exchange,
      num_steps=int(get("num_steps", 7)),
      crm_features=get("crm_features", None),
      feature_dropout=float(get("feature_dropout", 0.0)),
      lstm_kernel=int(get("lstm_kernel", 3)),
      forget_bias=float(get("forget_bias", 0.0)),
      peephole=bool(get("peephole", False)),
      region_size=tuple(get("region_size", (2, 2))),
      regions=get("regions", "pooled"),
      key_features=None if key_features is None else int(key_features),
      fuse_kernel=int(get("fuse_kernel", 1)),
      # True when absent: configs written before the field keep their RCM.
      value_projection=bool(get("value_projection", True)),
      scale_attention=bool(get("scale_attention", False)),
      match_score=bool(get("match_score", False)),
      decoder_widths=tuple(get("decoder_widths", (256, 128, 64, 32, 16))),
      convs_per_block=int(get("convs_per_block", 1)),
      use_skips=bool(get("use_skips", False)),
      fusion_features=get("fusion_features", None),
      crm_levels=(None if get("crm_levels", None) is None
                  else tuple(get("crm_levels"))),
      decode_all_steps=bool(get("decode_all_steps", False)),
      partner_prior_levels=tuple(get("partner_prior_levels", None) or ()),
      partner_prior_features=(
          None if get("partner_prior_features", None) is None
          else int(get("partner_prior_features"))),
      dtype=registry.config_dtype(get("dtype", "float32")),
      scan_unroll=None if scan_unroll is None else int(scan_unroll))


def loss_fn(*, outputs: CycleSegNetOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float]):
  """Lovász-Softmax / BCE on the last step, optional per-step Lovász.

  Args:
    outputs: the model output.
    batch: ``masks`` [B, K, H, W, 1] {0, 1}, optional ``valid`` (0 = ignore).
    loss_config: term -> weight; terms 'lovasz', 'lovasz_image', 'bce' (last
      step, as the baselines compute them) and 'deep_lovasz' (mean over the
      T decoded steps; needs ``decode_all_steps``).

  Returns:
    (total float32 scalar, weighted terms dict).
  """
  common.check_loss_terms(loss_config, LOSS_TERMS, "cyclesegnet")
  main = {n: wt for n, wt in loss_config.items()
          if n not in ("deep_lovasz", "prior_bce")}
  terms = {}
  if main:
    # Unit weights give the raw terms; the config's weights apply below.
    terms.update(baselines.loss_fn(outputs=outputs, batch=batch,
                                   loss_config={n: 1.0 for n in main})[1])
  if "deep_lovasz" in loss_config:
    if outputs.step_logits is None:
      raise ValueError("loss term 'deep_lovasz' needs "
                       "config.model.decode_all_steps=True")
    per_step = jax.vmap(
        lambda lg: baselines.loss_fn(
            outputs=baselines.BaselineOutput(mask_logits=lg), batch=batch,
            loss_config={"lovasz": 1.0})[0])(outputs.step_logits)
    terms["deep_lovasz"] = jnp.mean(per_step)
  if "prior_bce" in loss_config:
    if not outputs.prior_logits:
      raise ValueError("loss term 'prior_bce' needs "
                       "config.model.partner_prior_levels")
    terms["prior_bce"] = jnp.mean(jnp.stack(
        [prior_bce(lg, batch) for lg in outputs.prior_logits]))
  return losses.compute_total_loss(terms, dict(loss_config))


def _downsize(x: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """[N, H, W, 1] -> [N, h, w, 1]: block means when h and w divide H and W
  (each cell the share of its pixels), else an antialiased linear resize."""
  n, hh, ww, c = x.shape
  h, w = size
  if hh % h == 0 and ww % w == 0:
    return x.reshape(n, h, hh // h, w, ww // w, c).mean(axis=(2, 4))
  return jax.image.resize(x, (n, h, w, c), "linear", antialias=True)


def prior_bce(logits: jax.Array, batch: Mapping[str, jax.Array]
              ) -> jax.Array:
  """Pixel BCE of one prior map [B, K, h, w, 1] against the masks
  [B, K, H, W, 1] downsized to h x w (:func:`_downsize`): each cell's soft
  target is the foreground share of its valid pixels, and a cell counts
  when at least half its pixels are valid."""
  masks = batch["masks"].astype(jnp.float32)
  valid = batch.get("valid")
  valid = jnp.ones_like(masks) if valid is None else valid.astype(jnp.float32)
  b, k, h, w, _ = logits.shape
  flat = lambda x: x.reshape(b * k, *x.shape[2:])
  cover = _downsize(flat(valid), (h, w))
  target = _downsize(flat(masks * valid), (h, w)) / jnp.maximum(cover, 1e-6)
  return losses.get_loss("sigmoid_bce")(
      logits=flat(logits), labels=jnp.clip(target, 0.0, 1.0),
      valid=cover >= 0.5)


registry.register_method("cyclesegnet", registry.MethodSpec(
    build_model=build_model,
    loss_fn=loss_fn,
    default_loss={"lovasz": 1.0},
    description="CycleSegNet: cycle refinement (ConvLSTM) + region "
                "correspondence, pairs and groups (Zhang et al. TIP 2021)"))
