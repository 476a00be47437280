"""Helpers shared by the tests/test_builders_*.py files."""

import numpy as np

from data_pipelines import registry


def build(name, tmp_path, manual_dir, config=None):
  """Prepares `name` from `manual_dir` into tmp_path/tfds; returns the path."""
  return registry.prepare(name, data_dir=tmp_path / "tfds",
                          manual_dir=manual_dir, builder_config=config,
                          verbose=False)


def records_by_id(name, tmp_path, split, key, config=None):
  """{record id: decoded record} of one built split."""
  source = registry.load_source(name, data_dir=tmp_path / "tfds",
                                split=split, builder_config=config)
  out = {}
  for i in range(len(source)):
    r = source[i]
    out[r[key].decode() if isinstance(r[key], bytes) else r[key]] = r
  return out


def label_names(path, key="label"):
  import tensorflow_datasets as tfds
  feature = tfds.builder_from_directory(str(path)).info.features[key]
  if isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  return feature.names


def without_total(counts):
  return {s: {k: v for k, v in c.items() if k != registry.TOTAL_KEY}
          for s, c in counts.items()}


def assert_image_records(got, expected, names):
  assert set(got) == set(expected)
  for rid, exp in expected.items():
    r = got[rid]
    np.testing.assert_array_equal(r["image"], exp["image"], err_msg=rid)
    assert r["mask"].shape == exp["mask"].shape + (1,)
    np.testing.assert_array_equal(r["mask"][..., 0], exp["mask"],
                                  err_msg=rid)
    assert names[int(r["label"])] == exp["label"], rid
