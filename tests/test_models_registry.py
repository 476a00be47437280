"""Every built-in method module imports and registers under its name."""

import pytest

from coseg_jax import models


def test_every_method_module_imports():
  # The registry tolerates a broken module at run time (the other methods
  # stay usable), so this test is what makes a broken import fail CI.
  assert models.import_errors() == {}


def test_all_five_methods_and_the_baselines_are_registered():
  names = set(models.available_methods())
  expected = {"baseline", "mcat", "mmul", "cyclesegnet", "coattention",
              "cosegnet", "cosegnet_base", "dcc", "macosnet"}
  assert expected <= names, sorted(expected - names)


def test_config_dtype_names_and_error():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  assert models.config_dtype("float32") == jnp.float32
  assert models.config_dtype("bfloat16") == jnp.bfloat16
  assert models.config_dtype(jnp.bfloat16) == jnp.bfloat16  # already a dtype
  with pytest.raises(ValueError, match=r"config.model.dtype must be one of "
                     r"\['bfloat16', 'float16', 'float32'\], got 'float64'"):
    models.config_dtype("float64")
