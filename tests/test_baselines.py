"""Tests of the Table 1 baselines, the UpsampleDecoder and the registry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import backbones
from coseg_jax import losses
from coseg_jax import models
from coseg_jax.models import baselines
from coseg_jax.nn import decoders
from coseg_jax.nn import resize
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime.evaluators import coseg
from coseg_jax.runtime.trainers import supervised
import train_runner

BB_WIDTHS = (4, 8, 8, 8, 8)
DEC_WIDTHS = (8, 8, 8, 8, 8)


def _config(**kw):
  c = ml_collections.ConfigDict(dict(
      backbone="tiny", dtype="float32", decoder_widths=DEC_WIDTHS,
      backbone_kwargs={"widths": BB_WIDTHS}, use_skips=False))
  c.update(kw)
  return c


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _expected_params(exchange, use_skips=False):
  n, cin = 0, 3
  for w in BB_WIDTHS:  # conv1 (no bias) + BN + conv2 + BN per stage
    n += 9 * cin * w + 2 * w + 9 * w * w + 2 * w
    cin = w
  cin = BB_WIDTHS[-1] * (2 if exchange == "cat" else 1)
  skips = list(reversed(BB_WIDTHS[:-1])) + [0]  # stride16, 8, 4, 2, full
  for w, s in zip(DEC_WIDTHS, skips):
    n += 9 * (cin + (s if use_skips else 0)) * w + 2 * w
    cin = w
  return n + cin + 1  # 1x1 head with bias


@pytest.mark.parametrize("name,exchange,skips", [
    ("baseline", "none", False), ("mcat", "cat", False),
    ("mmul", "mul", False), ("mcat", "cat", True)])
def test_shapes_and_exact_parameter_counts(name, exchange, skips):
  model = models.get_method(name).build_model(_config(use_skips=skips))
  assert model.exchange == exchange
  x = jnp.zeros((2, 3, 33, 47, 3))  # K=3, sizes not multiples of 32
  variables = model.init(jax.random.PRNGKey(0), x)
  assert _count(variables["params"]) == _expected_params(exchange, skips)
  out = model.apply(variables, x)
  assert out.mask_logits.shape == (2, 3, 33, 47, 1)
  assert out.mask_logits.dtype == jnp.float32
  assert set(variables["params"]) == {"backbone", "decoder", "head"}


def test_other_mean_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 4, 5))
  want = np.stack([np.mean(np.delete(x, k, axis=1), axis=1)
                   for k in range(4)], axis=1)
  # float32 sum-minus-self: absolute error ~1e-7 of the values' scale.
  np.testing.assert_allclose(baselines.other_mean(jnp.asarray(x)), want,
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="K >= 2"):
    baselines.other_mean(jnp.zeros((1, 1, 3)))


@pytest.mark.parametrize("name,exchanges", [
    ("baseline", False), ("mcat", True), ("mmul", True)])
def test_only_exchange_models_look_at_the_other_image(name, exchanges):
  model = models.get_method(name).build_model(_config())
  rng = np.random.default_rng(1)
  a = rng.uniform(size=(1, 2, 32, 32, 3)).astype(np.float32)
  b = a.copy()
  b[:, 1] = rng.uniform(size=(32, 32, 3))  # change only image 2
  variables = model.init(jax.random.PRNGKey(0), a)
  la = model.apply(variables, a).mask_logits[:, 0]
  lb = model.apply(variables, b).mask_logits[:, 0]
  changed = float(jnp.max(jnp.abs(la - lb)))
  if exchanges:
    # Relative to the output scale: at initialisation the logits are tiny
    # (the mmul product of two small activations is ~1e-8), so an absolute
    # threshold would test the initialiser, not the exchange.
    scale = float(jnp.max(jnp.abs(la)))
    assert scale > 0 and changed > 1e-2 * scale  # the baseline gives exactly 0
  else:
    assert changed == 0.0


def test_mmul_multiplies_by_the_other_pooled_feature():
  # Intercept the decoder's input (the exchanged map) and compare it with
  # the encoder's stride-32 features times the other image's pooled vector.
  model = models.get_method("mmul").build_model(_config())
  x = np.random.default_rng(2).uniform(size=(1, 2, 32, 32, 3)).astype(
      np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  captured = {}

  def grab(next_fun, args, kwargs, context):
    if context.module.name == "decoder" and context.method_name == "__call__":
      captured["x"] = args[0]
    return next_fun(*args, **kwargs)

  with nn_intercept(grab):
    model.apply(variables, x)
  enc = backbones.get_backbone("tiny", widths=BB_WIDTHS)
  feats = enc.apply({"params": variables["params"]["backbone"],
                     "batch_stats": variables["batch_stats"]["backbone"]},
                    x.reshape(2, 32, 32, 3)).features["stride32"]
  pooled = np.asarray(feats).mean(axis=(1, 2))  # [2, C]
  want = np.asarray(feats) * pooled[::-1][:, None, None, :]
  np.testing.assert_allclose(captured["x"], want, rtol=1e-5, atol=1e-6)


def nn_intercept(fn):
  return nn.intercept_methods(fn)


def test_decoder_sizes_params_and_skip_errors():
  dec = decoders.UpsampleDecoder(widths=(6, 5, 4, 3, 2), use_skips=False)
  x = jnp.zeros((1, 2, 3, 7))
  v = dec.init(jax.random.PRNGKey(0), x, output_size=(50, 70))
  y = dec.apply(v, x, output_size=(50, 70))
  assert y.shape == (1, 50, 70, 2)
  want = sum(9 * ci * co + 2 * co for ci, co in zip((7, 6, 5, 4, 3),
                                                     (6, 5, 4, 3, 2)))
  assert _count(v["params"]) == want
  with pytest.raises(ValueError, match="five|5 entries"):
    decoders.UpsampleDecoder(widths=(4, 4)).init(
        jax.random.PRNGKey(0), x, output_size=(50, 70))
  skipdec = decoders.UpsampleDecoder(widths=(4,) * 5, use_skips=True)
  with pytest.raises(ValueError, match="stride16"):
    skipdec.init(jax.random.PRNGKey(0), x, output_size=(50, 70),
                 skips={"stride8": jnp.zeros((1, 7, 9, 2))})


def test_bilinear_resize_matches_numpy_on_linear_ramp():
  # Half-pixel bilinear upsampling of a linear ramp stays linear inside.
  ramp = np.arange(4, dtype=np.float32)[None, None, :, None] * np.ones(
      (1, 2, 4, 1), np.float32)
  up = np.asarray(resize.bilinear_resize(jnp.asarray(ramp), (2, 8)))
  centres = (np.arange(8) + 0.5) / 2 - 0.5
  want = np.clip(centres, 0, 3)
  np.testing.assert_allclose(up[0, 0, :, 0], want, atol=1e-6)


def test_loss_fn_matches_lovasz_with_ignore_and_weights():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 2, 8, 8, 1)).astype(np.float32)
  masks = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
  valid = (rng.uniform(size=logits.shape) > 0.2).astype(np.float32)
  out = baselines.BaselineOutput(mask_logits=jnp.asarray(logits))
  batch = {"masks": masks, "valid": valid}
  total, terms = baselines.loss_fn(outputs=out, batch=batch,
                                   loss_config={"lovasz": 1.0, "bce": 0.5})
  labels = np.where(valid > 0, masks, 255).reshape(4, 8, 8).astype(np.int32)
  lov = losses.get_loss("lovasz_softmax_binary")(
      logits=logits.reshape(4, 8, 8), labels=labels, ignore=255)
  bce_np = np.log1p(np.exp(-np.abs(logits))) + np.maximum(logits, 0) - (
      logits * masks)
  bce = (bce_np * valid).sum() / valid.sum()
  np.testing.assert_allclose(terms["lovasz"], lov, rtol=1e-6)
  np.testing.assert_allclose(terms["bce"], 0.5 * bce, rtol=1e-5)
  np.testing.assert_allclose(total, lov + 0.5 * bce, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown term"):
    baselines.loss_fn(outputs=out, batch=batch, loss_config={"dice": 1.0})


def test_loss_fn_per_image_lovasz_is_the_mean_of_each_image_loss():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 2, 8, 8, 1)).astype(np.float32)
  masks = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
  # Image 3 shows a small object: the pooled loss hardly sees it.
  masks[1, 1] = 0.0
  masks[1, 1, 2:4, 2:4] = 1.0
  valid = (rng.uniform(size=logits.shape) > 0.2).astype(np.float32)
  out = baselines.BaselineOutput(mask_logits=jnp.asarray(logits))
  batch = {"masks": masks, "valid": valid}
  _, terms = baselines.loss_fn(outputs=out, batch=batch,
                               loss_config={"lovasz_image": 1.0,
                                            "lovasz": 1.0})
  labels = np.where(valid > 0, masks, 255).reshape(4, 8, 8).astype(np.int32)
  lov = losses.get_loss("lovasz_softmax_binary")
  each = [lov(logits=logits.reshape(4, 8, 8)[i:i + 1], labels=labels[i:i + 1],
              ignore=255) for i in range(4)]
  np.testing.assert_allclose(terms["lovasz_image"], np.mean(each), rtol=1e-6)
  pooled = lov(logits=logits.reshape(4, 8, 8), labels=labels, ignore=255)
  np.testing.assert_allclose(terms["lovasz"], pooled, rtol=1e-6)
  assert abs(float(terms["lovasz_image"]) - float(pooled)) > 1e-3


def test_registered_and_refuse_an_unknown_dtype():
  # The registry's own errors are tested in test_models_registry.py.
  assert {"baseline", "mcat", "mmul"} <= set(models.available_methods())
  with pytest.raises(ValueError, match="dtype"):
    models.get_method("mcat").build_model(_config(dtype="float64"))


SLOW_STEPS = 120


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline", "mcat", "mmul"])
def test_trains_on_synthetic_and_beats_untrained_j(name, tmp_path_factory):
  """120 Adam steps on synthetic 64 px pairs raise Avg. J clearly.

  Evaluation is ``coseg_jax.runtime.evaluators.coseg.evaluate`` on held-out
  'test' groups (threshold 0.5 at original size); the untrained model is the
  same initialisation (seed 0) before any step.
  """
  data_dir = tmp_path_factory.getbasetemp() / "tfds_small64"
  config = train_runner.tiny_config(
      data_dir=str(data_dir), steps=SLOW_STEPS, method=name, batch=8,
      lr=3e-3, checkpoint_every=0)
  config.data.builder_config = "small64"
  config.data.image_size = 64
  config.model.use_skips = True
  config.model.backbone_kwargs = {"widths": (8, 16, 16, 16, 16)}
  config.model.decoder_widths = (16, 16, 16, 8, 8)
  config.train.log_every = 100
  config.train.eval_every = SLOW_STEPS
  config.eval.max_groups = 60
  model = models.get_method(name).build_model(config.model)
  scores = {}

  def eval_fn(variables, step):
    scores[step] = coseg.evaluate(
        config=config, model=model, variables=variables)["avg_J"]
    return {}

  init, _ = state_lib.create_train_state(config, model)
  supervised.train_and_evaluate(config, str(tmp_path_factory.mktemp(name)),
                                eval_fn=eval_fn)
  untrained = coseg.evaluate(
      config=config, model=model, variables=init.variables())["avg_J"]
  assert scores[SLOW_STEPS] > untrained + 0.1, (untrained, scores)
