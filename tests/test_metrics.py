"""Metrics vs NumPy references, empty conventions, accumulators, PCK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import metrics


def _np_scores(pred, gt, valid):
  """Float64 reference for one image: pred/gt/valid bool [H, W]."""
  inter = np.sum(pred & gt & valid)
  union = np.sum((pred | gt) & valid)
  correct = np.sum((pred == gt) & valid)
  total = np.sum(valid)
  j = inter / union if union else 1.0
  p = correct / total if total else 1.0
  return p, j, inter, union


def _random_batch(seed, shape=(3, 2, 6, 7, 1)):
  rng = np.random.default_rng(seed)
  prob = rng.uniform(size=shape).astype(np.float32)
  gt = (rng.uniform(size=shape) > 0.6).astype(np.float32)
  valid = rng.uniform(size=shape) > 0.2
  return prob, gt, valid


@pytest.mark.parametrize("use_valid", [False, True])
def test_scores_match_numpy_under_jit(use_valid):
  prob, gt, valid = _random_batch(0)
  valid = valid if use_valid else np.ones_like(valid)
  got = jax.jit(lambda p, g, v: metrics.segmentation_scores(
      pred=p, gt=g, valid=v))(prob, gt, valid)
  assert got["jaccard"].shape == (3, 2)
  for b in range(3):
    for k in range(2):
      p, j, inter, union = _np_scores(prob[b, k, ..., 0] > 0.5,
                                      gt[b, k, ..., 0] > 0.5,
                                      valid[b, k, ..., 0])
      np.testing.assert_allclose(got["precision"][b, k], p, rtol=1e-6)
      np.testing.assert_allclose(got["jaccard"][b, k], j, rtol=1e-6)
      assert got["intersection"][b, k] == inter
      assert got["union"][b, k] == union
  np.testing.assert_allclose(
      metrics.jaccard(pred=prob, gt=gt, valid=valid), got["jaccard"])
  np.testing.assert_allclose(
      metrics.precision(pred=prob, gt=gt, valid=valid), got["precision"])


def test_logits_threshold_at_zero_and_vmap():
  prob, gt, _ = _random_batch(1)
  logits = np.log(prob) - np.log1p(-prob)
  np.testing.assert_allclose(
      metrics.jaccard(pred=logits, gt=gt, from_logits=True),
      metrics.jaccard(pred=prob, gt=gt))
  vm = jax.vmap(lambda p, g: metrics.jaccard(pred=p, gt=g))(prob, gt)
  np.testing.assert_allclose(vm, metrics.jaccard(pred=prob, gt=gt))
  # 0.5 exactly is foreground (probability >= 0.5, logit >= 0), the rule
  # of the evaluators and of postprocess.threshold.
  half = np.full((1, 2, 2, 1), 0.5, np.float32)
  assert metrics.jaccard(pred=half, gt=np.ones_like(half)) == 1.0
  below = np.full((1, 2, 2, 1), np.nextafter(np.float32(0.5), 0), np.float32)
  assert metrics.jaccard(pred=below, gt=np.ones_like(below)) == 0.0
  assert metrics.jaccard(pred=np.zeros_like(half), gt=np.ones_like(half),
                         from_logits=True) == 1.0


def test_empty_conventions():
  zeros = np.zeros((2, 3, 3, 1), np.float32)
  ones = np.ones_like(zeros)
  # Nothing predicted, nothing present: perfect.
  np.testing.assert_array_equal(metrics.jaccard(pred=zeros, gt=zeros), 1.0)
  np.testing.assert_array_equal(metrics.precision(pred=zeros, gt=zeros), 1.0)
  # Everything wrong.
  np.testing.assert_array_equal(metrics.jaccard(pred=ones, gt=zeros), 0.0)
  np.testing.assert_array_equal(metrics.precision(pred=ones, gt=zeros), 0.0)
  # No valid pixel: P = 1 and J = 1 by convention.
  s = metrics.segmentation_scores(pred=ones, gt=zeros, valid=zeros)
  np.testing.assert_array_equal(s["precision"], 1.0)
  np.testing.assert_array_equal(s["jaccard"], 1.0)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"pred must be a mask \[..., H, W, 1\]"):
    metrics.jaccard(pred=np.zeros((2, 4, 4)), gt=np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.jaccard(pred=np.zeros((2, 4, 4, 1)), gt=np.zeros((2, 4, 5, 1)))


def _mask(rows):
  return np.array(rows, np.float32)[None, :, :, None]


def test_accumulator_hand_checked():
  """Three images, two classes; every figure below worked out by hand."""
  gt_a1 = _mask([[1, 1], [0, 0]])
  pr_a1 = _mask([[1, 0], [0, 0]])   # I=1 U=2 J=1/2, correct 3/4
  gt_a2 = _mask([[1, 1], [1, 1]])
  pr_a2 = _mask([[1, 1], [1, 1]])   # I=4 U=4 J=1, P=1
  gt_b1 = _mask([[0, 0], [0, 1]])
  pr_b1 = _mask([[1, 1], [0, 0]])   # I=0 U=3 J=0, correct 1/4
  acc = metrics.CosegAccumulator()
  acc.update(class_names=["cat", "cat"], scores=metrics.segmentation_scores(
      pred=np.concatenate([pr_a1, pr_a2]), gt=np.concatenate([gt_a1, gt_a2])))
  acc.update(class_names="dog",
             scores=metrics.segmentation_scores(pred=pr_b1, gt=gt_b1))
  r = acc.result()
  assert r["num_images"] == 3 and r["num_classes"] == 2
  assert r["per_class"]["cat"]["J"] == pytest.approx(0.75)
  assert r["per_class"]["cat"]["P"] == pytest.approx(0.875)
  assert r["per_class"]["cat"]["pooled_J"] == pytest.approx(5 / 6)
  assert r["per_class"]["dog"]["J"] == 0.0
  assert r["avg_J"] == pytest.approx(0.375)           # (0.75 + 0) / 2
  assert r["avg_P"] == pytest.approx((0.875 + 0.25) / 2)
  assert r["image_mean_J"] == pytest.approx(0.5)      # (0.5 + 1 + 0) / 3
  assert r["image_mean_P"] == pytest.approx(2 / 3)    # (0.75 + 1 + 0.25) / 3
  assert r["pooled_J"] == pytest.approx(5 / 9)        # (1 + 4 + 0) / (2+4+3)
  text = acc.format()
  assert "Avg. J" in text and "Pooled J" in text and "0.3750" in text
  with pytest.raises(ValueError, match="class names"):
    acc.update(class_names=["x", "y"], scores=metrics.segmentation_scores(
        pred=pr_b1, gt=gt_b1))


def _np_pck(pred, gt, alpha, ref, valid):
  out = []
  for b in range(pred.shape[0]):
    v = valid[b]
    if not v.any():
      out.append(np.nan)
      continue
    d = np.sqrt(((pred[b] - gt[b]) ** 2).sum(-1))
    out.append(np.mean(d[v] <= alpha * ref[b]))
  return np.array(out)


def test_pck_matches_numpy():
  rng = np.random.default_rng(3)
  gt = rng.uniform(0, 100, size=(4, 10, 2))
  pred = gt + rng.normal(0, 8, size=gt.shape)
  valid = rng.uniform(size=(4, 10)) > 0.3
  valid[3] = False
  bbox = np.stack([gt[..., 0].min(1), gt[..., 1].min(1), gt[..., 0].max(1),
                   gt[..., 1].max(1)], -1)
  ref = metrics.bbox_reference_size(jnp.asarray(bbox))
  np.testing.assert_allclose(
      ref, np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]))
  got = jax.jit(lambda p, g, r, v: metrics.pck(
      pred_points=p, gt_points=g, alpha=0.1, reference_size=r, valid=v))(
          pred, gt, ref, valid)
  want = _np_pck(pred, gt, 0.1, np.asarray(ref), valid)
  np.testing.assert_allclose(got[:3], want[:3], rtol=1e-6)
  assert np.isnan(got[3])
  # Exactly on the threshold counts as correct.
  on = metrics.pck(pred_points=jnp.array([[[3.0, 4.0]]]),
                   gt_points=jnp.zeros((1, 1, 2)), alpha=0.5,
                   reference_size=jnp.array([10.0]))
  assert on[0] == 1.0


def test_flow_pck_matches_numpy():
  rng = np.random.default_rng(4)
  h, w = 6, 9
  gt = rng.normal(0, 3, size=(2, h, w, 2))
  gt[0, 0, 0] = 1e10  # Middlebury unknown flow
  gt[1, 2, 3, 1] = np.nan
  pred = np.nan_to_num(gt, nan=0.0, posinf=0.0) + rng.normal(0, 0.6,
                                                             size=gt.shape)
  mask = rng.uniform(size=(2, h, w, 1)) > 0.4
  mask[0, 0, 0, 0] = True
  got = jax.jit(lambda p, g, m: metrics.flow_pck(
      pred_flow=p, gt_flow=g, mask=m, alpha=0.1))(pred, gt, mask)
  for b in range(2):
    known = np.all(np.isfinite(gt[b]) & (np.abs(gt[b]) < 1e9), -1)
    sel = mask[b, ..., 0] & known
    err = np.sqrt(((pred[b] - gt[b]) ** 2).sum(-1))[sel]
    np.testing.assert_allclose(got[b], np.mean(err <= 0.1 * max(h, w)),
                               rtol=1e-6)
  # A mapping given as absolute coordinates converts to the same flow.
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  mapping = pred + np.stack([xs, ys], -1)
  np.testing.assert_allclose(metrics.flow_from_mapping(jnp.asarray(mapping)),
                             pred, atol=1e-5)


def test_flow_pck_on_tss_sample(shared_data):
  """Ground truth scores 1; ground truth shifted past the tolerance scores 0."""
  from PIL import Image
  pair = sorted((shared_data / "tss_sample").glob("*/*/flow1.flo"))[0].parent
  with open(pair / "flow1.flo", "rb") as f:
    assert np.frombuffer(f.read(4), np.float32)[0] == 202021.25
    w, h = np.frombuffer(f.read(8), np.int32)
    flow = np.frombuffer(f.read(), np.float32).reshape(h, w, 2)
  mask = np.asarray(Image.open(pair / "mask1.png"))
  mask = (mask[..., 0] if mask.ndim == 3 else mask) >= (
      128 if mask.max() > 1 else 1)
  one = metrics.flow_pck(pred_flow=flow, gt_flow=flow, mask=mask)
  assert float(one) == 1.0
  shifted = flow + np.float32(0.051 * max(h, w))
  assert float(metrics.flow_pck(pred_flow=shifted, gt_flow=flow,
                                mask=mask)) == 0.0


def test_pck_accumulator():
  acc = metrics.PCKAccumulator()
  acc.update(values=[1.0, 0.5, np.nan], class_names=["a", "a", "b"])
  acc.update(values=[0.0], class_names="b")
  r = acc.result()
  assert r["mean_pck"] == pytest.approx(0.5)
  assert r["per_class"] == {"a": 0.75, "b": 0.0}
  assert r["avg_pck_over_classes"] == pytest.approx(0.375)
  assert r["num_pairs"] == 3 and r["num_skipped"] == 1
