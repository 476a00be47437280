"""Tests of data_pipelines.pipeline on the tiny synthetic set."""

import numpy as np
import pytest

from data_pipelines import augment
from data_pipelines import config as config_lib
from data_pipelines import pipeline
from data_pipelines import samplers
from data_pipelines import scenes


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = config_lib.default_data_config()
  c.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.builder_config = "tiny"
  c.image_size = 24
  c.seed = 3
  return c


@pytest.fixture(scope="module")
def train_source(cfg):
  return pipeline.load_source(cfg, "train")


def _labels(source):
  return np.array([source[i]["label"] for i in range(len(source))])


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_default_config_fields():
  c = config_lib.default_data_config()
  for field in ("name", "data_dir", "manual_dir", "builder_config",
                "train_split", "image_size", "group_size",
                "sampler", "negative_fraction", "classes", "exclude_classes",
                "resize", "num_workers", "seed"):
    assert field in c, field
  assert c.augment.enabled and c.synthetic.image_size == 96


def test_synthetic_fields_reach_the_builder_config():
  c = config_lib.default_data_config()
  c.builder_config = None
  plain = pipeline.builder_config_for(c)
  # The default's name predates the appearance fields and must not change
  # (it names the prepared directory on disk).
  assert plain.name == "c10_n40-10_px96_seed0_d1-3"
  assert not plain.category_textures and not plain.category_colours
  c.synthetic.category_textures = True
  c.synthetic.min_distractors = c.synthetic.max_distractors = 0
  textured = pipeline.builder_config_for(c)
  assert textured.category_textures and not textured.category_colours
  assert (textured.min_distractors, textured.max_distractors) == (0, 0)
  assert textured.name == "c10_n40-10_px96_seed0_d0-0_textures"
  c.synthetic.category_textures = False
  c.synthetic.category_colours = True
  assert pipeline.builder_config_for(c).name.endswith("_colours")
  c.builder_config = "tiny"
  assert pipeline.builder_config_for(c) == "tiny"


def test_pair_batches_follow_the_contract(cfg, train_source):
  ds = pipeline.make_dataset(cfg, split="train", batch_size=5, train=True,
                             seed=0)
  labels = _labels(train_source)
  for b in _take(iter(ds), 3):
    assert b["images"].shape == (5, 2, 24, 24, 3)
    assert b["images"].dtype == np.float32
    assert 0.0 <= b["images"].min() and b["images"].max() <= 1.0
    for k in ("masks", "valid"):
      assert b[k].shape == (5, 2, 24, 24, 1) and b[k].dtype == np.float32
      assert set(np.unique(b[k]).tolist()) <= {0.0, 1.0}
    assert b["has_common"].shape == (5,) and b["has_common"].dtype == np.int32
    assert b["class_ids"].shape == (5, 2) and b["class_ids"].dtype == np.int32
    assert b["record_ids"].dtype == np.int32
    np.testing.assert_array_equal(b["class_ids"], labels[b["record_ids"]])
    # Positive pairs: same class, distinct images, non-empty masks.
    assert np.all(b["has_common"] == 1)
    assert np.all(b["class_ids"][:, 0] == b["class_ids"][:, 1])
    assert np.all(b["record_ids"][:, 0] != b["record_ids"][:, 1])
    assert np.all(b["masks"].sum(axis=(2, 3, 4)) > 0)
    # No mask outside the valid region.
    assert not (b["masks"] * (1 - b["valid"])).any()


def test_unaugmented_member_equals_the_record(cfg, train_source):
  c = cfg.copy_and_resolve_references()
  c.augment.enabled = False
  c.image_size = 32  # the tiny records' own size: an identity resize
  b = next(iter(pipeline.make_dataset(c, split="train", batch_size=2,
                                      train=True, seed=1)))
  for i in range(2):
    for k in range(2):
      rec = train_source[int(b["record_ids"][i, k])]
      np.testing.assert_allclose(b["images"][i, k], rec["image"] / 255.0,
                                 atol=1e-6)
      np.testing.assert_array_equal(b["masks"][i, k], rec["mask"])
      assert b["valid"][i, k].all()


def test_negative_pairs_have_empty_targets(cfg):
  c = cfg.copy_and_resolve_references()
  c.negative_fraction = 1.0
  b = next(iter(pipeline.make_dataset(c, split="train", batch_size=6,
                                      train=True, seed=0)))
  assert np.all(b["has_common"] == 0)
  assert np.all(b["class_ids"][:, 0] != b["class_ids"][:, 1])
  assert not b["masks"].any()


