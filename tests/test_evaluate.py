"""Evaluation figures on a constructed case equal hand-computed values.

The fake model predicts, for image k of a group, its own red channel times
the largest green value of the other image(s) of the group. Red channels are
blocks whose edges survive the down- and up-sampling exactly (see the
comments), so the thresholded, resized-back prediction is known by hand; the
green values make an image's prediction depend on its group, which checks
that an image seen in several groups is scored once on the mean of its
probabilities.
"""

import numpy as np
import pytest

from coseg_jax import evaluate


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


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_figures_equal_hand_computed(resize):
  calls = []

  def predict(images):
    calls.append(images.shape)
    return _fake_predict_batch(images)

  results = evaluate.evaluate_groups(
      predict_batch=predict, source=_source(), groups=GROUPS, image_size=8,
      resize=resize, threshold=0.5, batch_size=3, class_names=["cat", "dog"])
  # Two calls of exactly batch_size groups (the last one padded).
  assert calls == [(3, 2, 8, 8, 3), (3, 2, 8, 8, 3)]
  # Per image (J, P, intersection, union):
  #   A: empty prediction; gt rows 0:6, row 7 ignored -> J 0, P 8/56.
  #   B: pred rows 0:4, gt rows 0:2 -> I 16, U 32, J 1/2, P 48/64.
  #   C: pred = gt = cols 0:4 -> I = U = 32, J 1, P 1.
  #   D: pred rows 0:8, gt rows 0:12 of 16x16 -> I 128, U 192, P 192/256.
  #   E: pred cols 0:8, gt cols 0:16 of 16x32 -> I 128, U 256, P 384/512.
  j = dict(A=0.0, B=0.5, C=1.0, D=2 / 3, E=0.5)
  p = dict(A=1 / 7, B=0.75, C=1.0, D=0.75, E=0.75)
  cat_j, dog_j = np.mean([j["A"], j["B"], j["C"]]), np.mean([j["D"], j["E"]])
  cat_p, dog_p = np.mean([p["A"], p["B"], p["C"]]), np.mean([p["D"], p["E"]])
  assert results["per_class"]["cat"] == pytest.approx(
      dict(J=cat_j, P=cat_p, images=3))
  assert results["per_class"]["dog"] == pytest.approx(
      dict(J=dog_j, P=dog_p, images=2))
  assert results["avg_J_over_classes"] == pytest.approx((cat_j + dog_j) / 2)
  assert results["avg_P_over_classes"] == pytest.approx((cat_p + dog_p) / 2)
  assert results["mean_J_per_image"] == pytest.approx(np.mean(list(j.values())))
  assert results["mean_P_per_image"] == pytest.approx(np.mean(list(p.values())))
  assert results["pooled_J"] == pytest.approx(
      (0 + 16 + 32 + 128 + 128) / (48 + 32 + 32 + 192 + 256))
  assert results["num_images"] == 5 and results["num_groups"] == 4
  assert results["threshold"] == 0.5
  table = evaluate.format_results(results)
  assert "avg_J_over_classes" in table and "pooled_J" in table
  assert "probability >= 0.5" in table


def test_score_image_conventions():
  gt = np.array([[1, 0], [255, 0]], np.uint8)
  empty = evaluate.score_image(pred=np.zeros((2, 2), bool),
                               gt=np.array([[0, 0], [255, 0]], np.uint8))
  assert empty["J"] == 1.0 and empty["P"] == 1.0  # empty union convention
  # A prediction on an ignored pixel counts nowhere.
  s = evaluate.score_image(pred=np.array([[1, 0], [1, 0]], bool), gt=gt)
  assert (s["intersection"], s["union"], s["correct"], s["valid"]) == (
      1, 1, 3, 3)


def test_preprocess_and_restore_roundtrip():
  image = np.zeros((10, 20, 3), np.uint8)
  x, info = evaluate.preprocess_image(image, image_size=8, resize="pad")
  assert x.shape == (8, 8, 3) and tuple(info.content_size) == (4, 8)
  back = evaluate.restore_size(np.ones((8, 8, 1)), info)
  assert back.shape == (10, 20)
  x, info = evaluate.preprocess_image(image, image_size=(6, 4))
  assert x.shape == (6, 4, 3) and x.dtype == np.float32
  with pytest.raises(ValueError, match="resize"):
    evaluate.preprocess_image(image, image_size=8, resize="crop")


