"""Paired geometric augmentation and resizing (NumPy / OpenCV).

One record's image, mask and validity map are moved by the SAME affine map:
the random augmentation (scale, crop/placement, horizontal flip, rotation) and
the final resize to the model input are composed into one 2x3 matrix and
applied with a single ``cv2.warpAffine`` per map: the image bilinearly, the
label map with nearest neighbour. Composing avoids resampling twice.

Label convention: records carry masks in {0, 1, 255} (binarisation per data
set is done upstream by the builders), 255 = ignore. The label map is warped
with border value 255, so pixels that come from outside the source image
(rotation corners, zoom-out or keep-aspect padding) become ignore as well;
then ``mask = (label == 1)`` and ``valid = (label != 255)``.

Resize modes:
  * 'stretch': each axis scaled independently to the target size.
  * 'pad' (DOCS style keep-aspect-and-pad): one scale factor
    ``min(H_out / H, W_out / W)``, content placed at the TOP-LEFT corner and the
    bottom/right remainder padded (zeros in the image, invalid in ``valid``).
    Top-left placement makes mapping predictions back a plain crop
    ``[:h_content, :w_content]`` followed by a resize.

Coordinates follow OpenCV's pixel-centre convention: a scale ``s`` maps
``x -> (x + 0.5) * s - 0.5``, which is what ``cv2.resize`` does, so a pure
resize through this module matches ``cv2.resize`` exactly.

Choices the papers leave open: scale range, rotation range, and the crop rule
(after zooming by s the output window is moved uniformly within
``+-|s - 1| * size / 2`` of the centre, i.e. a random crop when zooming in and
a random placement when zooming out) are config fields (``augment.*``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import cv2
import numpy as np

IGNORE = 255
RESIZE_MODES = ("stretch", "pad")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Augmentation ranges.

  Attributes:
    scale_range: (min, max) zoom factor, drawn log-uniformly.
    max_rotation_deg: rotation drawn uniformly in +-this (degrees).
    flip_prob: probability of a horizontal flip.
    crop: whether to move the window (random crop / placement) after zooming.
  """
  scale_range: tuple[float, float] = (0.75, 1.25)
  max_rotation_deg: float = 15.0
  flip_prob: float = 0.5
  crop: bool = True


@dataclasses.dataclass(frozen=True)
class ResizeInfo:
  """What is needed to map a model-resolution prediction back.

  Attributes:
    orig_size: (H, W) of the original image.
    input_size: (H_out, W_out) of the model input.
    content_size: (h, w) of the image content inside the input (top-left);
      equal to ``input_size`` for 'stretch'.
    mode: 'stretch' or 'pad'.
  """
  orig_size: tuple[int, int]
  input_size: tuple[int, int]
  content_size: tuple[int, int]
  mode: str


def _as_hw(size) -> tuple[int, int]:
  if np.isscalar(size):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _scale_matrix(sx, sy):
  """Pixel-centre scaling x -> (x + .5) sx - .5 as a 3x3 matrix."""
  return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5],
                   [0, 0, 1]], np.float64)


def resize_matrix(in_hw, out_hw, mode: str):
  """3x3 forward matrix (input px -> output px) and the content size."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got "
                     f"{mode!r}")
  (h, w), (oh, ow) = in_hw, out_hw
  if mode == "stretch":
    return _scale_matrix(ow / w, oh / h), (oh, ow)
  r = min(oh / h, ow / w)
  ch, cw = min(oh, max(1, round(h * r))), min(ow, max(1, round(w * r)))
  # Scale so that the content spans exactly ch x cw pixels.
  return _scale_matrix(cw / w, ch / h), (ch, cw)


def random_matrix(rng: np.random.Generator, hw, params: AugmentParams):
  """3x3 forward matrix of one random augmentation on an (H, W) canvas."""
  h, w = hw
  lo, hi = params.scale_range
  s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  theta = np.deg2rad(rng.uniform(-params.max_rotation_deg,
                                 params.max_rotation_deg))
  flip = rng.random() < params.flip_prob
  if params.crop:
    shift = rng.uniform(-1, 1, 2) * abs(s - 1) * np.array([w, h]) / 2
  else:
    shift = np.zeros(2)
  c = np.array([(w - 1) / 2, (h - 1) / 2])
  to_centre = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1]], float)
  fl = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
  cs, sn = np.cos(theta), np.sin(theta)
  rot_scale = np.array([[s * cs, -s * sn, 0], [s * sn, s * cs, 0], [0, 0, 1]])
  back = np.array([[1, 0, c[0] + shift[0]], [0, 1, c[1] + shift[1]],
                   [0, 0, 1]])
  return back @ rot_scale @ fl @ to_centre


def warp_record(image: np.ndarray, label: Optional[np.ndarray],
                matrix: np.ndarray, out_hw):
  """Applies one forward 3x3 ``matrix`` to an image and its label map.

  Args:
    image: uint8 or float32 [H, W, 3].
    label: uint8 [H, W] or [H, W, 1] in {0, 1, 255} (or class indices with 255
      void), or None.
    matrix: 3x3 forward matrix (source px -> output px).
    out_hw: (H_out, W_out).

  Returns:
    ``(image, label)``: image of the input dtype [H_out, W_out, 3] (bilinear,
    zeros where the nearest source pixel is outside the source), label uint8 [H_out, W_out] (nearest, 255
    outside the source) or None.
  """
  oh, ow = out_hw
  m = np.asarray(matrix, np.float64)[:2]
  # Replicated borders keep the half-pixel rim of a plain resize identical to
  # cv2.resize; pixels whose nearest source pixel lies outside the image are
  # then blacked out (the same rule that makes them ignore in the label).
  img = cv2.warpAffine(image, m, (ow, oh), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
  if img.ndim == 2:
    img = img[..., None]
  inside = cv2.warpAffine(np.ones(image.shape[:2], np.uint8), m, (ow, oh),
                          flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  if not inside.all():
    img[inside == 0] = 0
  lab = None
  if label is not None:
    label = np.asarray(label)
    if label.ndim == 3:
      label = label[..., 0]
    lab = cv2.warpAffine(np.ascontiguousarray(label, np.uint8), m, (ow, oh),
                         flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
  return img, lab


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Maps float [N, 2] (x, y) pixel points through a 3x3 forward matrix."""
  p = np.asarray(points, np.float64)
  out = p @ matrix[:2, :2].T + matrix[:2, 2]
  return out.astype(np.float32)


