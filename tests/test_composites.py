"""Composite scenes (data_pipelines/composites.py, scenes.py), their use in
training batches, and the partner and composite evaluators."""

import jax
import numpy as np
import pytest

from configs import baselines_synthetic
from coseg_jax import models
from coseg_jax.runtime.evaluators import composite
from coseg_jax.runtime.evaluators import partner
from data_pipelines import composites
from data_pipelines import pipeline
from data_pipelines import scenes


COLOURS = ((250, 10, 10), (10, 250, 10), (10, 10, 250))


def _records():
  """Three single-class records: a square (class 0), a bar (class 1), a
  blob (class 2), each in its own colour on a textured 40x60 image."""
  rng = np.random.default_rng(0)
  out = []
  for cls, (y0, y1, x0, x1) in enumerate(((5, 25, 10, 30), (10, 14, 5, 55),
                                          (20, 35, 40, 55))):
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    class_map = np.zeros((40, 60), np.uint8)
    class_map[y0:y1, x0:x1] = cls + 1
    image[y0:y1, x0:x1] = COLOURS[cls]
    out.append((image, class_map))
  return out


MEMBERSHIP = np.eye(3, dtype=bool)


def test_specs_are_seeded_and_pair_two_classes_on_a_third_background():
  a = composites.composite_specs(MEMBERSHIP, count=20, seed=1)
  b = composites.composite_specs(MEMBERSHIP, count=20, seed=1)
  c = composites.composite_specs(MEMBERSHIP, count=20, seed=2)
  assert a == b and a != c
  for s in a:
    assert s.classes[0] != s.classes[1]
    assert s.background not in s.records
    assert not MEMBERSHIP[s.background][list(s.classes)].any()
    assert all(0.45 <= x <= 0.7 for x in s.scales)
  with pytest.raises(ValueError, match="need records of 3 classes"):
    composites.composite_specs(MEMBERSHIP[:, :2], count=1, seed=0)
  with pytest.raises(ValueError, match="background must be one of"):
    composites.composite_specs(MEMBERSHIP, count=1, seed=0, background="x")


@pytest.mark.parametrize("background", ["inpaint", "side_by_side"])
def test_render_marks_each_object_with_its_class_in_its_half(background):
  records = _records()
  spec = composites.composite_specs(MEMBERSHIP, count=1, seed=3,
                                    background=background)[0]
  image, class_map = composites.render(spec, lambda i: records[i],
                                       size=(48, 64))
  assert image.shape == (48, 64, 3) and image.dtype == np.uint8
  c_a, c_b = spec.classes
  assert set(np.unique(class_map)) == {0, c_a + 1, c_b + 1}
  left = c_a if spec.a_left else c_b
  right = c_b if spec.a_left else c_a
  ys, xs = np.nonzero(class_map == left + 1)
  assert xs.max() < 32
  ys, xs = np.nonzero(class_map == right + 1)
  assert xs.min() >= 32
  if background == "inpaint":
    # The pasted pixels are the source objects' (their colour), and no
    # object colour is left anywhere else (the background's own object was
    # inpainted).
    for cls in (c_a, c_b):
      pasted = image[class_map == cls + 1].astype(int)
      assert np.median(np.abs(pasted - COLOURS[cls]).max(-1)) <= 2
    bg = image[class_map == 0].astype(int)
    for cls in range(3):
      assert np.mean(np.abs(bg - COLOURS[cls]).max(-1) <= 2) < 0.01


