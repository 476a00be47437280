"""Turning soft foreground maps into binary masks: threshold, Otsu, dense CRF, GrabCut.

Co-attention maps (Hsu et al. 2018, Table 4) and MaCoSNet's soft masks are
probabilities in [0, 1]; the papers compare several ways of binarising them.
Everything here runs on the host on one image at a time (NumPy in, NumPy out):

* ``threshold``: ``prob >= t`` (t = 0.5 unless stated).
* ``otsu``: Otsu's threshold computed on the probability map itself (the
  threshold that maximises the between-class variance of the map's 256-bin
  histogram). Written here rather than taken from scikit-image because
  ``threshold_otsu`` returns the first bin of a flat optimum: for a cleanly
  bimodal map (the common case for attention maps) every threshold between
  the two modes is optimal and it picks the one hugging the lower mode; we
  take the middle of the optimal range.
* ``dense_crf``: a fully connected CRF (Krähenbühl & Koltun 2011) through the
  maintained ``pydensecrf2`` package (``pip install coseg_jax[crf]``); unary
  from the map (-log p, -log(1-p)), a Gaussian smoothness kernel and a bilateral
  appearance kernel on the RGB image; the MAP label after mean-field inference.
* ``grabcut``: OpenCV's GrabCut initialised from the map: confident pixels
  (p >= ``sure_fg`` / p <= ``sure_bg``) fixed, the rest "probable" on the side
  of 0.5 they fall; GMM colour models then re-segment the uncertain pixels.

These libraries are used rather than re-implemented: pydensecrf2 wraps the
reference permutohedral-lattice CRF code, OpenCV's GrabCut is the standard
implementation, and scikit-image's Otsu is the textbook histogram method.
"""

from typing import Callable, Dict, Tuple

import cv2
import numpy as np

METHODS = ("threshold", "otsu", "crf", "grabcut")


