"""The bad-input rules of data_pipelines/io.py, one test each."""

import io as pyio

import cv2
import numpy as np
import pytest
from PIL import Image

import fixtures_data as fx
from data_pipelines import io as dio


def _decode(data):
  return np.asarray(Image.open(pyio.BytesIO(data)))


def test_corrupt_image_refused_naming_file(tmp_path):
  p = tmp_path / "broken.jpg"
  p.write_bytes(b"this is not a jpeg")
  with pytest.raises(dio.BadInputError, match="broken.jpg"):
    dio.read_image(p)


def test_truncated_image_refused_naming_file(tmp_path):
  p = tmp_path / "cut.png"
  fx.save_png(p, np.random.default_rng(0).integers(
      0, 256, (40, 40, 3), dtype=np.uint8))
  data = p.read_bytes()
  p.write_bytes(data[: len(data) // 2])
  with pytest.raises(dio.BadInputError, match="cut.png"):
    dio.image_feature_bytes(p)


def test_missing_mask_refused_naming_file(tmp_path):
  with pytest.raises(dio.BadInputError, match="nothere.png"):
    dio.read_mask(tmp_path / "nothere.png")


def test_size_mismatch_names_both():
  with pytest.raises(dio.BadInputError) as e:
    dio.check_same_size("a/img.jpg", (10, 12), "a/msk.png", (10, 13))
  assert "a/img.jpg" in str(e.value) and "a/msk.png" in str(e.value)
  dio.check_same_size("a/img.jpg", (10, 12), "a/msk.png", (10, 12))


def test_grayscale_image_replicated(tmp_path):
  g = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20).astype(np.uint8)
  fx.save_png(tmp_path / "g.png", g)
  img = dio.read_image(tmp_path / "g.png")
  assert img.shape == (16, 20, 3)
  for c in range(3):
    np.testing.assert_array_equal(img[..., c], g)
  data, hw = dio.image_feature_bytes(tmp_path / "g.png")
  assert hw == (16, 20)
  np.testing.assert_array_equal(_decode(data), img)  # re-encoded as RGB PNG


def test_rgba_image_alpha_dropped(tmp_path):
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
  fx.save_png(tmp_path / "a.png", rgba)
  np.testing.assert_array_equal(dio.read_image(tmp_path / "a.png"),
                                rgba[..., :3])


def test_palette_image_expanded(tmp_path):
  idx = np.array([[0, 1], [2, 1]], np.uint8).repeat(8, 0).repeat(8, 1)
  pal = [1, 2, 3, 40, 50, 60, 200, 210, 220] + [0] * (768 - 9)
  fx.save_palette_png(tmp_path / "p.png", idx, pal)
  colours = np.asarray(pal[:9], np.uint8).reshape(3, 3)
  np.testing.assert_array_equal(dio.read_image(tmp_path / "p.png"),
                                colours[idx])


def test_16bit_image_scaled(tmp_path):
  v = np.array([[0, 257, 65535, 32896], [1000, 128, 129, 65534]],
               np.uint16).repeat(8, 0).repeat(4, 1)
  Image.fromarray(v).save(tmp_path / "d.png")
  img = dio.read_image(tmp_path / "d.png")
  want = (v // 256).astype(np.uint8)  # high byte
  np.testing.assert_array_equal(img[..., 0], want)
  assert img[0, 0, 0] == 0 and img[0, 8, 0] == 255 and img[0, 4, 0] == 1
  assert img[0, 12, 0] == 128 and img[8, 0, 0] == 3


def test_16bit_rgb_png_reencoded_as_8bit(tmp_path):
  v = np.random.default_rng(7).integers(0, 65536, (16, 16, 3),
                                        dtype=np.uint16)
  cv2.imwrite(str(tmp_path / "c.png"), v[..., ::-1])  # cv2 writes BGR
  data, _ = dio.image_feature_bytes(tmp_path / "c.png")
  assert data != (tmp_path / "c.png").read_bytes()
  decoded = _decode(data)
  assert decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, (v >> 8).astype(np.uint8))


def test_rgb_jpeg_stored_as_original_bytes(tmp_path):
  p = tmp_path / "x.jpg"
  fx.save_jpeg(p, np.zeros((16, 16, 3), np.uint8))
  data, _ = dio.image_feature_bytes(p)
  assert data == p.read_bytes()


@pytest.mark.parametrize("scale", [1, 255])
def test_binary_masks_to_01(tmp_path, scale):
  m = fx.random_mask(np.random.default_rng(2), 16, 20)
  fx.save_png(tmp_path / "m.png", (m * scale).astype(np.uint8))
  np.testing.assert_array_equal(dio.read_mask(tmp_path / "m.png"), m)


@pytest.mark.parametrize("fg", [1, 255, 65535])
def test_16bit_masks(tmp_path, fg):
  m = fx.random_mask(np.random.default_rng(8), 16, 20)
  Image.fromarray((m.astype(np.uint32) * fg).astype(np.uint16)).save(
      tmp_path / "m16.png")
  np.testing.assert_array_equal(dio.read_mask(tmp_path / "m16.png"), m)


def test_rgb_identical_channel_mask(tmp_path):
  m = fx.random_mask(np.random.default_rng(3), 16, 20)
  fx.save_rgb_mask_png(tmp_path / "m.png", m)
  np.testing.assert_array_equal(dio.read_mask(tmp_path / "m.png"), m)


def test_rgb_colour_mask_refused(tmp_path):
  m = np.zeros((16, 16, 3), np.uint8)
  m[4:8, 4:8] = (128, 0, 0)
  fx.save_png(tmp_path / "c.png", m)
  with pytest.raises(dio.BadInputError, match="c.png.*channels differ"):
    dio.read_mask(tmp_path / "c.png")


def test_palette_mask_reads_indices(tmp_path):
  m = fx.random_mask(np.random.default_rng(4), 16, 16)
  fx.save_palette_png(tmp_path / "p.png", m)  # colour of index 1 != 1
  assert np.asarray(Image.open(tmp_path / "p.png").convert("L")).max() > 1
  np.testing.assert_array_equal(dio.read_mask(tmp_path / "p.png"), m)


def test_intermediate_values_refused_unless_threshold(tmp_path):
  raw = np.zeros((16, 16), np.uint8)
  raw[:, 8:] = 255
  raw[0, :5] = [16, 40, 127, 128, 207]
  fx.save_png(tmp_path / "aa.png", raw)
  with pytest.raises(dio.BadInputError, match="aa.png"):
    dio.read_mask(tmp_path / "aa.png")
  got = dio.read_mask(tmp_path / "aa.png", mode="threshold")
  np.testing.assert_array_equal(got, (raw >= 128).astype(np.uint8))
  assert got[0, :5].tolist() == [0, 0, 0, 1, 1]


def test_threshold_keeps_01_mask(tmp_path):
  m = fx.random_mask(np.random.default_rng(5), 16, 16)
  fx.save_palette_png(tmp_path / "j.png", m)  # JODS-style {0,1} palette
  np.testing.assert_array_equal(
      dio.read_mask(tmp_path / "j.png", mode="threshold"), m)


def test_index_mode_checks_values(tmp_path):
  m = np.full((16, 16), 255, np.uint8)
  m[4:8, 4:8] = 3
  fx.save_palette_png(tmp_path / "v.png", m)
  np.testing.assert_array_equal(
      dio.read_mask(tmp_path / "v.png", mode="index",
                    valid_indices=list(range(21)) + [255]), m)
  with pytest.raises(dio.BadInputError, match=r"v.png.*\[3\]"):
    dio.read_mask(tmp_path / "v.png", mode="index", valid_indices=[0, 255])


def test_flo_round_trip_and_unknown(tmp_path):
  rng = np.random.default_rng(6)
  flow = rng.normal(size=(7, 9, 2)).astype(np.float32)
  flow[1, 2] = np.nan
  dio.write_flo(tmp_path / "f.flo", flow)
  raw = np.fromfile(tmp_path / "f.flo", "<f4")
  assert raw[0] == np.float32(202021.25)
  assert np.fromfile(tmp_path / "f.flo", "<i4", count=3)[1:].tolist() == [9, 7]
  # Row-major (u, v) interleaved after the 12-byte header; NaN -> 1e10.
  assert raw[3 + (1 * 9 + 2) * 2] == np.float32(1e10)
  np.testing.assert_array_equal(raw[3:5], flow[0, 0])
  back = dio.read_flo(tmp_path / "f.flo")
  np.testing.assert_array_equal(back, flow)


def test_flo_one_component_unknown_makes_both_nan(tmp_path):
  flow = np.zeros((2, 2, 2), np.float32)
  flow[0, 1, 0] = 2e9  # only u is huge
  dio.write_flo(tmp_path / "u.flo", flow)
  back = dio.read_flo(tmp_path / "u.flo")
  assert np.isnan(back[0, 1]).all() and not np.isnan(back[1]).any()


def test_flo_bad_magic_and_size(tmp_path):
  p = tmp_path / "bad.flo"
  p.write_bytes(np.asarray([1.0, 0, 0], "<f4").tobytes())
  with pytest.raises(dio.BadInputError, match="bad.flo.*magic"):
    dio.read_flo(p)
  dio.write_flo(p, np.zeros((3, 3, 2), np.float32))
  p.write_bytes(p.read_bytes()[:-4])
  with pytest.raises(dio.BadInputError, match="bad.flo"):
    dio.read_flo(p)
