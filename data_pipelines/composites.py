"""Composite scenes: two objects of different classes in one image.

A composite is made from three records of an image data set: the object of
record ``a`` (class c_a) and the object of record ``b`` (class c_b != c_a),
each cut out with its ground-truth mask, are pasted side by side onto a real
background, and its class map marks each object with its own class. Paired
with an image of c_a, the composite's target is a's object only; paired with
an image of c_b, b's object only. A model that ignores its partner cannot
tell which (a partner-blind model marks both, or the more salient one), so
composites make the partner necessary in training and measure whether a
model uses it in evaluation (``coseg_jax.runtime.evaluators.composite``).

Backgrounds (``background``):

* 'inpaint': the image of a third record, of neither class, with its own
  object region (dilated by a few pixels) filled by OpenCV's Telea
  inpainting, so that the background holds no third object;
* 'side_by_side': no pasting: a's and b's whole images, each squeezed to half
  the width, next to each other (real context, no paste edges).

Everything is a pure function of (records, seed, index): the same index
gives the same composite in every process and every run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, Tuple

import cv2
import numpy as np

IGNORE = 255
BACKGROUNDS = ("inpaint", "side_by_side")
# A record loader: index -> (uint8 image [H, W, 3], uint8 class map [H, W]
# with 0 background, c + 1 for class c, 255 ignore).
LoadRecord = Callable[[int], Tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class CompositeSpec:
  """How to draw one composite (all choices made up front, seeded).

  Attributes:
    records: (a, b) source records of the two objects.
    classes: (c_a, c_b), their classes (different).
    background: the background record (neither class), or -1 for
      'side_by_side'.
    a_left: a's object goes to the left half.
    scales: object size per object: the longer side of its box as a
      fraction of the canvas height.
    offsets: (y, x) placement per object, fractions of the free range.
  """
  records: Tuple[int, int]
  classes: Tuple[int, int]
  background: int
  a_left: bool
  scales: Tuple[float, float]
  offsets: Tuple[Tuple[float, float], Tuple[float, float]]


def composite_specs(membership: np.ndarray, *, count: int, seed,
                    background: str = "inpaint",
                    scale_range: Tuple[float, float] = (0.45, 0.7)
                    ) -> list[CompositeSpec]:
  """``count`` composite specs over the single-class records of
  ``membership`` (bool [N, C]).

  Classes are drawn uniformly among those with records, then a record of
  each; the background record uniformly among the records of the other
  classes.

  Raises:
    ValueError: fewer than two classes (three for 'inpaint') have records.
  """
  if background not in BACKGROUNDS:
    raise ValueError(f"data.composites.background must be one of "
                     f"{BACKGROUNDS}, got {background!r}")
  membership = np.asarray(membership, bool)
  single = membership.sum(1) == 1
  classes = [c for c in range(membership.shape[1])
             if (membership[:, c] & single).any()]
  need = 3 if background == "inpaint" else 2
  if len(classes) < need:
    raise ValueError(f"composites with background {background!r} need "
                     f"records of {need} classes, got {len(classes)}")
  rng = np.random.default_rng(np.random.SeedSequence(seed))
  specs = []
  for _ in range(int(count)):
    c_a, c_b = (int(c) for c in rng.choice(classes, 2, replace=False))
    a = int(rng.choice(np.flatnonzero(membership[:, c_a] & single)))
    b = int(rng.choice(np.flatnonzero(membership[:, c_b] & single)))
    bg = -1
    if background == "inpaint":
      others = np.flatnonzero(single & ~membership[:, c_a] &
                              ~membership[:, c_b] & membership.any(1))
      bg = int(rng.choice(others))
    lo, hi = scale_range
    specs.append(CompositeSpec(
        records=(a, b), classes=(c_a, c_b), background=bg,
        a_left=bool(rng.random() < 0.5),
        scales=(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))),
        offsets=((float(rng.random()), float(rng.random())),
                 (float(rng.random()), float(rng.random())))))
  return specs


def _inpainted_background(image, class_map, size) -> np.ndarray:
  h, w = size
  image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
  objects = cv2.resize((class_map != 0).astype(np.uint8), (w, h),
                       interpolation=cv2.INTER_NEAREST)
  objects = cv2.dilate(objects, np.ones((7, 7), np.uint8))
  return cv2.inpaint(image, objects, 5, cv2.INPAINT_TELEA)


def _cut(image, class_map, cls):
  """The object of class ``cls``: its box's pixels and mask (bool)."""
  fg = class_map == cls + 1
  if not fg.any():
    raise ValueError(f"composite source has no pixel of class {cls}")
  ys, xs = np.nonzero(fg)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  return image[y0:y1, x0:x1], fg[y0:y1, x0:x1]


