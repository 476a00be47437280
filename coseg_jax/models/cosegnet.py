"""CoSegNet: a conditional siamese encoder-decoder with metric and decision nets.

Banerjee, Hati, Chaudhuri and Velmurugan, "Image Co-segmentation using a
Conditional Siamese Convolutional Network", IJCAI 2019. Registered methods:

* ``cosegnet``: the full model. Every image of a group goes through the same
  (siamese) encoder-decoder:

    encoder  VGG16 convs (13 conv + 5 max-pool; 224 -> 7x7x512 = ``f``)
    decoder  13 3x3 transposed convs cT1..cT13 (stride 1), ReLU after all but
             cT13; a nearest-neighbour x2 upsampling before cT1, cT4, cT7,
             cT10 and cT12 (7 -> 14 -> 28 -> 56 -> 112 -> 224); cT13 has one
             channel: the mask logit (sigmoid = mask).
    metric   GAP of the tap layer (``metric_layer``, default cT9: 56x56x256)
             -> FC128 -> ReLU -> FC64 (the embedding), shared by the images.
    decision [e_0 ; e_j] -> FC32 -> ReLU -> FC1 (logit of "images 0 and j
             share an object"; sigmoid in the loss / at test time).

  At test time the mask of a pair is the decoder's probability gated by the
  thresholded decision (:func:`predict_fn`): zero everywhere when the network
  decides that the two images have nothing in common.

* ``cosegnet_base``: the Table 5 baseline. No metric or decision nets; the
  encoder outputs of the two images are concatenated (own first, then the
  other's; for K > 2 the mean of the others) and decoded into each image's
  mask; trained on positive and negative pairs (data.sampler 'pairs' with a
  ``negative_fraction``), the negatives with their null (all-background)
  targets, by pixel BCE only.

Training (``cosegnet``, :func:`loss_fn`): groups are triplets (anchor a,
positive p, negative n; ``data.sampler = 'triplets'``, K = 3). The positive
pair (a, p) and the negative pair (a, n) each contribute three terms:

  positive pair: w1+ * L1(a, p) + w2+ * L2(a, p, n) + w3+ * L3(a, p; 1)
  negative pair: w1- * L1(n)    + w2- * L2(a, p, n) + w3- * L3(a, n; 0)

with L1 the pixel BCE of the masks (void pixels ignored), L2 the triplet
loss with margin 1 on the embeddings (squared distances, see
``losses.metric_learning``), L3 the decision BCE.

Reductions (``loss_reduction``, a model attribute carried to the loss on the
output): the paper writes every term as a sum (Sec. 3.4): L1 (eq. 2) over
the triplets, the images of each pair and their pixels, L2 (eq. 3) over the
triplets, L3 (eq. 4) over the pairs. ``'sum'`` (default) is that form; the
relative weight of a mask term against the triplet and decision terms is
then set by the pixel count (2 x 224 x 224 BCE values per positive pair
against one hinge and one decision value), and the paper's SGD rate of
1e-5 applies to that scale. ``'mean'`` (the earlier form) averages L1 over
the valid pixels of the pair's images and L2, L3 over the batch, which
makes the mask term about 10^5 times lighter relative to the other two than
eq. 1-4 write. The extraction of eq. 2 shows only the M log M^ part; its
text calls it the pixel-wise binary cross-entropy, which is what is
implemented (both the foreground and the background part).

The paper's weights are
w+ = (0.33, 0.33, 0.33) and w- = (0, 0.5, 0.5) (term names ``mask_pos``,
``triplet_pos``, ``decision_pos``, ``mask_neg``, ``triplet_neg``,
``decision_neg``). The triplet loss needs all three images, so it is shared
by the two pairs: its total weight is w2+ + w2- (the paper does not say how a
triplet is split into its two pairs; this is our reading, and the two weights
stay separate config entries).

Gradient routing of negatives: the negative pair's terms reach the network
only through the metric tap (L2, L3 read the GAP of cT9) and through L1 of
the negative image, whose weight w1- is 0; ``compute_total_loss`` removes a
zero-weighted term from the graph, so the negative pair's gradient is
exactly zero for the decoder layers after the tap (cT10..cT13 with the cT9
tap) and non-zero for the encoder, the decoder up to the tap, the metric and
the decision nets: exactly the paper's "negative pairs train only the metric
and decision nets, the encoder and the decoder up to cT9". The tests check
both halves, and that a non-zero w1- (the baseline's behaviour) does reach
the later layers.

Choices the paper leaves open, all config fields (``config.model``):

* ``decoder_widths`` (13 ints, the last 1): (512, 512, 512, 512, 512, 256,
  256, 256, 256, 128, 128, 64, 1) so that cT9 is 56x56x256 as the paper
  states; the other widths mirror VGG16's blocks. ``width_multiplier``
  scales every decoder width but the last (CPU/test variants only; the
  metric and decision nets keep the paper's widths).
* Upsampling sizes are ceil(H / 2^s) of the input and the last one lands on
  (H, W) exactly, so any input size works (224 gives the paper's 7->224).
* Decoder initialisation: He normal (the paper fine-tunes from its own
  initialisation, which it does not give; He normal keeps the ReLU chain's
  activation scale, see ``HE_NORMAL``).
* ``metric_layer``: 'f' (encoder output), 'cT3', 'cT6', 'cT9' (default),
  'cT11' (Table 6).
* ``decision_threshold``: 0.5 on sigmoid(decision logit).
* ``decision_reweight`` (ours; default False): apply the threshold to the
  pair's posterior instead of to the raw sigmoid. The decision BCE weighs
  a positive pair by w3+ and a negative one by w3- (0.33 and 0.5 in the
  paper), and each triplet holds one of each, so the sigmoid that
  minimises it is q = w+ p / (w+ p + w- (1 - p)) for a posterior p: a pair
  the net finds as likely common as not (p = 0.5) gets q = 0.4 and is
  called negative. With the option on, p > t is tested as q > w+ t /
  (w+ t + w- (1 - t)) (:func:`decision_cut`), a threshold read off the
  loss weights, not fitted to any data.
* ``gate_masks``: True (the paper's test-time masks); False returns the
  decoder's masks ungated, to see whether the decoder or the decision is
  what fails (``--mode eval --config.model.gate_masks=False``).
* For K > 2 inputs the decision logits are those of the pairs (0, j), j >= 1;
  at test time image j > 0 is gated by decision (0, j) and image 0 by the
  most confident of them (K = 2: both images by the pair's decision).
* ``backbone``: 'vgg16' (paper); any registered backbone works (its
  'stride32' map is ``f``), e.g. 'efficientnet_lite0' with real ImageNet
  weights for CPU runs, 'tiny' for tests.

Two options that are ours, off by default (the paper's form):

* ``skip_levels``: encoder levels ('stride16', 'stride8', 'stride4',
  'stride2') concatenated to the decoder right after the upsampling that
  reaches their size (before cT1, cT4, cT7, cT10). The paper fine-tunes
  VGG16, whose 7x7 output it can teach to keep the object's outline; a
  frozen encoder's stride-32 map does not, and a decoder that sees only
  that map draws blobs at 1/32 of the image's resolution.
* ``decision_input``: 'concat' (the paper: [e_0 ; e_j]) or
  'abs_difference' (|e_0 - e_j|, element-wise). The concatenation lets
  the decision net learn which training classes the two images belong
  to; the difference can only read how far apart the two embeddings lie,
  per embedding axis, which is what the triplet loss shapes for every
  class, seen in training or not. It is also symmetric in the two images.
"""

