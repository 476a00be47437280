"""Image-record builders on tiny fixtures in their original layouts."""

import json

import numpy as np
import pytest

import builders_testlib as bt
import fixtures_data as fx
from data_pipelines import io as dio
from data_pipelines import registry
from data_pipelines import voc2012_coseg


def test_pascal_voc_coseg_fixture(tmp_path):
  exp = fx.write_pascal_voc_coseg(tmp_path / "raw")
  path = bt.build("pascal_voc_coseg", tmp_path, tmp_path / "raw")
  names = bt.label_names(path)
  assert names == sorted(names) and len(names) == 20
  got = bt.records_by_id("pascal_voc_coseg", tmp_path, "train", "image_id")
  bt.assert_image_records(got, exp["records"], names)
  counts = json.loads((path / registry.COUNTS_FILENAME).read_text())
  assert bt.without_total(counts) == exp["counts"]
  assert counts["train"]["_total"] == 5


def test_pascal_voc_coseg_refuses_unknown_class_folder(tmp_path):
  fx.write_pascal_voc_coseg(tmp_path / "raw")
  (tmp_path / "raw" / "Aeroplane" / "images").mkdir(parents=True)
  with pytest.raises(dio.BadInputError, match="Aeroplane"):
    bt.build("pascal_voc_coseg", tmp_path, tmp_path / "raw")


@pytest.mark.parametrize("config", ["subset100", "full"])
def test_internet_fixture(tmp_path, config):
  exp = fx.write_internet(tmp_path / "raw")[config]
  path = bt.build("internet", tmp_path, tmp_path / "raw", config)
  got = bt.records_by_id("internet", tmp_path, "train", "image_id", config)
  bt.assert_image_records(got, exp["records"], bt.label_names(path))
  # The empty-mask (no object) image is kept.
  empty = [k for k, v in got.items() if not v["mask"].any()]
  assert len(empty) == 1 and "Horse" in empty[0]
  assert bt.without_total(registry.read_counts(path)) == exp["counts"]


@pytest.mark.parametrize("config", ["all", "subset8"])
def test_icoseg_fixture(tmp_path, config):
  exp = fx.write_icoseg(tmp_path / "raw")[config]
  path = bt.build("icoseg", tmp_path, tmp_path / "raw", config)
  names = bt.label_names(path)
  assert names == sorted({r["label"] for r in exp["records"].values()})
  got = bt.records_by_id("icoseg", tmp_path, "train", "image_id", config)
  bt.assert_image_records(got, exp["records"], names)
  assert bt.without_total(registry.read_counts(path)) == exp["counts"]


def test_icoseg_subset8_missing_group(tmp_path):
  fx.write_icoseg(tmp_path / "raw")
  root = tmp_path / "raw" / "dataset_public"
  for sub in ("images", "ground_truth"):
    for f in (root / sub / "panda1").iterdir():
      f.unlink()
    (root / sub / "panda1").rmdir()
  with pytest.raises(FileNotFoundError, match="panda1"):
    bt.build("icoseg", tmp_path, tmp_path / "raw", "subset8")


@pytest.mark.parametrize("layout", ["a", "b"])
def test_msrc_fixture(tmp_path, layout):
  exp = fx.write_msrc(tmp_path / "raw", layout=layout)
  path = bt.build("msrc", tmp_path, tmp_path / "raw")
  got = bt.records_by_id("msrc", tmp_path, "train", "image_id")
  bt.assert_image_records(got, exp["records"], bt.label_names(path))


def test_voc2012_coseg_fixture(tmp_path):
  exp = fx.write_voc2012(tmp_path / "raw")
  path = bt.build("voc2012_coseg", tmp_path, tmp_path / "raw")
  names = bt.label_names(path, "labels")
  assert tuple(names) == voc2012_coseg.VOC_CLASSES
  val, test = voc2012_coseg.split_val_test(fx.VOC_VAL)
  assert (len(val), len(test)) == (2, 3)
  assert sorted(val + test) == sorted(fx.VOC_VAL)
  for split, ids in (("train", fx.VOC_TRAIN), ("validation", val),
                     ("test", test)):
    got = bt.records_by_id("voc2012_coseg", tmp_path, split, "image_id")
    assert set(got) == set(ids)
    for rid, r in got.items():
      e = exp["records"][rid]
      np.testing.assert_array_equal(r["image"], e["image"])
      np.testing.assert_array_equal(r["class_mask"][..., 0], e["class_mask"])
      # VOC index i -> ClassLabel index i - 1.
      assert sorted(int(v) + 1 for v in r["labels"]) == e["labels"]
  counts = registry.read_counts(path)
  assert counts["train"]["_total"] == 2
  assert counts["validation"]["_total"] + counts["test"]["_total"] == 5


def test_voc2012_split_is_fixed_and_halves():
  ids = [f"2008_{i:06d}" for i in range(1449)]
  val, test = voc2012_coseg.split_val_test(ids)
  assert (len(val), len(test)) == (724, 725)
  assert not set(val) & set(test)
  # The seed is a recorded constant: the division never changes.
  assert voc2012_coseg.split_val_test(list(reversed(ids))) == (val, test)
  assert val != ids[:724]


def test_voc2012_refuses_out_of_range_index(tmp_path):
  fx.write_voc2012(tmp_path / "raw")
  bad = (tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "SegmentationClass" /
         f"{fx.VOC_TRAIN[0]}.png")
  idx = np.zeros((20, 24), np.uint8)
  idx[0, 0] = 42
  fx.save_palette_png(bad, idx)
  with pytest.raises(dio.BadInputError, match=fx.VOC_TRAIN[0]):
    bt.build("voc2012_coseg", tmp_path, tmp_path / "raw")
