"""Co-segmentation and matching metrics: P, J, PCK, flow PCK, accumulators.

Per-image functions are pure ``jnp`` (jit/vmap safe, keyword-only arguments);
accumulators are host-side NumPy classes for dataset evaluation.

Conventions (stated once, used everywhere):

* Masks are channels-last, [..., H, W, 1]; every per-image function reduces the
  last three axes and keeps the leading ones (e.g. [B, K]).
* Binarisation: a pixel is foreground iff its probability is >= 0.5, or, with
  ``from_logits=True``, iff its logit is >= 0 (the same set: sigmoid(0) =
  0.5). Ground truth is foreground iff > 0.5 (so {0, 1} and {0, 255}/255
  both work). Other conversions of a probability map (Otsu, dense CRF,
  GrabCut) are ``coseg_jax.postprocess.binarize``.
* ``valid`` (optional, [..., H, W, 1], bool or {0,1}) excludes pixels, e.g. the
  VOC 255 "void" border or padding; excluded pixels count nowhere.
* Precision P = correctly labelled valid pixels (fg and bg) / valid pixels.
* Jaccard J = |pred ∩ gt| / |pred ∪ gt| over the valid foreground.
* Empty conventions: J = 1 when the union is empty (no foreground predicted,
  none present: a perfect answer); P = 1 when an image has no valid pixel.
* "Avg. J" (the papers' primary figure): per-image J averaged within each
  class, then over classes. We also report the mean over all images and the
  pooled J = sum of intersections / sum of unions, each labelled.

Matching:

* ``pck``: a keypoint is correct when ||pred - gt||_2 <= alpha * L, with L per
  pair: max(h, w) of the object bounding box (PF-PASCAL, alpha = 0.1) or
  max(H, W) of the image (PF-WILLOW style reporting varies; pass it). PCK of a
  pair is the fraction of its valid keypoints; a pair with no valid keypoint
  gives NaN (the accumulator skips and counts those).
* ``flow_pck`` (TSS, Taniai et al. CVPR 2016, as used by CNNGeo/weakalign and
  Chen et al.'s MaCoSNet): given the ground-truth flow image1 -> image2 and a
  predicted flow, the fraction of image-1 foreground pixels (with a known
  ground-truth flow) whose predicted target lies within alpha * max(H, W) of
  the true one; alpha = 0.05 is the reported setting (equivalent to Taniai's
  "5 pixels after resizing the larger side to 100"). L defaults to the flow
  grid's (image 1's) max(H, W); pass ``reference_size`` to use another.
  Middlebury "unknown" flow (|u| or |v| >= 1e9, or non-finite) is excluded.
"""

import collections
from typing import Dict, Iterable, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from coseg_jax.nn import geometry

UNKNOWN_FLOW_THRESHOLD = 1e9
IGNORE = 255  # mask value of pixels that count nowhere
_AXES = (-3, -2, -1)


def _check_mask(x, name):
  if x.ndim < 3 or x.shape[-1] != 1:
    raise ValueError(
        f"{name} must be a mask [..., H, W, 1], got shape {x.shape}")


def _foreground(pred: jnp.ndarray, *, from_logits: bool = False
                ) -> jnp.ndarray:
  """Boolean foreground: prob >= 0.5, or logit >= 0 with ``from_logits``."""
  return pred >= (0.0 if from_logits else 0.5)


def segmentation_counts(*, pred: jnp.ndarray, gt: jnp.ndarray,
                        valid: Optional[jnp.ndarray] = None,
                        from_logits: bool = False) -> Dict[str, jnp.ndarray]:
  """Per-image pixel counts.

  Args:
    pred: probabilities (or logits) [..., H, W, 1].
    gt: ground-truth mask [..., H, W, 1] ({0,1} or [0,1]).
    valid: optional [..., H, W, 1] mask of pixels to score.
    from_logits: threshold ``pred`` at 0 instead of 0.5.

  Returns:
    dict of float32 arrays [...]: 'intersection', 'union', 'correct', 'total'.
  """
  _check_mask(pred, "pred")
  _check_mask(gt, "gt")
  if pred.shape != gt.shape:
    raise ValueError(f"pred {pred.shape} and gt {gt.shape} shapes differ")
  p = _foreground(pred, from_logits=from_logits)
  g = gt > 0.5
  v = (jnp.ones(p.shape, bool) if valid is None else
       jnp.broadcast_to(jnp.asarray(valid) > 0, p.shape))
  f32 = lambda m: jnp.sum(m, axis=_AXES, dtype=jnp.float32)
  return {
      "intersection": f32(p & g & v),
      "union": f32((p | g) & v),
      "correct": f32((p == g) & v),
      "total": f32(v),
  }


