"""Checks and encoder plumbing that every method's module shares.

The methods validate their input group, their string options and their loss
terms with the same messages, encode a group with one Siamese backbone and
decode masks with one upsampling decoder and a 1x1 head, configured from the
same module attributes; these helpers keep that in one place. The modules
they create are submodules of the calling method, under the names the
checkpoints hold ('backbone', 'decoder', 'head').
"""

from typing import Any, Collection, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax import backbones
from coseg_jax.nn import decoders


def check_images(images: jax.Array, method: Optional[str] = None) -> None:
  """Raises unless ``images`` is a group batch [B, K, H, W, 3].

  Args:
    images: the model input.
    method: the method's name; when given, groups also need K >= 2 images
      (the methods that compare the images of a group).
  """
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, K, H, W, 3], got {images.shape}")
  k = images.shape[1]
  if method is not None and k < 2:
    raise ValueError(f"{method} needs groups of K >= 2 images, got K={k}")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
  """Raises unless the module option ``name`` = ``value`` is in ``choices``."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_loss_terms(loss_config: Mapping[str, Any], known: Collection[str],
                     owner: str) -> None:
  """Raises on a ``config.loss`` term that ``owner``'s loss does not know.

  Args:
    loss_config: term name -> weight.
    known: the loss's term names.
    owner: who the terms are for, as the message words it ('dcc',
      'the baseline methods', ...).
  """
  unknown = sorted(set(loss_config) - set(known))
  if unknown:
    raise ValueError(f"config.loss: unknown term(s) {unknown} for {owner}; "
                     f"known: {list(known)}")


def encode_group(model: nn.Module, images: jax.Array, *, train: bool,
                 features: Optional[Mapping[str, jax.Array]] = None
                 ) -> Dict[str, jax.Array]:
  """``backbones.group_features`` with the model's encoder attributes.

  Call it from ``model``'s compact method; ``model`` needs the attributes
  ``backbone``, ``dtype``, ``encoder_kwargs`` and ``backbone_eval_mode``.
  The backbone becomes its submodule 'backbone', as with ``group_features``.

  Args:
    model: the method module.
    images: [B, K, H, W, 3] in [0, 1].
    train: BatchNorm in training mode (unless ``backbone_eval_mode``).
    features: optional precomputed {level: [B, K, h, w, C]}.

  Returns:
    The backbone's features {level: [B * K, h, w, C]}.
  """
  return backbones.group_features(model, model.backbone, images, train=train,
                                  dtype=model.dtype,
                                  kwargs=model.encoder_kwargs,
                                  eval_mode=model.backbone_eval_mode,
                                  features=features)


def decode(model: nn.Module, x: jax.Array, *, output_size: Tuple[int, int],
           skips: Optional[Mapping[str, jax.Array]], train: bool
           ) -> jax.Array:
  """The model's ``UpsampleDecoder`` (submodule 'decoder').

  Call it from ``model``'s compact method; ``model`` needs the attributes
  ``decoder_widths``, ``convs_per_block``, ``use_skips`` and ``dtype``.

  Args:
    model: the method module.
    x: [N, h, w, C] stride-32 (or matched) features.
    output_size: (H, W) of the output.
    skips: {level: [N, h_l, w_l, C_l]} backbone features, read only with
      ``use_skips``.
    train: BatchNorm in training mode.

  Returns:
    [N, H, W, decoder_widths[-1]].
  """
  return decoders.UpsampleDecoder(
      widths=tuple(model.decoder_widths),
      convs_per_block=model.convs_per_block, use_skips=model.use_skips,
      dtype=model.dtype, name="decoder")(
          x, output_size=output_size,
          skips=skips if model.use_skips else None, train=train)


def mask_head(y: jax.Array) -> jax.Array:
  """The 1x1 mask head (submodule 'head'), in float32: [N, H, W, C] ->
  [N, H, W, 1] logits. Call it from the method's compact method."""
  return nn.Conv(1, (1, 1), dtype=jnp.float32, name="head")(
      y.astype(jnp.float32))
