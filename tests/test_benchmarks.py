"""The JAX-vs-PyTorch benchmark suite: parity of the torch implementations
and an end-to-end run on CPU (no timing assertions).

* Parameter counts: every method's torch implementation
  (``benchmarks/torch_impl``) has exactly the Flax model's number of
  parameters, at the paper's configuration and at the reduced CPU sizes
  (built on torch's meta device: shapes only, nothing allocated).
* Outputs: the Flax variables (random weights, perturbed biases and BN
  statistics so that layout mistakes cannot hide) are copied into the torch
  model with the strict ``flax_to_torch_state_dict`` and both run in float32
  on CPU; the outputs agree to float32 rounding (max abs error <= 1e-4 of
  the output scale). CycleSegNet also compares the train-mode loss (BN batch
  statistics + Lovász) — the quantity the timed training step differentiates.
* Losses: the torch Lovász and co-attention losses equal the coseg_jax ones.
* Suite: ``benchmarks.run_all`` at the tiny size writes its Markdown section,
  JSON and PNG, and replaces (not appends) its section of the results page
  (``--results_md``); the cpu224 layout (one row per encoder x step,
  targets met / missed) renders from a results file.
* Configs: the cpu224 cells (the CPU recipes with a Lite0 / Lite2 encoder,
  trained unless the paper freezes it) and the group size reaching both
  frameworks' inputs.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optional_import

torch = optional_import("torch")

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import run_all
from benchmarks.torch_impl import backbones
from benchmarks.torch_impl import blocks
from benchmarks.torch_impl import coattention as tco
from benchmarks.torch_impl import cyclesegnet as tcyc
from benchmarks.torch_impl import parity
from coseg_jax import losses
from coseg_jax.models import cyclesegnet
from coseg_jax.runtime import state

METHODS = parity.METHODS
bench_of = parity.bench_of
random_variables = parity.random_variables
to_nchw = parity.to_nchw
_parity = parity.parity_models


def assert_close(ours, ref, tol=1e-4):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  scale = max(np.abs(ref).max(), 1e-3)
  assert np.abs(ours - ref).max() <= tol * scale, (
      np.abs(ours - ref).max(), scale)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [
    pytest.param("paper", marks=pytest.mark.slow), "tiny"])
def test_param_count_parity(method, size):
  bench = bench_of(method)
  config = common.make_config(bench, size=size)
  with torch.device("meta"):
    model = common.build_torch_model(bench, config)
  assert blocks.torch_param_count(model) == common.jax_param_count(config)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("encoder", ["lite0", "lite2"])
def test_param_count_parity_cpu224(method, encoder):
  """The suite's CPU cells: every port with the Lite0 / Lite2 encoders."""
  bench = bench_of(method)
  config = common.make_config(bench, size="cpu224", encoder=encoder)
  assert config.model.backbone == common.ENCODERS[encoder]
  with torch.device("meta"):
    model = common.build_torch_model(bench, config)
  assert blocks.torch_param_count(model) == common.jax_param_count(config)


def test_cpu224_configs():
  csn = common.make_config(bench_of("cyclesegnet"), size="cpu224",
                           encoder="lite2", group_size=5)
  assert (csn.model.num_steps, csn.model.multi_level) == (7, True)
  assert not csn.model.backbone_eval_mode  # the encoder is trained
  assert "backbone" not in dict(csn.optimizer.lr_multipliers)
  assert not csn.data.feature_cache.enabled
  assert not dict(csn.init.pretrained)
  assert state.input_shape(csn)[1:] == (5, 224, 224, 3)
  assert csn.train.global_batch_size == 4
  mac = common.make_config(bench_of("macosnet"), size="cpu224",
                           encoder="lite2")
  assert mac.model.backbone == "efficientnet_lite2"
  assert mac.model.freeze_encoder and mac.model.feature_level == "stride16"
  assert state.input_shape(mac)[1:] == (2, 240, 240, 3)
  coatt = common.make_config(bench_of("coattention"), size="cpu224",
                             encoder="lite0")
  assert coatt.coattention.batch_size == 16
  assert state.input_shape(coatt)[1] == 16
  assert coatt.train.global_batch_size == 1
  assert coatt.model.extractor == "efficientnet_lite0"
  coseg = common.make_config(bench_of("cosegnet"), size="cpu224")
  assert coseg.data.sampler == "triplets"
  # The PyTorch port of DCC computes CE_A + CE_B only, so the JAX cell
  # leaves out the recipe's Lovász term too.
  dcc = common.make_config(bench_of("dcc"), size="cpu224", encoder="lite2")
  assert dict(dcc.loss) == {"ce": 1.0}
  assert not dcc.model.backbone_eval_mode
  assert not dcc.data.feature_cache.enabled


