"""benchmarks/cyclesegnet_selection.py: the demo's selection diagnosis."""

import os
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # 'benchmarks' is a top-level folder, not installed
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import cyclesegnet_selection as selection
from data_pipelines import synthetic


def test_mask_scores_known_values():
  obj = np.zeros((4, 4), bool)
  obj[:2, :2] = True          # 4 object pixels
  distractor = np.zeros((4, 4), bool)
  distractor[3, :] = True     # 4 distractor pixels; 8 background pixels
  pred = np.zeros((2, 4, 4), bool)
  pred[0, 0, :] = True        # 2 object + 2 background pixels
  pred[1] = obj | distractor
  pred[1, 2, 0] = True        # + 1 background pixel
  s = selection.mask_scores(pred, obj, distractor)
  np.testing.assert_allclose(s["J"], [2 / 6, 4 / 9])
  np.testing.assert_allclose(s["object_recall"], [0.5, 1.0])
  np.testing.assert_allclose(s["distractor_marked"], [0.0, 1.0])
  np.testing.assert_allclose(s["background_marked"], [2 / 8, 1 / 8])


def test_roc_auc_known_values():
  assert selection.roc_auc([3, 4], [1, 2]) == 1.0
  assert selection.roc_auc([1, 2], [3, 4]) == 0.0
  assert selection.roc_auc([1, 3], [2, 2]) == 0.5
  assert selection.roc_auc([2], [2]) == 0.5   # ties count one half
  assert np.isnan(selection.roc_auc([], [1.0]))


def test_colour_match_auc_constructed_pair():
  """Object red, distractor blue; the partner shows red (or blue) only."""
  red, blue, grey = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)
  image = np.full((12, 12, 3), grey, np.float32)
  obj = np.zeros((12, 12), bool)
  obj[1:5, 1:5] = True
  distractor = np.zeros((12, 12), bool)
  distractor[7:11, 7:11] = True
  image[obj], image[distractor] = red, blue
  partner = np.full((12, 12, 3), grey, np.float32)
  fg = np.zeros((12, 12), bool)
  fg[4:9, 4:9] = True
  partner[fg] = red
  assert selection.colour_match_auc(image, obj, distractor, partner, fg) == 1
  partner[fg] = blue
  assert selection.colour_match_auc(image, obj, distractor, partner, fg) == 0
  assert np.isnan(selection.colour_match_auc(image, obj, distractor, partner,
                                             np.zeros_like(fg)))


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_diagnose_constant_predictors(fill):
  cfg = synthetic.Builder.builder_configs["same64"]
  calls = []

  def predict(images):
    calls.append(images.shape)
    return np.full(images.shape[:-1] + (1,), fill, np.float32)

  out = selection.diagnose(predict=predict, builder_config=cfg,
                           images_per_class=3, seed=0)
  assert out["images"] == cfg.num_classes * 3
  # Two same-class partners and one other-class partner per image.
  assert calls[0] == (3, 2, 64, 64, 3) and len(calls) == out["images"]
  for key in ("same_class_partner", "other_class_partner"):
    row = out[key]
    assert row["object_recall"] == fill
    assert row["distractor_marked"] == fill
    assert row["background_marked"] == fill
  # A constant predictor does not depend on its partner.
  assert out["distractor_marked_std_over_partners"] == 0.0
  hist = out["distractor_marked_histogram_0_to_1_in_5_bins"]
  assert sum(hist) == out["images"]  # same64: one distractor per image
  assert hist[-1 if fill else 0] == out["images"]
  # Same-class partners share the object's texture (same64), so colour
  # matching separates most object pixels from distractor pixels.
  assert 0.75 < out["colour_match_auc"] <= 1.0
  bins = out["distractor_marked_by_colour_match_auc"]
  assert sum(b["pairs"] for b in bins.values()) == out["images"] * 2
  assert all(b["distractor_marked"] in (None, fill) for b in bins.values())


def test_renders_are_the_builders_test_split(tmp_path):
  cfg = synthetic.Builder.builder_configs["tiny"]
  images, objs, distractors = selection.render_class(cfg, 1, 2)
  assert images.shape == (2, cfg.image_size, cfg.image_size, 3)
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert objs.any(axis=(1, 2)).all() and not (objs & distractors).any()
  # pylint: disable=g-import-not-at-top
  from data_pipelines import config as config_lib
  from data_pipelines import pipeline
  from data_pipelines.synthetic import generator
  c = config_lib.default_data_config()
  c.data_dir = str(tmp_path)
  c.builder_config = "tiny"
  source = pipeline.load_source(c, "test")
  name = generator.category_names(cfg.num_classes)[1]
  records = {source[i]["image_id"].decode(): source[i]
             for i in range(len(source))}
  record = records[f"test/{name}/0001.png"]
  np.testing.assert_array_equal(np.asarray(record["image"]),
                                np.round(images[1] * 255))
  np.testing.assert_array_equal(np.asarray(record["mask"])[..., 0], objs[1])


def test_load_config_overrides():
  config = selection.load_config(
      os.path.join(_ROOT, "configs", "demo.py"),
      ["model.num_steps=7", "model.regions='raw'"])
  assert config.model.num_steps == 7 and config.model.regions == "raw"
  with pytest.raises(ValueError, match="field=value"):
    selection.load_config(os.path.join(_ROOT, "configs", "demo.py"),
                          ["model.num_steps"])


def test_renders_use_every_generator_setting_of_the_config():
  """apart64's gap must be honoured (it was not while the script passed the
  generator settings itself and left out the newer ones)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  cfg = synthetic.Builder.builder_configs["apart64"]
  _, objs, distractors = selection.render_class(cfg, 2, 6)
  gaps = [ndimage.distance_transform_edt(~o)[d].min()
          for o, d in zip(objs, distractors)]
  assert np.median(gaps) >= cfg.min_gap
  for i in range(2):
    expected = synthetic.render(cfg, 2, seed=cfg.seed + 1, index=i)
    np.testing.assert_array_equal(objs[i], expected[1].astype(bool))
