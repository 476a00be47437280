"""Pair-record builders (tss, pf_pascal, pf_willow) on tiny fixtures."""

import numpy as np
import pytest

import builders_testlib as bt
import fixtures_data as fx
from data_pipelines import io as dio
from data_pipelines import registry


def test_tss_fixture(tmp_path):
  exp = fx.write_tss(tmp_path / "raw")
  path = bt.build("tss", tmp_path, tmp_path / "raw")
  names = bt.label_names(path)
  got = bt.records_by_id("tss", tmp_path, "test", "pair_id")
  assert set(got) == set(exp["records"])
  for pid, e in exp["records"].items():
    r = got[pid]
    assert names[int(r["label"])] == e["label"]
    assert int(r["flip"]) == e["flip"]
    for i in (1, 2):
      np.testing.assert_array_equal(r[f"image{i}"], e[f"image{i}"])
      np.testing.assert_array_equal(r[f"mask{i}"][..., 0], e[f"mask{i}"])
    for k in ("flow12", "flow21"):
      assert r[k].dtype == np.float32
      # NaN (unknown) exactly where written, values bit-exact elsewhere.
      np.testing.assert_array_equal(r[k], e[k])
      assert np.isnan(r[k]).sum() == 2 * 6
  assert bt.without_total(registry.read_counts(path)) == exp["counts"]


def test_tss_refuses_mask_of_other_size(tmp_path):
  fx.write_tss(tmp_path / "raw")
  pair = tmp_path / "raw" / "PASCAL" / "bike_01_02"
  fx.save_png(pair / "mask1.png", np.zeros((5, 5), np.uint8))
  with pytest.raises(dio.BadInputError) as e:
    bt.build("tss", tmp_path, tmp_path / "raw")
  assert "image1.png" in str(e.value) and "mask1.png" in str(e.value)


def test_tss_refuses_missing_flow(tmp_path):
  fx.write_tss(tmp_path / "raw")
  (tmp_path / "raw" / "JODS" / "car_01_02" / "flow2.flo").unlink()
  with pytest.raises(dio.BadInputError, match="car_01_02/flow2.flo"):
    bt.build("tss", tmp_path, tmp_path / "raw")


def _check_pairs(got, expected, names):
  for pid, e in expected.items():
    r = got[pid]
    assert names[int(r["label"])] == e["label"], pid
    for i in (1, 2):
      np.testing.assert_array_equal(r[f"image{i}"], e[f"image{i}"])
      assert r[f"keypoints{i}"].dtype == np.float32
      np.testing.assert_allclose(r[f"keypoints{i}"], e[f"keypoints{i}"],
                                 rtol=0, atol=1e-5)
    if "flip" in e:
      assert int(r["flip"]) == e["flip"]


def test_pf_pascal_fixture(tmp_path):
  exp = fx.write_pf_pascal(tmp_path / "raw")
  path = bt.build("pf_pascal", tmp_path, tmp_path / "raw")
  names = bt.label_names(path)
  for split in ("train", "test"):
    got = bt.records_by_id("pf_pascal", tmp_path, split, "pair_id")
    want = {k: v for k, v in exp["records"].items()
            if exp["split_of"][k] == split}
    assert set(got) == set(want)
    _check_pairs(got, want, names)
  # The (-1, -1) pad point became NaN and kept its index.
  r = bt.records_by_id("pf_pascal", tmp_path, "test", "pair_id")[
      "test_pairs.csv:1"]
  assert np.isnan(r["keypoints1"][2]).all() and r["keypoints1"].shape == (3, 2)
  assert bt.without_total(registry.read_counts(path)) == exp["counts"]


def test_pf_pascal_refuses_bad_class(tmp_path):
  fx.write_pf_pascal(tmp_path / "raw")
  csv_path = tmp_path / "raw" / "PF-dataset-PASCAL" / "trn_pairs.csv"
  text = csv_path.read_text().splitlines()
  text[1] = text[1].replace(",1,1", ",21,1")
  csv_path.write_text("\n".join(text) + "\n")
  with pytest.raises(dio.BadInputError, match="trn_pairs.csv row 2"):
    bt.build("pf_pascal", tmp_path, tmp_path / "raw")


def test_pf_willow_fixture(tmp_path):
  exp = fx.write_pf_willow(tmp_path / "raw")
  path = bt.build("pf_willow", tmp_path, tmp_path / "raw")
  got = bt.records_by_id("pf_willow", tmp_path, "test", "pair_id")
  assert set(got) == set(exp["records"])
  _check_pairs(got, exp["records"], bt.label_names(path))
  assert bt.without_total(registry.read_counts(path)) == exp["counts"]


def test_pf_willow_refuses_missing_image(tmp_path):
  fx.write_pf_willow(tmp_path / "raw")
  (tmp_path / "raw" / "PF-dataset" / "duck(S)" / "duc_1.png").unlink()
  with pytest.raises(dio.BadInputError, match=r"duc_1\.png"):
    bt.build("pf_willow", tmp_path, tmp_path / "raw")
