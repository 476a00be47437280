"""Tests for the registry and the tiny backbone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import backbones


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
