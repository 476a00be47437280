"""coseg_jax.runtime.viz: exact pixel values of overlays and sheet layout."""

import numpy as np
import pytest

from coseg_jax.runtime import figures
from coseg_jax.runtime import viz


def _image(h=20, w=30):
  rng = np.random.default_rng(0)
  return rng.uniform(size=(h, w, 3))


def test_to_uint8_image_conversions():
  grey = np.array([[0.0, 1.0], [0.5, 0.25]])
  out = viz.to_uint8_image(grey)
  assert out.shape == (2, 2, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 64]])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  rgba = np.zeros((3, 4, 4), np.uint8)
  rgba[..., 1] = 7
  rgba[..., 3] = 99
  out = viz.to_uint8_image(rgba)
  assert out.shape == (3, 4, 3)
  np.testing.assert_array_equal(out[..., 1], 7)
  with pytest.raises(ValueError, match="shape"):
    viz.to_uint8_image(np.zeros((3, 4, 2)))


def test_overlay_blends_only_foreground():
  image = _image()
  mask = np.zeros((20, 30, 1), np.float32)
  mask[5:15, 10:20] = 0.9
  out = viz.overlay(image, mask, color=(255, 0, 0), alpha=0.5,
                    contour_width=0)
  base = viz.to_uint8_image(image).astype(np.float64)
  expected = base.copy()
  expected[5:15, 10:20] = np.round(
      0.5 * base[5:15, 10:20] + 0.5 * np.array([255.0, 0, 0]))
  np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_overlay_contour_on_border_and_threshold():
  image = np.zeros((20, 30, 3))
  mask = np.zeros((20, 30))
  mask[5:15, 10:20] = 1.0
  mask[0, 0] = 0.4  # below the threshold: not foreground
  out = viz.overlay(image, mask, color=(0, 255, 0), alpha=0.0,
                    contour_width=1)
  # With alpha 0 only the contour is coloured: the border ring of the square.
  ring = np.zeros((20, 30), bool)
  ring[5:15, 10:20] = True
  ring[6:14, 11:19] = False
  np.testing.assert_array_equal(out[..., 1] == 255, ring)
  assert out[0, 0].tolist() == [0, 0, 0]


def test_overlay_uint8_masks_ignore_label_is_not_foreground():
  image = np.zeros((4, 4, 3))
  mask = np.array([[0, 1, 255, 0]] * 4, np.uint8)
  out = viz.overlay(image, mask, color=(200, 0, 0), alpha=1.0,
                    contour_width=0)
  np.testing.assert_array_equal(out[..., 0] > 0, mask == 1)
  saved = np.array([[0, 255, 255, 0]] * 4, np.uint8)  # a 0/255 mask PNG
  out = viz.overlay(image, saved, color=(200, 0, 0), alpha=1.0,
                    contour_width=0)
  np.testing.assert_array_equal(out[..., 0] > 0, saved == 255)
  with pytest.raises(ValueError, match="does not match"):
    viz.overlay(image, np.zeros((3, 4)))


def test_contact_sheet_layout_and_letterbox():
  a = np.full((10, 20, 3), 255, np.uint8)  # wide
  b = np.zeros((20, 10, 3), np.uint8)  # tall
  c = np.full((10, 10, 3), 100, np.uint8)
  sheet = viz.contact_sheet([a, b, c], columns=2, padding=2)
  # Cells are 20x20 (largest height, largest width); 2 rows, 2 columns.
  assert sheet.shape == (2 * 22 + 2, 2 * 22 + 2, 3)
  cell_a = sheet[2:22, 2:22]
  np.testing.assert_array_equal(cell_a[5:15], 255)  # a, centred vertically
  np.testing.assert_array_equal(cell_a[:5], 128)  # letterbox bars
  cell_b = sheet[2:22, 24:44]
  np.testing.assert_array_equal(cell_b[:, 5:15], 0)
  np.testing.assert_array_equal(cell_b[:, :5], 128)
  cell_c = sheet[24:44, 2:22]  # 10x10 scaled up to fill 20x20
  np.testing.assert_array_equal(cell_c, 100)
  np.testing.assert_array_equal(sheet[24:44, 24:44], 255)  # empty cell
  np.testing.assert_array_equal(sheet[:2], 255)  # padding
  with pytest.raises(ValueError, match="labels"):
    viz.contact_sheet([a, b], labels=["x"])


def test_step_strip_shapes_and_heat_order():
  logits = np.stack([np.full((40, 60), v) for v in (-6.0, 0.0, 6.0)])
  strip = viz.step_strip(logits[..., None], image=np.zeros((80, 120, 3)),
                         padding=1)
  # 4 tiles of the step size (40x60) in one row.
  assert strip.shape == (40 + 2, 4 * 61 + 1, 3)
  # JET: low probability is blue, high is red (checked below the label box).
  low = strip[38, 1 + 61 + 30]
  high = strip[38, 1 + 3 * 61 + 30]
  assert low[2] > 100 > low[0] and high[0] > 100 > high[2]
  np.testing.assert_array_equal(strip[38, 1 + 30], 0)  # the black image
  with pytest.raises(ValueError, match="step logits"):
    viz.step_strip(np.zeros((8, 12)))


def test_write_figures_needs_a_group():
  with pytest.raises(ValueError, match="num_groups must be >= 1, got 0"):
    figures.write_figures(config=None, workdir="", out_dir="", num_groups=0)