def test_scenes_add_composites_as_members_of_both_classes(tmp_path):
  c = baselines_synthetic.get_config("baseline,runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.composites.per_record = 0.5
  source = pipeline.load_source(c.data, "train")
  index = pipeline.record_index_of(source, c.data)
  train = scenes.Scenes(source, index, c.data, train=True)
  evaluation = scenes.Scenes(source, index, c.data, train=False)
  n = index.membership.shape[0]
  assert len(evaluation) == n and len(train) == n + round(0.5 * n)
  assert (train.membership[n:].sum(1) == 2).all()
  scene = train[n]
  spec = train.specs[0]
  assert scene["image"].shape == (32, 32, 3)
  assert set(np.unique(scene["class_map"])) <= {0, 255} | {
      c + 1 for c in spec.classes}
  # Paired with an image of one class, the composite's target is that
  # class's object only.
  target = np.zeros(len(train.class_names), bool)
  target[spec.classes[0]] = True
  lab = scenes.target_label_map(scene["class_map"], target)
  np.testing.assert_array_equal(lab == 1,
                                scene["class_map"] == spec.classes[0] + 1)


def test_training_batches_hold_composites_with_single_object_targets(
    tmp_path):
  c = baselines_synthetic.get_config("baseline,runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.composites.per_record = 1.0
  c.data.augment.enabled = False
  ds = pipeline.make_dataset(c.data, split="train", batch_size=8, train=True,
                             seed=0)
  batch = next(iter(ds))
  n = 18  # records of the synthetic 'tiny' train split
  seen = 0
  for i in range(8):
    for k in range(2):
      if batch["record_ids"][i, k] >= n:
        seen += 1
        # A composite's target covers less than both of its objects: one.
        assert 0 < batch["masks"][i, k].sum() < 32 * 32
  assert seen > 0


def _fake_config(tmp_path, method):
  c = baselines_synthetic.get_config(f"{method},runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.eval.split = "test"
  c.eval.partner_pairs = 6
  c.eval.composites = 4
  c.eval.batch_size = 4
  c.eval.composite_background = "side_by_side"  # 3 test classes
  return c


@pytest.mark.parametrize("method,blind", [("baseline", True),
                                          ("mcat", False)])
def test_partner_and_composite_evaluators_see_partner_blindness(
    tmp_path, method, blind):
  """'baseline' has no exchange: its predictions cannot depend on the
  partner (dp = 0, the two composite masks identical); 'mcat' mixes the
  partner's pooled features in, so a random model already reacts."""
  config = _fake_config(tmp_path, method)
  model = models.get_method(method).build_model(config.model)
  variables = model.init(jax.random.PRNGKey(0),
                         np.zeros((1, 2, 32, 32, 3), np.float32))
  p = partner.evaluate(config=config, model=model, variables=variables)
  assert p["num_pairs"] == 6
  assert set(p["replacements"]) == set(partner.REPLACEMENTS)
  c = composite.evaluate(config=config, model=model, variables=variables)
  assert c["num_composites"] == 4
  for key in ("conditional_J", "wrong_object_rate", "both_rate",
              "mask_iou_between_partners"):
    assert 0.0 <= c[key] <= 1.0
  dps = [v["mean_abs_dprob"] for v in p["replacements"].values()]
  if blind:
    assert max(dps) == 0.0
    assert c["mask_iou_between_partners"] == 1.0
  else:
    assert min(dps) > 0.0
  assert "composites x 2 partners" in composite.format_results(c)
  assert "J with the real partner" in partner.format_results(p)


def test_composite_score_known_case():
  spec = composites.CompositeSpec(records=(0, 1), classes=(0, 1),
                                  background=-1, a_left=True,
                                  scales=(0.5, 0.5),
                                  offsets=((0, 0), (0, 0)))
  class_map = np.zeros((4, 4), np.uint8)
  class_map[:, :2] = 1  # object of class 0: 8 px
  class_map[:2, 2:] = 2  # object of class 1: 4 px
  canvas = np.zeros((4, 4, 3), np.uint8)
  follows = [(class_map == 1).astype(float), (class_map == 2).astype(float)]
  both = (class_map > 0).astype(float)
  items = [{"spec": spec, "target": t, "class_map": class_map,
            "canvas": canvas, "prob": p}
           for t, p in ((0, follows[0]), (1, follows[1]))]
  r = composite.score(items, lambda image, prob: prob >= 0.5, ("a", "b"))
  assert r["conditional_J"] == 1.0 and r["wrong_object_rate"] == 0.0
  assert r["both_rate"] == 0.0 and r["mask_iou_between_partners"] == 0.0
  assert r["oracle_component_J"] == 1.0
  items = [dict(it, prob=both) for it in items]
  r = composite.score(items, lambda image, prob: prob >= 0.5, ("a", "b"))
  # Both objects every time: J 8/12 and 4/12; the masks are equal.
  assert np.isclose(r["conditional_J"], (8 / 12 + 4 / 12) / 2)
  assert r["both_rate"] == 1.0 and r["mask_iou_between_partners"] == 1.0
  # Given b's partner, covering 8 px of a and 4 of b is the wrong object.
  assert r["wrong_object_rate"] == 0.5
  assert r["per_class"] == {"a": 8 / 12, "b": 4 / 12}
  # The one component lies more on a: the truth keeps it for a's partner
  # (J 8/12) and drops it for b's (J 0).
  assert np.isclose(r["oracle_component_J"], (8 / 12 + 0.0) / 2)
  # One 12-px component over both objects, in both cases.
  assert r["layout_rates"] == {"separate": 0.0, "merged": 1.0, "one": 0.0,
                               "neither": 0.0}
  assert "merged 100.0%" in composite.format_results(dict(r, rule="t"))


def test_oracle_components_keep_what_lies_on_the_target():
  target = np.zeros((10, 10), bool)
  other = np.zeros((10, 10), bool)
  target[2:8, 0:4] = True
  other[2:8, 6:10] = True
  mask = np.zeros((10, 10), bool)
  mask[2:8, 1:3] = True  # on the target
  mask[2:8, 7:9] = True  # on the other object
  mask[0, 5] = True  # background speck, on neither: dropped
  mask[9, 2:8] = True  # below both, touching neither: dropped
  kept = composite.oracle_components(mask, target, other)
  np.testing.assert_array_equal(kept, mask & target)
  # A component with 3 px on each object is kept (a tie goes to the target).
  bridge = np.zeros((10, 10), bool)
  bridge[5, 1:9] = True
  np.testing.assert_array_equal(
      composite.oracle_components(bridge, target, other), bridge)
  assert not composite.oracle_components(np.zeros((10, 10), bool), target,
                                         other).any()


def test_layout_of_a_mask_on_two_objects():
  """Each case of composite.layout on a 10 x 10 canvas: object a in the
  left columns, object b in the right ones."""
  target = np.zeros((10, 10), bool)
  other = np.zeros((10, 10), bool)
  target[2:8, 0:4] = True  # 24 px
  other[2:8, 6:10] = True  # 24 px
  empty = np.zeros((10, 10), bool)
  assert composite.layout(empty, target, other) == "neither"
  # 5 of 24 px (< a quarter) of one object is not covering it.
  speck = empty.copy()
  speck[2, 0:5] = True
  assert composite.layout(speck, target, other) == "neither"
  assert composite.layout(target, target, other) == "one"
  assert composite.layout(other, target, other) == "one"
  # Two components, one on each object.
  assert composite.layout(target | other, target, other) == "separate"
  # A bridge joins them into one component that lies on neither.
  bridged = target | other
  bridged[4, 4:6] = True
  assert composite.layout(bridged, target, other) == "merged"
  # One component, mostly on the target (24 of 42 px), that reaches a
  # quarter of the other object: both covered, none lies on the other.
  lopsided = target.copy()
  lopsided[2:8, 4:7] = True
  assert composite.layout(lopsided, target, other) == "merged"
  # A separate blob on the other object makes it 'separate'.
  lopsided[2:8, 9] = True
  assert composite.layout(lopsided, target, other) == "separate"
