"""Checks and encoder plumbing that every method's module shares.

The methods validate their input group, their string options and their loss
terms with the same messages, and encode a group with one Siamese backbone
configured from the same module attributes; these helpers keep that in one
place.
"""

from typing import Any, Collection, Dict, Mapping, Optional

import flax.linen as nn
import jax

from coseg_jax import backbones


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
