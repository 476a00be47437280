"""steps.make_forward: the inference map every evaluator and predict use."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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