def test_group_size_reaches_both_inputs():
  """A K other than the sampler's switches to the 'groups' sampler: the
  JAX step and the torch batch both get K images."""
  config = common.make_config(bench_of("cyclesegnet"), size="tiny",
                              group_size=5)
  assert config.data.sampler == "groups"
  assert state.input_shape(config)[1] == 5
  batch = common.torch_batch(config, torch.device("cpu"))
  assert tuple(batch["images"].shape[:3]) == (1, 5, 3)
  coatt = common.make_config(bench_of("coattention"), size="tiny")
  assert coatt.coattention.batch_size == state.input_shape(coatt)[1] == 5


def test_torch_lite_truncation_and_drop_connect():
  model, widths, _ = backbones.headless_lite(
      "efficientnet_lite2", {"drop_connect_rate": 0.5}, truncate_at="stride16")
  assert widths == {"stride2": 16, "stride4": 24, "stride8": 48,
                    "stride16": 120}
  x = torch.rand(2, 3, 32, 32)
  model.eval()
  with torch.no_grad():
    feats, pooled = model(x)
    again, _ = model(x)
  assert set(feats) == set(widths) and pooled.shape == (2, 120)
  torch.testing.assert_close(feats["stride16"], again["stride16"])
  model.train()
  torch.manual_seed(0)
  with torch.no_grad():
    a, _ = model(x)
    b, _ = model(x)
  assert not torch.allclose(a["stride16"], b["stride16"])  # drop-connect


def test_param_count_detects_a_difference():
  """The comparison can fail: one more decoder channel changes the count."""
  bench = bench_of("cyclesegnet")
  config = common.make_config(bench, size="tiny")
  with torch.device("meta"):
    model = common.build_torch_model(bench, config)
  config.model.decoder_widths = (16, 16, 8, 8, 9)
  assert blocks.torch_param_count(model) != common.jax_param_count(config)


def _assert_mask_logits_parity(name, **kwargs):
  """The torch port's mask logits equal ours for the same weights."""
  model, v, tm, x = _parity(name, **kwargs)
  ours = jax.jit(lambda v, x: model.apply(v, x).mask_logits)(v, x)
  with torch.no_grad():
    ref = tm(to_nchw(x)).permute(0, 1, 3, 4, 2).numpy()
  assert_close(ref, ours)


@pytest.mark.parametrize("value_projection,match_score",
                         [(False, False), (True, False), (True, True)])
def test_cyclesegnet_output_parity(value_projection, match_score):
  # Multi-level, skips, peepholes, K = 3 (group form of the RCM); the paper
  # config's RCM (eq. 11, no value projection), ours, and ours with the
  # best-match channel (the PASCAL recipe's model).
  _assert_mask_logits_parity("cyclesegnet", overrides={
      "peephole": True, "use_skips": True,
      "value_projection": value_projection, "match_score": match_score}, k=3)


@pytest.mark.slow
def test_cyclesegnet_train_loss_parity():
  """Train mode (BN batch statistics) + Lovász: the timed step's objective."""
  model, v, tm, x = _parity("cyclesegnet")
  masks = (np.random.RandomState(3).rand(*x.shape[:-1], 1) > 0.5).astype(
      np.float32)

  @jax.jit
  def loss(v, x, masks):
    out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    return cyclesegnet.loss_fn(outputs=out, batch={"masks": masks},
                               loss_config={"lovasz": 1.0})[0]

  tm.train()
  with torch.no_grad():
    ref = tcyc.train_loss(tm, to_nchw(x), {"masks": to_nchw(masks)})
  np.testing.assert_allclose(float(ref), float(loss(v, x, masks)), rtol=1e-4)


def test_dcc_output_parity():
  # The benchmark config: the appendix's form (BatchNorm'd matched map
  # alone into the decoder).
  _assert_mask_logits_parity("dcc")


@pytest.mark.parametrize("match_norm", ["rms", "none"])
def test_dcc_output_parity_other_match_norms(match_norm):
  _assert_mask_logits_parity("dcc", overrides={
      "match_norm": match_norm, "include_features": True})