import functools
import math
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from coseg_jax import losses
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.models.baselines import other_mean

METRIC_LAYERS = ("f", "cT3", "cT6", "cT9", "cT11")
# Encoder level -> the decoder layer (0-based) whose input it joins: the
# upsampling before that layer reaches the level's size.
SKIP_BEFORE = {"stride16": 0, "stride8": 3, "stride4": 6, "stride2": 9}
DECISION_INPUTS = ("concat", "abs_difference")
DECODER_WIDTHS = (512, 512, 512, 512, 512, 256, 256, 256, 256, 128, 128, 64, 1)
# A nearest-neighbour x2 upsampling precedes these decoder layers (0-based).
UPSAMPLE_BEFORE = (0, 3, 6, 9, 11)
VARIANTS = ("conditional", "concat")
# He (MSRA) initialisation for the 13 ReLU layers of the decoder: with Flax's
# default LeCun normal the activations shrink by ~2x per ReLU layer (2^-13
# over the decoder) and training from scratch collapses to a constant mask.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
LOSS_TERMS = ("mask_pos", "triplet_pos", "decision_pos", "mask_neg",
              "triplet_neg", "decision_neg")
LOSS_REDUCTIONS = ("sum", "mean")
BASE_LOSS_TERMS = ("bce",)
PAPER_LOSS = {"mask_pos": 0.33, "triplet_pos": 0.33, "decision_pos": 0.33,
              "mask_neg": 0.0, "triplet_neg": 0.5, "decision_neg": 0.5}