def test_group_target_for_class_masks():
  # voc2012-style records: target = union of the classes the group shares.
  cm1 = np.array([[0, 3, 5, 255]], np.uint8)
  cm2 = np.array([[3, 3, 0, 0]], np.uint8)
  r1 = dict(class_mask=cm1[..., None], labels=np.array([2, 4]))
  r2 = dict(class_mask=cm2[..., None], labels=np.array([2]))
  target = evaluate._record_target(r1, [r1, r2])  # pylint: disable=protected-access
  np.testing.assert_array_equal(target, [[0, 1, 0, 255]])
  assert evaluate._record_class(r1, [r1, r2]) == 2  # pylint: disable=protected-access


def test_score_mask_selects_the_predictions_that_count():
  # Only the first member of each tuple is scored (strategies a, b, d): A is
  # scored with partners B and C (mean 0.4: empty), B with C only (0.5: its
  # red block), D with E; C and E are never scored and do not appear.
  score = np.array([[True, False]] * 4)
  results = evaluate.evaluate_groups(
      predict_batch=_fake_predict_batch, source=_source(), groups=GROUPS,
      score=score, image_size=8, batch_size=4, class_names=["cat", "dog"])
  assert results["num_images"] == 3
  assert results["per_class"]["cat"] == pytest.approx(
      dict(J=(0.0 + 0.5) / 2, P=(1 / 7 + 0.75) / 2, images=2))
  assert results["per_class"]["dog"] == pytest.approx(
      dict(J=2 / 3, P=0.75, images=1))
  with pytest.raises(ValueError, match="score mask shape does not match"):
    evaluate.evaluate_groups(predict_batch=_fake_predict_batch,
                             source=_source(), groups=GROUPS,
                             score=score[:2], image_size=8)


def test_select_groups_round_robin_and_mixed_sizes():
  from data_pipelines import samplers  # pylint: disable=g-import-not-at-top
  tuples = {"cat": samplers.all_pairs([0, 1, 2]),
            "dog": samplers.EvalTuples(np.array([[3, 4, 0]]),
                                       np.array([[True, True, False]]))}
  groups, score, classes, names = evaluate.select_groups(tuples, 2)
  assert groups == [(0, 1), (3, 4, 0)] and classes == [0, 1]
  assert names == ["cat", "dog"]
  groups, score, classes, _ = evaluate.select_groups(tuples)
  assert len(groups) == 4 and classes == [0, 0, 0, 1]
  shapes = []

  def predict(images):
    shapes.append(images.shape)
    return _fake_predict_batch(images)

  results = evaluate.evaluate_groups(
      predict_batch=predict, source=_source(), groups=groups, score=score,
      group_classes=classes, image_size=8, batch_size=2,
      class_names=["cat", "dog"])
  # Pairs and triples are batched separately, each padded to batch_size.
  assert shapes == [(2, 2, 8, 8, 3), (2, 2, 8, 8, 3), (2, 3, 8, 8, 3)]
  assert results["num_images"] == 5 and results["num_groups"] == 4
  # Record 0 (class 0) is scored only in its pairs: still class "cat".
  assert results["per_class"]["cat"]["images"] == 3


def test_evaluate_dataset_on_synthetic(tmp_path):
  """Wiring: the real pipeline (tiny synthetic set) and a parameter-free model
  (logits from the red channel) registered as a method, so nothing heavy
  compiles."""
  import flax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class Out:
    mask_logits: jax.Array

  class RedModel(nn.Module):

    @nn.compact
    def __call__(self, images, train=False):
      return Out(mask_logits=8.0 * (images[..., :1] - 0.5))

  if "_test_red_eval" not in models.available_methods():
    models.register_method("_test_red_eval", models.MethodSpec(
        build_model=lambda cfg: RedModel(), loss_fn=lambda **kw: (0.0, {})))
  config = common.get_base_config()
  config.method = "_test_red_eval"
  config.data.data_dir = str(tmp_path)
  config.data.builder_config = "tiny"
  config.data.image_size = 32
  config.eval.max_groups = 5
  config.eval.batch_size = 4
  results = evaluate.evaluate_dataset(config=config, model=RedModel(),
                                      variables={}, verbose=False)
  # 5 groups taken round-robin over the 3 classes of the tiny set.
  assert results["num_groups"] == 5 and results["num_classes"] == 3
  assert results["split"] == "test" and results["threshold"] == 0.5
  for key in ("avg_J_over_classes", "pooled_J", "mean_J_per_image",
              "mean_P_per_image"):
    assert 0.0 <= results[key] <= 1.0