def process_record(image, label, *, out_size, resize: str = "stretch",
                   rng: Optional[np.random.Generator] = None,
                   params: Optional[AugmentParams] = None):
  """Augments (when ``rng`` and ``params`` are given) and resizes one record.

  Args:
    image: uint8 [H, W, 3] (grayscale [H, W] / [H, W, 1] is repeated to RGB).
    label: uint8 [H, W(, 1)] in {0, 1, 255}, or None (all foreground unknown:
      mask 0, valid 1 inside the image).
    out_size: int or (H_out, W_out).
    resize: 'stretch' or 'pad'.
    rng: numpy Generator for the random augmentation; None = no augmentation.
    params: augmentation ranges.

  Returns:
    dict with ``image`` float32 [H_out, W_out, 3] in [0, 1], ``mask`` float32
    [H_out, W_out, 1] in {0, 1}, ``valid`` float32 [H_out, W_out, 1] in {0, 1},
    ``label`` the warped uint8 label map [H_out, W_out] (255 outside the
    source; a class map passed as ``label`` keeps its class indices),
    ``matrix`` the 3x3 forward matrix used, and ``info`` (:class:`ResizeInfo`).
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
  h, w = image.shape[:2]
  if label is None:
    label = np.zeros((h, w), np.uint8)
  elif np.asarray(label).shape[:2] != (h, w):
    raise ValueError(f"mask size {np.asarray(label).shape[:2]} differs from "
                     f"image size {(h, w)}")
  out_hw = _as_hw(out_size)
  aug = np.eye(3)
  if rng is not None and params is not None:
    aug = random_matrix(rng, (h, w), params)
  rm, content = resize_matrix((h, w), out_hw, resize)
  matrix = rm @ aug
  img, lab = warp_record(image, label, matrix, out_hw)
  info = ResizeInfo((h, w), out_hw, content, resize)
  return {
      "image": img.astype(np.float32) / (255.0 if img.dtype == np.uint8
                                         else 1.0),
      "mask": (lab == 1).astype(np.float32)[..., None],
      "valid": (lab != IGNORE).astype(np.float32)[..., None],
      "label": lab,
      "matrix": matrix,
      "info": info,
  }


def restore_prediction(pred: np.ndarray, info: ResizeInfo) -> np.ndarray:
  """Maps a model-resolution map back to the original image size.

  Args:
    pred: float [H_out, W_out] or [H_out, W_out, C] (probabilities or logits);
      a single channel [H_out, W_out, 1] is squeezed.
    info: the :class:`ResizeInfo` of the preprocessing.

  Returns:
    float32 [H, W] (one channel) or [H, W, C] at ``info.orig_size``
    (bilinear).
  """
  pred = np.asarray(pred, np.float32)
  squeeze = pred.ndim == 3 and pred.shape[-1] == 1
  if squeeze:
    pred = pred[..., 0]
  if tuple(pred.shape[:2]) != tuple(info.input_size):
    raise ValueError(f"prediction size {pred.shape[:2]} != model input size "
                     f"{info.input_size}")
  ch, cw = info.content_size
  crop = pred[:ch, :cw]
  h, w = info.orig_size
  out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
  if pred.ndim == 3 and out.ndim == 2:
    out = out[..., None]
  return out


def as_float_image(image: np.ndarray) -> np.ndarray:
  """uint8 / float image [H, W(, C)] -> float32 RGB [H, W, 3] in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return np.asarray(image, np.float32)


def preprocess_image(image: np.ndarray, *, image_size, resize: str = "stretch"
                     ) -> tuple[np.ndarray, ResizeInfo]:
  """Maps an original image to the model input exactly as training does.

  Evaluation, prediction and the figures all go through this function, so a
  model sees its inputs at inference as the data pipeline showed them.

  Args:
    image: [H, W, 3] uint8 or float in [0, 1] (grayscale is repeated).
    image_size: int or (height, width) of the model input.
    resize: 'stretch' (each axis scaled) or 'pad' (keep aspect, content at
      the top-left, zeros elsewhere).

  Returns:
    (float32 [h, w, 3] in [0, 1], the :class:`ResizeInfo` that
    :func:`restore_prediction` needs to map a prediction back).
  """
  if resize not in RESIZE_MODES:
    raise ValueError(f"data.resize must be one of {RESIZE_MODES}, got "
                     f"{resize!r}")
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(as_float_image(image) * 255.0), 0, 255)
    image = image.astype(np.uint8)
  out = process_record(image, None, out_size=image_size, resize=resize)
  return out["image"], out["info"]