@flax.struct.dataclass
class CoSegNetOutput:
  """Output of :class:`CoSegNet`.

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 decoder logits (ungated).
    embeddings: [B, K, 64] float32 metric embeddings (None for 'concat').
    decision_logits: [B, K - 1] float32 logits of pairs (0, j), j = 1..K-1
      (None for 'concat').
    loss_reduction: 'sum' (eq. 1-4) or 'mean' (static; read by the loss).
  """
  mask_logits: jax.Array
  embeddings: Optional[jax.Array] = None
  decision_logits: Optional[jax.Array] = None
  loss_reduction: str = flax.struct.field(pytree_node=False, default="sum")


def scaled_widths(widths: Sequence[int], multiplier: float) -> tuple:
  """Every width but the last times ``multiplier`` (at least 1 channel)."""
  widths = tuple(int(w) for w in widths)
  return tuple(max(1, int(round(w * multiplier))) for w in widths[:-1]) + (
      widths[-1],)


class CoSegNetDecoder(nn.Module):
  """The 13-layer transposed-conv decoder with nearest-neighbour upsampling.

  Attributes:
    widths: output channels of cT1..cT13 (13 values).
    dtype: computation dtype (parameters float32).
  """
  widths: Sequence[int] = DECODER_WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, output_size,
               skips: Optional[Mapping[str, jax.Array]] = None):
    """Args: x [N, h, w, C] encoder output; output_size (H, W); skips
    {level: [N, ceil(H/S), ceil(W/S), C_S]} for levels of ``SKIP_BEFORE``,
    each concatenated after the upsampling that reaches its size.

    Returns:
      (logits [N, H, W, widths[-1]] float32, taps {'cT1'..'cT13': activation
      after the layer's ReLU (cT13: the logits)}).
    """
    if len(self.widths) != 13:
      raise ValueError(f"decoder_widths must have 13 entries (cT1..cT13), got "
                       f"{len(self.widths)}")
    h, w = output_size
    n_up = len(UPSAMPLE_BEFORE)
    skips = dict(skips or {})
    unknown = sorted(set(skips) - set(SKIP_BEFORE))
    if unknown:
      raise ValueError(f"CoSegNetDecoder: skip level(s) {unknown} unknown; "
                       f"known: {list(SKIP_BEFORE)}")
    joins = {SKIP_BEFORE[level]: level for level in skips}
    taps = {}
    for i, width in enumerate(self.widths):
      if i in UPSAMPLE_BEFORE:
        s = n_up - 1 - UPSAMPLE_BEFORE.index(i)  # remaining stride 2^s
        size = (math.ceil(h / 2**s), math.ceil(w / 2**s))
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]),
                             method="nearest")
      if i in joins:
        skip = skips[joins[i]]
        if skip.shape[1:3] != x.shape[1:3]:
          raise ValueError(f"CoSegNetDecoder: skip {joins[i]!r} has spatial "
                           f"size {skip.shape[1:3]}, expected "
                           f"{x.shape[1:3]}")
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      last = i == len(self.widths) - 1
      x = nn.ConvTranspose(width, (3, 3), padding="SAME",
                           dtype=jnp.float32 if last else self.dtype,
                           kernel_init=HE_NORMAL, name=f"cT{i + 1}")(
                               x.astype(jnp.float32) if last else x)
      if not last:
        x = nn.relu(x)
      taps[f"cT{i + 1}"] = x
    return x, taps