def _assert_outputs_parity(name, fields, **kwargs):
  """The torch port's outputs (NCHW mask logits, then ``fields`` of ours in
  order) equal ours for the same weights."""
  model, v, tm, x = _parity(name, **kwargs)
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  with torch.no_grad():
    logits, *rest = tm(to_nchw(x))
  assert_close(logits.permute(0, 1, 3, 4, 2).numpy(), out.mask_logits)
  assert len(rest) == len(fields)
  for field, ref in zip(fields, rest):
    assert_close(ref.numpy(), getattr(out, field))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {},
    {"skip_levels": ("stride16", "stride8", "stride4", "stride2"),
     "decision_input": "abs_difference", "metric_layer": "f"}])
def test_cosegnet_output_parity(overrides):
  """The paper's form and the recipe's options (encoder skips, the
  symmetric decision input)."""
  _assert_outputs_parity("cosegnet", ("embeddings", "decision_logits"),
                         overrides=overrides)


@pytest.mark.slow
def test_coattention_output_parity():
  # Real Lite0 generator architecture, tiny extractor (compile time).
  _assert_outputs_parity(
      "coattention", ("object_features", "background_features"),
      overrides={"backbone": "efficientnet_lite0",
                 "backbone_kwargs": {"drop_connect_rate": 0.0}})


@pytest.mark.slow
@pytest.mark.compile_bound
def test_lite_encoder_output_parity():
  """The Lite ports in the methods' torch implementations: CycleSegNet with
  the full Lite0 (head = 'stride32'), DCC with Lite2 truncated at stride
  16."""
  _assert_mask_logits_parity("cyclesegnet", overrides={
      "backbone": "efficientnet_lite0", "backbone_kwargs": {},
      "crm_features": 8})
  _assert_mask_logits_parity("dcc", overrides={
      "backbone": "efficientnet_lite2", "backbone_kwargs": {},
      "match_norm": "none", "include_features": True})


@pytest.mark.slow
def test_macosnet_inference_parity():
  model, v, tm, x = _parity("macosnet")
  ours = jax.jit(lambda v, x: model.apply(v, x).mask_logits)(v, x)
  with torch.no_grad():
    ref = tm(to_nchw(x)).permute(0, 1, 3, 4, 2).numpy()
  assert_close(ref, ours)


@pytest.mark.slow
def test_cyclesegnet_resnet_parity():
  """ResNet-18 encoder, single level with a CRM projection."""
  model, v, tm, x = _parity("cyclesegnet", "small", overrides={
      "multi_level": False, "crm_features": 16,
      "decoder_widths": (16, 16, 8, 8, 8)})
  ours = jax.jit(lambda v, x: model.apply(v, x).mask_logits)(v, x)
  with torch.no_grad():
    ref = tm(to_nchw(x)).permute(0, 1, 3, 4, 2).numpy()
  assert_close(ref, ours)


def test_weight_copy_is_strict():
  bench = bench_of("dcc")
  config = common.make_config(bench, size="tiny")
  _, v = random_variables(config)
  config.model.kernel_sizes = (1, 3)  # torch decoder input narrower
  tm = common.build_torch_model(bench, config)
  with pytest.raises(ValueError, match="decoder"):
    blocks.flax_to_torch_state_dict(v, tm)
  params = dict(v["params"])
  params.pop("head")
  config.model.kernel_sizes = (1, 3, 5)
  tm = common.build_torch_model(bench, config)
  with pytest.raises(KeyError, match="head"):
    blocks.flax_to_torch_state_dict(
        {"params": params, "batch_stats": v["batch_stats"]}, tm)


