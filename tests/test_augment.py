"""Tests of data_pipelines.augment: image and mask move together."""

import cv2
import numpy as np
import pytest

from data_pipelines import augment


def _blocks(h=48, w=40, seed=0):
  """A label map of axis-aligned blocks (0/1) with a 255 ignore square."""
  rng = np.random.default_rng(seed)
  lab = np.zeros((h, w), np.uint8)
  for _ in range(4):
    y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
    lab[y:y + rng.integers(6, 14), x:x + rng.integers(6, 14)] = 1
  lab[2:8, 2:8] = 255
  return lab


def _reference_nearest(lab, matrix, out_hw):
  """float64 reference: inverse-map each output pixel, nearest source pixel.

  Returns the reference label map (255 outside the source) and a mask of the
  pixels whose source coordinate is not within 1e-3 of a rounding tie.
  """
  inv = np.linalg.inv(matrix)
  oh, ow = out_hw
  yy, xx = np.mgrid[:oh, :ow].astype(np.float64)
  sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
  sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
  ix, iy = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
  inside = (ix >= 0) & (iy >= 0) & (ix < lab.shape[1]) & (iy < lab.shape[0])
  ref = np.full(out_hw, 255, np.uint8)
  ref[inside] = lab[iy[inside], ix[inside]]
  safe = ((np.abs(sx - np.round(sx) - 0.5) > 1e-3)
          & (np.abs(sy - np.round(sy) - 0.5) > 1e-3)
          & (np.abs(sx - np.round(sx) + 0.5) > 1e-3)
          & (np.abs(sy - np.round(sy) + 0.5) > 1e-3))
  return ref, safe


PARAMS = augment.AugmentParams(scale_range=(0.7, 1.4), max_rotation_deg=30,
                               flip_prob=0.5, crop=True)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize("seed", range(6))
def test_mask_matches_float64_reference_of_the_same_transform(seed, resize):
  lab = _blocks(seed=seed)
  image = np.zeros(lab.shape + (3,), np.uint8)
  out = augment.process_record(image, lab, out_size=(32, 36), resize=resize,
                               rng=np.random.default_rng(seed), params=PARAMS)
  ref, safe = _reference_nearest(lab, out["matrix"], (32, 36))
  m, v = out["mask"][..., 0], out["valid"][..., 0]
  np.testing.assert_array_equal(m[safe], (ref[safe] == 1).astype(np.float32))
  np.testing.assert_array_equal(v[safe], (ref[safe] != 255).astype(np.float32))


@pytest.mark.parametrize("seed", range(8))
def test_mask_painted_into_image_stays_aligned(seed):
  lab = _blocks(seed=seed + 10)
  lab[lab == 255] = 0
  # The mask painted into the image: red where mask, plus a green ramp that
  # ties image content to position.
  image = np.zeros(lab.shape + (3,), np.uint8)
  image[..., 0] = lab * 255
  image[..., 1] = np.linspace(0, 255, lab.shape[1])[None].astype(np.uint8)
  out = augment.process_record(image, lab, out_size=40, resize="stretch",
                               rng=np.random.default_rng(seed), params=PARAMS)
  red = out["image"][..., 0]
  m, v = out["mask"][..., 0], out["valid"][..., 0]
  # Two output pixels away from any edge (zoom-out makes one output pixel
  # span up to ~1.8 source pixels, and the bilinear support is 2x2 pixels),
  # bilinear red is exactly 1 inside the mask and 0 outside: a mask shifted
  # or flipped differently from the image fails this.
  k5 = np.ones((5, 5), np.uint8)
  inner = cv2.erode(m, k5) > 0
  outer = cv2.dilate(m, k5) == 0
  vin = cv2.erode(v, k5) > 0
  assert inner.any()
  np.testing.assert_allclose(red[inner & vin], 1.0, atol=1e-6)
  np.testing.assert_allclose(red[outer & vin], 0.0, atol=1e-6)
  # Pixels outside the source are black and invalid.
  assert np.all(out["image"][v == 0] <= 1.0)
  assert np.all(out["image"][cv2.dilate(v, np.ones((3, 3), np.uint8)) == 0]
                == 0)