class CoSegNet(nn.Module):
  """CoSegNet and its concatenation baseline (module docstring).

  Attributes:
    variant: 'conditional' (CoSegNet) or 'concat' (``cosegnet_base``).
    backbone: encoder name for ``backbones.get_backbone`` ('vgg16').
    backbone_kwargs: extra backbone attributes.
    backbone_eval_mode: run the backbone in evaluation mode during training
      too (``backbones.group_features``); for a frozen encoder.
    decoder_widths: channels of cT1..cT13.
    width_multiplier: scales the decoder widths (1.0 = paper; the small
      metric and decision nets keep their widths).
    metric_layer: 'f', 'cT3', 'cT6', 'cT9' or 'cT11'.
    metric_widths: the metric net's FC widths (128, 64).
    decision_hidden: the decision net's hidden FC width (32).
    decision_input: 'concat' (paper) or 'abs_difference' (ours; module
      docstring).
    skip_levels: encoder levels joined to the decoder (ours; module
      docstring); () is the paper's decoder.
    loss_reduction: 'sum' (the paper's eq. 1-4) or 'mean'; see the module
      docstring. No parameter depends on it.
    dtype: computation dtype (parameters float32).
  """
  variant: str = "conditional"
  backbone: str = "vgg16"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_eval_mode: bool = False
  decoder_widths: Sequence[int] = DECODER_WIDTHS
  width_multiplier: float = 1.0
  metric_layer: str = "cT9"
  metric_widths: Sequence[int] = (128, 64)
  decision_hidden: int = 32
  decision_input: str = "concat"
  skip_levels: Sequence[str] = ()
  loss_reduction: str = "sum"
  dtype: Any = jnp.float32

  @property
  def encoder_kwargs(self):
    """The backbone attributes the model builds its encoder with."""
    return dict(self.backbone_kwargs or {})

  @property
  def feature_levels(self):
    """The backbone levels the model reads (what a feature cache stores)."""
    return ("stride32",) + tuple(self.skip_levels)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               features=None) -> CoSegNetOutput:
    """Args: images [B, K, H, W, 3] in [0, 1], K >= 2; optional ``features``
    {level: [B, K, h, w, C]} of the frozen backbone (then only the shape of
    ``images`` is used). Returns CoSegNetOutput."""
    common.check_images(images, "CoSegNet")
    common.check_choice("variant", self.variant, VARIANTS)
    common.check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
    common.check_choice("metric_layer", self.metric_layer, METRIC_LAYERS)
    common.check_choice("decision_input", self.decision_input,
                        DECISION_INPUTS)
    for level in self.skip_levels:
      common.check_choice("skip_levels entry", level, tuple(SKIP_BEFORE))
    b, k, h, w, _ = images.shape
    encoded = common.encode_group(self, images, train=train,
                                  features=features)
    f = encoded["stride32"]
    skips = {level: encoded[level] for level in self.skip_levels}
    x = f
    if self.variant == "concat":
      fh, fw, fc = f.shape[1:]
      others = other_mean(f.reshape(b, k, fh * fw * fc)).reshape(f.shape)
      x = jnp.concatenate([f, others.astype(f.dtype)], axis=-1)
    widths = scaled_widths(self.decoder_widths, self.width_multiplier)
    logits, taps = CoSegNetDecoder(widths=widths, dtype=self.dtype,
                                   name="decoder")(x, output_size=(h, w),
                                                   skips=skips)
    mask_logits = logits.astype(jnp.float32).reshape(b, k, h, w, -1)
    if self.variant == "concat":
      return CoSegNetOutput(mask_logits=mask_logits,
                            loss_reduction=self.loss_reduction)

    taps["f"] = f
    # GAP in float32 (a bf16 mean over 56x56 positions loses precision).
    g = jnp.mean(taps[self.metric_layer].astype(jnp.float32), axis=(1, 2))
    m1, m2 = (int(c) for c in self.metric_widths)
    e = nn.relu(nn.Dense(m1, name="metric_fc1")(g))
    e = nn.Dense(m2, name="metric_fc2")(e).reshape(b, k, m2)
    anchor = jnp.broadcast_to(e[:, :1], (b, k - 1, m2))
    if self.decision_input == "concat":
      pair = jnp.concatenate([anchor, e[:, 1:]], axis=-1)
    else:
      pair = jnp.abs(anchor - e[:, 1:])
    d = nn.relu(nn.Dense(self.decision_hidden, name="decision_fc1")(pair))
    d = nn.Dense(1, name="decision_fc2")(d)[..., 0]
    return CoSegNetOutput(mask_logits=mask_logits, embeddings=e,
                          decision_logits=d,
                          loss_reduction=self.loss_reduction)


