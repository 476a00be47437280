"""experiments.partner_cue: the two cues on hand-made feature maps."""

import ml_collections
import numpy as np

from experiments import partner_cue


def test_cue_scores_pick_the_partners_object():
  e = np.eye(4, dtype=np.float32)
  # Composite: object A at (0, 0), object B at (0, 1), background below.
  comp = np.stack([[e[0], e[1]], [e[2], e[2]]])
  # Partner holds A (its mask) on background.
  partner = np.stack([[e[0], e[2]], [e[2], e[2]]])
  mask = np.array([[1, 0], [0, 0]], np.float32)
  scores = partner_cue.cue_scores(comp, partner, mask)
  assert set(scores) == {"max", "oracle"}
  for s in scores.values():
    assert s.shape == (2, 2)
    assert s[0, 0] > s[0, 1]
  # The oracle is the cosine to the partner's mean object feature, e[0].
  np.testing.assert_allclose(scores["oracle"], [[1, 0], [0, 0]], atol=1e-5)


def test_object_mask():
  m = partner_cue.object_mask(np.array([[0, 3], [255, 1]], np.uint8))
  np.testing.assert_array_equal(m, [[0, 1], [0, 1]])


def test_cutout_choice_compares_the_cut_outs():
  """A describer that tells red from green: the target (red) matches a red
  partner object; the margin is the difference of same-class
  probabilities."""
  def describe(crops):
    red = (crops[..., 0] > 0.7).sum((1, 2)) + 1.0
    green = (crops[..., 1] > 0.7).sum((1, 2)) + 1.0
    return np.stack([red, green], -1) / (red + green)[:, None]

  canvas = np.full((16, 16, 3), 0.5, np.float32)
  class_map = np.zeros((16, 16), np.uint8)
  canvas[1:6, 1:6], class_map[1:6, 1:6] = (1, 0, 0), 3
  canvas[9:15, 9:15], class_map[9:15, 9:15] = (0, 1, 0), 7
  partner = np.full((16, 16, 3), 0.5, np.float32)
  partner[4:12, 4:12] = (1, 0, 0)
  mask = np.zeros((16, 16), np.float32)
  mask[4:12, 4:12] = 1
  right, margin = partner_cue.cutout_choice(describe, canvas, class_map, 3,
                                            7, partner, mask, size=8)
  assert right and margin > 0.5
  wrong, margin = partner_cue.cutout_choice(describe, canvas, class_map, 7,
                                            3, partner, mask, size=8)
  assert not wrong and margin < -0.5


def test_cutout_describer_averages_the_named_classifiers(monkeypatch):
  """Several named classifiers: their probabilities are averaged; none
  named: the config's backbone and checkpoint path."""
  made = []

  def fake_make_describer(name, path=None, *, batch_size=16):
    made.append((name, path, batch_size))
    one_hot = np.eye(3, dtype=np.float32)[len(made) - 1]
    return lambda crops: np.tile(one_hot, (len(crops), 1))

  monkeypatch.setattr(partner_cue.common_selection, "make_describer",
                      fake_make_describer)
  config = ml_collections.ConfigDict({
      "model": {"backbone": "efficientnet_lite2"},
      "init": {"pretrained": {"backbone": {"path": "/ckpt"}}}})
  describe = partner_cue.cutout_describer(config, ["a", "b"])
  np.testing.assert_allclose(describe(np.zeros((2, 8, 8, 3))),
                             [[0.5, 0.5, 0.0]] * 2)
  assert made == [("a", None, 3), ("b", None, 3)]
  describe = partner_cue.cutout_describer(config, [])
  assert made[-1] == ("efficientnet_lite2", "/ckpt", 3)
  np.testing.assert_allclose(describe(np.zeros((1, 8, 8, 3))), [[0, 0, 1]])
