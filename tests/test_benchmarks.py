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
  JSON and PNG, and replaces (not appends) its section of a RESULTS file.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optional_import

torch = optional_import("torch")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import run_all
from benchmarks.torch_impl import blocks

METHODS = ("cyclesegnet", "cosegnet", "dcc", "coattention", "macosnet")


def bench_of(method):
  import importlib
  return importlib.import_module(f"benchmarks.bench_{method}").BENCH


def random_variables(config, seed=1):
  """Random Flax variables of ``config``'s model from its shapes alone.

  No init is compiled (``jax.eval_shape``): kernels ~ N(0, 1/fan_in), biases
  and BN means ~ N(0, 0.1^2), BN scales ~ 1 + N(0, 0.1^2), variances in
  [0.6, 1.4] — values far from any default so that layout mistakes show.
  """
  from coseg_jax import models
  model = models.get_method(config.method).build_model(config.model)
  k, side = int(config.data.group_size), int(config.data.image_size)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, k, side, side, 3), jnp.float32)))
  rng = np.random.RandomState(seed)

  def f(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name and "batch_stats" in name:
      return (0.6 + 0.8 * rng.rand(*s.shape)).astype(np.float32)
    if "scale" in name:
      return (1.0 + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
    if len(s.shape) >= 2:
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)
  return model, jax.tree_util.tree_map_with_path(f, shapes)


def to_nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 1, 4, 2, 3)


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


def test_param_count_detects_a_difference():
  """The comparison can fail: one more decoder channel changes the count."""
  bench = bench_of("cyclesegnet")
  config = common.make_config(bench, size="tiny")
  with torch.device("meta"):
    model = common.build_torch_model(bench, config)
  config.model.decoder_widths = (16, 16, 8, 8, 9)
  assert blocks.torch_param_count(model) != common.jax_param_count(config)


def _parity(method, size="tiny", *, overrides=None, k=None, seed=0):
  bench = bench_of(method)
  config = common.make_config(bench, size=size)
  for key, value in (overrides or {}).items():
    config.model[key] = value
  model, variables = random_variables(config)
  tmodel = common.build_torch_model(bench, config)
  blocks.load_flax_variables(tmodel, variables)
  tmodel.eval()
  k = k or int(config.data.group_size)
  side = int(config.data.image_size)
  x = np.random.RandomState(seed).rand(1, k, side, side, 3).astype(np.float32)
  return model, variables, tmodel, x


def _assert_mask_logits_parity(name, **kwargs):
  """The torch port's mask logits equal ours for the same weights."""
  model, v, tm, x = _parity(name, **kwargs)
  ours = jax.jit(lambda v, x: model.apply(v, x).mask_logits)(v, x)
  with torch.no_grad():
    ref = tm(to_nchw(x)).permute(0, 1, 3, 4, 2).numpy()
  assert_close(ref, ours)


def test_cyclesegnet_output_parity():
  # Multi-level, skips, peepholes, K = 3 (group form of the RCM).
  _assert_mask_logits_parity("cyclesegnet", overrides={
      "peephole": True, "use_skips": True}, k=3)


@pytest.mark.slow
def test_cyclesegnet_train_loss_parity():
  """Train mode (BN batch statistics) + Lovász: the timed step's objective."""
  from coseg_jax.models import cyclesegnet
  from benchmarks.torch_impl import cyclesegnet as tcyc
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
  _assert_mask_logits_parity("dcc")


@pytest.mark.slow
def test_cosegnet_output_parity():
  model, v, tm, x = _parity("cosegnet")
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  with torch.no_grad():
    logits, e, d = tm(to_nchw(x))
  assert_close(logits.permute(0, 1, 3, 4, 2).numpy(), out.mask_logits)
  assert_close(e.numpy(), out.embeddings)
  assert_close(d.numpy(), out.decision_logits)