def build_model(model_config: ml_collections.ConfigDict,
                variant: str = "conditional") -> CoSegNet:
  """Builds the model from ``config.model`` (fields as CoSegNet's)."""
  get = model_config.get
  return CoSegNet(
      variant=variant,
      backbone=get("backbone", "vgg16"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      backbone_eval_mode=bool(get("backbone_eval_mode", False)),
      decoder_widths=tuple(get("decoder_widths", DECODER_WIDTHS)),
      width_multiplier=float(get("width_multiplier", 1.0)),
      metric_layer=get("metric_layer", "cT9"),
      metric_widths=tuple(get("metric_widths", (128, 64))),
      decision_hidden=int(get("decision_hidden", 32)),
      decision_input=str(get("decision_input", "concat")),
      skip_levels=tuple(get("skip_levels", ()) or ()),
      loss_reduction=str(get("loss_reduction", "sum")),
      dtype=registry.config_dtype(get("dtype", "float32")))


def _valid(batch, masks):
  valid = batch.get("valid")
  return jnp.ones_like(masks) if valid is None else valid.astype(jnp.float32)


def loss_fn(*, outputs: CoSegNetOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float], margin: float = 1.0,
            reduction: Optional[str] = None):
  """CoSegNet's triplet training loss (module docstring).

  Args:
    outputs: the model output on triplets (K = 3: anchor, positive,
      negative).
    batch: ``masks`` [B, 3, H, W, 1] (the negative's is empty), optional
      ``valid`` (same shape).
    loss_config: weight per term in ``LOSS_TERMS`` (paper: ``PAPER_LOSS``).
    margin: triplet margin (paper: 1).
    reduction: 'sum' (eq. 2-4: the mask terms summed over the valid pixels
      of their images and over the batch, triplet and decision terms summed
      over the batch) or 'mean' (per-pixel mean, batch means); default
      ``outputs.loss_reduction`` (the model's ``loss_reduction``).

  Returns:
    (total float32 scalar, weighted terms).
  """
  reduction = reduction or outputs.loss_reduction
  common.check_choice("cosegnet loss: reduction", reduction, LOSS_REDUCTIONS)
  common.check_loss_terms(loss_config, LOSS_TERMS, "cosegnet")
  if outputs.embeddings is None:
    raise ValueError("cosegnet loss needs the 'conditional' variant's "
                     "embeddings and decision logits")
  if outputs.mask_logits.shape[1] != 3:
    raise ValueError(f"cosegnet trains on triplets (anchor, positive, "
                     f"negative): set data.sampler='triplets' (got K="
                     f"{outputs.mask_logits.shape[1]})")
  logits = outputs.mask_logits.astype(jnp.float32)
  masks = batch["masks"].astype(jnp.float32)
  valid = _valid(batch, masks)
  bce = functools.partial(losses.get_loss("sigmoid_bce"), reduction=reduction)
  e = outputs.embeddings.astype(jnp.float32)
  trip = losses.get_loss("triplet")(anchor=e[:, 0], positive=e[:, 1],
                                    negative=e[:, 2], margin=margin,
                                    reduction=reduction)
  dec = outputs.decision_logits.astype(jnp.float32)
  decision = functools.partial(losses.get_loss("decision_bce"),
                               reduction=reduction)
  nb = dec.shape[0]
  terms = {
      "mask_pos": bce(logits=logits[:, :2], labels=masks[:, :2],
                      valid=valid[:, :2]),
      "mask_neg": bce(logits=logits[:, 2], labels=masks[:, 2],
                      valid=valid[:, 2]),
      "triplet_pos": trip,
      "triplet_neg": trip,
      "decision_pos": decision(logits=dec[:, 0], labels=jnp.ones((nb,))),
      "decision_neg": decision(logits=dec[:, 1], labels=jnp.zeros((nb,))),
  }
  terms = {k: v for k, v in terms.items() if k in loss_config}
  return losses.compute_total_loss(terms, dict(loss_config))


