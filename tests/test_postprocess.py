"""Tests for coseg_jax.postprocess on constructed images with known answers."""

import numpy as np
import pytest
from scipy import ndimage

from coseg_jax import postprocess


def _jaccard(a, b):
  return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def _scene(seed=0, size=64):
  """A red disk on a noisy grey background, and a blurred, shifted prob map."""
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[:size, :size]
  gt = (yy - 30) ** 2 + (xx - 34) ** 2 <= 14 ** 2
  image = np.full((size, size, 3), 90.0) + rng.normal(0, 6, (size, size, 3))
  image[gt] = (200, 40, 40)
  image = np.clip(image, 0, 255).astype(np.uint8)
  # The soft map is displaced by 4 px and blurred: its 0.5 level set is off.
  prob = ndimage.gaussian_filter(np.roll(gt.astype(float), 4, axis=1), 5)
  prob = np.clip(prob * 0.9 + 0.05 + rng.normal(0, 0.02, gt.shape), 0, 1)
  return image, prob, gt


def test_threshold_is_the_plain_level_set():
  prob = np.array([[0.2, 0.5], [0.7, 0.49]])
  np.testing.assert_array_equal(postprocess.threshold(prob),
                                [[False, True], [True, False]])
  np.testing.assert_array_equal(postprocess.threshold(prob, t=0.7),
                                [[False, False], [True, False]])


def test_otsu_splits_a_bimodal_map_that_0_5_cannot():
  rng = np.random.RandomState(1)
  gt = np.zeros((40, 40), bool)
  gt[10:30, 5:25] = True
  prob = np.where(gt, 0.42, 0.12) + rng.normal(0, 0.01, gt.shape)
  assert not postprocess.threshold(prob).any()
  assert _jaccard(postprocess.otsu(prob), gt) == 1.0
  # A constant map falls back to the stated 0.5 rule.
  assert not postprocess.otsu(np.full((4, 4), 0.3)).any()


@pytest.mark.parametrize("method", ["crf", "grabcut"])
def test_image_driven_methods_snap_to_the_object(method):
  image, prob, gt = _scene()
  base = _jaccard(postprocess.threshold(prob), gt)
  refined = _jaccard(postprocess.binarize(method, image, prob), gt)
  assert base < 0.85
  assert refined > 0.9
  assert refined > base + 0.05


def test_grabcut_degenerate_maps():
  image, _, _ = _scene()
  assert not postprocess.grabcut(image, np.zeros((64, 64))).any()
  assert postprocess.grabcut(image, np.ones((64, 64))).all()


def test_crf_accepts_float_images_and_channel_axis():
  image, prob, gt = _scene(seed=2)
  out = postprocess.dense_crf(image.astype(np.float32) / 255.0, prob[..., None])
  assert out.shape == gt.shape and out.dtype == bool
  assert _jaccard(out, gt) > 0.9


@pytest.mark.parametrize("method", ["crf", "grabcut"])
def test_read_only_images_are_accepted(method):
  """Images decoded by TFDS or taken from PIL with np.asarray are read-only;
  pydensecrf refused them (seen in the MaCoSNet TSS evaluation)."""
  image, prob, _ = _scene(seed=3)
  want = postprocess.binarize(method, image.copy(), prob)
  image.setflags(write=False)
  np.testing.assert_array_equal(postprocess.binarize(method, image, prob),
                                want)


def test_errors_name_the_problem():
  image, prob, _ = _scene()
  with pytest.raises(ValueError, match="unknown post-processing"):
    postprocess.binarize("watershed", image, prob)
  with pytest.raises(ValueError, match="matching prob"):
    postprocess.binarize("crf", image[:10], prob)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    postprocess.threshold(prob + 2)


def test_otsu_matches_a_brute_force_search():
  rng = np.random.RandomState(3)
  prob = np.clip(np.concatenate([rng.normal(0.3, 0.08, 300),
                                 rng.normal(0.7, 0.1, 200)]), 0, 1)
  prob = prob.reshape(20, 25)
  # Brute force over thresholds at every distinct value: maximise w0 w1 d^2.
  values = np.unique(prob)
  def score(t):
    a, b = prob[prob <= t], prob[prob > t]
    if not len(a) or not len(b):
      return -1
    return len(a) * len(b) * (a.mean() - b.mean()) ** 2
  best = max(values, key=score)
  ours = postprocess.otsu(prob)
  brute = prob > best
  # Histogram binning may move the split by at most a pixel or two.
  assert np.sum(ours != brute) <= 2


def test_otsu_on_a_nearly_constant_float32_map():
  """A collapsed map (float32, range ~2e-6 near 1) has no 256 distinct
  float32 bin edges; Otsu still splits it (computed in float64)."""
  prob = np.full((8, 8), 0.99, np.float32)
  prob[:, 4:] += np.float32(2e-6)
  out = postprocess.otsu(prob)
  assert out[:, 4:].all() and not out[:, :4].any()
