"""The ImageNet evaluation crop of the real-weight checks (no torch)."""

import numpy as np
from PIL import Image


def imagenet_eval_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
  """[H, W, 3] uint8 -> [size, size, 3] float32 in [0, 1].

  The shorter side goes to ``size + 32`` (PIL bilinear), then the centre
  ``size`` x ``size`` crop: 224 -> 256 is the usual ImageNet evaluation crop;
  the larger Lite models keep TF's 32-pixel margin at their native
  resolution.
  """
  im = Image.fromarray(image)
  w, h = im.size
  s = (size + 32) / min(w, h)
  im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
  w, h = im.size
  left, top = (w - size) // 2, (h - size) // 2
  im = im.crop((left, top, left + size, top + size))
  return np.asarray(im, np.float32) / 255.0
