"""Backbones: exact parameter counts, shapes, options and numerical parity.

Parity: each Flax backbone, given the state dict of a plain-torch reference
(``torch_refs``, torchvision's key names) with random weights and randomised
BN statistics, must reproduce every feature level and the logits. The error
measure is max |flax - torch| / max |torch| per tensor (float32: <= 1e-4;
bfloat16 compute: <= 2e-2).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optional_import
from coseg_jax import backbones
from coseg_jax.backbones import base
from coseg_jax.backbones import efficientnet_lite
from coseg_jax.backbones import weights

# torchvision's counts (sum of parameter numel) and those of the Lite0/1/2
# ImageNet files (test_backbones_weights checks them against the files).
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
}
# bfloat16 compute is checked on one model per block type (compile time on a
# 2-core machine); all seven pass 2e-2 (benchmarks/backbone_parity.py).
BF16_CHECKED = ("resnet18", "resnet50", "vgg16_bn", "efficientnet_lite0")
IMAGE = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)


def rel_err(ours, ref):
  ours = np.asarray(jnp.asarray(ours, jnp.float32), np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_equal_torchvision(name):
  module = backbones.get_backbone(name, with_head=True)
  variables = weights.abstract_variables(module)
  assert count(variables["params"]) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name,levels_c", [
    ("resnet18", (64, 64, 128, 256, 512)),
    ("resnet50", (64, 256, 512, 1024, 2048)),
    ("vgg16", (128, 256, 512, 512, 512)),
    ("efficientnet_lite0", (16, 24, 40, 112, 1280)),
    ("efficientnet_lite1", (16, 24, 40, 112, 1280)),
    ("efficientnet_lite2", (16, 24, 48, 120, 1280)),
])
def test_feature_shapes_follow_naming_scheme(name, levels_c):
  module = backbones.get_backbone(name)
  variables = weights.abstract_variables(module)
  out = jax.eval_shape(module.apply, variables,
                       jax.ShapeDtypeStruct((1, 96, 64, 3), jnp.float32))
  assert set(out.features) == set(base.FEATURE_LEVELS)
  for level, c in zip(base.FEATURE_LEVELS, levels_c):
    s = int(level[len("stride"):])
    assert out.features[level].shape == (1, -(-96 // s), -(-64 // s), c)
  assert out.pooled.shape == (1, levels_c[-1])
  assert out.logits is None


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn", "efficientnet_lite0"])
def test_truncation_and_output_stride(name):
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  module = backbones.get_backbone(name, truncate_at="stride8")
  variables = weights.abstract_variables(module)
  out = jax.eval_shape(module.apply, variables, x)
  assert set(out.features) == set(base.FEATURE_LEVELS[:3])
  assert out.pooled.shape[-1] == out.features["stride8"].shape[-1]
  full = weights.abstract_variables(backbones.get_backbone(name))
  assert count(variables["params"]) < count(full["params"])
  for os_, sizes in ((16, (4, 4)), (8, (8, 8))):
    module = backbones.get_backbone(name, output_stride=os_)
    variables = weights.abstract_variables(module)
    assert count(variables["params"]) == count(full["params"])
    out = jax.eval_shape(module.apply, variables, x)
    assert out.features["stride32"].shape[1:3] == sizes
    assert out.features["stride8"].shape[1:3] == (8, 8)
  with pytest.raises(ValueError, match="with_head"):
    module = backbones.get_backbone(name, truncate_at="stride8", with_head=True)
    weights.abstract_variables(module)
  with pytest.raises(ValueError, match="output_stride"):
    weights.abstract_variables(backbones.get_backbone(name, output_stride=4))


def _torch_outputs(torch, model, x):
  with torch.no_grad():
    out = model(x)
  feats = {k: v.permute(0, 2, 3, 1).numpy() for k, v in out[0].items()}
  return feats, out[1].numpy(), (out[2].numpy() if len(out) > 2 else None)


def _check_parity(module, variables, ref_feats, ref_logits, tol, dtype=None,
                  ref_pooled=None, image=IMAGE):
  if dtype is not None:
    module = module.clone(dtype=dtype)
  out = jax.jit(module.apply)(variables, image)
  errors = {}
  assert set(out.features) == set(base.FEATURE_LEVELS)
  for level in base.FEATURE_LEVELS:
    errors[level] = rel_err(out.features[level], ref_feats[level])
  errors["logits"] = rel_err(out.logits, ref_logits)
  if ref_pooled is not None:
    errors["pooled"] = rel_err(out.pooled, ref_pooled)
  else:
    errors["pooled"] = rel_err(out.pooled,
                               ref_feats["stride32"].mean(axis=(1, 2)))
  print(module.__class__.__name__, dtype, {k: f"{v:.2e}" for k, v in
                                           errors.items()})
  bad = {k: v for k, v in errors.items() if not v <= tol}
  assert not bad, f"relative errors above {tol}: {bad}"
  if dtype is not None:
    assert out.features["stride8"].dtype == dtype


def _state_dict_numpy(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50",
                                  "resnet101"])
def test_resnet_parity_with_torch(name, tmp_path):
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_refs.randomize_(torch_refs.resnet(name), seed=1)
  feats, logits, _ = _torch_outputs(torch, model,
                                    torch_refs.imagenet_input(IMAGE))
  if name == "resnet18":  # through a saved .pth and the torch-free reader
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    variables = weights.load_pretrained(name, path, with_head=True)
  else:
    variables = weights.convert_state_dict(
            _state_dict_numpy(model),
            weights.abstract_variables(
                backbones.get_backbone(name, with_head=True)))
  module = backbones.get_backbone(name, with_head=True)
  _check_parity(module, variables, feats, logits, 1e-4)
  if name in BF16_CHECKED:
    _check_parity(module, variables, feats, logits, 2e-2, dtype=jnp.bfloat16)


def test_resnet50_dilated_parity_with_torch():
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_refs.randomize_(
      torch_refs.resnet("resnet50", (False, True, True)), seed=2)
  feats, logits, _ = _torch_outputs(torch, model,
                                    torch_refs.imagenet_input(IMAGE))
  module = backbones.get_backbone("resnet50", output_stride=8, with_head=True)
  assert feats["stride32"].shape[1:3] == (8, 8)
  variables = weights.convert_state_dict(
      _state_dict_numpy(model), weights.abstract_variables(module))
  _check_parity(module, variables, feats, logits, 1e-4)


@pytest.fixture(scope="module", params=["vgg16", "vgg16_bn"])
def vgg_case(request):
  """(name, variables, torch features, logits, fc7); built once (138M)."""
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_refs.randomize_(
      torch_refs.VGG(batch_norm=request.param == "vgg16_bn"), seed=3)
  feats, logits, fc7 = _torch_outputs(torch, model,
                                      torch_refs.imagenet_input(IMAGE))
  module = backbones.get_backbone(request.param, with_head=True)
  variables = weights.convert_state_dict(
      _state_dict_numpy(model), weights.abstract_variables(module))
  del model
  return request.param, variables, feats, logits, fc7


def test_vgg_parity_with_torch(vgg_case):
  name, variables, feats, logits, fc7 = vgg_case
  module = backbones.get_backbone(name, with_head=True)
  _check_parity(module, variables, feats, logits, 1e-4, ref_pooled=fc7)
  if name in BF16_CHECKED:
    _check_parity(module, variables, feats, logits, 2e-2, dtype=jnp.bfloat16,
                  ref_pooled=fc7)


def test_vgg_adaptive_pool_matches_numpy():
  from coseg_jax.backbones import vgg  # pylint: disable=g-import-not-at-top
  x = np.random.RandomState(1).randn(1, 5, 9, 2)
  out = np.asarray(vgg.adaptive_avg_pool(jnp.asarray(x), (7, 7)))
  ref = np.zeros((1, 7, 7, 2))
  for i in range(7):
    for j in range(7):
      h0, h1 = (i * 5) // 7, -(-((i + 1) * 5) // 7)
      w0, w1 = (j * 9) // 7, -(-((j + 1) * 9) // 7)
      ref[0, i, j] = x[0, h0:h1, w0:w1].mean(axis=(0, 1))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)


def test_efficientnet_lite0_parity_with_torch():
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_refs.randomize_(torch_refs.EfficientNetLite0(), seed=4)
  # 67 (odd) exercises TF's asymmetric 'same' padding at every stride-2 conv.
  image = np.random.RandomState(5).rand(2, 67, 67, 3).astype(np.float32)
  feats, logits, _ = _torch_outputs(torch, model, torch_refs.lite_input(image))
  assert feats["stride32"].shape[1:3] == (3, 3)
  module = backbones.get_backbone("efficientnet_lite0", with_head=True)
  variables = weights.convert_state_dict(
      _state_dict_numpy(model), weights.abstract_variables(module))
  _check_parity(module, variables, feats, logits, 1e-4, image=image)
  _check_parity(module, variables, feats, logits, 2e-2, dtype=jnp.bfloat16,
                image=image)


def test_train_mode_uses_batch_statistics_and_drop_connect():
  # A large global rate (block 2 then drops its branch with p = 6 * 2 / 16)
  # makes the rng dependence visible on a batch of 8.
  module = backbones.get_backbone("efficientnet_lite0", truncate_at="stride4",
                                  drop_connect_rate=6.0)
  x = jnp.asarray(np.random.RandomState(7).rand(8, 16, 16, 3), jnp.float32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)

  @jax.jit
  def train_step(rng):
    return module.apply(variables, x, train=True, rngs={"dropout": rng},
                        mutable=["batch_stats"])

  out1, updates = train_step(jax.random.PRNGKey(1))
  out2, _ = train_step(jax.random.PRNGKey(2))
  # Training moves the running statistics (momentum 0.99 towards the batch's).
  mean0 = variables["batch_stats"]["_bn0"]["mean"]
  mean1 = updates["batch_stats"]["_bn0"]["mean"]
  stem = jax.lax.conv_general_dilated(
      (x * 255 - 127) / 128, variables["params"]["_conv_stem"]["kernel"],
      (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(mean1, 0.99 * mean0 + 0.01 * stem.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Drop-connect (block 2 has a skip) makes the output depend on the rng.
  assert not np.allclose(out1.features["stride4"], out2.features["stride4"])
  eval_out = jax.jit(module.apply)(variables, x)
  assert not np.allclose(out1.features["stride4"], eval_out.features["stride4"])


@pytest.mark.parametrize("name,blocks,dropout", [
    ("efficientnet_lite0", 16, 0.2), ("efficientnet_lite1", 21, 0.2),
    ("efficientnet_lite2", 21, 0.3)])
def test_lite_drop_connect_and_dropout_rates(name, blocks, dropout):
  """Drop-connect 0.2 * i / blocks (efficientnet_pytorch); TF's dropout."""
  module = backbones.get_backbone(name, with_head=True)
  assert module.dropout_rate == dropout
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, efficientnet_lite.MBConvLite):
      rates[context.module.name] = context.module.drop_connect_rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    weights.abstract_variables(module)
  assert rates == {f"_blocks_{i}": 0.2 * i / blocks for i in range(blocks)}