def _check(image: np.ndarray, prob: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Validates an (image, prob) pair and returns (uint8 HxWx3, float32 HxW)."""
  prob = np.asarray(prob, np.float32)
  if prob.ndim == 3 and prob.shape[-1] == 1:
    prob = prob[..., 0]
  if prob.ndim != 2:
    raise ValueError(f"prob must be [H, W] or [H, W, 1], got shape {prob.shape}")
  if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
    raise ValueError("prob must hold finite probabilities in [0, 1]")
  if image is None:
    return None, prob
  image = np.asarray(image)
  if image.shape[:2] != prob.shape or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"image must be [H, W, 3] matching prob {prob.shape}, "
                     f"got {image.shape}")
  if image.dtype != np.uint8:
    # Float images follow the library convention of [0, 1].
    image = np.clip(np.round(np.asarray(image, np.float64) * 255), 0, 255)
    image = image.astype(np.uint8)
  # A C-contiguous, writeable copy where needed: pydensecrf's typed
  # memoryviews refuse read-only buffers (images decoded by TFDS or taken
  # from a PIL image with np.asarray are read-only).
  return np.require(image, np.uint8, ("C", "W")), prob


def threshold(prob: np.ndarray, *, t: float = 0.5, image=None) -> np.ndarray:
  """Returns the boolean mask ``prob >= t`` ([H, W]); ``image`` is ignored."""
  del image
  _, prob = _check(None, prob)
  return prob >= t


def otsu(prob: np.ndarray, *, image=None, nbins: int = 256) -> np.ndarray:
  """Binarises ``prob`` [H, W] at Otsu's threshold of its own histogram.

  The threshold maximises the between-class variance w0 w1 (mu0 - mu1)^2 over
  the ``nbins`` bin edges spanning [min, max]; when several edges tie (no
  pixel lies between two modes) the middle of the tied range is used. A
  constant map has no between-class variance to maximise; it is then
  thresholded at 0.5 (stated rather than raising, so a blank map gives a blank
  mask).
  """
  del image
  _, prob = _check(None, prob)
  # float64: a nearly constant float32 map (a collapsed co-attention map,
  # range ~1e-6 near 1) has no 256 distinct float32 bin edges.
  prob = np.asarray(prob, np.float64)
  lo, hi = float(prob.min()), float(prob.max())
  if hi - lo < 1e-6:
    return prob >= 0.5
  counts, edges = np.histogram(prob, bins=nbins, range=(lo, hi))
  centers = 0.5 * (edges[:-1] + edges[1:])
  w0 = np.cumsum(counts)[:-1].astype(np.float64)     # mass below edge k+1
  w1 = counts.sum() - w0
  m0 = np.cumsum(counts * centers)[:-1]
  mu0 = m0 / np.maximum(w0, 1)
  mu1 = (np.sum(counts * centers) - m0) / np.maximum(w1, 1)
  between = w0 * w1 * (mu0 - mu1) ** 2
  best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
  # Split at the upper edge of bin k: threshold = edges[k + 1].
  t = 0.5 * (edges[best[0] + 1] + edges[best[-1] + 1])
  return prob > t


def dense_crf(image: np.ndarray, prob: np.ndarray, *, iterations: int = 5,
              gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
              bilateral_sxy: float = 60.0, bilateral_srgb: float = 10.0,
              bilateral_compat: float = 5.0, eps: float = 1e-5) -> np.ndarray:
  """Refines ``prob`` with a fully connected CRF over the RGB ``image``.

  Args:
    image: [H, W, 3] uint8, or float in [0, 1].
    prob: [H, W] foreground probability.
    iterations: mean-field iterations.
    gaussian_sxy, gaussian_compat: spatial smoothness kernel (pixels, weight).
    bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel
      (pixels, intensity levels, weight). Defaults follow the common DeepLab
      settings scaled for ~300-500 px images.
    eps: probability floor so the unary -log p stays finite.

  Returns:
    [H, W] boolean mask (the MAP labelling).
  """
  try:
    import pydensecrf.densecrf as dcrf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("dense CRF post-processing needs pydensecrf2: "
                      "pip install 'coseg_jax[crf]'") from e
  image, prob = _check(image, prob)
  h, w = prob.shape
  p = np.clip(prob, eps, 1.0 - eps)
  unary = -np.log(np.stack([1.0 - p, p]).reshape(2, -1)).astype(np.float32)
  crf = dcrf.DenseCRF2D(w, h, 2)
  crf.setUnaryEnergy(np.ascontiguousarray(unary))
  crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
  crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                           rgbim=image, compat=bilateral_compat)
  q = np.asarray(crf.inference(iterations)).reshape(2, h, w)
  return q[1] > q[0]


def grabcut(image: np.ndarray, prob: np.ndarray, *, iterations: int = 5,
            sure_fg: float = 0.9, sure_bg: float = 0.1) -> np.ndarray:
  """Re-segments ``image`` with OpenCV GrabCut initialised from ``prob``.

  Pixels with p >= ``sure_fg`` are fixed foreground, p <= ``sure_bg`` fixed
  background, the rest probable foreground (p >= 0.5) or probable background.
  GrabCut needs colour samples of both sides: a map with no pixel at or above
  0.5 returns an empty mask, one with no pixel below 0.5 a full mask (the
  colour model would be undefined otherwise).

  Returns:
    [H, W] boolean mask.
  """
  image, prob = _check(image, prob)
  fg = prob >= 0.5
  if not fg.any() or fg.all():
    return fg
  init = np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
  init[prob >= sure_fg] = cv2.GC_FGD
  init[prob <= sure_bg] = cv2.GC_BGD
  bgd_model = np.zeros((1, 65), np.float64)
  fgd_model = np.zeros((1, 65), np.float64)
  # OpenCV expects BGR; the colour models are symmetric in channel order, but
  # keep the documented convention.
  cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), init, None, bgd_model,
              fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
  return (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)


_DISPATCH: Dict[str, Callable[..., np.ndarray]] = {
    "threshold": lambda image, prob, **kw: threshold(prob, **kw),
    "otsu": lambda image, prob, **kw: otsu(prob, **kw),
    "crf": dense_crf,
    "grabcut": grabcut,
}


def binarize(method: str, image: np.ndarray, prob: np.ndarray,
             **kwargs) -> np.ndarray:
  """Applies the post-processing ``method`` (one of ``METHODS``).

  Args:
    method: 'threshold', 'otsu', 'crf' or 'grabcut'.
    image: [H, W, 3] image (uint8 or float in [0, 1]); ignored by threshold
      and otsu.
    prob: [H, W] or [H, W, 1] foreground probability.
    **kwargs: the method's own options.

  Returns:
    [H, W] boolean mask.
  """
  if method not in _DISPATCH:
    raise ValueError(f"unknown post-processing {method!r}; expected one of "
                     f"{METHODS}")
  return np.asarray(_DISPATCH[method](image, prob, **kwargs), bool)