@pytest.mark.slow
def test_coattention_output_parity():
  # Real Lite0 generator architecture, tiny extractor (compile time).
  model, v, tm, x = _parity("coattention", overrides={
      "backbone": "efficientnet_lite0",
      "backbone_kwargs": {"drop_connect_rate": 0.0}})
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  with torch.no_grad():
    logits, fo, fb = tm(to_nchw(x))
  assert_close(logits.permute(0, 1, 3, 4, 2).numpy(), out.mask_logits)
  assert_close(fo.numpy(), out.object_features)
  assert_close(fb.numpy(), out.background_features)


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
  from coseg_jax import losses
  from benchmarks.torch_impl import coattention as tco
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
  ours = losses.get_loss("coattention_mask")(
      object_mask=obj, attention_logits=s_logits, beta=0.95)
  ref = tco.mask_loss(torch.from_numpy(s_logits).reshape(3, -1),
                      torch.from_numpy(obj).reshape(3, -1))
  np.testing.assert_allclose(float(ref), float(ours), rtol=1e-5)


def test_replace_section(tmp_path):
  path = tmp_path / "R.md"
  path.write_text("# Results\n\n## Other\nkeep me\n")
  run_all.replace_section(str(path), "## Suite\nfirst\n", "tiny")
  run_all.replace_section(str(path), "## Suite\nsecond\n", "tiny")
  text = path.read_text()
  assert "keep me" in text and "second" in text and "first" not in text
  assert text.count("bench-suite:tiny:begin") == 1


@pytest.mark.slow
@pytest.mark.compile_bound
def test_suite_end_to_end_tiny(tmp_path):
  results_md = tmp_path / "RESULTS.md"
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


def test_coattention_voc_table():
  """The Table 3/4 layout: per-class rows, the in-run w/o-mask-loss scores,
  the all-foreground reference, and averages equal to summarise()'s."""
  from benchmarks import coattention_voc  # pylint: disable=g-import-not-at-top
  from coseg_jax import coattention_train  # pylint: disable=g-import-not-at-top
  keys = [f"final/{m}" for m in coattention_voc.METHODS] + [
      f"nomask/{m}" for m in coattention_voc.METHODS] + [
          "stage1/threshold", "initial/threshold", "reference/all_foreground"]
  per_class = []
  for i, name in enumerate(("Cat", "Dog")):
    scores = {k: {"J": 0.1 * (i + 1) + 0.01 * j, "P": 0.5 + 0.01 * j}
              for j, k in enumerate(keys)}
    per_class.append({"class": name, "images": 4 + 4 * i, "scores": scores,
                      "total_seconds": 10.0 * (i + 1)})
  results = {"per_class": per_class,
             "summary": coattention_train.summarise(per_class)}
  lines = coattention_voc.table(results).splitlines()
  head = [c.strip() for c in lines[0].strip("|").split("|")]
  assert head[:6] == ["class", "images", "J threshold", "J otsu", "J crf",
                      "J grabcut"]
  assert head[6].startswith("J w/o mask loss") and head[9] == "J all foreground"
  cat = [c.strip() for c in lines[2].strip("|").split("|")]
  assert cat[:3] == ["Cat", "4", "0.100"]
  assert cat[6] == "0.140 / 0.150 / 0.160 / 0.170"
  assert cat[9] == "0.200" and cat[10:] == ["10", "250"]
  avg_j = [c.strip() for c in lines[4].strip("|").split("|")]
  assert avg_j[0] == "**Avg. J**" and avg_j[2] == "0.150"  # (0.1 + 0.2) / 2
  assert avg_j[-2:] == ["30", "250"]  # 30 s for 12 images
  avg_p = [c.strip() for c in lines[5].strip("|").split("|")]
  assert avg_p[0] == "**Avg. P**" and avg_p[2] == "50.0"
  assert "Avg. J 0.6" in lines[-1]