@pytest.mark.parametrize("name,level,first", [
    ("efficientnet_lite0", "stride8", 5),
    ("efficientnet_lite2", "stride16", 15)])
def test_lite_resumes_a_forward_pass_from_a_stored_level(name, level, first):
  """``input_level``: the later levels from a stored one equal the full
  pass; only the later blocks' parameters exist; ``modules_through`` names
  the rest."""
  module = backbones.get_backbone(name)
  x = jnp.asarray(np.random.RandomState(3).rand(2, 67, 67, 3), jnp.float32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  # Non-trivial statistics, so that evaluation mode is exercised.
  variables = jax.tree.map(
      lambda v: v * 1.1 + 0.05 if v.ndim == 1 else v, variables)
  full = module.apply(variables, x).features
  out = module.apply(variables, full[level], input_level=level).features
  later = [l for l in backbones.FEATURE_LEVELS
           if backbones.FEATURE_LEVELS.index(l) >
           backbones.FEATURE_LEVELS.index(level)]
  assert sorted(out) == sorted(later)
  for l in later:
    np.testing.assert_allclose(out[l], full[l], rtol=1e-5, atol=1e-5)
  top = jax.eval_shape(lambda f: module.init(
      jax.random.PRNGKey(0), f, input_level=level), full[level])["params"]
  bottom = module.modules_through(level)
  assert bottom[-1] == f"_blocks_{first - 1}" and "_conv_stem" in bottom
  assert sorted(top) == sorted(set(variables["params"]) - set(bottom))
  with pytest.raises(ValueError, match="expects"):
    module.apply(variables, x, input_level=level)
  with pytest.raises(ValueError, match="input_level must be one of"):
    module.apply(variables, full["stride16"], input_level="stride32")
