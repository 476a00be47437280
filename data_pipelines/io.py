"""Robust reading of images, masks and optical flow for the dataset builders.

Every rule about "bad input" lives here, in one place, and the builders refer
to it. Errors are `BadInputError` (a `ValueError`) and always name the file(s).

Images (`read_image`, `image_feature_bytes`):
  * A file that PIL cannot open, or whose pixel data is truncated or corrupt,
    is refused (PIL's `LOAD_TRUNCATED_IMAGES` is never enabled).
  * 8-bit RGB is kept. Grayscale ('L', '1') is replicated to 3 channels.
  * Palette ('P') images are expanded through their palette to RGB.
  * Alpha ('RGBA', 'LA', 'PA', palette with transparency) is DROPPED: the
    stored colour is kept, not composited on any background. This is what
    OpenCV/PIL `convert('RGB')` based reference loaders do, so pixels match
    published pipelines; none of the benchmarks uses alpha for the object.
  * 16-bit files are reduced to 8 bits by keeping the high byte,
    v8 = v16 >> 8: PIL does exactly this itself when it opens a 16-bit RGB
    PNG, and OpenCV's 16->8-bit colour conversion does the same, so 16-bit
    grayscale ('I;16*', 'I' holding 16-bit values) follows the same rule
    before being replicated to 3 channels.
  * CMYK / YCbCr / LAB are converted to RGB by PIL; float images ('F') and
    anything else are refused.
  * For a TFDS `Image` feature the original file bytes are stored when the
    file is already an 8-bit RGB JPEG or PNG (no re-encoding, no size blow-up);
    otherwise (16-bit PNG, grayscale, palette, alpha, BMP...) the converted
    pixels are stored as lossless PNG bytes. EXIF orientation is ignored
    (pixels are stored as encoded), as by the reference loaders.

Masks (`read_mask`), converted to uint8 {0 = background, 1 = foreground} plus
255 = ignore where the dataset has an ignore label:
  * Palette ('P') masks are read as palette INDICES, never through the
    palette colours (VOC SegmentationClass, TSS/JODS).
  * RGB / RGBA masks must have identical R, G, B channels (alpha ignored);
    otherwise refused. A 16-bit mask whose values all fit in 0..255 (e.g.
    {0,1} or {0,255} in a 16-bit file) keeps its values; otherwise it is
    reduced to 8 bits by the high byte (so {0,65535} -> {0,255}).
  * `mode='binary'` (default): values {0,1} are kept, {0,255} map 255 -> 1
    (an all-zero mask is a valid empty mask, an all-255 one a full mask);
    any other value set is refused naming the file and the values found.
  * `mode='threshold'`: v >= 128 -> 1, else 0, for datasets documented to
    contain anti-aliased/intermediate values (TSS FG3DCar); a {0,1} mask is
    kept as is (max <= 1), so a palette {0,1} mask is not wiped out.
  * `mode='index'`: raw class indices kept (VOC: 0..20 and 255 void); values
    outside `valid_indices` are refused.
  * An image and its mask must have the same size; a mismatch is refused
    naming both files (never silently resized).
  * A missing mask file is refused naming the expected path.

Flow (`read_flo`, `write_flo`): Middlebury `.flo` = float32 magic 202021.25,
int32 width, int32 height, then H*W*2 float32 (u, v) row-major, little-endian.
The magic number and the exact file size are checked. "Unknown" flow is stored
as a huge value (1e10 in TSS): any pixel with |u| > 1e9 or |v| > 1e9 is
returned as NaN in BOTH components; `write_flo` writes NaN back as 1e10, so a
read -> write -> read round trip is exact.
"""

from __future__ import annotations

import io as _io
import os
from typing import Iterable, Literal

import numpy as np
from PIL import Image

FLO_MAGIC = np.float32(202021.25)
FLO_UNKNOWN_THRESHOLD = 1e9
FLO_UNKNOWN_VALUE = np.float32(1e10)
MASK_THRESHOLD = 128
IGNORE = 255


class BadInputError(ValueError):
  """A dataset file that cannot be used; the message names the file(s)."""


