"""Dense category pre-training (coseg_jax/models/dense_category.py): the
model, its masked loss and its registry entry. Its use as the
'encoder_pretrain' stage of a run is tested in test_stages.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import backbones
from coseg_jax import models
from coseg_jax.models import dense_category as dc


def _np_masked_ce(logits, class_ids, masks, valid):
  b, k, h, w, c = logits.shape
  total, count = 0.0, 0.0
  for i in range(b):
    for j in range(k):
      if class_ids[i, j] < 0:
        continue
      z = logits[i, j].reshape(-1, c).astype(np.float64)
      logp = z - z.max(-1, keepdims=True)
      logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
      wgt = (masks[i, j] * valid[i, j]).reshape(-1)
      total += -(logp[:, class_ids[i, j]] * wgt).sum()
      count += wgt.sum()
  return total / max(count, 1.0)


def test_masked_category_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 4, 6)).astype(np.float32) * 3
  class_ids = np.array([[0, 5, -1], [2, 2, 1]], np.int32)
  masks = (rng.random((2, 3, 5, 4, 1)) < 0.4).astype(np.float32)
  valid = (rng.random((2, 3, 5, 4, 1)) < 0.8).astype(np.float32)
  got = dc.masked_category_loss(jnp.asarray(logits), jnp.asarray(class_ids),
                                jnp.asarray(masks), jnp.asarray(valid))
  np.testing.assert_allclose(float(got), _np_masked_ce(
      logits, class_ids, masks, valid), rtol=1e-5)
  # Pixels outside the masks never matter; no mask pixel at all gives 0.
  changed = np.where(masks > 0, logits, logits + 50 * rng.normal(
      size=logits.shape)).astype(np.float32)
  np.testing.assert_allclose(float(dc.masked_category_loss(
      jnp.asarray(changed), jnp.asarray(class_ids), jnp.asarray(masks),
      jnp.asarray(valid))), float(got), rtol=1e-6)
  assert float(dc.masked_category_loss(
      jnp.asarray(logits), jnp.asarray(class_ids),
      jnp.zeros_like(jnp.asarray(masks)))) == 0.0
  # Known value: uniform logits cost log(C) per pixel.
  assert np.isclose(float(dc.masked_category_loss(
      jnp.zeros((1, 2, 3, 3, 6)), jnp.array([[1, 4]]),
      jnp.ones((1, 2, 3, 3)))), np.log(6.0))


def test_dense_category_net_shapes_names_and_parameter_count():
  kwargs = {"widths": (8, 8, 16, 16, 24)}
  net = dc.DenseCategoryNet(num_classes=5, backbone="tiny",
                            backbone_kwargs=kwargs)
  x = jnp.zeros((2, 3, 32, 32, 3))
  variables = net.init(jax.random.key(0), x)
  out = net.apply(variables, x)
  assert out.category_logits.shape == (2, 3, 32, 32, 5)
  assert out.category_logits.dtype == jnp.float32
  params = variables["params"]
  assert set(params) == {"backbone", "category_stride8", "category_stride16",
                         "category_stride32"}
  encoder = backbones.get_backbone("tiny", **kwargs)
  n_backbone = sum(v.size for v in jax.tree.leaves(encoder.init(
      jax.random.key(0), x[0])["params"]))
  # stride8/16/32 of the tiny backbone have widths[2:] channels.
  n_heads = sum(c * 5 + 5 for c in (16, 16, 24))
  assert sum(v.size for v in jax.tree.leaves(params)) == n_backbone + n_heads
  with pytest.raises(ValueError, match="no 'stride64'"):
    dc.DenseCategoryNet(num_classes=5, backbone_kwargs=kwargs,
                        levels=("stride64",)).init(jax.random.key(0), x)


def test_dense_category_is_registered_and_refuses_masks():
  spec = models.get_method("dense_category")
  assert spec.default_loss == {"category": 1.0}
  with pytest.raises(ValueError, match="num_classes must be set"):
    spec.build_model(ml_collections.ConfigDict({"backbone": "tiny"}))
  with pytest.raises(ValueError, match="predicts categories, not masks"):
    spec.predict_fn(outputs=None, batch={}, config=None)
