"""Tests for the registry and the tiny backbone."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from coseg_jax import backbones
from coseg_jax import models


def test_unknown_backbone_names_the_known_ones():
  with pytest.raises(ValueError, match="tiny"):
    backbones.get_backbone("resnet1000")


def test_tiny_shapes_and_truncation():
  model = backbones.get_backbone("tiny", truncate_at="stride16")
  x = jnp.asarray(np.random.RandomState(0).rand(2, 64, 48, 3), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  assert list(out.features) == ["stride2", "stride4", "stride8", "stride16"]
  assert out.features["stride16"].shape == (2, 4, 3, 64)
  assert out.pooled.shape == (2, 64)
  assert out.logits is None


def test_group_features_shares_one_backbone_over_the_group():
  class Wrapper(nn.Module):

    @nn.compact
    def __call__(self, images):
      return backbones.group_features(self, "tiny", images, train=False,
                                      dtype=jnp.float32,
                                      kwargs={"widths": (4, 4, 8, 8, 8)})

  x = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))
  variables = Wrapper().init(jax.random.key(1), x)
  assert set(variables["params"]) == {"backbone"}
  feats = Wrapper().apply(variables, x)
  direct = backbones.get_backbone("tiny", widths=(4, 4, 8, 8, 8)).apply(
      {k: v["backbone"] for k, v in variables.items()},
      x.reshape(6, 32, 32, 3)).features
  assert feats["stride8"].shape == (6, 4, 4, 8)
  for level in direct:
    np.testing.assert_array_equal(feats[level], direct[level])


class _GroupEncoder(nn.Module):
  eval_mode: bool = False

  @nn.compact
  def __call__(self, images, train):
    return backbones.group_features(self, "tiny", images, train=train,
                                    dtype=jnp.float32,
                                    kwargs={"widths": (4, 4, 8, 8, 8)},
                                    eval_mode=self.eval_mode)


def test_group_features_eval_mode_keeps_batchnorm_statistics():
  x = jax.random.uniform(jax.random.key(0), (2, 2, 32, 32, 3))
  variables = _GroupEncoder().init(jax.random.key(1), x, train=False)
  # Perturbed running statistics, so that batch statistics differ from them.
  variables = dict(variables, batch_stats=jax.tree.map(
      lambda s: s + 0.3, variables["batch_stats"]))
  at_eval = _GroupEncoder().apply(variables, x, train=False)
  frozen, frozen_vars = _GroupEncoder(eval_mode=True).apply(
      variables, x, train=True, mutable=["batch_stats"])
  live, live_vars = _GroupEncoder().apply(variables, x, train=True,
                                          mutable=["batch_stats"])
  for level in at_eval:
    np.testing.assert_array_equal(frozen[level], at_eval[level])
  jax.tree.map(np.testing.assert_array_equal, frozen_vars["batch_stats"],
               variables["batch_stats"])
  # Without it, training mode normalises by the batch and moves the stats.
  assert not np.allclose(live["stride32"], at_eval["stride32"])
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b),
                       live_vars["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("method,config_module,arg", [
    ("cyclesegnet", "cyclesegnet_voc2012", "runlocal"),
    ("cosegnet", "cosegnet_voc2012", "cosegnet,runlocal"),
    ("cosegnet_base", "cosegnet_voc2012", "base,runlocal"),
    ("baseline", "baselines_synthetic", "baseline,runlocal"),
    ("dense_category", None, None),
])
def test_models_read_backbone_eval_mode_from_the_config(method, config_module,
                                                        arg):
  if config_module:
    config = importlib.import_module(f"configs.{config_module}").get_config(
        arg)
  else:
    config = base.get_base_config()
    config.method = method
    config.model.num_classes = 3
  assert config.method == method
  assert config.model.backbone_eval_mode is False
  build = models.get_method(method).build_model
  assert build(config.model).backbone_eval_mode is False
  config.model.backbone_eval_mode = True
  assert build(config.model).backbone_eval_mode is True