def test_torch_losses_equal_coseg_jax():
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(2, 9, 7)).astype(np.float32) * 2
  labels = (rng.rand(2, 9, 7) > 0.6).astype(np.int32)
  ours = losses.get_loss("lovasz_softmax_binary")(
      logits=jnp.asarray(logits), labels=jnp.asarray(labels))
  ref = blocks.lovasz_softmax_binary(torch.from_numpy(logits),
                                     torch.from_numpy(labels))
  np.testing.assert_allclose(float(ref), float(ours), rtol=1e-5)
  fo = rng.normal(size=(4, 6)).astype(np.float32)
  fb = rng.normal(size=(4, 6)).astype(np.float32)
  ours = losses.get_loss("coattention")(object_features=fo,
                                        background_features=fb)
  ref = tco.coattention_loss(torch.from_numpy(fo), torch.from_numpy(fb))
  np.testing.assert_allclose(float(ref), float(ours), rtol=1e-5)
  s_logits = rng.normal(size=(3, 5, 5)).astype(np.float32)
  obj = (rng.rand(3, 5, 5) > 0.5).astype(np.float32)
  fixed = (rng.rand(3, 5, 5) > 0.5).astype(np.float32)
  ours = losses.get_loss("coattention_mask")(
      object_mask=obj, fixed_mask=fixed, attention_logits=s_logits, beta=0.95)
  flat = lambda a: torch.from_numpy(a).reshape(3, -1)
  ref = tco.mask_loss(flat(s_logits), flat(obj), flat(fixed))
  np.testing.assert_allclose(float(ref), float(ours), rtol=1e-5)
  ours = losses.get_loss("coattention_mask")(
      object_mask=obj, attention_logits=s_logits, beta=0.95,
      target="self_bootstrap")
  ref = tco.mask_loss(flat(s_logits), flat(obj), target="self_bootstrap")
  np.testing.assert_allclose(float(ref), float(ours), rtol=1e-5)


def test_replace_section(tmp_path):
  path = tmp_path / "R.md"
  path.write_text("# Results\n\n## Other\nkeep me\n")
  run_all.replace_section(str(path), "## Suite\nfirst\n", "tiny")
  run_all.replace_section(str(path), "## Suite\nsecond\n", "tiny")
  text = path.read_text()
  assert "keep me" in text and "second" in text and "first" not in text
  assert text.count("bench-suite:tiny:begin") == 1


def _fake_cell(method, variant, framework, train_ms, infer_ms, **extra):
  cell = {"_method": method, "_dtype": "float32", "_framework": framework,
          "_devices": "1", "_variant": variant, "infer_step_ms": infer_ms,
          "infer_step_min_ms": infer_ms, "infer_step_max_ms": infer_ms,
          "param_count": 10, "batch_shape": [4, 2, 224, 224, 3],
          "peak_rss_mib": 100.0, "threads": 2}
  if train_ms is None:
    cell["train_error"] = "no port of the objective: x.py"
  else:
    cell.update(train_step_ms=train_ms, train_step_min_ms=train_ms,
                train_step_max_ms=train_ms)
  cell.update(extra)
  return cell


def test_variants_group_size_selection():
  """--group_sizes keeps the listed K of a bench that has several (labels
  still name K, so the cells merge with a full run's) and leaves a bench
  with one K or none alone; a non-integer is a usage error."""
  args = run_all.parse_args(["--size", "cpu224", "--encoders", "lite2",
                             "--group_sizes", "5"])
  assert run_all.variants("cyclesegnet", args) == [("lite2 K=5", "lite2", 5)]
  assert run_all.variants("dcc", args) == [("lite2", "lite2", None)]
  # co-attention measures one K (16): kept, not filtered out by K=5
  assert run_all.variants("coattention", args) == [("lite2", "lite2", 16)]
  full = run_all.parse_args(["--size", "cpu224", "--encoders", "lite2"])
  assert [v[2] for v in run_all.variants("cyclesegnet", full)] == [2, 5]
  with pytest.raises(SystemExit):
    run_all.parse_args(["--group_sizes", "five"])


