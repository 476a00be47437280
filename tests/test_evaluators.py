"""Evaluators: figures on constructed cases equal hand-computed values.

The co-segmentation cases use a fake model that predicts, for image k of a
group, its own red channel times the largest green value of the other
image(s) of the group. Red channels are blocks whose edges survive the down-
and up-sampling exactly (see the comments), so the thresholded, resized-back
prediction is known by hand; the green values make an image's prediction
depend on its group, which checks that an image seen in several groups is
scored once on the mean of its probabilities.

The decision and matching evaluators run on a tiny synthetic set and on a
hand-made TSS layout with fake models whose outputs are known, and the
evaluation data selection (``eval.data``, class slices, per-class holdout
parts) is checked on constructed memberships.
"""

import os
import pathlib
import subprocess
import sys
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import base
from coseg_jax import metrics
from coseg_jax import postprocess
from coseg_jax.nn import geometry
from coseg_jax.runtime import evaluators
from coseg_jax.runtime.evaluators import coseg
from coseg_jax.runtime.evaluators import common
from coseg_jax.runtime.evaluators import decision
from coseg_jax.runtime.evaluators import matching
from data_pipelines import augment
from data_pipelines import config as data_config_lib
from data_pipelines import io as data_io
from data_pipelines import pipeline
from data_pipelines import samplers
import runtime_helpers as rh

REPO = pathlib.Path(__file__).resolve().parents[1]


def _record(h, w, *, red, gt, green, label):
  image = np.zeros((h, w, 3), np.uint8)
  image[..., 0][red] = 255
  image[..., 1] = int(round(green * 255))
  mask = np.zeros((h, w, 1), np.uint8)
  mask[..., 0] = gt
  return dict(image=image, mask=mask, label=label, image_id=f"{h}x{w}")


def _gt(h, w, fg, ignore=None):
  m = np.zeros((h, w), np.uint8)
  m[fg] = 1
  if ignore is not None:
    m[ignore] = 255
  return m


def _source():
  s = np.s_
  return [
      # Class 0, three 8x8 images (the model input size: no resizing), all
      # pairs. Partner greens: A sees B 0.3, C 0.5 -> mean 0.4 < 0.5, empty
      # (max would give 0.5 and fg); B: 0.9, 0.5 -> 0.7; C: 0.9, 0.3 -> 0.6
      # (min would give 0.3, empty).
      _record(8, 8, red=s[0:4], gt=_gt(8, 8, s[0:6], s[7:8]), green=0.9,
              label=0),
      _record(8, 8, red=s[0:4], gt=_gt(8, 8, s[0:2]), green=0.3, label=0),
      _record(8, 8, red=s[:, 0:4], gt=_gt(8, 8, s[:, 0:4]), green=0.5,
              label=0),
      # Class 1, one pair, greens 1: probabilities are the red blocks. Block
      # edges at multiples of the scale factor (2 and 4) come back exactly
      # after bilinear down/up-sampling and the 0.5 threshold.
      _record(16, 16, red=s[0:8], gt=_gt(16, 16, s[0:12]), green=1.0,
              label=1),
      _record(16, 32, red=s[:, 0:8], gt=_gt(16, 32, s[:, 0:16]), green=1.0,
              label=1),
  ]


GROUPS = [(0, 1), (0, 2), (1, 2), (3, 4)]


def _fake_predict_batch(images):
  red = images[..., 0:1]
  green = images[..., 1].max(axis=(2, 3))  # [B, K]
  k = images.shape[1]
  partner = np.stack(
      [np.delete(green, i, axis=1).max(axis=1) for i in range(k)], axis=1)
  return red * partner[:, :, None, None, None]


