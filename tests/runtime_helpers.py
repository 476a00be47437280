"""Shared helpers for the in-process runtime tests: a toy method and an
in-memory checkpointable dataset (no TFDS, compiles in a second)."""

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import base
from coseg_jax import losses
from coseg_jax import models
from coseg_jax.models import registry
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime.trainers import supervised


@flax.struct.dataclass
class ToyOutput:
  mask_logits: jax.Array


class ToyModel(nn.Module):
  """A 1x1 conv on each image: no BatchNorm, so batches split exactly."""

  @nn.compact
  def __call__(self, images, train=False):
    del train
    return ToyOutput(mask_logits=nn.Conv(1, (1, 1), name="conv")(images))


def toy_loss(*, outputs, batch, loss_config):
  terms = {"bce": losses.get_loss("sigmoid_bce")(
      logits=outputs.mask_logits, labels=batch["masks"],
      valid=batch["valid"])}
  return losses.compute_total_loss(terms, dict(loss_config))


def register_toy():
  name = "toy_runtime_test"
  if name not in registry._REGISTRY:  # pylint: disable=protected-access
    models.register_method(name, models.MethodSpec(
        build_model=lambda cfg: ToyModel(), loss_fn=toy_loss,
        default_loss={"bce": 1.0}))
  return name


class RedModel(nn.Module):
  """Parameter-free: logits [B, K, H, W, 1] = gain * (red - 0.5), so the
  expected masks are known by hand."""
  gain: float = 20.0

  @nn.compact
  def __call__(self, images, train=False):
    del train
    return ToyOutput(mask_logits=self.gain * (images[..., :1] - 0.5))


def register_red(name: str, gain: float = 20.0) -> str:
  """Registers ``RedModel(gain)`` as the method ``name`` (once)."""
  if name not in models.available_methods():
    models.register_method(name, models.MethodSpec(
        build_model=lambda cfg: RedModel(gain),
        loss_fn=lambda **kw: (0.0, {})))
  return name


def make_batches(n, batch=2, k=2, size=8, seed=0, nan_at=None):
  """``n`` random batches of the data contract; images of ``nan_at`` NaN."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    images = rng.uniform(size=(batch, k, size, size, 3)).astype(np.float32)
    masks = (images[..., :1] > 0.5).astype(np.float32)
    if nan_at is not None and i == nan_at:
      images[:] = np.nan
    out.append({"images": images, "masks": masks,
                "valid": np.ones_like(masks),
                "has_common": np.ones((batch,), np.int32)})
  return out


def list_dataset_fn(batches):
  """A dataset_fn for train_and_evaluate over fixed batches (checkpointable)."""
  def fn(config, *, batch_size, process_index, process_count):
    del config, batch_size, process_index, process_count
    return grain.MapDataset.source(batches).to_iter_dataset()
  return fn


def toy_config(*, steps=4, size=8, batch=2):
  c = base.get_base_config()
  c.method = register_toy()
  c.data.image_size = size
  c.data.group_size = 2
  c.loss = ml_collections.ConfigDict({"bce": 1.0})
  c.optimizer.learning_rate = 0.1
  c.train.num_steps = steps
  c.train.global_batch_size = batch
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.eval_every = 0
  c.train.progress_bar = False
  c.mesh.data = 1
  return c


def make_state(model, tx, sample_shape=(1, 2, 8, 8, 3), seed=0):
  """A fresh TrainState of ``model`` with optimiser ``tx`` (no mesh)."""
  config = toy_config()
  config.train.seed = seed
  state, _ = state_lib.create_train_state(config, model, tx=tx,
                                          sample_shape=sample_shape)
  return state


def evaluate_before_and_after_training(cfg, run_dir, evaluate):
  """``evaluate`` (an evaluator's ``evaluate``) of the method of ``cfg`` at
  its initial variables and after ``supervised.train_and_evaluate`` into
  ``run_dir``: (before, after) metrics."""
  model = models.get_method(cfg.method).build_model(cfg.model)
  init_state, _ = state_lib.create_train_state(cfg, model)
  before = evaluate(config=cfg, model=model, variables=init_state.variables())
  state = supervised.train_and_evaluate(cfg, run_dir)
  after = evaluate(config=cfg, model=model,
                   variables=jax.device_get(state.variables()))
  return before, after