def test_flip_only_is_an_exact_mirror():
  lab = _blocks(seed=3)
  image = np.random.default_rng(0).integers(0, 256, lab.shape + (3,),
                                            dtype=np.uint8)
  params = augment.AugmentParams(scale_range=(1.0, 1.0), max_rotation_deg=0,
                                 flip_prob=1.0, crop=False)
  out = augment.process_record(image, lab, out_size=lab.shape, rng=
                               np.random.default_rng(0), params=params)
  np.testing.assert_allclose(out["image"], image[:, ::-1] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(out["mask"][..., 0], lab[:, ::-1] == 1)
  np.testing.assert_array_equal(out["valid"][..., 0], lab[:, ::-1] != 255)


def test_no_augmentation_stretch_matches_cv2_resize():
  image = np.random.default_rng(1).random((30, 50, 3)).astype(np.float32)
  out = augment.process_record(image, None, out_size=(24, 64),
                               resize="stretch")
  ref = cv2.resize(image, (64, 24), interpolation=cv2.INTER_LINEAR)
  # warpAffine interpolates with 5-bit fixed-point weights.
  np.testing.assert_allclose(out["image"], ref, atol=0.04)
  assert out["valid"].all() and not out["mask"].any()


def test_pad_keeps_aspect_marks_padding_invalid_and_restores():
  h, w = 30, 60
  yy, xx = np.mgrid[:h, :w]
  image = np.stack([xx / w, yy / h, 0 * xx], -1).astype(np.float32)
  lab = (xx > 30).astype(np.uint8)
  out = augment.process_record(image, lab, out_size=32, resize="pad")
  info = out["info"]
  assert info.content_size == (16, 32) and info.orig_size == (h, w)
  v = out["valid"][..., 0]
  assert v[:16].all() and not v[16:].any()
  assert not out["image"][16:].any() and not out["mask"][16:].any()
  # A prediction equal to the resized mask maps back to the original mask.
  back = augment.restore_prediction(out["mask"][..., 0], info)
  assert back.shape == (h, w)
  assert np.mean((back > 0.5) == (lab == 1)) > 0.97
  # Smooth content round-trips closely.
  back_img = augment.restore_prediction(out["image"], info)
  np.testing.assert_allclose(back_img[2:-2, 2:-2], image[2:-2, 2:-2],
                             atol=0.05)


def test_ignore_label_is_carried():
  lab = np.zeros((20, 20), np.uint8)
  lab[5:15, 5:15] = 1
  lab[8:12, :] = 255
  out = augment.process_record(np.zeros((20, 20, 3), np.uint8), lab,
                               out_size=20)
  np.testing.assert_array_equal(out["valid"][..., 0], lab != 255)
  np.testing.assert_array_equal(out["mask"][..., 0], lab == 1)


def test_points_follow_the_image():
  image = np.zeros((40, 50, 3), np.float32)
  image[13, 31] = 1.0
  rng = np.random.default_rng(4)
  params = augment.AugmentParams((0.9, 1.1), 20, 0.5, True)
  for _ in range(5):
    out = augment.process_record(image, None, out_size=(60, 60), rng=rng,
                                 params=params)
    p = augment.transform_points(np.array([[31.0, 13.0]]), out["matrix"])[0]
    y, x = np.unravel_index(np.argmax(out["image"][..., 0]), (60, 60))
    assert abs(x - p[0]) <= 1 and abs(y - p[1]) <= 1


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="differs from image size"):
    augment.process_record(np.zeros((10, 10, 3), np.uint8),
                           np.zeros((9, 10), np.uint8), out_size=8)
  with pytest.raises(ValueError, match="resize mode"):
    augment.process_record(np.zeros((10, 10, 3), np.uint8), None, out_size=8,
                           resize="crop")
  gray = augment.process_record(np.full((10, 10), 255, np.uint8), None,
                                out_size=8)
  assert gray["image"].shape == (8, 8, 3)
  np.testing.assert_allclose(gray["image"], 1.0)