def _row(j, p, inter, union, n):
  return dict(J=j, P=p, pooled_J=inter / union, num_images=n)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_figures_equal_hand_computed(resize):
  calls = []

  def predict(images):
    calls.append(images.shape)
    return _fake_predict_batch(images)

  results = coseg.evaluate_groups(
      predict_batch=predict, source=_source(), groups=GROUPS, image_size=8,
      resize=resize, binarize=common.binarizer(
          ml_collections.ConfigDict(dict(threshold=0.5))),
      batch_size=3, class_names=["cat", "dog"])
  # Two calls of exactly batch_size groups (the last one padded).
  assert calls == [(3, 2, 8, 8, 3), (3, 2, 8, 8, 3)]
  # Per image (J, P, intersection, union):
  #   A: empty prediction; gt rows 0:6, row 7 ignored -> J 0, P 8/56, U 48.
  #   B: pred rows 0:4, gt rows 0:2 -> I 16, U 32, J 1/2, P 48/64.
  #   C: pred = gt = cols 0:4 -> I = U = 32, J 1, P 1.
  #   D: pred rows 0:8, gt rows 0:12 of 16x16 -> I 128, U 192, P 192/256.
  #   E: pred cols 0:8, gt cols 0:16 of 16x32 -> I 128, U 256, P 384/512.
  j = dict(A=0.0, B=0.5, C=1.0, D=2 / 3, E=0.5)
  p = dict(A=1 / 7, B=0.75, C=1.0, D=0.75, E=0.75)
  cat_j, dog_j = np.mean([j["A"], j["B"], j["C"]]), np.mean([j["D"], j["E"]])
  cat_p, dog_p = np.mean([p["A"], p["B"], p["C"]]), np.mean([p["D"], p["E"]])
  assert results["per_class"]["cat"] == pytest.approx(
      _row(cat_j, cat_p, 0 + 16 + 32, 48 + 32 + 32, 3))
  assert results["per_class"]["dog"] == pytest.approx(
      _row(dog_j, dog_p, 128 + 128, 192 + 256, 2))
  assert results["avg_J"] == pytest.approx((cat_j + dog_j) / 2)
  assert results["avg_P"] == pytest.approx((cat_p + dog_p) / 2)
  assert results["image_mean_J"] == pytest.approx(np.mean(list(j.values())))
  assert results["image_mean_P"] == pytest.approx(np.mean(list(p.values())))
  assert results["pooled_J"] == pytest.approx(
      (0 + 16 + 32 + 128 + 128) / (48 + 32 + 32 + 192 + 256))
  assert results["num_images"] == 5 and results["num_groups"] == 4
  assert results["num_classes"] == 2
  assert results["combine"] == "mean of probabilities over an image's groups"
  table = coseg.format_results(results)
  for label in ("Avg. (classes)", "pooled J", "image-mean J",
                "probability >= 0.5", "J all-fg", "J centre"):
    assert label in table, table
  assert f"{(cat_j + dog_j) / 2:.3f}" in table


def test_all_foreground_reference_is_the_foreground_share():
  """The all-foreground J (and P) of each image is its share of foreground
  among the scored pixels; the model's predictions do not enter."""
  results = coseg.evaluate_groups(
      predict_batch=lambda x: np.zeros(x.shape[:-1] + (1,), np.float32),
      source=_source(), groups=GROUPS, image_size=8, batch_size=4,
      class_names=["cat", "dog"])
  # Foreground / scored pixels: A 48/56 (row 7 ignored), B 16/64, C 32/64,
  # D 192/256, E 256/512.
  share = dict(A=48 / 56, B=16 / 64, C=32 / 64, D=192 / 256, E=256 / 512)
  ref = results["reference/all_foreground"]
  cat = np.mean([share["A"], share["B"], share["C"]])
  dog = np.mean([share["D"], share["E"]])
  assert ref["per_class"]["cat"] == pytest.approx(
      _row(cat, cat, 48 + 16 + 32, 56 + 64 + 64, 3))
  assert ref["per_class"]["dog"] == pytest.approx(
      _row(dog, dog, 192 + 256, 256 + 512, 2))
  assert ref["avg_J"] == pytest.approx((cat + dog) / 2)
  assert ref["image_mean_J"] == pytest.approx(np.mean(list(share.values())))
  # The model predicted nothing: J 0 wherever there is foreground.
  assert results["avg_J"] == 0.0
  centre = results["reference/centre"]
  assert centre["num_images"] == 5 and set(centre["per_class"]) == {
      "cat", "dog"}
  only = coseg.evaluate_groups(
      predict_batch=_fake_predict_batch, source=_source(), groups=GROUPS,
      image_size=8, references=("centre",))
  assert "reference/centre" in only
  assert "reference/all_foreground" not in only