def base_loss_fn(*, outputs: CoSegNetOutput, batch: Mapping[str, jax.Array],
                 loss_config: Mapping[str, float],
                 reduction: Optional[str] = None):
  """``cosegnet_base``: pixel BCE on every image (negatives: null targets),
  summed or averaged over the valid pixels (``reduction``, default
  ``outputs.loss_reduction``, as eq. 2)."""
  reduction = reduction or outputs.loss_reduction
  common.check_choice("cosegnet_base loss: reduction", reduction,
                      LOSS_REDUCTIONS)
  common.check_loss_terms(loss_config, BASE_LOSS_TERMS, "cosegnet_base")
  masks = batch["masks"].astype(jnp.float32)
  terms = {"bce": losses.get_loss("sigmoid_bce")(
      logits=outputs.mask_logits.astype(jnp.float32), labels=masks,
      valid=_valid(batch, masks), reduction=reduction)}
  return losses.compute_total_loss(terms, dict(loss_config))


def gate(*, mask_probs: jax.Array, decision_logits: jax.Array,
         threshold: float = 0.5) -> jax.Array:
  """Gates mask probabilities by the thresholded pair decisions.

  Args:
    mask_probs: [B, K, H, W, 1] probabilities.
    decision_logits: [B, K - 1] logits of pairs (0, j).
    threshold: on sigmoid(logit).

  Returns:
    [B, K, H, W, 1]: image j > 0 times [sigmoid(d_0j) > threshold], image 0
    times [max_j sigmoid(d_0j) > threshold].
  """
  yes = (jax.nn.sigmoid(decision_logits.astype(jnp.float32)) > threshold)
  first = jnp.any(yes, axis=1, keepdims=True)
  keep = jnp.concatenate([first, yes], axis=1).astype(mask_probs.dtype)
  return mask_probs * keep[:, :, None, None, None]


def decision_cut(config: ml_collections.ConfigDict) -> float:
  """The threshold on sigmoid(decision logit) that the config asks for.

  ``config.model.decision_threshold`` (t, default 0.5) as is, or with
  ``config.model.decision_reweight`` the same threshold on the posterior
  that the weighted decision BCE implies (module docstring): w+ t / (w+ t
  + w- (1 - t)) with w+ = ``config.loss['decision_pos']`` and w- =
  ``config.loss['decision_neg']`` (the paper's weights when ``config.loss``
  is empty).

  Raises:
    ValueError: on a threshold outside (0, 1), or with the reweighting on
      and a decision weight that is not positive.
  """
  t = float(config.model.get("decision_threshold", 0.5))
  if not 0.0 < t < 1.0:
    raise ValueError(f"config.model.decision_threshold must lie in (0, 1), "
                     f"got {t}")
  if not config.model.get("decision_reweight", False):
    return t
  loss = dict(config.get("loss", None) or PAPER_LOSS)
  w_pos = float(loss.get("decision_pos", 0.0))
  w_neg = float(loss.get("decision_neg", 0.0))
  if w_pos <= 0.0 or w_neg <= 0.0:
    raise ValueError(f"config.model.decision_reweight needs positive "
                     f"config.loss weights decision_pos and decision_neg, "
                     f"got {w_pos} and {w_neg}")
  return w_pos * t / (w_pos * t + w_neg * (1.0 - t))


def predict_fn(*, outputs: CoSegNetOutput, batch, config) -> jax.Array:
  """Test-time masks: decoder probability gated by the decision."""
  del batch
  probs = jax.nn.sigmoid(outputs.mask_logits.astype(jnp.float32))
  if (outputs.decision_logits is None
      or not config.model.get("gate_masks", True)):
    return probs
  threshold = decision_cut(config)
  return gate(mask_probs=probs, decision_logits=outputs.decision_logits,
              threshold=threshold)


def _register():
  registry.register_method("cosegnet", registry.MethodSpec(
      build_model=build_model, loss_fn=loss_fn, predict_fn=predict_fn,
      default_loss=dict(PAPER_LOSS),
      description="CoSegNet: conditional siamese VGG16 encoder-decoder with "
                  "metric + decision nets (Banerjee et al., IJCAI 2019)"))
  registry.register_method("cosegnet_base", registry.MethodSpec(
      build_model=lambda cfg: build_model(cfg, "concat"),
      loss_fn=base_loss_fn, default_loss={"bce": 1.0},
      description="CoSegNet Table 5 baseline: concatenated encoder features, "
                  "no metric/decision nets"))


_register()
