"""Procedural co-segmentation groups: shape categories on cluttered scenes.

Each image shows ONE instance of its category (the common object of its group)
plus 1-3 distractor objects drawn from OTHER categories, on a cluttered
background. The mask marks only the instance of the image's own category, so a
co-segmentation model must learn which shape family the images of a group
share: by default colour and texture are drawn independently of the category
and carry no information, and the distractors look exactly like common objects
of other groups (``render``'s ``category_colours`` / ``category_textures`` tie
the hue or the whole texture to the category instead).

Categories are shape families defined in a unit frame ([-1, 1]^2) by outer
polygons and holes (``_SHAPES``); each instance gets a random rotation, scale,
aspect jitter and position. Objects are painted with a random colour and one of
four textures (solid, stripes, checker, noise); backgrounds mix a colour
gradient, smoothed noise texture, stripes and random blobs.

Choices the project leaves open:
  * Masks are rasterised with ``cv2.fillPoly`` without anti-aliasing, so they
    are exactly {0, 1}; the image is composited with the same raster, so the
    mask is pixel-exact (no ignore band).
  * The common object is drawn last (on top), so it is never occluded and its
    mask is its full silhouette; distractors are placed by rejection sampling
    so they overlap the object by at most ``_MAX_OVERLAP`` of their own area
    (an occluded distractor keeps its visible part only), or, with
    ``min_gap``, so they stay that many pixels away from it.
  * Everything is a pure function of ``(seed, category, index)``: one
    ``np.random.SeedSequence`` per image, so a record does not depend on how
    many other records were generated or in which order (train and test use
    different seeds and are therefore disjoint draws).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import cv2
import numpy as np

# Fraction of a distractor's area allowed under the common object.
_MAX_OVERLAP = 0.3
# Diameter ranges as fractions of the image side. They overlap so that size
# alone does not say which object is the common one (a single-image model must
# not solve the task by picking the largest shape).
_OBJECT_SCALE = (0.45, 0.8)
_DISTRACTOR_SCALE = (0.3, 0.6)
# Placement tries per distractor when a minimum gap is asked for.
_GAP_TRIES = 50
# Seeds the per-category textures of ``category_textures``.
_TEXTURE_SEED = 20211


def _regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0):
  t = phase + 2 * np.pi * np.arange(n) / n
  return np.stack([radius * np.cos(t), radius * np.sin(t)], -1)


def _star(n_points=5, inner=0.42):
  t = -np.pi / 2 + np.pi * np.arange(2 * n_points) / n_points
  r = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner)
  return np.stack([r * np.cos(t), r * np.sin(t)], -1)


def _circle(radius=1.0, cx=0.0, cy=0.0, n=48):
  p = _regular_polygon(n, radius)
  return p + np.array([cx, cy])


def _heart(n=64):
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  p = np.stack([x, y], -1)
  p -= p.mean(0)
  return p / np.abs(p).max()


def _crescent(n=48):
  # Outer arc of the unit circle, inner arc of an offset circle: a lune.
  t_out = np.linspace(-0.75 * np.pi, 0.75 * np.pi, n)
  outer = np.stack([np.cos(t_out), np.sin(t_out)], -1)
  t_in = np.linspace(0.62 * np.pi, -0.62 * np.pi, n)
  inner = np.stack([0.45 + 0.8 * np.cos(t_in), 0.95 * np.sin(t_in)], -1)
  inner[:, 0] -= 0.55
  return np.concatenate([outer, inner], 0)


@dataclasses.dataclass(frozen=True)
class Shape:
  """A shape family: outer polygons and holes in the unit frame."""
  name: str
  outer: Callable[[], Sequence[np.ndarray]]
  holes: Callable[[], Sequence[np.ndarray]] = lambda: ()


_SHAPES = (
    Shape("arrow", lambda: [np.array(
        [[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8],
         [0.2, 0.3], [-1, 0.3]], float)]),
    Shape("crescent", lambda: [_crescent()]),
    Shape("cross", lambda: [np.array(
        [[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3],
         [0.3, 1], [-0.3, 1], [-0.3, 0.3], [-1, 0.3], [-1, -0.3],
         [-0.3, -0.3]], float)]),
    Shape("diamond_hole", lambda: [np.array(
        [[0, -1], [0.75, 0], [0, 1], [-0.75, 0]], float)],
          lambda: [np.array([[-0.3, -0.3], [0.3, -0.3], [0.3, 0.3],
                             [-0.3, 0.3]], float)]),
    Shape("heart", lambda: [_heart()]),
    Shape("hexagon_hole", lambda: [_regular_polygon(6)],
          lambda: [_circle(0.45)]),
    Shape("ring", lambda: [_circle(1.0)], lambda: [_circle(0.55)]),
    Shape("star", lambda: [_star()]),
    Shape("tshape", lambda: [np.array(
        [[-1, -1], [1, -1], [1, -0.45], [0.28, -0.45], [0.28, 1],
         [-0.28, 1], [-0.28, -0.45], [-1, -0.45]], float)]),
    Shape("triangle_hole", lambda: [_regular_polygon(3, 1.0, -np.pi / 2)],
          lambda: [_regular_polygon(3, 0.4, np.pi / 2)]),
    Shape("bowtie", lambda: [np.array(
        [[-1, -0.8], [0, -0.15], [1, -0.8], [1, 0.8], [0, 0.15],
         [-1, 0.8]], float)]),
    Shape("semicircle", lambda: [np.concatenate(
        [_circle(1.0, n=48)[:25], np.array([[-1.0, 0.0]])], 0)]),
)

CATEGORY_NAMES = tuple(s.name for s in _SHAPES)


def category_names(num_classes: int) -> tuple[str, ...]:
  """Names of the first ``num_classes`` categories (sorted, as ClassLabel)."""
  if not 2 <= num_classes <= len(_SHAPES):
    raise ValueError(f"synthetic: num_classes must be in [2, {len(_SHAPES)}],"
                     f" got {num_classes}")
  return tuple(sorted(CATEGORY_NAMES[:num_classes]))


def _rasterise(shape: Shape, size: int, *, centre, radius, angle, aspect):
  """Binary uint8 [size, size] mask of one placed instance."""
  c, s = np.cos(angle), np.sin(angle)
  rot = np.array([[c, -s], [s, c]])
  scale = np.array([radius * aspect, radius / aspect])

  def place(poly):
    pts = (np.asarray(poly) * scale) @ rot.T + np.asarray(centre)
    # fillPoly takes fixed-point coordinates: 4 fractional bits keep small
    # shapes smooth at 32-64 px.
    return np.round(pts * 16).astype(np.int32)

  mask = np.zeros((size, size), np.uint8)
  cv2.fillPoly(mask, [place(p) for p in shape.outer()], 1, cv2.LINE_8, 4)
  holes = list(shape.holes())
  if holes:
    cv2.fillPoly(mask, [place(p) for p in holes], 0, cv2.LINE_8, 4)
  return mask


def _random_colour(rng, hue=None):
  """A saturated RGB colour; ``hue`` (OpenCV units, 0..179) fixes the hue."""
  h = rng.integers(0, 180) if hue is None else int(round(hue)) % 180
  hsv = np.uint8([[[h, rng.integers(90, 256), rng.integers(90, 256)]]])
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def category_hue(category: int, num_classes: int) -> float:
  """The hue of a category when colours follow categories (0..179)."""
  return 180.0 * category / num_classes


def _smooth_noise(rng, size, cells):
  small = rng.random((cells, cells)).astype(np.float32)
  return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _texture(rng, size, hue=None, kind=None):
  """A float32 [size, size, 3] texture in [0, 255] for an object.

  With ``hue`` both of the texture's colours get that hue (saturation and
  value stay random); ``kind`` (0 solid, 1 stripes, 2 checker, 3 noise)
  fixes the pattern instead of drawing it.
  """
  base = _random_colour(rng, hue)
  if kind is None:
    kind = rng.integers(0, 4)
  if kind == 0:  # solid
    return np.broadcast_to(base, (size, size, 3)).copy()
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  period = rng.uniform(0.06, 0.18) * size
  if kind == 1:  # stripes at a random angle
    t = rng.uniform(0, np.pi)
    pattern = (np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period)
               > 0).astype(np.float32)
  elif kind == 2:  # checker
    pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2)
  else:  # smooth noise
    pattern = _smooth_noise(rng, size, int(rng.integers(4, 10)))
  other = _random_colour(rng, hue)
  p = pattern[..., None].astype(np.float32)
  return base * p + other * (1 - p)


def _background(rng, size):
  """Cluttered float32 [size, size, 3] background in [0, 255].

  Backgrounds are toned down (darker, less saturated, semi-transparent
  blobs) relative to the objects, so objects are salient and the remaining
  difficulty is the one co-segmentation is about: choosing, among salient
  objects, the one whose category the other images share.
  """
  yy, xx = np.mgrid[:size, :size].astype(np.float32) / max(size - 1, 1)
  t = rng.uniform(0, 2 * np.pi)
  ramp = (xx * np.cos(t) + yy * np.sin(t))
  ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
  a, b = _random_colour(rng), _random_colour(rng)
  img = a * ramp[..., None] + b * (1 - ramp[..., None])
  # Low-contrast smooth noise and, sometimes, a faint texture.
  noise = _smooth_noise(rng, size, int(rng.integers(3, 12)))
  img += (noise[..., None] - 0.5) * rng.uniform(30, 80) * rng.choice(
      [-1, 1], 3)
  if rng.random() < 0.3:
    img = 0.8 * img + 0.2 * _texture(rng, size)
  # Blobs: ellipses of random colours (clutter that is not any category).
  for _ in range(int(rng.integers(1, 5))):
    blob = np.zeros((size, size), np.uint8)
    cv2.ellipse(blob, (int(rng.integers(0, size)), int(rng.integers(0, size))),
                (int(rng.integers(2, max(3, size // 5))),
                 int(rng.integers(2, max(3, size // 5)))),
                float(rng.uniform(0, 180)), 0, 360, 1, -1)
    alpha = rng.uniform(0.3, 0.6)
    sel = blob.astype(bool)
    img[sel] = alpha * _random_colour(rng) + (1 - alpha) * img[sel]
  # Toned down: mixed towards grey and darkened.
  grey = img.mean(-1, keepdims=True)
  return 0.75 * (0.6 * img + 0.4 * grey)


def _placement(rng, size, lo, hi):
  radius = rng.uniform(lo, hi) * size / 2
  margin = radius * 0.8
  centre = rng.uniform(margin, size - margin, 2)
  return dict(centre=centre, radius=radius,
              angle=rng.uniform(0, 2 * np.pi), aspect=rng.uniform(0.8, 1.25))


def _place_distractor(rng, shape: Shape, size: int, obj_mask, scale,
                      min_gap: int):
  """Rasterises one distractor placed by rejection sampling against the object.

  With ``min_gap == 0`` a placement is accepted when at most ``_MAX_OVERLAP``
  of the distractor lies under the object (up to 20 tries, the last one kept).
  With ``min_gap > 0`` no distractor pixel may lie within ``min_gap`` pixels of
  the object (up to ``_GAP_TRIES`` tries); when no try is clear, the one with
  the fewest pixels inside the gap is kept (rare for the scales of the
  configs that set a gap; ``tests/test_synthetic.py`` bounds how rare), so the
  image still has its distractor.
  """
  if min_gap <= 0:
    for _ in range(20):
      d = _rasterise(shape, size, **_placement(rng, size, *scale))
      area = d.sum()
      if area > 0 and (d & obj_mask).sum() <= _MAX_OVERLAP * area:
        break
    return d
  kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                     (2 * min_gap + 1, 2 * min_gap + 1))
  near = cv2.dilate(obj_mask, kernel)
  best, best_bad = None, None
  for _ in range(_GAP_TRIES):
    d = _rasterise(shape, size, **_placement(rng, size, *scale))
    if not d.any():
      continue
    bad = int((d & near).sum())
    if best is None or bad < best_bad:
      best, best_bad = d, bad
    if bad == 0:
      break
  return best if best is not None else d


def render(category: int, *, num_classes: int, image_size: int,
           seed: int, index: int, distractors: tuple[int, int] = (1, 3),
           category_colours: bool = False, category_textures: bool = False,
           distinct_textures: bool = False,
           object_scale: tuple[float, float] | None = None,
           distractor_scale: tuple[float, float] | None = None,
           min_gap: int = 0):
  """Renders one record of category ``category`` (index into sorted names).

  Args:
    category: label, an index into ``category_names(num_classes)``.
    num_classes: number of categories in use.
    image_size: side length in pixels.
    seed: data-set seed (train and test use different seeds).
    index: image index within the category.
    distractors: (min, max) number of distractor objects (inclusive).
    category_colours: paint every object (common or distractor) in its
      category's hue (:func:`category_hue`) instead of a random one. A single
      image still does not say which object is the common one (every object
      has some category's hue); across a group the shared hue does, so the
      task can be solved by matching appearance, not only shape.
    category_textures: paint every object with its category's own texture
      (colours, pattern kind and period are a function of the category
      alone, the same in every split; pose still varies per image). The
      common object is then the same-looking thing in every image of the
      group, as in instance co-segmentation (iCoseg); a single image is
      still ambiguous, because its distractor wears its own category's
      texture.
    distinct_textures: with ``category_textures``, make the categories'
      textures as different as the generator can: category k gets hue
      ``category_hue(k)`` (evenly spaced) for both of its colours and pattern
      kind k mod 4 (solid, stripes, checker, noise), so two categories share
      neither a hue nor, unless 4 or 8 apart, a pattern. Plain
      ``category_textures`` draws them at random, and some categories then
      look alike (e.g. two bright solids).
    object_scale / distractor_scale: (min, max) diameter of the common
      object / of a distractor as a fraction of the image side (None: the
      module defaults ``_OBJECT_SCALE`` / ``_DISTRACTOR_SCALE``).
    min_gap: when > 0, distractors keep at least this many pixels away from
      the common object instead of the default "at most 30 % under it" (see
      ``_place_distractor``), so that object and distractor never form one
      connected shape.

  Returns:
    ``(image, mask, distractor_mask)``: uint8 [S, S, 3] RGB image, uint8
    [S, S] mask in {0, 1} of the common object, uint8 [S, S] {0, 1} visible
    pixels of the distractors (for tests; not part of the record).
  """
  names = category_names(num_classes)
  by_name = {s.name: s for s in _SHAPES}
  rng = np.random.default_rng(
      np.random.SeedSequence([seed, num_classes, image_size, category, index]))
  size = image_size
  img = _background(rng, size)
  others = [i for i in range(num_classes) if i != category]
  obj_place = _placement(rng, size, *(object_scale or _OBJECT_SCALE))
  obj_mask = _rasterise(by_name[names[category]], size, **obj_place)
  distractor_mask = np.zeros((size, size), np.uint8)
  if category_colours and category_textures:
    raise ValueError("synthetic: category_colours and category_textures are "
                     "exclusive")
  if distinct_textures and not category_textures:
    raise ValueError("synthetic: distinct_textures needs category_textures")

  def paint(cat):
    if category_textures:
      # Not seeded by ``seed``: train and test (seed + 1) must agree.
      texture_rng = np.random.default_rng([_TEXTURE_SEED, num_classes, cat])
      if distinct_textures:
        return _texture(texture_rng, size,
                        hue=category_hue(cat, num_classes), kind=cat % 4)
      return _texture(texture_rng, size)
    hue = category_hue(cat, num_classes) if category_colours else None
    return _texture(rng, size, hue)

  lo, hi = distractors
  if not 0 <= lo <= hi:
    raise ValueError(f"synthetic: bad distractor range {distractors}")
  for _ in range(int(rng.integers(lo, hi + 1))):
    cat = int(rng.choice(others))
    d = _place_distractor(rng, by_name[names[cat]], size, obj_mask,
                          distractor_scale or _DISTRACTOR_SCALE, min_gap)
    sel = d.astype(bool)
    img[sel] = paint(cat)[sel]
    distractor_mask |= d
  sel = obj_mask.astype(bool)
  img[sel] = paint(category)[sel]
  distractor_mask &= 1 - obj_mask
  # Mild sensor noise so flat regions are not perfectly uniform.
  img += rng.normal(0, 4, img.shape)
  image = np.clip(np.round(img), 0, 255).astype(np.uint8)
  return image, obj_mask, distractor_mask


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 HxW, HxWx1 or HxWx3 RGB array."""
  if array.ndim == 3 and array.shape[-1] == 3:
    array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode(".png", array)
  if not ok:
    raise RuntimeError("synthetic: PNG encoding failed")
  return buf.tobytes()