def test_centre_prior_covers_a_fifth_of_the_image_and_is_centred():
  h, w = 600, 900
  mask = coseg.reference_mask("centre", (h, w))
  assert mask.shape == (h, w) and mask.dtype == bool
  # An ellipse with semi-axes W/4 and H/4: pi / 16 = 19.6 % of the image.
  assert mask.mean() == pytest.approx(np.pi / 16, abs=0.01)
  assert mask.mean() == pytest.approx(0.196, abs=0.01)
  # Centred: symmetric about both axes, its box the middle half of each.
  np.testing.assert_array_equal(mask, mask[::-1])
  np.testing.assert_array_equal(mask, mask[:, ::-1])
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  assert (rows[0], rows[-1] + 1) == (h // 4, 3 * h // 4)
  assert (cols[0], cols[-1] + 1) == (w // 4, 3 * w // 4)
  assert mask[h // 2, w // 2] and not mask[0, 0]
  np.testing.assert_array_equal(coseg.reference_mask("all_foreground", (3, 4)),
                                np.ones((3, 4), bool))
  with pytest.raises(ValueError, match="unknown reference 'corner'"):
    coseg.reference_mask("corner", (4, 4))


def test_score_mask_conventions():
  gt = np.array([[1, 0], [255, 0]], np.uint8)
  empty = metrics.score_mask(pred=np.zeros((2, 2), bool),
                             gt=np.array([[0, 0], [255, 0]], np.uint8))
  # Empty union convention: J = 1; all three scored pixels right: P = 1.
  assert empty["jaccard"] == 1.0 and empty["precision"] == 1.0
  # A prediction on an ignored pixel counts nowhere.
  s = metrics.score_mask(pred=np.array([[1, 0], [1, 0]], bool), gt=gt)
  assert (s["intersection"], s["union"], s["correct"], s["total"]) == (
      1, 1, 3, 3)
  assert s["jaccard"] == 1.0 and s["precision"] == 1.0
  s = metrics.score_mask(pred=np.array([[1, 1], [0, 0]], bool),
                         gt=gt[..., None])
  assert (s["jaccard"], s["precision"]) == (0.5, pytest.approx(2 / 3))
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.score_mask(pred=np.zeros((2, 3), bool), gt=gt)


def test_preprocess_and_restore_roundtrip():
  image = np.zeros((10, 20, 3), np.uint8)
  x, info = augment.preprocess_image(image, image_size=8, resize="pad")
  assert x.shape == (8, 8, 3) and tuple(info.content_size) == (4, 8)
  back = augment.restore_prediction(np.ones((8, 8, 1)), info)
  assert back.shape == (10, 20)  # [h, w, 1] comes back squeezed
  np.testing.assert_allclose(back, 1.0)
  x, info = augment.preprocess_image(image, image_size=(6, 4))
  assert x.shape == (6, 4, 3) and x.dtype == np.float32
  with pytest.raises(ValueError, match="model input size"):
    augment.restore_prediction(np.ones((8, 8)), info)
  with pytest.raises(ValueError, match="resize"):
    augment.preprocess_image(image, image_size=8, resize="crop")


def test_group_target_for_class_masks():
  # voc2012-style records: target = union of the classes the group shares.
  cm1 = np.array([[0, 3, 5, 255]], np.uint8)
  cm2 = np.array([[3, 3, 0, 0]], np.uint8)
  r1 = dict(class_mask=cm1[..., None], labels=np.array([2, 4]))
  r2 = dict(class_mask=cm2[..., None], labels=np.array([2]))
  target = coseg.record_target(r1, [r1, r2])
  np.testing.assert_array_equal(target, [[0, 1, 0, 255]])
  # Alone, r1's target is both of its classes.
  np.testing.assert_array_equal(coseg.record_target(r1, [r1]),
                                [[0, 1, 1, 255]])
  assert coseg._record_class(r1, [r1, r2]) == 2  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="'mask' or 'class_mask'"):
    coseg.record_target(dict(image=np.zeros((2, 2, 3))), [])


def test_score_mask_selects_the_predictions_that_count():
  # Only the first member of each tuple is scored (strategies a, b, d): A is
  # scored with partners B and C (mean 0.4: empty), B with C only (0.5: its
  # red block), D with E; C and E are never scored and do not appear.
  score = np.array([[True, False]] * 4)
  results = coseg.evaluate_groups(
      predict_batch=_fake_predict_batch, source=_source(), groups=GROUPS,
      score=score, image_size=8, batch_size=4, class_names=["cat", "dog"])
  assert results["num_images"] == 3
  assert results["per_class"]["cat"] == pytest.approx(
      _row((0.0 + 0.5) / 2, (1 / 7 + 0.75) / 2, 0 + 16, 48 + 32, 2))
  assert results["per_class"]["dog"] == pytest.approx(
      _row(2 / 3, 0.75, 128, 192, 1))
  with pytest.raises(ValueError, match="score mask shape does not match"):
    coseg.evaluate_groups(predict_batch=_fake_predict_batch,
                          source=_source(), groups=GROUPS,
                          score=score[:2], image_size=8)
  with pytest.raises(ValueError, match="every member unscored"):
    coseg.evaluate_groups(predict_batch=_fake_predict_batch,
                          source=_source(), groups=GROUPS,
                          score=np.zeros((4, 2), bool), image_size=8)
  with pytest.raises(ValueError, match="no evaluation groups"):
    coseg.evaluate_groups(predict_batch=_fake_predict_batch,
                          source=_source(), groups=[], image_size=8)


def test_select_groups_round_robin_and_mixed_sizes():
  tuples = {"cat": samplers.all_pairs([0, 1, 2]),
            "dog": samplers.EvalTuples(np.array([[3, 4, 0]]),
                                       np.array([[True, True, False]]))}
  groups, score, classes, names = coseg.select_groups(tuples, 2)
  assert groups == [(0, 1), (3, 4, 0)] and classes == [0, 1]
  assert names == ["cat", "dog"]
  groups, score, classes, _ = coseg.select_groups(tuples)
  assert len(groups) == 4 and classes == [0, 0, 0, 1]
  shapes = []

  def predict(images):
    shapes.append(images.shape)
    return _fake_predict_batch(images)

  results = coseg.evaluate_groups(
      predict_batch=predict, source=_source(), groups=groups, score=score,
      group_classes=classes, image_size=8, batch_size=2,
      class_names=["cat", "dog"])
  # Pairs and triples are batched separately, each padded to batch_size.
  assert shapes == [(2, 2, 8, 8, 3), (2, 2, 8, 8, 3), (2, 3, 8, 8, 3)]
  assert results["num_images"] == 5 and results["num_groups"] == 4
  # Record 0 (class 0) is scored only in its pairs: still class "cat".
  assert results["per_class"]["cat"]["num_images"] == 3


def test_binarizer_methods_and_errors():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  prob = np.zeros((12, 10), np.float32)
  prob[:6] = 0.3  # a bimodal map entirely below the 0.5 threshold
  prob[6:] = 0.1
  cfg = ml_collections.ConfigDict
  thr = common.binarizer(cfg(dict(postprocess="threshold", threshold=0.25)))
  np.testing.assert_array_equal(thr(image, prob), prob >= 0.25)
  # Exactly at the threshold is foreground (>=).
  np.testing.assert_array_equal(
      common.binarizer(cfg(dict(threshold=0.3)))(image, prob), prob >= 0.3)
  assert common.binarizer(cfg(dict(threshold=0.3)))(image, prob)[:6].all()
  for default in (None, cfg()):
    np.testing.assert_array_equal(common.binarizer(default)(image, prob),
                                  np.zeros_like(prob, bool))
  assert common.binarizer_rule(cfg(dict(threshold=0.25))) == (
      "probability >= 0.25")
  assert common.binarizer_rule(None) == "probability >= 0.5"
  otsu_cfg = cfg(dict(postprocess="otsu", threshold=0.5))
  otsu = common.binarizer(otsu_cfg)
  np.testing.assert_array_equal(otsu(image, prob), prob > 0.2)
  np.testing.assert_array_equal(otsu(image, prob), postprocess.otsu(prob))
  assert common.binarizer_rule(otsu_cfg) == "otsu of the probability map"
  grabcut = common.binarizer(cfg(dict(postprocess="grabcut",
                                       postprocess_kwargs={"iterations": 2})))
  np.testing.assert_array_equal(
      grabcut(image, prob), postprocess.grabcut(image, prob, iterations=2))
  with pytest.raises(ValueError, match="config.eval.postprocess must be one"):
    common.binarizer(cfg(dict(postprocess="median")))
  with pytest.raises(ValueError,
                     match="config.eval.postprocess_kwargs.*takes no options"):
    common.binarizer(cfg(dict(postprocess="threshold",
                              postprocess_kwargs={"t": 0.3})))


def test_postprocess_replaces_the_threshold_in_the_figures():
  """Probabilities scaled by 0.45: every map is below 0.5, so the threshold
  finds nothing, while Otsu's split recovers the red blocks and gives the
  figures of the unscaled maps (class 'dog', where the blocks are the
  predictions: J 2/3 for D and 1/2 for E)."""
  source = _source()

  def dim(images):
    return 0.45 * _fake_predict_batch(images)

  groups = [(3, 4)]
  kwargs = dict(predict_batch=dim, source=source, groups=groups,
                image_size=8, batch_size=1, class_names=["cat", "dog"])
  plain = coseg.evaluate_groups(**kwargs)
  assert plain["per_class"]["dog"]["J"] == 0.0
  otsu_cfg = ml_collections.ConfigDict(dict(postprocess="otsu"))
  otsu = coseg.evaluate_groups(binarize=common.binarizer(otsu_cfg), **kwargs)
  assert otsu["per_class"]["dog"] == pytest.approx(
      _row((2 / 3 + 0.5) / 2, 0.75, 256, 448, 2))
  otsu["rule"] = common.binarizer_rule(otsu_cfg)
  assert "otsu of the probability map" in coseg.format_results(otsu)


def test_eval_data_config_overrides_and_errors():
  config = base.get_base_config()
  config.data.holdout_fraction = 0.3
  config.eval.data = {"class_slice": (10, 20), "holdout_part": "test"}
  data = common.eval_data_config(config)
  assert tuple(data.class_slice) == (10, 20) and data.holdout_part == "test"
  assert data.holdout_fraction == 0.3  # the rest is the training data's
  # The run's own data config is left as it was.
  assert config.data.class_slice is None and config.data.holdout_part == "all"
  config.eval.data = {}
  assert common.eval_data_config(config).to_dict() == config.data.to_dict()
  config.eval.data = {"class_slise": (10, 20)}
  with pytest.raises(ValueError, match=r"config.eval.data: unknown data "
                     r"field.*class_slise"):
    common.eval_data_config(config)


def test_configured_evaluators():
  config = base.get_base_config()
  assert evaluators.configured(config) == ("coseg",)
  config.eval.evaluators = ()
  assert evaluators.configured(config) == ("coseg",)
  config.eval.evaluators = ("coseg", "matching", "decision")
  assert evaluators.configured(config) == ("coseg", "matching", "decision")
  config.eval.evaluators = ("coseg", "pck")
  with pytest.raises(ValueError, match=r"config.eval.evaluators: unknown "
                     r"\['pck'\]; available: composite, coseg, decision, "
                     r"matching, partner"):
    evaluators.configured(config)


def test_eval_batch_size_rounds_up_to_the_mesh():
  config = base.get_base_config()
  config.eval.batch_size = 5
  assert common.eval_batch_size(config) == 5
  mesh = types.SimpleNamespace(shape={"data": 4})
  assert common.eval_batch_size(config, mesh) == 8
  config.eval.batch_size = 2
  assert common.eval_batch_size(config, mesh) == 4


# -----------------------------------------------------------------------------
# Evaluation data selection (data_pipelines.pipeline).


def _holdout_config(part, fraction=0.3, seed=0):
  return ml_collections.ConfigDict(dict(
      holdout_part=part, holdout_fraction=fraction, holdout_seed=seed))


def _membership():
  """Classes of 10, 7 and 1 records by first class, two records with no
  class, and multi-label records (assigned by their first class)."""
  first = [0] * 10 + [1] * 7 + [2] + [-1, -1]
  m = np.zeros((len(first), 3), bool)
  for i, c in enumerate(first):
    if c >= 0:
      m[i, c] = True
  m[3, 2] = m[12, 2] = True  # first classes 0 and 1
  return m, np.asarray(first)


def test_holdout_selection_parts():
  m, first = _membership()
  test = pipeline.holdout_selection(_holdout_config("test"), m)
  train = pipeline.holdout_selection(_holdout_config("train"), m)
  assert test.dtype == bool and test.shape == (m.shape[0],)
  assert not (test & train).any()  # disjoint
  np.testing.assert_array_equal(test | train, first >= 0)  # cover every record
  # Per class (by first class): round(0.3 n), at least one test record.
  for c, n in enumerate((10, 7, 1)):
    assert test[first == c].sum() == max(1, round(0.3 * n)), c
    assert train[first == c].sum() == n - max(1, round(0.3 * n)), c
  # Deterministic, a function of the seed.
  np.testing.assert_array_equal(
      pipeline.holdout_selection(_holdout_config("test"), m), test)
  others = [pipeline.holdout_selection(_holdout_config("test", seed=s), m)
            for s in range(1, 6)]
  assert any((o != test).any() for o in others)
  for o in others:
    assert o[first == 0].sum() == 3
  np.testing.assert_array_equal(
      pipeline.holdout_selection(_holdout_config("all"), m),
      np.ones(m.shape[0], bool))
  with pytest.raises(ValueError, match="holdout_part must be one of"):
    pipeline.holdout_selection(_holdout_config("val"), m)
  with pytest.raises(ValueError, match="holdout_fraction"):
    pipeline.holdout_selection(_holdout_config("test", fraction=0.0), m)
  with pytest.raises(ValueError, match="holdout_fraction"):
    pipeline.holdout_selection(_holdout_config("train", fraction=1.0), m)


def test_class_selection():
  names = ("arrow", "crescent", "cross", "star")
  data = data_config_lib.default_data_config()
  np.testing.assert_array_equal(pipeline.class_selection(data, names),
                                [True] * 4)
  data.class_slice = (1, 3)
  np.testing.assert_array_equal(pipeline.class_selection(data, names),
                                [False, True, True, False])
  data.exclude_classes = ("cross",)
  np.testing.assert_array_equal(pipeline.class_selection(data, names),
                                [False, True, False, False])
  data.exclude_classes = ()
  data.classes = ("arrow", "crescent")
  np.testing.assert_array_equal(pipeline.class_selection(data, names),
                                [False, True, False, False])
  data.classes = ()
  for bad in ((2, 9), (3, 3), (-1, 2)):
    data.class_slice = bad
    with pytest.raises(ValueError, match=r"data.class_slice=.*outside the 4 "
                       "classes"):
      pipeline.class_selection(data, names)
  data.class_slice = None
  data.classes = ("circle",)
  with pytest.raises(ValueError, match="unknown classes.*circle"):
    pipeline.class_selection(data, names)


# -----------------------------------------------------------------------------
# The evaluators on real pipelines (tiny synthetic set, a hand-made TSS).


def _red_model():
  return rh.RedModel(8.0)


def _register_red():
  return rh.register_red("_test_red_eval", 8.0)


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  """One build of the 'tiny' synthetic set (3 classes, 3 test images each)
  shared by the tests that read it."""
  return str(tmp_path_factory.mktemp("tfds"))


def _tiny_config(data_dir):
  config = base.get_base_config()
  config.data.data_dir = data_dir
  config.data.builder_config = "tiny"
  config.data.image_size = 32
  return config


def test_coseg_evaluate_on_synthetic(tiny_data_dir, capsys):
  """Wiring: the real pipeline (tiny synthetic set) and a parameter-free
  model registered as a method, so nothing heavy compiles."""
  config = _tiny_config(tiny_data_dir)
  config.method = _register_red()
  config.eval.max_groups = 5
  config.eval.batch_size = 4
  results = evaluators.evaluate(config=config, model=_red_model(),
                                variables={}, verbose=True)
  assert list(results) == ["coseg"]
  r = results["coseg"]
  # 5 groups taken round-robin over the 3 classes of the tiny set.
  assert r["num_groups"] == 5 and r["num_classes"] == 3
  assert set(r["per_class"]) == {"arrow", "crescent", "cross"}
  assert r["split"] == "test" and r["strategy"] == "pairs"
  assert r["rule"] == "probability >= 0.5"
  for key in ("avg_J", "avg_P", "pooled_J", "image_mean_J", "image_mean_P"):
    assert 0.0 <= r[key] <= 1.0
  for ref in coseg.REFERENCES:
    assert r[f"reference/{ref}"]["num_images"] == r["num_images"]
    assert 0.0 < r[f"reference/{ref}"]["avg_J"] < 1.0
  printed = capsys.readouterr().out
  assert "[coseg] _test_red_eval on synthetic/test" in printed
  assert "Avg. (classes)" in printed
  # eval.data selects the evaluated classes (the last two of the sorted
  # names), every pair of them.
  config.eval.data = {"class_slice": (1, 3)}
  config.eval.max_groups = -1
  r = coseg.evaluate(config=config, model=_red_model(), variables={})
  assert set(r["per_class"]) == {"crescent", "cross"}
  assert r["num_groups"] == 2 * 3 and r["num_images"] == 2 * 3


class _DecisionModel:
  """Says 'common object' when image 1 is brighter than image 2 (logit
  20 x the difference of their means)."""

  def apply(self, variables, images, train=False):
    del variables, train
    means = images.mean(axis=(2, 3, 4))
    return types.SimpleNamespace(
        decision_logits=20.0 * (means[:, :1] - means[:, 1:2]))


def test_decision_accuracy_equals_a_hand_count(tiny_data_dir):
  config = _tiny_config(tiny_data_dir)
  config.data.image_size = 16
  config.method = "cosegnet"
  config.model.decision_threshold = 0.7
  config.eval.decision_pairs = 7
  config.eval.batch_size = 4  # 7 pairs: the last batch is padded
  config.eval.seed = 3
  results = decision.evaluate(config=config, model=_DecisionModel(),
                              variables={})
  # The same pairs, one at a time, counted here.
  data = config.data.copy_and_resolve_references()
  data.sampler, data.group_size = "pairs", 2
  data.negative_fraction, data.eval_groups_per_split = 0.5, 7
  right, total = {0: 0, 1: 0}, {0: 0, 1: 0}
  between = 0  # pairs the 0.7 threshold decides differently from 0.5
  for batch in pipeline.make_dataset(data, split="test", batch_size=1,
                                     train=False, seed=3):
    image1, image2 = batch["images"][0].astype(np.float64)
    logit = 20.0 * (image1.mean() - image2.mean())
    said = logit > np.log(0.7 / 0.3)  # sigmoid(logit) > 0.7
    between += int(0 < logit <= np.log(0.7 / 0.3))
    label = int(batch["has_common"][0])
    total[label] += 1
    right[label] += int(said == bool(label))
  assert total[0] + total[1] == 7 and total[0] > 0 and total[1] > 0
  assert between > 0  # so the case checks that the threshold is applied
  assert results["num_positive"] == total[1]
  assert results["num_negative"] == total[0]
  assert results["accuracy"] == pytest.approx((right[0] + right[1]) / 7)
  assert results["positive_accuracy"] == pytest.approx(right[1] / total[1])
  assert results["negative_accuracy"] == pytest.approx(right[0] / total[0])
  assert results["threshold"] == 0.7
  # The AUC by ranks (the same pairs): the mean rank of the positives.
  logits, labels = [], []
  for batch in pipeline.make_dataset(data, split="test", batch_size=1,
                                     train=False, seed=3):
    image1, image2 = batch["images"][0].astype(np.float64)
    logits.append(20.0 * (image1.mean() - image2.mean()))
    labels.append(int(batch["has_common"][0]))
  ranks = np.argsort(np.argsort(logits)) + 1.0  # no ties among these
  pos = np.asarray(labels) == 1
  n1, n0 = pos.sum(), (~pos).sum()
  auc = (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
  assert results["auc"] == pytest.approx(auc)
  assert "decision accuracy" in decision.format_results(results)
  assert "ROC AUC" in decision.format_results(results)
  with pytest.raises(ValueError, match="needs a method with a decision"):
    decision.evaluate(config=config, model=_MatchingModel(), variables={})


def test_roc_auc_known_values():
  assert decision.roc_auc(np.array([3.0, 2.0, 1.0, 0.0]),
                          np.array([1, 1, 0, 0])) == 1.0
  assert decision.roc_auc(np.array([3.0, 2.0, 1.0, 0.0]),
                          np.array([0, 0, 1, 1])) == 0.0
  # One positive above both negatives, one between them: 3 of 4 pairs.
  assert decision.roc_auc(np.array([5.0, 2.0, 3.0, 1.0]),
                          np.array([1, 1, 0, 0])) == 0.75
  # A tie counts half: every score equal gives 0.5.
  assert decision.roc_auc(np.zeros(5), np.array([1, 0, 1, 0, 0])) == 0.5
  with pytest.raises(ValueError, match="positive and negative"):
    decision.roc_auc(np.zeros(3), np.ones(3))


# TSS layout: two 21x21 pairs. With align_corners normalisation a unit of
# the normalised frame is 10 pixels, so an affine translation of 0.5 moves
# every pixel by 5 pixels in x.
_TSS_SIZE = 21


def _write_tss_pair(root, subset, pair, *, mask1, mask2, flow12, flow21):
  d = root / subset / pair
  d.mkdir(parents=True)
  rng = np.random.default_rng(len(subset))
  for i, (mask, flow) in enumerate(((mask1, flow12), (mask2, flow21)),
                                   start=1):
    Image.fromarray(rng.integers(0, 256, (_TSS_SIZE, _TSS_SIZE, 3),
                                 dtype=np.uint8)).save(d / f"image{i}.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(d / f"mask{i}.png")
    data_io.write_flo(d / f"flow{i}.flo", flow)
  (d / "flip_gt.txt").write_text("0\n")


def _write_tss(root):
  """Hand-made flows against the fake model's prediction: flow 1->2 is 0
  (identity), flow 2->1 is (5, 0) (translation)."""
  n = _TSS_SIZE
  # FG3DCar: image 1's foreground is rows 0:10 (210 px, 3 of them unknown
  # flow). Flow 1->2 errors: 0 on rows 0:5 (102 scored px), 1.5 px on rows
  # 5:8 (63 px), 3 px on rows 8:10 (42 px). alpha * L = 1.05 px at 0.05 and
  # 2.1 px at 0.1: PCK 102/207 and 165/207.
  mask1 = np.zeros((n, n), np.uint8)
  mask1[0:10] = 1
  flow12 = np.zeros((n, n, 2), np.float32)
  flow12[5:8, :, 0] = 1.5
  flow12[8:, :, 0] = 3.0
  flow12[0, 0:3] = np.nan
  # Image 2's foreground is columns 0:7 (147 px); flow 2->1 is right on rows
  # 0:14 (98 px) and 3 px off below: PCK 2/3 at both alphas.
  mask2 = np.zeros((n, n), np.uint8)
  mask2[:, 0:7] = 1
  flow21 = np.zeros((n, n, 2), np.float32)
  flow21[..., 0] = 5.0
  flow21[14:, :, 1] = 3.0
  _write_tss_pair(root, "FG3DCar", "001_002", mask1=mask1, mask2=mask2,
                  flow12=flow12, flow21=flow21)
  # PASCAL: image 1 all foreground with exact flow (PCK 1); image 2 has no
  # foreground (PCK NaN: not counted).
  flow21 = np.zeros((n, n, 2), np.float32)
  flow21[..., 0] = 5.0
  _write_tss_pair(root, "PASCAL", "bike_01_02",
                  mask1=np.ones((n, n), np.uint8),
                  mask2=np.zeros((n, n), np.uint8),
                  flow12=np.zeros((n, n, 2), np.float32), flow21=flow21)


class _MatchingModel:
  """theta of the pair (image 2 -> image 1): identity; of (1 -> 2): a
  translation by 0.5 in x; every pixel foreground."""

  def apply(self, variables, images, train=False):
    del variables, train
    ident = geometry.identity_theta("affine_tps", 1)[0]
    shifted = ident.at[2].add(0.5)
    return types.SimpleNamespace(
        theta=jnp.stack([shifted, ident])[None], pairs=((0, 1), (1, 0)),
        mask_logits=jnp.full(images.shape[:-1] + (1,), 10.0))


@pytest.fixture(scope="module")
def tss_root(tmp_path_factory):
  """The hand-made TSS layout (built on first use, shared)."""
  root = tmp_path_factory.mktemp("tss")
  _write_tss(root / "raw")
  return root


def _tss_config(root):
  config = base.get_base_config()
  config.method = "macosnet"
  config.data.name = "tss"
  config.data.data_dir = str(root / "tfds")
  config.data.manual_dir = str(root / "raw")
  config.data.image_size = 16
  config.eval.evaluators = ("matching",)
  config.eval.pck_alphas = (0.05, 0.1)
  return config


def test_matching_pck_and_masks_equal_hand_computed(tss_root):
  config = _tss_config(tss_root)
  results = evaluators.evaluate(config=config, model=_MatchingModel(),
                                variables={}, verbose=False)["matching"]
  assert results["num_pairs"] == 2 and results["alphas"] == (0.05, 0.1)
  # Mean over the three scored (pair, direction) values.
  assert results["pck@0.05"] == pytest.approx(
      np.mean([102 / 207, 2 / 3, 1.0]), abs=1e-6)
  assert results["pck@0.1"] == pytest.approx(
      np.mean([165 / 207, 2 / 3, 1.0]), abs=1e-6)
  assert results["per_class_pck@0.1"] == pytest.approx(
      {"FG3DCar": np.mean([165 / 207, 2 / 3]), "PASCAL": 1.0}, abs=1e-6)
  # Every pixel predicted foreground: J = P = the foreground share.
  c = results["coseg"]
  assert c["per_class"]["FG3DCar"]["J"] == pytest.approx(
      np.mean([210 / 441, 147 / 441]))
  assert c["per_class"]["FG3DCar"]["P"] == pytest.approx(
      np.mean([210 / 441, 147 / 441]))
  assert c["per_class"]["PASCAL"]["J"] == pytest.approx(0.5)
  assert c["num_images"] == 4
  assert results["rule"] == "probability >= 0.5"
  text = matching.format_results(results)
  assert "2 pairs: PCK@0.05" in text and "Avg. J" in text


def test_matching_refuses_what_it_cannot_score(tss_root, tiny_data_dir):
  config = _tss_config(tss_root)
  with pytest.raises(ValueError, match="predicts transformations"):
    matching.evaluate(config=config, model=_DecisionModel(), variables={})
  config.data.resize = "pad"
  with pytest.raises(ValueError, match="resize='stretch'"):
    matching.evaluate(config=config, model=_MatchingModel(), variables={})
  config = _tiny_config(tiny_data_dir)
  with pytest.raises(ValueError, match="pair-record data set"):
    matching.evaluate(config=config, model=_MatchingModel(), variables={})


_MESH_SCRIPT = r'''
import flax, flax.linen as nn, jax, ml_collections, numpy as np
from jax.sharding import Mesh
from coseg_jax import models
from coseg_jax.runtime import steps
from coseg_jax.runtime.evaluators import coseg
import test_evaluators as te

@flax.struct.dataclass
class Out:
  mask_logits: jax.Array

class M(nn.Module):
  """The fake model of this file as a Flax module (K = 2)."""
  @nn.compact
  def __call__(self, images, train=False):
    green = images[..., 1].max(axis=(2, 3))
    partner = green[:, ::-1]
    p = images[..., :1] * partner[:, :, None, None, None]
    p = jax.numpy.clip(p, 1e-6, 1 - 1e-6)
    return Out(mask_logits=jax.numpy.log(p) - jax.numpy.log1p(-p))

models.register_method("_mesh_test", models.MethodSpec(
    build_model=lambda c: M(), loss_fn=None))
mesh = Mesh(np.array(jax.devices()), ("data",))
pb = steps.make_predict_batch(
    config=ml_collections.ConfigDict({"method": "_mesh_test"}), model=M(),
    variables={}, mesh=mesh)
r = coseg.evaluate_groups(predict_batch=pb, source=te._source(),
                          groups=te.GROUPS, image_size=8, batch_size=4,
                          class_names=["cat", "dog"])
print("DEVICES", len(jax.devices()))
print("FIGURES", r["avg_J"], r["pooled_J"], r["image_mean_P"])
'''


def test_sharded_prediction_on_four_fake_devices(tmp_path):
  """make_predict_batch with a 4-device mesh gives the hand-computed case."""
  script = tmp_path / "mesh_eval.py"
  script.write_text(_MESH_SCRIPT)
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(
                 [str(REPO), tests_dir, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, str(script)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines()
               if l.startswith(("DEVICES", "FIGURES")))
  assert lines["DEVICES"] == "4"
  avg_j, pooled, mean_p = map(float, lines["FIGURES"].split())
  ref = coseg.evaluate_groups(
      predict_batch=_fake_predict_batch, source=_source(), groups=GROUPS,
      image_size=8, batch_size=4, class_names=["cat", "dog"])
  assert avg_j == pytest.approx(ref["avg_J"], abs=1e-9)
  assert pooled == pytest.approx(ref["pooled_J"], abs=1e-9)
  assert mean_p == pytest.approx(ref["image_mean_P"], abs=1e-9)
  assert avg_j == pytest.approx(13 / 24)