def test_variants_report_from_json(tmp_path):
  """The cpu224 layout: rows encoder x step, the targets met / missed per
  cell, n/a with its reason, the section replaced in the results page."""
  cells = [{"_method": "meta", "_dtype": "-", "_framework": "meta",
            "_devices": "-", "command": "python -m benchmarks.run_all X",
            "date": "D", "machine": "M"}]
  for variant in ("lite0", "lite2"):
    for k in (2, 5):
      label = f"{variant} K={k}"
      cells += [
          _fake_cell("cyclesegnet", label, "jax", 100.0, 10.0,
                     train_compile_s=5.0, infer_compile_s=1.0),
          _fake_cell("cyclesegnet", label, "torch", 160.0, 15.0),
          _fake_cell("cyclesegnet", label, "torch_compile", 90.0, 8.0,
                     train_compile_s=30.0)]
    cells += [_fake_cell("macosnet", variant, "jax", 50.0, 5.0),
              _fake_cell("macosnet", variant, "torch", None, 20.0)]
  cells.append({"_method": "macosnet", "_dtype": "float32",
                "_framework": "torch_compile", "_devices": "1",
                "_variant": "lite0", "error": "timeout after 10 s"})
  path = tmp_path / "cells.json"
  path.write_text(json.dumps(cells))
  results_md = tmp_path / "results.md"
  results_md.write_text("# Results\n")
  res = run_all.main([
      "--size", "cpu224", "--methods", "cyclesegnet,macosnet", "--dtypes",
      "float32", "--render_json", str(path), "--out",
      str(tmp_path / "suite.md"), "--results_md", str(results_md)])
  text = res["section"]
  assert "Command: `python -m benchmarks.run_all X`" in text
  assert "Machine: M" in text and "Date: D" in text
  row = next(l for l in text.splitlines()
             if l.startswith("| lite2 K=5 | train step"))
  # eager/ours 1.6 (>= 1.5: met), compile/ours 0.9 (< 1: missed)
  assert "| 1.60 | 0.90 | eager met, compile missed |" in row
  assert "5.0 / 30.0" in row
  infer = next(l for l in text.splitlines()
               if l.startswith("| lite0 K=2 | inference"))
  assert "| 1.50 | 0.80 | eager missed |" in infer
  mac = next(l for l in text.splitlines()
             if l.startswith("| lite0 | train step"))
  assert "n/a (no port of the objective" in mac
  assert "n/a (timeout after 10 s)" in mac
  assert os.path.getsize(tmp_path / "suite.png") > 1000
  assert "bench-suite:cpu224:begin" in results_md.read_text()


def test_report_merges_runs(tmp_path):
  """Several runs' JSON render as one report: both commands and dates, the
  union of their cells, a later run's cell replacing an earlier one's."""
  def meta(cmd, date):
    return {"_method": "meta", "_dtype": "-", "_framework": "meta",
            "_devices": "-", "command": cmd, "date": date, "machine": "M"}
  first = [meta("run_all A", "D1"),
           _fake_cell("dcc", "lite2", "jax", 100.0, 10.0),
           _fake_cell("dcc", "lite2", "torch", 150.0, 30.0)]
  second = [meta("run_all B", "D2"),
            _fake_cell("dcc", "lite2", "torch", 300.0, 30.0),
            _fake_cell("cosegnet", "lite2", "jax", 50.0, 5.0)]
  merged = run_all.merge_runs([first, second])
  assert [c["_method"] for c in merged] == ["meta", "meta", "dcc", "dcc",
                                            "cosegnet"]
  assert merged[3]["train_step_ms"] == 300.0
  paths = []
  for i, run in enumerate((first, second)):
    paths.append(tmp_path / f"run{i}.json")
    paths[-1].write_text(json.dumps(run))
  res = run_all.main([
      "--size", "cpu224", "--methods", "dcc,cosegnet", "--dtypes", "float32",
      "--render_json", ",".join(map(str, paths)), "--out",
      str(tmp_path / "suite.md"), "--results_md", ""])
  text = res["section"]
  assert "Command: `run_all A ; run_all B`" in text
  assert "Date: D1, D2" in text
  row = next(l for l in text.splitlines()
             if l.startswith("| lite2 | train step") and "300.0" in l)
  assert "| 3.00 |" in row


@pytest.mark.slow
@pytest.mark.compile_bound
def test_suite_end_to_end_tiny(tmp_path):
  results_md = tmp_path / "results.md"
  results_md.write_text("# Results\n")
  out = tmp_path / "suite.md"
  res = run_all.main([
      "--size", "tiny", "--methods", "cyclesegnet", "--dtypes", "float32",
      "--frameworks", "jax,torch", "--no_all_devices", "--extras", "none",
      "--steps", "1", "--warmup", "1", "--out", str(out), "--results_md",
      str(results_md), "--device_note", "test run"])
  cells = [r for r in res["results"] if r["_method"] == "cyclesegnet"]
  assert {r["_framework"] for r in cells} == {"jax", "torch"}
  for r in cells:
    assert "error" not in r, r
    assert r["train_step_ms"] > 0 and r["infer_step_ms"] > 0
  jax_cell = next(r for r in cells if r["_framework"] == "jax")
  torch_cell = next(r for r in cells if r["_framework"] == "torch")
  assert jax_cell["param_count"] == torch_cell["param_count"]
  assert jax_cell["train_flops"] > jax_cell["infer_flops"] > 0
  text = out.read_text()
  assert "### cyclesegnet" in text and "PyTorch eager" in text
  assert os.path.getsize(tmp_path / "suite.png") > 1000
  assert json.loads((tmp_path / "suite.json").read_text())
  assert "bench-suite:tiny:begin" in results_md.read_text()
