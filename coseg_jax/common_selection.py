"""Common-object selection: keep the foreground segments the partners share.

A co-segmentation model trained on these machines' budgets tends to mark
every salient object in an image, whatever its partners hold
(docs/results.md#cyclesegnet). This stage, applied after any method's
forward pass, makes the final masks depend on the other images at the level
of whole objects, the way classical co-segmentation matched regions across
images (not from any of the five papers; an option of every config,
``config.eval.common_selection``):

1. each image's foreground (probability >= ``threshold``) is split into
   8-connected components; components smaller than ``min_area`` of the
   image are not judged (and kept);
2. every judged component is cut out on its own: its bounding box (grown by
   ``pad`` on each side), pixels outside the component set to grey, resized
   to ``crop_size``; each partner (every other image of the group) is cut
   out the same way with its whole foreground as the region (the whole image
   when it has none);
3. a classifier gives each cut-out a class distribution (ImageNet
   probabilities of a pretrained backbone with its head:
   :func:`make_describer`); a component's score is the mean over the
   partners of sum_c q_c p_c, the probability that the component and the
   partner show the same class when each is drawn from its distribution;
4. an image with two or more judged components keeps those scoring at least
   ``ratio`` times its best one and sets the probabilities of the others to
   zero; an image with fewer is left as it is.

Why cut-outs and a classifier rather than features pooled from the image's
own feature map: at 224 px the receptive field of a deep position spans most
of the image, so the map of one object carries its neighbour too. On the
unseen-class PASCAL-VOC composites (two objects of different classes,
ground-truth regions) the frozen EfficientNet-Lite2's stride-16 map prefers
the partner's object in 76-78 % of cases, separate cut-outs' ImageNet
probabilities in 86 % (``experiments.partner_cue --cutout``;
docs/results.md#cyclesegnet).

Why sum_c q_c p_c rather than a distance between whole distributions such
as the Bhattacharyya coefficient sum_c sqrt(q_c p_c): the coefficient gives
as much weight to agreeing on the hundreds of unlikely classes as on the
likely ones; on the training classes' composites it reached a lower
conditional J at its best ratio (docs/results.md#cyclesegnet).

What it cannot do: split one component that covers two touching objects,
or recover an object the model missed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax import backbones

GREY = 0.5


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """Settings of :func:`select_common` (module docstring).

  Attributes:
    threshold: foreground is probability >= threshold.
    min_area: components below this share of the image are not judged.
    ratio: keep components scoring >= ratio x the image's best score.
    pad: bounding-box growth on each side, as a share of its size.
    crop_size: side of the square cut-outs given to the describer.
  """
  threshold: float = 0.5
  min_area: float = 0.01
  ratio: float = 0.3
  pad: float = 0.1
  crop_size: int = 224

  def __post_init__(self):
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"common_selection.threshold must be in (0, 1), got "
                       f"{self.threshold}")
    if not 0.0 <= self.min_area < 1.0:
      raise ValueError(f"common_selection.min_area must be in [0, 1), got "
                       f"{self.min_area}")
    if not 0.0 <= self.ratio <= 1.0:
      raise ValueError(f"common_selection.ratio must be in [0, 1], got "
                       f"{self.ratio}")
    if self.pad < 0 or self.crop_size < 8:
      raise ValueError(f"common_selection: pad must be >= 0 and crop_size "
                       f">= 8, got {self.pad}, {self.crop_size}")


def components(foreground: np.ndarray, *, min_area: float
               ) -> Tuple[np.ndarray, List[int]]:
  """8-connected components of a bool [H, W] mask.

  Returns:
    (int32 [H, W] labels, 0 = background; the labels of the components
    whose area is at least ``min_area`` of the image, largest first).
  """
  count, labels, stats, _ = cv2.connectedComponentsWithStats(
      np.asarray(foreground, np.uint8), connectivity=8)
  smallest = min_area * foreground.size
  judged = [i for i in range(1, count)
            if stats[i, cv2.CC_STAT_AREA] >= smallest]
  judged.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
  return labels.astype(np.int32), judged


def cut_out(image: np.ndarray, region: np.ndarray, *, pad: float,
            size: int) -> np.ndarray:
  """float32 [size, size, 3]: ``region``'s bounding box of ``image``
  ([H, W, 3] in [0, 1]), grown by ``pad``, grey outside the region, resized.
  An empty region gives the whole image."""
  image = np.asarray(image, np.float32)
  region = np.asarray(region, bool)
  if not region.any():
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
  ys, xs = np.nonzero(region)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  dy, dx = int(round(pad * (y1 - y0))), int(round(pad * (x1 - x0)))
  y0, x0 = max(0, y0 - dy), max(0, x0 - dx)
  y1, x1 = min(image.shape[0], y1 + dy), min(image.shape[1], x1 + dx)
  keep = region[y0:y1, x0:x1, None]
  crop = np.where(keep, image[y0:y1, x0:x1], np.float32(GREY))
  return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def same_class_probability(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """sum_c p_c q_c over the last axis of two distributions [..., C]."""
  return np.sum(np.asarray(p, np.float64) * np.asarray(q, np.float64),
                axis=-1)


@dataclasses.dataclass
class _Plan:
  """The cut-outs one group needs and where their scores go."""
  labels: List[np.ndarray]
  judged: List[List[int]]
  crops: List[np.ndarray]
  component_rows: List[List[int]]  # per image: crop rows of its components
  partner_rows: List[int]  # per image: crop row of its whole foreground


def _plan(images: np.ndarray, probs: np.ndarray,
          config: SelectionConfig) -> _Plan:
  plan = _Plan([], [], [], [], [])
  for image, prob in zip(images, probs):
    foreground = prob >= config.threshold
    labels, judged = components(foreground, min_area=config.min_area)
    plan.labels.append(labels)
    plan.judged.append(judged)
    rows = []
    if len(judged) >= 2:
      for label in judged:
        rows.append(len(plan.crops))
        plan.crops.append(cut_out(image, labels == label, pad=config.pad,
                                  size=config.crop_size))
    plan.component_rows.append(rows)
    plan.partner_rows.append(len(plan.crops))
    plan.crops.append(cut_out(image, foreground, pad=config.pad,
                              size=config.crop_size))
  return plan


def _apply(plan: _Plan, probs: np.ndarray, dists: np.ndarray,
           config: SelectionConfig) -> Tuple[np.ndarray, List[dict]]:
  out = np.array(probs, np.float32, copy=True)
  k = len(plan.labels)
  info = []
  for i in range(k):
    rows = plan.component_rows[i]
    if not rows:
      info.append({"components": len(plan.judged[i]), "dropped": 0,
                   "scores": []})
      continue
    partners = [plan.partner_rows[j] for j in range(k) if j != i]
    scores = np.mean([same_class_probability(dists[rows], dists[p][None])
                      for p in partners], axis=0)
    keep = scores >= config.ratio * scores.max()
    for label, kept in zip(plan.judged[i], keep):
      if not kept:
        out[i][plan.labels[i] == label] = 0.0
    info.append({"components": len(rows), "dropped": int((~keep).sum()),
                 "scores": [float(s) for s in scores]})
  return out, info


def select_common(images: np.ndarray, probs: np.ndarray,
                  describe: Callable[[np.ndarray], np.ndarray],
                  config: SelectionConfig = SelectionConfig()
                  ) -> Tuple[np.ndarray, List[dict]]:
  """Keeps the foreground components the partners share (module docstring).

  Args:
    images: float [K, H, W, 3] in [0, 1], one group (K >= 2).
    probs: float [K, H, W] foreground probabilities of the group.
    describe: float [N, S, S, 3] cut-outs -> [N, C] class distributions.
    config: the settings.

  Returns:
    (float32 [K, H, W] probabilities, zero on the dropped components; per
    image a dict: its number of judged ``components``, how many were
    ``dropped`` and their ``scores``, largest component first; an image
    with fewer than two judged components is not scored: ``dropped`` 0,
    ``scores`` empty).
  """
  out, infos = select_common_batch(np.asarray(images)[None],
                                   np.asarray(probs)[None], describe, config)
  return out[0], infos[0]


def select_common_batch(images: np.ndarray, probs: np.ndarray,
                        describe: Callable[[np.ndarray], np.ndarray],
                        config: SelectionConfig = SelectionConfig()
                        ) -> Tuple[np.ndarray, List[List[dict]]]:
  """:func:`select_common` on B groups [B, K, H, W, 3] / [B, K, H, W] at
  once (one ``describe`` call for every cut-out of the batch)."""
  images = np.asarray(images, np.float32)
  probs = np.asarray(probs, np.float32)
  if images.ndim != 5 or probs.shape != images.shape[:4]:
    raise ValueError(f"select_common: images [B, K, H, W, 3] and probs "
                     f"[B, K, H, W] expected, got {images.shape} and "
                     f"{probs.shape}")
  if images.shape[1] < 2:
    raise ValueError(f"select_common needs K >= 2 images per group, got "
                     f"K={images.shape[1]}")
  plans = [_plan(x, p, config) for x, p in zip(images, probs)]
  crops = [c for plan in plans for c in plan.crops]
  dists = np.asarray(describe(np.stack(crops)), np.float32)
  if dists.ndim != 2 or dists.shape[0] != len(crops):
    raise ValueError(f"select_common: describe returned {dists.shape} for "
                     f"{len(crops)} cut-outs; expected [N, C]")
  outs, infos, start = [], [], 0
  for plan, prob in zip(plans, probs):
    n = len(plan.crops)
    out, info = _apply(plan, prob, dists[start:start + n], config)
    outs.append(out)
    infos.append(info)
    start += n
  return np.stack(outs), infos


def make_describer(backbone: str, path: Optional[str] = None, *,
                   batch_size: int = 16
                   ) -> Callable[[np.ndarray], np.ndarray]:
  """ImageNet class probabilities of a pretrained backbone with its head.

  Args:
    backbone: a registered backbone that has a classifier head
      (``efficientnet_lite0/1/2`` find their weights in the installed
      packages).
    path: its checkpoint (None: the installed package's, for the Lite
      family).
    batch_size: cut-outs per call; batches are padded to it, so the
      function compiles once.

  Returns:
    float [N, S, S, 3] in [0, 1] -> float32 [N, 1000] probabilities.
  """
  module = backbones.get_backbone(backbone, with_head=True)
  variables = backbones.load_pretrained(backbone, path or None,
                                        with_head=True)

  @jax.jit
  def probabilities(x):
    return jax.nn.softmax(module.apply(variables, x, train=False).logits
                          .astype(jnp.float32), axis=-1)

  def describe(crops):
    crops = np.asarray(crops, np.float32)
    out = []
    for s in range(0, crops.shape[0], batch_size):
      chunk = crops[s:s + batch_size]
      pad = batch_size - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      out.append(np.asarray(probabilities(chunk))[:batch_size - pad])
    return np.concatenate(out)

  return describe