def _open(path) -> Image.Image:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise BadInputError(f"Missing file: {path}")
  try:
    img = Image.open(path)
    img.load()  # Forces full decoding: truncated data raises here.
  except Exception as e:  # PIL raises several unrelated types.
    raise BadInputError(
        f"Corrupt or truncated image file {path}: {type(e).__name__}: {e}"
    ) from e
  return img


def _to_uint8_from_16bit(arr: np.ndarray, path) -> np.ndarray:
  if arr.size and (arr.min() < 0 or arr.max() > 65535):
    raise BadInputError(f"Unsupported integer range [{arr.min()}, "
                        f"{arr.max()}] in {path} (expected 16-bit)")
  return (arr >> 8).astype(np.uint8)


def _image_to_rgb_array(img: Image.Image, path) -> np.ndarray:
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, dtype=np.uint8)
  if mode in ("L", "1"):
    gray = np.asarray(img.convert("L"), dtype=np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode.startswith("I"):  # 'I;16', 'I;16B', 'I;16L', 'I'
    gray = _to_uint8_from_16bit(np.asarray(img).astype(np.int64), path)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode in ("RGBA", "LA", "PA", "P", "CMYK", "YCbCr", "LAB", "RGBX", "La",
              "RGBa"):
    # convert('RGB') drops alpha (documented rule) and expands palettes.
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
  raise BadInputError(f"Unsupported image mode {mode!r} in {path}")


def read_image(path) -> np.ndarray:
  """Reads an image as uint8 RGB [H, W, 3] following the module's rules."""
  return _image_to_rgb_array(_open(path), path)


def encode_png(array: np.ndarray) -> bytes:
  """Lossless PNG bytes of a uint8 [H, W] / [H, W, 1] / [H, W, 3] array."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise TypeError(f"encode_png expects uint8, got {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  buf = _io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def image_feature_bytes(path) -> tuple[bytes, tuple[int, int]]:
  """Bytes for a TFDS `Image(shape=(None, None, 3))` feature, plus (H, W).

  The file is always fully decoded (so corrupt files are refused here, at
  build time). An 8-bit RGB JPEG/PNG is stored as its original bytes; any
  other file is converted by the module's rules and stored as PNG.
  """
  img = _open(path)
  arr = _image_to_rgb_array(img, path)
  with open(os.fspath(path), "rb") as f:
    data = f.read()
  keep = img.mode == "RGB" and (
      img.format == "JPEG" or
      # PNG IHDR: bit depth at byte 24, colour type at 25 (2 = truecolour).
      (img.format == "PNG" and data[24] == 8 and data[25] == 2))
  if not keep:
    data = encode_png(arr)
  return data, arr.shape[:2]


def _mask_values(img: Image.Image, path) -> np.ndarray:
  mode = img.mode
  if mode == "P":
    return np.asarray(img, dtype=np.uint8)  # palette indices
  if mode == "L":
    return np.asarray(img, dtype=np.uint8)
  if mode == "1":
    return np.asarray(img, dtype=np.uint8)  # bool -> {0, 1}
  if mode.startswith("I"):
    arr = np.asarray(img).astype(np.int64)
    if arr.size and arr.min() >= 0 and arr.max() <= 255:
      return arr.astype(np.uint8)  # small labels in a 16-bit container
    return _to_uint8_from_16bit(arr, path)
  if mode in ("RGB", "RGBA", "LA"):
    arr = np.asarray(img, dtype=np.uint8)
    if mode == "LA":
      return arr[..., 0]
    rgb = arr[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1])
            and np.array_equal(rgb[..., 0], rgb[..., 2])):
      raise BadInputError(
          f"Colour mask {path}: R, G and B channels differ; expected a "
          f"grayscale mask (identical channels) or a palette PNG")
    return rgb[..., 0]
  raise BadInputError(f"Unsupported mask mode {mode!r} in {path}")


MaskMode = Literal["binary", "threshold", "index"]


def read_mask(path, *, mode: MaskMode = "binary",
              valid_indices: Iterable[int] | None = None) -> np.ndarray:
  """Reads a mask as uint8 [H, W] following the module's rules.

  Args:
    path: the mask file.
    mode: 'binary' ({0,1} or {0,255} -> {0,1}), 'threshold' (>= 128 -> 1),
      or 'index' (raw palette/gray indices).
    valid_indices: for mode='index', the allowed values (e.g. 0..20, 255).

  Returns:
    uint8 [H, W]: {0, 1} for 'binary'/'threshold', indices for 'index'.

  Raises:
    BadInputError: missing/corrupt file, unsupported mode, differing colour
      channels, or values the chosen rule does not accept.
  """
  img = _open(path)
  values = _mask_values(img, path)
  present = np.unique(values)
  if mode == "index":
    if valid_indices is not None:
      bad = np.setdiff1d(present, np.asarray(list(valid_indices)))
      if bad.size:
        raise BadInputError(f"Mask {path} has indices {bad.tolist()} outside "
                            f"the dataset's label set")
    return values
  if mode == "threshold":
    if present.size and present.max() <= 1:
      return values.astype(np.uint8)
    return (values >= MASK_THRESHOLD).astype(np.uint8)
  if mode == "binary":
    if set(present.tolist()) <= {0, 1}:
      return values.astype(np.uint8)
    if set(present.tolist()) <= {0, 255}:
      return (values == 255).astype(np.uint8)
    raise BadInputError(
        f"Mask {path} has values {present[:10].tolist()}"
        f"{'...' if present.size > 10 else ''}; expected {{0,1}} or "
        f"{{0,255}} (intermediate values are only thresholded where a "
        f"dataset documents them)")
  raise ValueError(f"Unknown mask mode {mode!r}")


def check_same_size(image_path, image_hw, mask_path, mask_hw) -> None:
  """Refuses an image/mask pair of different sizes, naming both files."""
  if tuple(image_hw) != tuple(mask_hw):
    raise BadInputError(
        f"Size mismatch: image {image_path} is {tuple(image_hw)} (H, W) but "
        f"mask {mask_path} is {tuple(mask_hw)}; masks are never resized")


def mask_feature_bytes(mask: np.ndarray) -> bytes:
  """PNG bytes for a TFDS `Image(shape=(None, None, 1))` mask feature."""
  return encode_png(np.asarray(mask, dtype=np.uint8))


def read_flo(path) -> np.ndarray:
  """Reads a Middlebury .flo file as float32 [H, W, 2] (u, v); unknown = NaN.

  Raises:
    BadInputError: missing file, wrong magic number, or a size that does not
      match the header.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise BadInputError(f"Missing flow file: {path}")
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 12:
    raise BadInputError(f"Flow file {path} is too short for a .flo header")
  magic = np.frombuffer(data, "<f4", count=1)[0]
  if magic != FLO_MAGIC:
    raise BadInputError(f"Flow file {path}: magic number {magic} != "
                        f"{float(FLO_MAGIC)} (not a Middlebury .flo file)")
  w, h = (int(x) for x in np.frombuffer(data, "<i4", count=2, offset=4))
  expected = 12 + 4 * 2 * w * h
  if w <= 0 or h <= 0 or len(data) != expected:
    raise BadInputError(f"Flow file {path}: header says {w}x{h} "
                        f"({expected} bytes) but the file has {len(data)}")
  flow = np.frombuffer(data, "<f4", offset=12).reshape(h, w, 2).astype(
      np.float32)
  unknown = np.any(np.abs(flow) > FLO_UNKNOWN_THRESHOLD, axis=-1)
  flow[unknown] = np.nan
  return flow


def write_flo(path, flow: np.ndarray) -> None:
  """Writes float32 [H, W, 2] as Middlebury .flo; NaN is written as 1e10."""
  flow = np.asarray(flow, dtype=np.float32)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f"flow must be [H, W, 2], got {flow.shape}")
  h, w = flow.shape[:2]
  out = np.where(np.isnan(flow), FLO_UNKNOWN_VALUE, flow).astype("<f4")
  with open(os.fspath(path), "wb") as f:
    f.write(np.asarray([FLO_MAGIC], "<f4").tobytes())
    f.write(np.asarray([w, h], "<i4").tobytes())
    f.write(out.tobytes())