def test_triplets_and_groups(cfg):
  c = cfg.copy_and_resolve_references()
  c.sampler = "triplets"
  b = next(iter(pipeline.make_dataset(c, split="train", batch_size=3,
                                      train=True, seed=0)))
  assert b["images"].shape == (3, 3, 24, 24, 3)
  cls = b["class_ids"]
  assert np.all(cls[:, 0] == cls[:, 1]) and np.all(cls[:, 0] != cls[:, 2])
  assert np.all(b["masks"][:, :2].sum(axis=(2, 3, 4)) > 0)
  assert not b["masks"][:, 2].any()
  c.sampler = "groups"
  c.group_size = 4
  b = next(iter(pipeline.make_dataset(c, split="train", batch_size=2,
                                      train=True, seed=0)))
  assert b["images"].shape == (2, 4, 24, 24, 3)
  for row, ids in zip(b["class_ids"], b["record_ids"]):
    assert len(set(row.tolist())) == 1 and len(set(ids.tolist())) == 4


def test_same_seed_same_batches_other_seed_differs(cfg):
  def first(seed):
    return next(iter(pipeline.make_dataset(cfg, split="train", batch_size=3,
                                           train=True, seed=seed)))
  a, b, c = first(5), first(5), first(6)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["images"], c["images"])


def test_restored_iterator_continues_exactly(cfg):
  ds = pipeline.make_dataset(cfg, split="train", batch_size=4, train=True,
                             seed=2)
  it = iter(ds)
  # Cross an epoch boundary (18 groups per epoch, batch 4).
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  it2 = iter(pipeline.make_dataset(cfg, split="train", batch_size=4,
                                   train=True, seed=2))
  it2.set_state(state)
  for want, got in zip(expected, _take(it2, 4)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])


def test_process_shards_are_disjoint_and_cover(cfg):
  def groups(index, count):
    ds = pipeline.make_dataset(cfg, split="train", batch_size=4, train=False,
                               seed=0, process_index=index,
                               process_count=count)
    return [tuple(r) for b in ds for r in b["record_ids"].tolist()]
  whole = groups(0, 1)
  assert len(whole) == 18  # one pass, last partial batch kept
  shards = [groups(i, 3) for i in range(3)]
  assert sum(len(s) for s in shards) == len(whole)
  # Shard p holds exactly the global groups p, p + 3, ...
  for p, s in enumerate(shards):
    assert s == whole[p::3]
  with pytest.raises(ValueError, match="process_index"):
    pipeline.make_dataset(cfg, split="train", batch_size=2, train=True,
                          process_index=2, process_count=2)


def test_class_filter(cfg, train_source):
  c = cfg.copy_and_resolve_references()
  c.exclude_classes = ("cross",)
  ds = pipeline.make_dataset(c, split="train", batch_size=4, train=True,
                             seed=0)
  names = ("arrow", "crescent", "cross")
  for b in _take(iter(ds), 4):
    assert names.index("cross") not in b["class_ids"]
  c.exclude_classes = ("dragon",)
  with pytest.raises(ValueError, match="dragon"):
    pipeline.make_dataset(c, split="train", batch_size=4, train=True)


def test_worker_process_yields_the_same_batches(cfg):
  c = cfg.copy_and_resolve_references()
  ref = _take(iter(pipeline.make_dataset(c, split="train", batch_size=3,
                                         train=True, seed=4)), 2)
  c.num_workers = 1
  it = iter(pipeline.make_dataset(c, split="train", batch_size=3, train=True,
                                  seed=4))
  for want, got in zip(ref, _take(it, 2)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])


def test_multilabel_target_is_the_union_of_shared_classes():
  # A VOC-style record: class_mask indices 0 = background, c + 1 = class c.
  cm = np.array([[0, 1, 1], [3, 3, 255], [5, 0, 1]], np.uint8)[..., None]
  rec = {"class_mask": cm, "labels": np.array([0, 2, 4])}
  class_map = scenes.record_class_map(rec, multilabel=True)
  target = np.zeros(20, bool)
  target[[0, 4]] = True
  lab = scenes.target_label_map(class_map, target)
  np.testing.assert_array_equal(lab, [[0, 1, 1], [0, 0, 255], [1, 0, 1]])
  none = scenes.target_label_map(class_map, np.zeros(20, bool))
  np.testing.assert_array_equal(none, [[0, 0, 0], [0, 0, 255], [0, 0, 0]])


def test_single_label_record_class_map_and_bad_values():
  rec = {"mask": np.array([[0, 1, 255]], np.uint8)[..., None], "label": 3,
         "image_id": b"x/y.png"}
  np.testing.assert_array_equal(
      scenes.record_class_map(rec, multilabel=False), [[0, 4, 255]])
  rec["mask"] = np.array([[0, 2]], np.uint8)[..., None]
  with pytest.raises(ValueError, match="x/y.png"):
    scenes.record_class_map(rec, multilabel=False, name="d")


