"""data_pipelines.registry: names, prepare/load, counts, manual_dir errors."""

import os

import pytest

import builders_testlib as bt
import fixtures_data as fx
from data_pipelines import io as dio
from data_pipelines import registry


def test_available_and_unknown_name():
  names = registry.available_datasets()
  assert set(names) == {"pascal_voc_coseg", "voc2012_coseg", "internet",
                        "icoseg", "msrc", "tss", "pf_pascal", "pf_willow",
                        "synthetic"}
  with pytest.raises(ValueError, match="pascal_voc_coseg"):
    registry.builder_class("pascal_voc")


@pytest.mark.parametrize("name", ["pascal_voc_coseg", "voc2012_coseg",
                                  "internet", "icoseg", "msrc", "tss",
                                  "pf_pascal", "pf_willow"])
def test_builder_name_and_empty_manual_dir(tmp_path, name):
  assert registry.builder_class(name).name == name
  (tmp_path / "empty").mkdir()
  for manual in (tmp_path / "empty", tmp_path / "absent"):
    with pytest.raises(FileNotFoundError, match="layout") as e:
      registry.prepare(name, data_dir=tmp_path / "tfds", manual_dir=manual)
    assert str(manual) in str(e.value)


def test_prepare_reports_counts_and_is_idempotent(tmp_path, capsys):
  fx.write_tss(tmp_path / "raw")
  path = registry.prepare("tss", data_dir=tmp_path / "tfds",
                          manual_dir=tmp_path / "raw", verbose=True)
  out = capsys.readouterr().out
  assert "split 'test': 3 records" in out and "FG3DCar: 1" in out
  mtime = os.stat(path / "dataset_info.json").st_mtime
  # Already built: no manual_dir needed, nothing rewritten or printed.
  again = registry.prepare("tss", data_dir=tmp_path / "tfds")
  assert again == path
  assert os.stat(path / "dataset_info.json").st_mtime == mtime
  assert capsys.readouterr().out == ""
  # A quiet build prints one summary line (TFDS's own output is hidden).
  quiet = registry.prepare("tss", data_dir=tmp_path / "tfds2",
                           manual_dir=tmp_path / "raw", verbose=False)
  out = capsys.readouterr()
  assert out.out.strip() == f"built tss: test 3 records in 3 classes (in {quiet})"
  assert "Generating" not in out.err
  # Counts recomputed from the records agree with the build-time tally.
  assert registry.count_records(path) == registry.read_counts(path)


def test_force_rebuilds(tmp_path):
  fx.write_pf_willow(tmp_path / "raw")
  bt.build("pf_willow", tmp_path, tmp_path / "raw")
  (tmp_path / "raw" / "PF-dataset" / "test_pairs_pf.csv").write_text(
      "imageA,imageB\n")
  with pytest.raises(FileNotFoundError, match="empty"):
    registry.prepare("pf_willow", data_dir=tmp_path / "tfds",
                     manual_dir=tmp_path / "raw", force=True, verbose=False)


def test_load_source_before_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare"):
    registry.load_source("tss", data_dir=tmp_path, split="test")


def test_bad_file_aborts_build_naming_it(tmp_path):
  exp = fx.write_pascal_voc_coseg(tmp_path / "raw")
  victim = tmp_path / "raw" / next(iter(exp["records"]))
  victim.write_bytes(victim.read_bytes()[:50])
  with pytest.raises(dio.BadInputError, match=victim.name):
    bt.build("pascal_voc_coseg", tmp_path, tmp_path / "raw")


def test_missing_mask_aborts_build_naming_it(tmp_path):
  fx.write_internet(tmp_path / "raw")
  (tmp_path / "raw" / "Data" / "Car100" / "GroundTruth" /
   "car_0001.png").unlink()
  with pytest.raises(dio.BadInputError, match="car_0001.png"):
    bt.build("internet", tmp_path, tmp_path / "raw", "subset100")


def test_image_mask_size_mismatch_aborts_build(tmp_path):
  fx.write_msrc(tmp_path / "raw")
  bad = tmp_path / "raw" / "cow" / "GroundTruth" / "2_1_s.png"
  fx.save_png(bad, fx.random_mask(fx._rng(0), 18, 19))
  with pytest.raises(dio.BadInputError) as e:
    bt.build("msrc", tmp_path, tmp_path / "raw")
  assert "2_1_s.bmp" in str(e.value) and "2_1_s.png" in str(e.value)
