"""coseg_jax.runtime.predict: a folder of images of different sizes and
formats -> masks at original resolution, overlays and a contact sheet;
unreadable files skipped and reported, or refused.

A test-only method whose "model" thresholds the red channel (logit =
20 * (red - 0.5), no parameters) makes the expected masks known by hand.
"""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from coseg_jax.runtime import predict
import runtime_helpers as rh


def _register():
  return rh.register_red("_test_red", 20.0)


def _config(strategy):
  c = ml_collections.ConfigDict()
  c.method = "_test_red"
  c.predict = dict(group_strategy=strategy, image_size=32)
  c.data = dict(resize="stretch")
  c.eval = dict(threshold=0.5, batch_size=2)
  return c


def _write_images(folder):
  """Three images (RGB PNG, grayscale JPEG, RGBA PNG) and a text file."""
  rgb = np.zeros((40, 60, 3), np.uint8)
  rgb[8:32, 16:48, 0] = 255
  Image.fromarray(rgb).save(folder / "b_rgb.png")
  grey = np.zeros((48, 36), np.uint8)
  grey[:24] = 255
  Image.fromarray(grey).save(folder / "a_grey.jpg", quality=100)
  rgba = np.zeros((64, 64, 4), np.uint8)
  rgba[:, 32:, 0] = 255
  rgba[..., 3] = 10  # alpha is dropped, not composited
  Image.fromarray(rgba).save(folder / "c_rgba.png")
  (folder / "notes.txt").write_text("not an image")
  return {"a_grey": grey > 127, "b_rgb": rgb[..., 0] > 127,
          "c_rgba": rgba[..., 0] > 127}


def _write_corrupt(path):
  path.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
  return str(path)


def _write_red(path, h=20, w=24):
  image = np.zeros((h, w, 3), np.uint8)
  image[:, : w // 2, 0] = 255
  Image.fromarray(image).save(path)
  return str(path)


@pytest.mark.parametrize("strategy", ["all_pairs", "group"])
def test_predict_folder_writes_masks_overlays_sheet(tmp_path, strategy):
  _register()
  folder = tmp_path / "imgs"
  folder.mkdir()
  expected = _write_images(folder)
  out = tmp_path / "out"
  written, skipped = predict.predict_folder(
      config=_config(strategy), model=rh.RedModel(20.0), variables={},
      images=str(folder), out_dir=str(out))
  assert skipped == []
  names = sorted(expected)
  assert sorted(os.path.relpath(w, out) for w in written) == sorted(
      [f"masks/{n}.png" for n in names] + [f"overlays/{n}.png" for n in names]
      + ["contact_sheet.png"])
  for name, want in expected.items():
    mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
    assert mask.shape == want.shape  # original resolution
    assert set(np.unique(mask).tolist()) <= {0, 255}
    # Edges may move by a pixel through the 32x32 input; the rest is exact.
    agree = np.mean((mask == 255) == want)
    assert agree > 0.93, (name, agree)
    overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
    assert overlay.shape == want.shape + (3,)
  sheet = np.asarray(Image.open(out / "contact_sheet.png"))
  # 3 images x (image, overlay) = 6 tiles in one row of 64x64 cells.
  assert sheet.shape == (64 + 8, 6 * 68 + 4, 3)


def test_postprocess_option_decides_the_written_masks(tmp_path):
  """With a threshold above every probability (sigmoid(10) < 0.999999) the
  threshold writes empty masks; ``eval.postprocess='otsu'`` splits each
  restored map at its own Otsu threshold and recovers the red regions."""
  _register()
  folder = tmp_path / "imgs"
  folder.mkdir()
  expected = _write_images(folder)
  for method in ("threshold", "otsu"):
    config = _config("all_pairs")
    config.eval.threshold = 0.999999
    config.eval.postprocess = method
    out = tmp_path / method
    predict.predict_folder(config=config, model=rh.RedModel(20.0), variables={},
                           images=str(folder), out_dir=str(out))
    for name, want in expected.items():
      mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) == 255
      if method == "threshold":
        assert not mask.any(), name
      else:
        assert np.mean(mask == want) > 0.93, name


