"""``--mode benchmark`` times the very step training runs (same program)."""

import grain
import jax
import numpy as np
import pytest

from configs import baselines_synthetic
from coseg_jax.runtime import benchmark
from coseg_jax.runtime.trainers import supervised


def _frozen_config(tmp_path):
  c = baselines_synthetic.get_config("baseline,runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.optimizer.lr_multipliers = {"backbone": 0.0}
  c.optimizer.weight_decay = 1e-3
  c.train.num_steps = 1
  c.train.checkpoint_every = 0
  c.mesh.data = 1
  return c


def test_the_benchmarked_step_equals_the_training_step(tmp_path):
  config = _frozen_config(tmp_path)
  program, host_batch, batch, _, cached = benchmark.prepare(config)
  assert not cached and program.frozen == (("backbone",),)
  p0 = jax.device_get(program.state.params)
  after, _ = program.train_step(program.state, batch)
  bench_params = jax.device_get(after.params)
  state = supervised.train_and_evaluate(
      config, str(tmp_path / "run"),
      dataset_fn=lambda *a, **k: grain.MapDataset.source(
          [host_batch]).to_iter_dataset())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               bench_params)
  # The frozen encoder did not move in either (weight decay included), the
  # decoder did.
  jax.tree.map(np.testing.assert_array_equal, bench_params["backbone"],
               p0["backbone"])
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), bench_params["decoder"],
      p0["decoder"]))
  assert max(moved) > 0


@pytest.mark.slow
def test_the_report_names_the_frozen_subtree_and_the_inputs(tmp_path):
  config = _frozen_config(tmp_path)
  config.benchmark = dict(steps=1, warmup=1)
  report = benchmark.run_benchmark(config)
  assert report["frozen"] == ["backbone"] and report["inputs"] == "images"
  assert report["train_step_ms"] > 0 and report["infer_step_ms"] > 0
  text = benchmark.format_report(report)
  assert "frozen backbone" in text and "train step time" in text
  config.model.backbone_eval_mode = True
  config.data.feature_cache.enabled = True
  report = benchmark.run_benchmark(config)
  assert report["inputs"] == "cached features"


def test_the_benchmarked_step_has_no_backward_pass_through_a_frozen_encoder(
    tmp_path):
  """The cost a benchmark reports is the frozen step's: fewer convolutions
  than the same config with the encoder trained (the bug this guards
  against timed the unfrozen step for a frozen config)."""
  counts = {}
  for frozen in (True, False):
    config = _frozen_config(tmp_path)
    if not frozen:
      config.optimizer.lr_multipliers = {}
    program, _, batch, _, _ = benchmark.prepare(config)
    counts[frozen] = str(jax.make_jaxpr(program.train_step)(
        program.state, batch)).count("conv_general_dilated")
  assert 0 < counts[True] < counts[False], counts
