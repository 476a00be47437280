"""Builders on the real data in ../shared/data (skipped where it is absent)."""

import numpy as np
import pytest
from PIL import Image

import builders_testlib as bt
from data_pipelines import io as dio
from data_pipelines import pascal_voc_coseg
from data_pipelines import registry


@pytest.mark.data
def test_pascal_voc_coseg_real_counts(shared_data, tmp_path):
  path = bt.build("pascal_voc_coseg", tmp_path,
                  shared_data / "pascal_voc_coseg")
  counts = registry.read_counts(path)
  assert counts["train"]["_total"] == 1037
  assert bt.without_total(counts)["train"] == {
      "Aero": 66, "Bicycle": 43, "Bird": 77, "Boat": 54, "Bottle": 44,
      "Bus": 47, "Car": 63, "Cat": 75, "Chair": 48, "Cow": 34, "Dog": 76,
      "Horse": 40, "Mbike": 56, "Monitor": 47, "Person": 115, "Plant": 41,
      "Sheep": 39, "Sofa": 26, "Table": 14, "Train": 32}
  assert bt.without_total(counts)["train"] == pascal_voc_coseg.CLASS_COUNTS
  source = registry.load_source("pascal_voc_coseg", data_dir=tmp_path / "tfds",
                                split="train")
  assert len(source) == 1037
  names = bt.label_names(path)
  for i in (0, 500, 1036):  # a few records against the original files
    r = source[i]
    image_id = r["image_id"].decode()
    assert image_id.split("/")[0] == names[int(r["label"])]
    original = dio.read_image(shared_data / "pascal_voc_coseg" / image_id)
    np.testing.assert_array_equal(r["image"], original)
    mask_file = (shared_data / "pascal_voc_coseg" /
                 image_id.replace("/images/", "/masks/")[:-4]).with_suffix(
                     ".png")
    raw = np.asarray(Image.open(mask_file))
    np.testing.assert_array_equal(r["mask"][..., 0], raw[..., 0] // 255)
    assert max(r["image"].shape[:2]) == 375


@pytest.mark.data
def test_tss_real_pairs_and_flow_round_trip(shared_data, tmp_path):
  root = shared_data / "tss_sample"
  path = bt.build("tss", tmp_path, root)
  assert bt.without_total(registry.read_counts(path)) == {
      "test": {"FG3DCar": 2, "JODS": 2, "PASCAL": 2}}
  got = bt.records_by_id("tss", tmp_path, "test", "pair_id")
  assert len(got) == 6
  for pair_id, r in got.items():
    for key, filename in (("flow12", "flow1.flo"), ("flow21", "flow2.flo")):
      original = root / pair_id / filename
      raw = np.fromfile(original, "<f4")[3:].reshape(r[key].shape)
      unknown = (np.abs(raw) > 1e9).any(-1)
      assert unknown.any()  # the real files do use the 1e10 sentinel
      np.testing.assert_array_equal(np.isnan(r[key]).all(-1), unknown)
      np.testing.assert_array_equal(r[key][~unknown], raw[~unknown])
      # reader -> writer -> reader is exact, and the bytes are identical.
      out = tmp_path / "rt.flo"
      dio.write_flo(out, dio.read_flo(original))
      np.testing.assert_array_equal(dio.read_flo(out), r[key])
      assert out.read_bytes() == original.read_bytes()
    for i in (1, 2):
      assert r[f"mask{i}"].shape[:2] == r[f"image{i}"].shape[:2]
      assert set(np.unique(r[f"mask{i}"]).tolist()) == {0, 1}
  # The anti-aliased FG3DCar mask was thresholded at 128.
  raw = np.asarray(Image.open(
      root / "FG3DCar" / "001_021" / "mask2.png"))
  np.testing.assert_array_equal(got["FG3DCar/001_021"]["mask2"][..., 0],
                                (raw >= 128).astype(np.uint8))