def test_glob_and_all_pairs_call_shapes(tmp_path):
  _write_images(tmp_path)
  files = predict.list_images(str(tmp_path / "*.png"))
  assert [os.path.basename(f) for f in files] == ["b_rgb.png", "c_rgba.png"]
  shapes = []

  def fake(batch):
    shapes.append(batch.shape)
    return np.full(batch.shape[:-1] + (1,), 0.25, np.float32)

  images = [np.zeros((10, 12, 3), np.uint8)] * 4
  probs = predict.cosegment_images(predict_batch=fake, images=images,
                                   strategy="all_pairs", image_size=8,
                                   batch_size=4)
  # 6 pairs in batches of 4 (the second padded).
  assert shapes == [(4, 2, 8, 8, 3), (4, 2, 8, 8, 3)]
  assert [p.shape for p in probs] == [(10, 12)] * 4
  np.testing.assert_allclose(probs[0], 0.25)
  shapes.clear()
  predict.cosegment_images(predict_batch=fake, images=images,
                           strategy="group", image_size=8)
  assert shapes == [(1, 4, 8, 8, 3)]


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no image files"):
    predict.list_images(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no files match"):
    predict.list_images(str(tmp_path / "*.jpg"))
  with pytest.raises(FileNotFoundError, match="no such folder"):
    predict.list_images(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="at least 2 images"):
    predict.make_groups(1, "all_pairs")
  with pytest.raises(ValueError, match="group_strategy"):
    predict.make_groups(3, "triples")
  bad = _write_corrupt(tmp_path / "bad.png")
  good = [_write_red(tmp_path / f"{n}.png") for n in ("g1", "g2")]
  with pytest.raises(predict.UnreadableImagesError, match="bad.png"):
    predict.read_images([good[0], bad, good[1]], on_unreadable="error")
  with pytest.raises(ValueError, match="on_unreadable must be one of"):
    predict.read_images(good, on_unreadable="ignore")


def test_read_images_skip_and_error(tmp_path):
  good = [_write_red(tmp_path / "a.png"), _write_red(tmp_path / "c.png", 8, 6)]
  bad = _write_corrupt(tmp_path / "b.png")
  kept, arrays, skipped = predict.read_images([good[0], bad, good[1]])
  assert kept == good
  assert [a.shape for a in arrays] == [(20, 24, 3), (8, 6, 3)]
  assert all(a.dtype == np.uint8 for a in arrays)
  assert len(skipped) == 1 and bad in skipped[0]
  assert "\n" not in skipped[0]
  with pytest.raises(predict.UnreadableImagesError) as e:
    predict.read_images([good[0], bad, good[1]], on_unreadable="error")
  assert bad in str(e.value) and "\n" not in str(e.value)
  # Fewer than two readable images: an error either way, naming the file.
  for mode in ("skip", "error"):
    with pytest.raises(predict.UnreadableImagesError, match="b.png"):
      predict.read_images([good[0], bad], on_unreadable=mode)
  with pytest.raises(predict.UnreadableImagesError,
                     match=r"1 readable image\(s\) of 2.*at least 2.*b.png"):
    predict.read_images([good[0], bad])


def test_predict_folder_with_a_corrupt_file(tmp_path):
  """'skip' (the default) writes the masks of the good images and returns
  one message naming the corrupt file; 'error' stops, naming it."""
  _register()
  folder = tmp_path / "imgs"
  folder.mkdir()
  expected = _write_images(folder)
  bad = _write_corrupt(folder / "b_broken.png")
  out = tmp_path / "out"
  written, skipped = predict.predict_folder(
      config=_config("all_pairs"), model=rh.RedModel(20.0), variables={},
      images=str(folder), out_dir=str(out))
  assert len(skipped) == 1 and bad in skipped[0]
  assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
      f"{n}.png" for n in expected)
  assert len(written) == 2 * len(expected) + 1
  for name, want in expected.items():
    mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) == 255
    assert np.mean(mask == want) > 0.93, name
  config = _config("all_pairs")
  config.predict.on_unreadable = "error"
  with pytest.raises(predict.UnreadableImagesError, match="b_broken.png"):
    predict.predict_folder(config=config, model=rh.RedModel(20.0), variables={},
                           images=str(folder), out_dir=str(tmp_path / "o2"))
  assert not (tmp_path / "o2").exists()


def test_write_outputs_uses_the_binarizer(tmp_path):
  images = [np.zeros((6, 8, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
  probs = [np.full((6, 8), 0.3, np.float32), np.zeros((5, 4), np.float32)]
  probs[1][:2] = 0.8
  calls = []

  def binarize(image, prob):
    calls.append((image.shape, prob.shape))
    return prob > 0.25

  written = predict.write_outputs(
      paths=["x/one.jpg", "x/two.png"], images=images, probabilities=probs,
      out_dir=str(tmp_path), binarize=binarize)
  assert calls == [((6, 8, 3), (6, 8)), ((5, 4, 3), (5, 4))]
  assert [os.path.relpath(w, tmp_path) for w in written] == [
      "masks/one.png", "overlays/one.png", "masks/two.png",
      "overlays/two.png", "contact_sheet.png"]
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "masks" / "one.png")), 255)
  two = np.asarray(Image.open(tmp_path / "masks" / "two.png"))
  np.testing.assert_array_equal(two[:2], 255)
  np.testing.assert_array_equal(two[2:], 0)


def test_duplicate_stems_do_not_overwrite(tmp_path):
  names = predict._output_names(["x/a.jpg", "x/a.png", "x/b.png"])  # pylint: disable=protected-access
  assert names == ["a_jpg", "a_png", "b"]