@pytest.mark.parametrize("strategy", ["pairs", "a", "c"])
def test_eval_groups_and_preprocessing_restore_to_original_size(
    cfg, train_source, strategy):
  groups = pipeline.eval_groups(cfg, split="train", strategy=strategy, k=3)
  labels = _labels(train_source)
  names = ("arrow", "crescent", "cross")
  assert set(groups) == set(names)
  for name, t in groups.items():
    assert np.all(labels[t.indices] == names.index(name))
    scored = np.unique(t.indices[t.score])
    np.testing.assert_array_equal(scored,
                                  np.flatnonzero(labels == names.index(name)))
  rec = train_source[int(groups["cross"].indices[0, 0])]
  x, info = augment.preprocess_image(rec["image"], image_size=24)
  assert x.shape == (24, 24, 3)
  # Using the resized ground truth as the "prediction" and mapping it back
  # gives the original mask almost everywhere.
  p = augment.process_record(rec["image"], rec["mask"], out_size=24)
  back = augment.restore_prediction(p["mask"], info)
  assert back.shape == (32, 32)
  assert np.mean((back > 0.5) == (rec["mask"][..., 0] == 1)) > 0.95


def test_preprocess_image_pad():
  img = np.full((20, 40, 3), 200, np.uint8)
  x, info = augment.preprocess_image(img, image_size=16, resize="pad")
  assert x.shape == (16, 16, 3) and info.content_size == (8, 16)
  assert x[:8].min() > 0.7 and not x[8:].any()


def test_flow_resize_between_images_of_different_sizes():
  # flow12 is a pure translation by b from a 40x60 image to a 80x30 image;
  # after stretching both to 24x24 the flow at output pixel x' must point to
  # where x = (x' + .5) / s1 - .5 plus b lands: (x + b + .5) s2 - .5.
  h1, w1, h2, w2 = 40, 60, 80, 30
  b = np.array([3.0, -5.0])
  flow = np.broadcast_to(b.astype(np.float32), (h1, w1, 2)).copy()
  flow[:5, :5] = np.nan
  m1, _ = augment.resize_matrix((h1, w1), (24, 24), "stretch")
  m2, _ = augment.resize_matrix((h2, w2), (24, 24), "stretch")
  out = pipeline._resize_flow(flow, m1, m2, (24, 24))  # pylint: disable=protected-access
  s1 = np.array([24 / w1, 24 / h1])
  s2 = np.array([24 / w2, 24 / h2])
  yy, xx = np.mgrid[:24, :24]
  xp = np.stack([xx, yy], -1).astype(np.float64)
  x = (xp + 0.5) / s1 - 0.5
  want = (x + b + 0.5) * s2 - 0.5 - xp
  known = ~np.isnan(out[..., 0])
  assert np.isnan(out[0, 0]).all() and known[12:, 12:].all()
  np.testing.assert_allclose(out[known], want[known], atol=1e-4)


@pytest.mark.data
def test_tss_pairs_pass_through_as_k2_groups(shared_data, tmp_path):
  c = config_lib.default_data_config()
  c.name = "tss"
  c.data_dir = str(tmp_path)
  c.manual_dir = str(shared_data / "tss_sample")
  c.image_size = 32
  batches = list(pipeline.make_dataset(c, split="test", batch_size=4,
                                       train=False, seed=0))
  assert [b["images"].shape[0] for b in batches] == [4, 2]
  b = batches[0]
  assert b["images"].shape == (4, 2, 32, 32, 3)
  assert b["flows"].shape == (4, 2, 32, 32, 2)
  assert np.isfinite(b["flows"]).any()
  np.testing.assert_array_equal(b["record_ids"][:, 0], b["record_ids"][:, 1])
  assert np.all(b["has_common"] == 1)
  assert b["masks"].any() and not (b["masks"] * (1 - b["valid"])).any()


def test_eval_groups_images_per_class_is_one_seeded_subset(cfg):
  full = pipeline.eval_groups(cfg, split="train", strategy="pairs")
  sub = {s: pipeline.eval_groups(cfg, split="train", strategy=s, k=2,
                                 images_per_class=3)
         for s in ("pairs", "a", "b", "c", "d")}
  for name in full:
    images = {s: set(np.unique(t[name].indices)) for s, t in sub.items()}
    # Every strategy works on the same three images of the class.
    assert len(images["pairs"]) == 3
    assert all(v == images["pairs"] for v in images.values())
    assert images["pairs"] <= set(np.unique(full[name].indices))
  again = pipeline.eval_groups(cfg, split="train", strategy="pairs",
                               images_per_class=3)
  for name in full:
    np.testing.assert_array_equal(again[name].indices,
                                  sub["pairs"][name].indices)
