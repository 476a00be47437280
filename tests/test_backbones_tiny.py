"""Tests for the registry and the tiny backbone."""

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
