"""Visualisation: mask overlays, contact sheets and refinement-step strips.

Everything here works on host numpy arrays and returns uint8 RGB images
[H, W, 3]; nothing imports JAX, so the functions can be used on predictions
pulled off any device, in notebooks and in the CLI alike.

Choices:
- An overlay blends a flat colour into the foreground pixels only (alpha 0.5
  by default) and draws the mask contour at full opacity, so that thin
  objects stay visible and the background is left untouched for comparison.
- Contours come from OpenCV's ``findContours`` on the binarised mask (outer
  and inner borders), drawn ``contour_width`` pixels wide.
- Contact sheets place every tile in a cell of the size of the largest tile,
  keeping each tile's aspect ratio (letterboxed on a mid-grey background), so
  images of different sizes can share one sheet without distortion.
- Per-step strips take logits [T, H, W(, 1)] and show the sigmoid
  probabilities of each step as a heat map (OpenCV's JET colour map), one
  labelled tile per refinement step, optionally preceded by the image.
"""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

# A small palette for groups with several masks; the first is the default.
PALETTE = (
    (255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0),
    (200, 80, 255), (0, 220, 220),
)
_BACKGROUND = 128


def to_uint8_image(image: np.ndarray) -> np.ndarray:
  """Converts an image to uint8 RGB [H, W, 3].

  Args:
    image: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; float in [0, 1] or
      uint8 in [0, 255]. Grayscale is repeated, alpha is dropped.

  Returns:
    uint8 array [H, W, 3].
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.asarray(image, np.float64) * 255.0), 0, 255)
    image = image.astype(np.uint8)
  return np.ascontiguousarray(image)


def _binary(mask: np.ndarray, shape: Tuple[int, int],
            threshold: float) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.shape != tuple(shape):
    raise ValueError(f"mask shape {mask.shape} does not match image {shape}")
  if mask.dtype == np.uint8:
    # A dataset mask (0/1 with 255 = ignore) must not show ignore as
    # foreground; a saved 0/255 PNG must.
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1, 255} and 1 in values:
      return mask == 1
    return mask > 127
  return np.asarray(mask, np.float64) >= threshold


def overlay(image: np.ndarray, mask: np.ndarray, *,
            color: Sequence[int] = PALETTE[0], alpha: float = 0.5,
            contour_width: int = 2, threshold: float = 0.5) -> np.ndarray:
  """Blends a coloured mask and its contour onto an image.

  Args:
    image: [H, W, C] image (see ``to_uint8_image``).
    mask: [H, W] or [H, W, 1]; float probabilities (thresholded at
      ``threshold``), bool, or uint8 (0/255, or 0/1 with 255 = ignore).
    color: RGB colour of the fill and contour.
    alpha: opacity of the fill over foreground pixels.
    contour_width: contour thickness in pixels (0 = no contour).
    threshold: foreground threshold for float masks.

  Returns:
    uint8 RGB image [H, W, 3].
  """
  base = to_uint8_image(image)
  fg = _binary(mask, base.shape[:2], threshold)
  out = base.astype(np.float32)
  colour = np.asarray(color, np.float32)
  out[fg] = (1.0 - alpha) * out[fg] + alpha * colour
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  if contour_width > 0 and fg.any():
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST,
                                   cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color),
                     contour_width)
  return out


def _fit(tile: np.ndarray, cell_h: int, cell_w: int) -> np.ndarray:
  """Resizes a tile to fit a cell keeping its aspect ratio, letterboxed."""
  h, w = tile.shape[:2]
  scale = min(cell_h / h, cell_w / w)
  new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
  if (new_h, new_w) != (h, w):
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    tile = cv2.resize(tile, (new_w, new_h), interpolation=interp)
  cell = np.full((cell_h, cell_w, 3), _BACKGROUND, np.uint8)
  top, left = (cell_h - new_h) // 2, (cell_w - new_w) // 2
  cell[top:top + new_h, left:left + new_w] = tile
  return cell


def _label(tile: np.ndarray, text: str) -> np.ndarray:
  """Writes ``text`` in the top-left corner of a tile (white on black)."""
  tile = np.ascontiguousarray(tile.copy())
  scale = max(0.3, min(tile.shape[:2]) / 256.0)
  (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
  cv2.rectangle(tile, (0, 0), (tw + 4, th + base + 4), (0, 0, 0), -1)
  cv2.putText(tile, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
              (255, 255, 255), 1, cv2.LINE_AA)
  return tile


def contact_sheet(tiles: Sequence[np.ndarray], *, columns: Optional[int] = None,
                  cell_size: Optional[Tuple[int, int]] = None,
                  labels: Optional[Sequence[str]] = None,
                  padding: int = 4) -> np.ndarray:
  """Arranges images in a grid.

  Args:
    tiles: images of any sizes (see ``to_uint8_image``).
    columns: grid columns; default ceil(sqrt(n)).
    cell_size: (height, width) of one cell; default the largest tile's
      height and width.
    labels: optional caption per tile.
    padding: pixels between cells (and around the sheet).

  Returns:
    uint8 RGB image [rows * (ch + p) + p, cols * (cw + p) + p, 3].
  """
  tiles = [to_uint8_image(t) for t in tiles]
  if not tiles:
    raise ValueError("contact_sheet needs at least one tile")
  if labels is not None and len(labels) != len(tiles):
    raise ValueError(f"{len(labels)} labels for {len(tiles)} tiles")
  n = len(tiles)
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  if cell_size is None:
    cell_size = (max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles))
  ch, cw = cell_size
  sheet = np.full((rows * (ch + padding) + padding,
                   columns * (cw + padding) + padding, 3), 255, np.uint8)
  for i, tile in enumerate(tiles):
    cell = _fit(tile, ch, cw)
    if labels is not None and labels[i]:
      cell = _label(cell, labels[i])
    r, c = divmod(i, columns)
    top, left = padding + r * (ch + padding), padding + c * (cw + padding)
    sheet[top:top + ch, left:left + cw] = cell
  return sheet


def heatmap(prob: np.ndarray) -> np.ndarray:
  """Colours a probability map [H, W] in [0, 1] with the JET colour map."""
  prob = np.asarray(prob, np.float64)
  if prob.ndim == 3 and prob.shape[-1] == 1:
    prob = prob[..., 0]
  grey = np.clip(np.round(prob * 255.0), 0, 255).astype(np.uint8)
  return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET),
                      cv2.COLOR_BGR2RGB)


def step_strip(step_logits: np.ndarray, *, image: Optional[np.ndarray] = None,
               padding: int = 4) -> np.ndarray:
  """One row showing each refinement step's foreground probability.

  Args:
    step_logits: [T, H, W] or [T, H, W, 1] logits, one per step (e.g.
      CycleSegNet's per-step decoder outputs for one image).
    image: optional [H', W', C] image shown as the first tile.
    padding: pixels between tiles.

  Returns:
    uint8 RGB image with T (+1) labelled tiles in one row.
  """
  logits = np.asarray(step_logits, np.float64)
  if logits.ndim == 4 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.ndim != 3:
    raise ValueError(f"expected step logits [T, H, W(, 1)], got {logits.shape}")
  probs = 1.0 / (1.0 + np.exp(-logits))
  tiles = [heatmap(p) for p in probs]
  labels = [f"step {t + 1}" for t in range(len(tiles))]
  if image is not None:
    tiles.insert(0, to_uint8_image(image))
    labels.insert(0, "image")
  return contact_sheet(tiles, columns=len(tiles), labels=labels,
                       cell_size=tiles[-1].shape[:2], padding=padding)
