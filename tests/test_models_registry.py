"""Every built-in method module imports and registers under its name."""

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
