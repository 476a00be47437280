"""Every built-in method module imports and registers under its name."""

import jax.numpy as jnp
import pytest

from coseg_jax import models
from coseg_jax.models import registry


def test_registering_twice_and_unknown_names_are_errors():
  spec = models.get_method("baseline")
  assert registry.register_method("baseline", spec) is spec  # same: no-op
  with pytest.raises(ValueError, match="already registered"):
    registry.register_method("baseline", models.MethodSpec(
        build_model=spec.build_model, loss_fn=spec.loss_fn))
  with pytest.raises(TypeError, match="expected a MethodSpec"):
    registry.register_method("x", object())
  with pytest.raises(ValueError, match="unknown method 'nope'; available: "):
    models.get_method("nope")


def test_all_five_methods_and_the_baselines_are_registered():
  names = set(models.available_methods())
  expected = {"baseline", "mcat", "mmul", "cyclesegnet", "coattention",
              "cosegnet", "cosegnet_base", "dcc", "macosnet"}
  assert expected <= names, sorted(expected - names)


def test_config_dtype_names_and_error():
  assert models.config_dtype("float32") == jnp.float32
  assert models.config_dtype("bfloat16") == jnp.bfloat16
  assert models.config_dtype(jnp.bfloat16) == jnp.bfloat16  # already a dtype
  with pytest.raises(ValueError, match=r"config.model.dtype must be one of "
                     r"\['bfloat16', 'float16', 'float32'\], got 'float64'"):
    models.config_dtype("float64")