_MESH_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
import flax, flax.linen as nn, jax, ml_collections, numpy as np
from jax.sharding import Mesh
from coseg_jax import evaluate, models
import test_evaluate as te

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
pb = evaluate.make_predict_batch(
    config=ml_collections.ConfigDict({"method": "_mesh_test"}), model=M(),
    variables={}, mesh=mesh)
r = evaluate.evaluate_groups(predict_batch=pb, source=te._source(),
                             groups=te.GROUPS, image_size=8, batch_size=4,
                             class_names=["cat", "dog"])
print("DEVICES", len(jax.devices()))
print("FIGURES", r["avg_J_over_classes"], r["pooled_J"], r["mean_P_per_image"])
'''


def test_sharded_prediction_on_four_fake_devices(tmp_path):
  """make_predict_batch with a 4-device mesh gives the hand-computed case."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / "mesh_eval.py"
  script.write_text(_MESH_SCRIPT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  proc = subprocess.run([sys.executable, str(script), tests_dir], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines()
               if l.startswith(("DEVICES", "FIGURES")))
  assert lines["DEVICES"] == "4"
  avg_j, pooled, mean_p = map(float, lines["FIGURES"].split())
  ref = evaluate.evaluate_groups(
      predict_batch=_fake_predict_batch, source=_source(), groups=GROUPS,
      image_size=8, batch_size=4, class_names=["cat", "dog"])
  assert avg_j == pytest.approx(ref["avg_J_over_classes"], abs=1e-9)
  assert pooled == pytest.approx(ref["pooled_J"], abs=1e-9)
  assert mean_p == pytest.approx(ref["mean_P_per_image"], abs=1e-9)
  assert avg_j == pytest.approx(13 / 24)


def test_make_binarizer_methods_and_errors():
  from coseg_jax import postprocess  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  prob = np.zeros((12, 10), np.float32)
  prob[:6] = 0.3  # a bimodal map entirely below the 0.5 threshold
  prob[6:] = 0.1
  thr = evaluate.make_binarizer(threshold=0.25)
  np.testing.assert_array_equal(thr(image, prob), prob >= 0.25)
  np.testing.assert_array_equal(evaluate.make_binarizer()(image, prob),
                                np.zeros_like(prob, bool))
  otsu = evaluate.make_binarizer(postprocess="otsu")
  np.testing.assert_array_equal(otsu(image, prob), prob > 0.2)
  np.testing.assert_array_equal(otsu(image, prob),
                                postprocess.otsu(prob))
  grabcut = evaluate.make_binarizer(postprocess="grabcut",
                                    postprocess_kwargs={"iterations": 2})
  np.testing.assert_array_equal(
      grabcut(image, prob), postprocess.grabcut(image, prob, iterations=2))
  with pytest.raises(ValueError, match="eval.postprocess must be one of"):
    evaluate.make_binarizer(postprocess="median")
  with pytest.raises(ValueError, match="takes no options"):
    evaluate.make_binarizer(postprocess_kwargs={"t": 0.3})


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
  plain = evaluate.evaluate_groups(**kwargs)
  assert plain["per_class"]["dog"]["J"] == 0.0
  assert plain["postprocess"] == "threshold"
  otsu = evaluate.evaluate_groups(postprocess="otsu", **kwargs)
  assert otsu["postprocess"] == "otsu"
  assert otsu["per_class"]["dog"] == pytest.approx(
      dict(J=(2 / 3 + 0.5) / 2, P=0.75, images=2))
  assert "otsu of the probability map" in evaluate.format_results(otsu)
