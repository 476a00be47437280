"""steps.make_forward: the inference map every evaluator and predict use."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import models
from coseg_jax.runtime import steps


@flax.struct.dataclass
class _Out:
  mask_logits: jax.Array


class _Lopsided(nn.Module):
  """Logits that are not mirror-equivariant and read the partner: each
  image's red channel times a left-to-right ramp, plus the partner's green
  channel at the same position (K = 2)."""

  @nn.compact
  def __call__(self, images, train=False):
    w = images.shape[3]
    ramp = jnp.linspace(0.0, 3.0, w)[None, None, None, :]
    own = images[..., 0] * ramp
    partner = images[:, ::-1, ..., 1]
    return _Out(mask_logits=(own + partner - 1.0)[..., None])


models.register_method("_forward_test", models.MethodSpec(
    build_model=lambda c: _Lopsided(), loss_fn=None))


def _forward(flip):
  config = ml_collections.ConfigDict(
      {"method": "_forward_test", "eval": {"flip": flip}})
  return jax.jit(steps.make_forward(config, _Lopsided()))


def _images():
  return np.random.default_rng(0).uniform(size=(2, 2, 5, 7, 3)).astype(
      np.float32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _reference_logits(x):
  ramp = np.linspace(0.0, 3.0, x.shape[3])[None, None, None, :]
  return x[..., 0] * ramp + x[:, ::-1, ..., 1] - 1.0


def test_plain_forward_is_the_sigmoid_of_the_logits():
  x = _images()
  np.testing.assert_allclose(np.asarray(_forward(False)({}, x))[..., 0],
                             _sigmoid(_reference_logits(x)), atol=1e-6)


def test_flip_averages_the_mirrored_group_mirrored_back():
  """The mean of the group's map and its mirror's (every image mirrored
  together, the partner included), so the result is mirror-equivariant,
  which the model alone is not."""
  x = _images()
  mirrored = x[:, :, :, ::-1]
  want = 0.5 * (_sigmoid(_reference_logits(x))
                + _sigmoid(_reference_logits(mirrored))[:, :, :, ::-1])
  got = np.asarray(_forward(True)({}, x))[..., 0]
  np.testing.assert_allclose(got, want, atol=1e-6)
  got_mirrored = np.asarray(_forward(True)({}, mirrored))[..., 0]
  np.testing.assert_allclose(got_mirrored, got[:, :, :, ::-1], atol=1e-6)
  plain = np.asarray(_forward(False)({}, x))[..., 0]
  plain_mirrored = np.asarray(_forward(False)({}, mirrored))[..., 0]
  assert np.abs(plain_mirrored - plain[:, :, :, ::-1]).max() > 0.1


def test_flip_is_off_without_an_eval_section():
  config = ml_collections.ConfigDict({"method": "_forward_test"})
  x = _images()
  np.testing.assert_allclose(
      np.asarray(steps.make_forward(config, _Lopsided())({}, x))[..., 0],
      _sigmoid(_reference_logits(x)), atol=1e-6)


class _Pointwise(nn.Module):
  """Foreground probability = the red channel (logit of it)."""

  @nn.compact
  def __call__(self, images, train=False):
    red = jnp.clip(images[..., :1], 1e-6, 1 - 1e-6)
    return _Out(mask_logits=jnp.log(red) - jnp.log1p(-red))


models.register_method("_forward_pointwise", models.MethodSpec(
    build_model=lambda c: _Pointwise(), loss_fn=None))


def _pointwise_forward(**options):
  config = ml_collections.ConfigDict(
      {"method": "_forward_pointwise", "eval": options})
  return jax.jit(steps.make_forward(config, _Pointwise()))


def _checkerboard():
  """[1, 2, 16, 16, 3]: red 0.1 / 0.9 alternating pixel by pixel."""
  yy, xx = np.mgrid[:16, :16]
  red = np.where((yy + xx) % 2, 0.9, 0.1).astype(np.float32)
  image = np.stack([red, np.zeros_like(red), np.zeros_like(red)], -1)
  return np.broadcast_to(image, (1, 2, 16, 16, 3)).copy()


def test_scales_average_maps_resized_back_to_the_input_size():
  """At half size the (antialiased) checkerboard averages to 0.5, so the
  mean of the half-size and full-size maps is halfway between each pixel's
  own value and 0.5 (away from the border, where the filter is cut)."""
  x = _checkerboard()
  plain = np.asarray(_pointwise_forward()({}, x))[..., 0]
  np.testing.assert_allclose(plain, x[..., 0], atol=1e-5)
  both = np.asarray(_pointwise_forward(scales=(0.5, 1.0))({}, x))[..., 0]
  assert both.shape == plain.shape
  inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(both[inner], 0.5 * (x[..., 0][inner] + 0.5),
                             atol=0.02)
  # On a smooth (linear) image, twice the size and back keeps the map.
  ramp = np.broadcast_to(np.linspace(0.2, 0.8, 16, dtype=np.float32),
                         (1, 2, 16, 16))
  smooth = np.stack([ramp, 0 * ramp, 0 * ramp], -1)
  up = np.asarray(_pointwise_forward(scales=(2.0,))({}, smooth))[..., 0]
  np.testing.assert_allclose(up[inner], ramp[inner], atol=1e-3)
  # Repeating a scale changes nothing.
  same = np.asarray(_pointwise_forward(scales=(1.0, 1.0))({}, x))[..., 0]
  np.testing.assert_allclose(same, plain, atol=1e-6)


def test_scales_and_flip_combine():
  x = _images()
  config = ml_collections.ConfigDict(
      {"method": "_forward_test", "eval": {"flip": True, "scales": (1.0,)}})
  got = np.asarray(jax.jit(steps.make_forward(config, _Lopsided()))({}, x))
  np.testing.assert_allclose(got, np.asarray(_forward(True)({}, x)),
                             atol=1e-6)


def test_bad_scales_are_refused():
  for scales in ((), (0.0,), (-1.0, 1.0)):
    config = ml_collections.ConfigDict(
        {"method": "_forward_test", "eval": {"scales": scales}})
    with pytest.raises(ValueError, match="config.eval.scales"):
      steps.make_forward(config, _Lopsided())