def precision(*, pred, gt, valid=None, from_logits: bool = False):
  """Per-image pixel accuracy over fg and bg, [...]; 1 with no valid pixel."""
  return segmentation_scores(pred=pred, gt=gt, valid=valid,
                             from_logits=from_logits)["precision"]


def jaccard(*, pred, gt, valid=None, from_logits: bool = False):
  """Per-image foreground IoU, [...]; 1 when the union is empty."""
  return segmentation_scores(pred=pred, gt=gt, valid=valid,
                             from_logits=from_logits)["jaccard"]


def segmentation_scores(*, pred, gt, valid=None,
                        from_logits: bool = False) -> Dict[str, jnp.ndarray]:
  """P, J and the counts in one pass (what ``CosegAccumulator.update`` takes).

  Returns:
    dict of [...] arrays: 'precision', 'jaccard', 'intersection', 'union',
    'correct', 'total'.
  """
  c = segmentation_counts(pred=pred, gt=gt, valid=valid,
                          from_logits=from_logits)
  c["precision"] = jnp.where(c["total"] > 0,
                             c["correct"] / jnp.maximum(c["total"], 1), 1.0)
  c["jaccard"] = jnp.where(c["union"] > 0,
                           c["intersection"] / jnp.maximum(c["union"], 1), 1.0)
  return c