def test_macosnet_tss_evaluator_known_case():
  """evaluate_tss on a fake network: identity transformations score
  flow-PCK 1 against zero ground-truth flow, and masks predicted exactly
  (logits +-10 on the ground truth at input size) score J and P near 1
  under the threshold and Otsu; every requested conversion is reported."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from benchmarks import macosnet_common as mc  # pylint: disable=g-import-not-at-top
  from coseg_jax.models import macosnet  # pylint: disable=g-import-not-at-top
  from coseg_jax.nn import geometry  # pylint: disable=g-import-not-at-top
  size, h, w = 16, 32, 48
  masks = [np.zeros((h, w), np.uint8) for _ in range(2)]
  masks[0][8:24, 9:33] = 1  # edges on the 2x / 3x resize grid
  masks[1][:, 24:] = 1
  rng = np.random.default_rng(0)
  rec = {"id": "fake"}
  for n in (1, 2):
    rec[f"image{n}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rec[f"mask{n}"] = masks[n - 1]
    rec[f"flow{n}"] = np.zeros((h, w, 2), np.float32)
    rec[f"input{n}"] = mc.resize_image(rec[f"image{n}"], size)
  small = np.stack([np.asarray(Image.fromarray(m).resize(
      (size, size), Image.NEAREST)) for m in masks]).astype(np.float32)
  theta = np.tile(np.asarray(geometry.AFFINE_TPS_IDENTITY), (1, 2, 1))
  assert theta.shape[-1] == 24 and macosnet.KIND == "affine_tps"

  class Out:
    pairs = ((0, 1), (1, 0))

    def __init__(self):
      self.theta = jnp.asarray(theta)
      self.mask_logits = jnp.asarray(20.0 * (small - 0.5))[None, ..., None]

  summary, rows = mc.evaluate_tss(lambda v, x: Out(), None, [rec],
                                  post=("threshold", "otsu", "grabcut"))
  assert len(rows) == 1
  assert summary["flow_pck@0.05"] == 1.0 and summary["flow_pck@0.1"] == 1.0
  for method in ("threshold", "otsu"):
    # Exact up to the one-pixel blur of the bilinear resize at the edges.
    assert summary[f"J_{method}"] > 0.93, (method, summary)
    assert summary[f"P_{method}"] > 0.98, (method, summary)
  assert 0.0 <= summary["J_grabcut"] <= 1.0
  assert "J_crf" not in summary


def test_macosnet_loss_overrides_set_weights_and_name_bad_terms():
  """--loss term=weight changes exactly that weight of the TSS config; an
  unknown term or a missing '=' is an error naming the known terms; --set
  does the same for model fields."""
  from benchmarks import macosnet_common as mc  # pylint: disable=g-import-not-at-top
  config = mc.base_config(32, lr=1e-4, batch=2, steps=1)
  before = dict(config.loss)
  mc.apply_loss_overrides(config, ["cycle=0", "contrastive=2.5"])
  after = dict(config.loss)
  assert after["cycle"] == 0.0 and after["contrastive"] == 2.5
  assert {k: v for k, v in after.items()
          if k not in ("cycle", "contrastive")} == {
              k: v for k, v in before.items()
              if k not in ("cycle", "contrastive")}
  assert before["cycle"] == 5.0 and before["contrastive"] == 10.0
  for bad in ("cycel=0", "cycle"):
    with pytest.raises(ValueError, match="transitivity"):
      mc.apply_loss_overrides(config, [bad])
  with pytest.raises(ValueError, match="must be a number"):
    mc.apply_loss_overrides(config, ["cycle=zero"])
  # --set: model fields, parsed; a misspelt field is an error, not a new
  # field that nothing reads.
  mc.apply_overrides(config, ["perceptual_size=112", "matching_mask_grad=true"])
  assert config.model.perceptual_size == 112
  assert config.model.matching_mask_grad is True
  with pytest.raises(ValueError, match="perceptual_size"):
    mc.apply_overrides(config, ["perceptual_sise=112"])
  assert "perceptual_sise" not in config.model