def _paste(canvas, class_map, obj, mask, cls, *, left, scale, offset):
  """Pastes ``obj`` (masked) into one half of ``canvas``, in place."""
  h, w = canvas.shape[:2]
  half_w = w // 2
  oh, ow = mask.shape
  # The longer side of the object's box becomes scale x canvas height, and
  # the box must fit inside its half.
  f = min(scale * h / max(oh, ow), h / oh, half_w / ow)
  nh, nw = max(1, int(round(oh * f))), max(1, int(round(ow * f)))
  obj = cv2.resize(obj, (nw, nh), interpolation=cv2.INTER_AREA)
  mask = cv2.resize(mask.astype(np.uint8), (nw, nh),
                    interpolation=cv2.INTER_NEAREST).astype(bool)
  y = int(round(offset[0] * (h - nh)))
  x = int(round(offset[1] * (half_w - nw))) + (0 if left else w - half_w)
  region = canvas[y:y + nh, x:x + nw]
  region[mask] = obj[mask]
  class_map[y:y + nh, x:x + nw][mask] = cls + 1


def render(spec: CompositeSpec, load: LoadRecord, *,
           size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
  """Draws a composite.

  Args:
    spec: from :func:`composite_specs`.
    load: record index -> (uint8 image [H, W, 3], class map [H, W]).
    size: (height, width) of the composite.

  Returns:
    (uint8 image [h, w, 3], uint8 class map [h, w]: 0 background, c + 1 on
    the object of class c, 255 ignore).
  """
  h, w = size
  (a, b), (c_a, c_b) = spec.records, spec.classes
  half_w = w // 2
  if spec.background < 0:  # side by side
    canvas = np.zeros((h, w, 3), np.uint8)
    class_map = np.zeros((h, w), np.uint8)
    for rec, left in ((a, spec.a_left), (b, not spec.a_left)):
      image, cm = load(rec)
      x0, x1 = (0, half_w) if left else (half_w, w)
      canvas[:, x0:x1] = cv2.resize(image, (x1 - x0, h),
                                    interpolation=cv2.INTER_AREA)
      class_map[:, x0:x1] = cv2.resize(cm, (x1 - x0, h),
                                       interpolation=cv2.INTER_NEAREST)
    return canvas, class_map
  bg_image, bg_map = load(spec.background)
  canvas = _inpainted_background(bg_image, bg_map, (h, w))
  class_map = np.zeros((h, w), np.uint8)
  for i, (rec, cls, left) in enumerate(((a, c_a, spec.a_left),
                                        (b, c_b, not spec.a_left))):
    image, cm = load(rec)
    obj, mask = _cut(image, cm, cls)
    _paste(canvas, class_map, obj, mask, cls, left=left,
           scale=spec.scales[i], offset=spec.offsets[i])
  return canvas, class_map


def membership_rows(specs: Sequence[CompositeSpec],
                    num_classes: int) -> np.ndarray:
  """bool [M, C]: each composite is a member of both its classes."""
  rows = np.zeros((len(specs), num_classes), bool)
  for i, s in enumerate(specs):
    rows[i, list(s.classes)] = True
  return rows