def pck(*, pred_points: jnp.ndarray, gt_points: jnp.ndarray, alpha: float,
        reference_size: jnp.ndarray,
        valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Percentage of correct keypoints per pair.

  Args:
    pred_points: [..., N, 2] predicted (x, y) in the target image, pixels.
    gt_points: [..., N, 2] ground truth (x, y).
    alpha: tolerance as a fraction of ``reference_size``.
    reference_size: [...] (or scalar) L, e.g. ``bbox_reference_size``.
    valid: optional [..., N] bool, the annotated keypoints.

  Returns:
    [...] fraction in [0, 1]; NaN for a pair without valid keypoints.
  """
  if pred_points.shape != gt_points.shape or pred_points.shape[-1] != 2:
    raise ValueError(
        f"pred_points {pred_points.shape} and gt_points {gt_points.shape} "
        f"must both be [..., N, 2]")
  dist = jnp.linalg.norm(pred_points - gt_points, axis=-1)
  ok = dist <= alpha * jnp.asarray(reference_size, dist.dtype)[..., None]
  v = (jnp.ones(dist.shape, bool) if valid is None else
       jnp.broadcast_to(jnp.asarray(valid) > 0, dist.shape))
  n = jnp.sum(v, axis=-1)
  hits = jnp.sum(ok & v, axis=-1)
  return jnp.where(n > 0, hits / jnp.maximum(n, 1), jnp.nan)


def bbox_reference_size(bbox: jnp.ndarray) -> jnp.ndarray:
  """L = max(h, w) of a box [..., 4] given as (x0, y0, x1, y1) -> [...]."""
  return jnp.maximum(bbox[..., 2] - bbox[..., 0], bbox[..., 3] - bbox[..., 1])


def flow_from_mapping(mapping: jnp.ndarray) -> jnp.ndarray:
  """Absolute target coordinates [..., H, W, 2] (x, y) -> flow (dx, dy)."""
  h, w = mapping.shape[-3:-1]
  ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  return mapping - jnp.stack([xs, ys], axis=-1).astype(mapping.dtype)


def flow_pck(*, pred_flow: jnp.ndarray, gt_flow: jnp.ndarray,
             mask: jnp.ndarray, alpha: float = 0.05,
             reference_size: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Flow-based PCK over the foreground of image 1 (TSS protocol).

  Args:
    pred_flow: [..., H, W, 2] predicted (dx, dy) from image 1 to image 2.
    gt_flow: [..., H, W, 2] ground truth; unknown entries are excluded.
    mask: [..., H, W, 1] (or [..., H, W]) foreground of image 1.
    alpha: tolerance fraction (TSS: 0.05).
    reference_size: [...] L; default max(H, W) of the flow grid.

  Returns:
    [...] fraction of scored pixels within alpha * L; NaN if none is scored.
  """
  if pred_flow.shape != gt_flow.shape or gt_flow.shape[-1] != 2:
    raise ValueError(f"pred_flow {pred_flow.shape} and gt_flow "
                     f"{gt_flow.shape} must both be [..., H, W, 2]")
  if mask.ndim == gt_flow.ndim:
    if mask.shape[-1] != 1:
      raise ValueError(f"mask must be [..., H, W, 1] or [..., H, W], got "
                       f"{mask.shape}")
    mask = mask[..., 0]
  h, w = gt_flow.shape[-3:-1]
  known = jnp.all(jnp.isfinite(gt_flow) &
                  (jnp.abs(gt_flow) < UNKNOWN_FLOW_THRESHOLD), axis=-1)
  scored = (jnp.asarray(mask) > 0.5) & known
  gt = jnp.where(known[..., None], gt_flow, 0.0)
  err = jnp.linalg.norm(pred_flow - gt, axis=-1)
  ref = (jnp.float32(max(h, w)) if reference_size is None else
         jnp.asarray(reference_size, jnp.float32))
  ok = err <= alpha * jnp.reshape(ref, jnp.shape(ref) + (1, 1))
  n = jnp.sum(scored, axis=(-2, -1))
  return jnp.where(n > 0, jnp.sum(ok & scored, axis=(-2, -1)) /
                   jnp.maximum(n, 1), jnp.nan)


def score_mask(*, pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
  """Scores of one binary mask against a dataset mask (host side).

  The evaluation of a prediction at an image's original resolution, where
  every image has its own size.

  Args:
    pred: bool [H, W] predicted foreground.
    gt: uint8 [H, W] (or [H, W, 1]) with 0 background, 1 foreground and
      255 ignore (the data sets' convention).

  Returns:
    dict of floats: 'jaccard', 'precision', 'intersection', 'union',
    'correct', 'total' (what :meth:`CosegAccumulator.update` takes).
  """
  gt = np.asarray(gt)
  gt = gt[..., 0] if gt.ndim == 3 else gt
  pred = np.asarray(pred, bool)
  if pred.shape != gt.shape:
    raise ValueError(f"pred {pred.shape} and gt {gt.shape} shapes differ")
  valid = gt != IGNORE
  scores = segmentation_scores(pred=pred[..., None].astype(np.float32),
                               gt=(gt == 1)[..., None].astype(np.float32),
                               valid=valid[..., None])
  return {k: float(v) for k, v in scores.items()}


class CosegAccumulator:
  """Collects per-image P, J (and I, U) with class names; host side.

  ``update`` takes the dict of ``segmentation_scores`` (any leading shape; it
  is flattened) and one class name per image. ``result`` returns labelled
  figures:

  * 'avg_J' / 'avg_P': per-class mean, then mean over classes ("Avg. J", the
    papers' primary figure),
  * 'image_mean_J' / 'image_mean_P': mean over all images,
  * 'pooled_J': sum of intersections / sum of unions over all images,
  * 'per_class': {name: {'J', 'P', 'pooled_J', 'num_images'}},
  * 'num_images', 'num_classes'.
  """

  def __init__(self):
    self._names = []
    self._cols = collections.defaultdict(list)

  def update(self, *, class_names: Sequence[str] | str,
             scores: Dict[str, np.ndarray]) -> None:
    j = np.asarray(scores["jaccard"], np.float64).reshape(-1)
    names = ([class_names] * j.size if isinstance(class_names, str) else
             [str(n) for n in np.asarray(class_names).reshape(-1)])
    if len(names) != j.size:
      raise ValueError(f"{len(names)} class names for {j.size} images")
    self._names.extend(names)
    for key in ("jaccard", "precision", "intersection", "union"):
      if key not in scores:
        raise ValueError(f"scores lacks {key!r}; pass segmentation_scores()")
      self._cols[key].append(np.asarray(scores[key], np.float64).reshape(-1))

  def __len__(self):
    return len(self._names)

  def result(self) -> Dict[str, object]:
    if not self._names:
      raise ValueError("CosegAccumulator.result() called before any update")
    col = {k: np.concatenate(v) for k, v in self._cols.items()}
    names = np.asarray(self._names)
    per_class = {}
    for name in sorted(set(self._names)):
      sel = names == name
      per_class[name] = {
          "J": float(col["jaccard"][sel].mean()),
          "P": float(col["precision"][sel].mean()),
          "pooled_J": _pooled(col["intersection"][sel], col["union"][sel]),
          "num_images": int(sel.sum()),
      }
    return {
        "avg_J": float(np.mean([c["J"] for c in per_class.values()])),
        "avg_P": float(np.mean([c["P"] for c in per_class.values()])),
        "image_mean_J": float(col["jaccard"].mean()),
        "image_mean_P": float(col["precision"].mean()),
        "pooled_J": _pooled(col["intersection"], col["union"]),
        "per_class": per_class,
        "num_images": int(names.size),
        "num_classes": len(per_class),
    }

  def format(self) -> str:
    """A labelled plain-text table of ``result()``."""
    r = self.result()
    lines = [f"{'class':<20s} {'n':>5s} {'P':>7s} {'J':>7s}"]
    for name, c in r["per_class"].items():
      lines.append(f"{name:<20s} {c['num_images']:>5d} {c['P']:>7.4f} "
                   f"{c['J']:>7.4f}")
    lines += [
        f"Avg. over {r['num_classes']} classes: P {r['avg_P']:.4f}  "
        f"J {r['avg_J']:.4f}  (primary: Avg. J)",
        f"Mean over {r['num_images']} images: P {r['image_mean_P']:.4f}  "
        f"J {r['image_mean_J']:.4f}",
        f"Pooled J (sum I / sum U): {r['pooled_J']:.4f}",
    ]
    return "\n".join(lines)


def _pooled(inter, union):
  total = float(np.sum(union))
  return float(np.sum(inter)) / total if total > 0 else 1.0


class PCKAccumulator:
  """Per-pair PCK values (from ``pck``/``flow_pck``) with optional classes.

  ``result`` gives 'mean_pck' over pairs (the usual PF-PASCAL/TSS figure),
  'per_class' means, 'avg_pck_over_classes', 'num_pairs' and 'num_skipped'
  (pairs whose PCK is NaN: nothing to score).
  """

  def __init__(self):
    self._values, self._names = [], []

  def update(self, *, values,
             class_names: Optional[Iterable[str] | str] = None):
    v = np.asarray(values, np.float64).reshape(-1)
    if class_names is None or isinstance(class_names, str):
      names = [class_names or "all"] * v.size
    else:
      names = [str(n) for n in class_names]
    if len(names) != v.size:
      raise ValueError(f"{len(names)} class names for {v.size} PCK values")
    self._values.append(v)
    self._names.extend(names)

  def result(self) -> Dict[str, object]:
    if not self._names:
      raise ValueError("PCKAccumulator.result() called before any update")
    v = np.concatenate(self._values)
    names = np.asarray(self._names)
    ok = ~np.isnan(v)
    per_class = {n: float(v[ok & (names == n)].mean())
                 for n in sorted(set(names[ok]))}
    return {
        "mean_pck": float(v[ok].mean()) if ok.any() else float("nan"),
        "avg_pck_over_classes": (float(np.mean(list(per_class.values())))
                                 if per_class else float("nan")),
        "per_class": per_class,
        "num_pairs": int(ok.sum()),
        "num_skipped": int((~ok).sum()),
    }


# --------------------------------------------------------------------------
# Matching evaluation of predicted transformations (PCK of a theta).

PCK_ALPHAS = (0.05, 0.1, 0.15)


def transfer_keypoints(*, theta: jnp.ndarray, points_b: jnp.ndarray,
                       size_a: Tuple[int, int], size_b: Tuple[int, int],
                       kind: str = "affine_tps") -> jnp.ndarray:
  """B's keypoints carried into A's image by theta warping A onto B.

  CNNGeo / weakalign's PCK protocol: the pull map T_AB sends a point of B's
  frame to its match in A, so B's (target) keypoints are transformed and
  compared with A's. Coordinates are pixels of the *original* images
  (normalised with each image's own size, which is what stretching both to
  the model input does).

  Args:
    theta: [B, P] theta of the pair (A -> B) (``geometry`` conventions;
      [B, 24] for the default ``kind``).
    points_b: [B, N, 2] (x, y) pixels in B (NaN = missing).
    size_a: (H_a, W_a) of A; size_b: (H_b, W_b) of B.
    kind: the theta's geometry kind.

  Returns:
    [B, N, 2] (x, y) pixels in A.
  """
  norm = geometry.pixels_to_normalized(points_b, tuple(size_b))
  mapped = geometry.transform_points(points=jnp.nan_to_num(norm),
                                     theta=theta, kind=kind)
  return geometry.normalized_to_pixels(mapped, tuple(size_a))


def dense_flow(*, theta: jnp.ndarray, src_size: Tuple[int, int],
               dst_size: Tuple[int, int], kind: str = "affine_tps"
               ) -> jnp.ndarray:
  """Flow [H1, W1, 2] (dx, dy pixels) of every pixel of image 1 into image 2.

  TSS's flow-PCK protocol: ``theta`` [24] is the 'affine_tps' theta whose
  point map sends image 1's frame to image 2's, i.e. the theta of the pair
  (2 -> 1) (it warps image 2 onto image 1). Both frames are normalised with
  their own original size, as stretching both to the model input does.

  Args:
    theta: [P] theta of the pair (image 2 -> image 1).
    src_size: (H1, W1) of image 1; dst_size: (H2, W2) of image 2.
    kind: the theta's geometry kind.
  """
  h, w = src_size
  ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  pixels = jnp.stack([xs, ys], -1).astype(jnp.float32).reshape(1, -1, 2)
  points = geometry.transform_points(
      points=geometry.pixels_to_normalized(pixels, (h, w)),
      theta=jnp.asarray(theta)[None], kind=kind)
  target = geometry.normalized_to_pixels(points, tuple(dst_size))[0]
  return target.reshape(h, w, 2) - pixels.reshape(h, w, 2)


def keypoint_pck(*, theta: jnp.ndarray, points_a: jnp.ndarray,
                 points_b: jnp.ndarray, size_a: Tuple[int, int],
                 size_b: Tuple[int, int], alphas: Sequence[float] = PCK_ALPHAS,
                 bbox_a: Optional[jnp.ndarray] = None,
                 kind: str = "affine_tps"):
  """PCK of one batch of pairs at each alpha (PF-PASCAL / PF-WILLOW).

  Args:
    theta: [B, 24] theta warping A onto B.
    points_a, points_b: [B, N, 2] corresponding keypoints (pixels; NaN rows
      are missing and not scored).
    size_a, size_b: original image sizes (H, W).
    alphas: tolerances as fractions of the reference size.
    bbox_a: optional [B, 4] (x0, y0, x1, y1) object box in A; by default the
      bounding box of A's valid keypoints (weakalign's PF-PASCAL L_pck).
    kind: the theta's geometry kind.

  Returns:
    dict alpha -> [B] fraction of A's keypoints within alpha * L.
  """
  valid = jnp.all(jnp.isfinite(points_a) & jnp.isfinite(points_b), axis=-1)
  pred = transfer_keypoints(theta=theta, points_b=points_b, size_a=size_a,
                            size_b=size_b, kind=kind)
  gt = jnp.nan_to_num(points_a)
  if bbox_a is None:
    big = jnp.float32(1e9)
    lo = jnp.min(jnp.where(valid[..., None], gt, big), axis=1)
    hi = jnp.max(jnp.where(valid[..., None], gt, -big), axis=1)
    bbox_a = jnp.concatenate([lo, hi], axis=-1)
  ref = bbox_reference_size(bbox_a)
  return {a: pck(pred_points=pred, gt_points=gt, alpha=a,
                         reference_size=ref, valid=valid) for a in alphas}
