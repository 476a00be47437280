"""Subprocess helper for the runtime tests: one tiny training run.

Usage (the tests build the command line):

  python tests/train_runner.py --workdir W --data_dir D --steps N \
      [--out params.npz] [--method baseline] [--batch 4] [--devices 1]
      [--coordinator 127.0.0.1:PORT --num_processes 2 --process_id I]
      [--optimizer adam] [--lr 0.01] [--checkpoint_every 2] [--loss lovasz]
      [--ema_decay 0.9]

Prints ``STEP <n> loss <x>`` (flushed) after every training step so the parent can
kill it at a chosen step, and ``DONE <n>`` at the end. Writes the final
params (flattened, float32; with ``--ema_decay``, their moving average too,
under ``ema`` keys) to ``--out`` on process 0. Fake CPU devices come
from XLA_FLAGS, set by the parent before this process starts.
"""

import argparse

from absl import logging
import jax
import numpy as np

from configs import base
from coseg_jax.runtime.trainers import supervised


def tiny_config(*, data_dir, steps, method="baseline", batch=4, devices=-1,
                optimizer="adam", lr=0.01, checkpoint_every=2, seed=0,
                loss="lovasz", ema_decay=0.0):
  """The smallest real configuration: tiny backbone, 32 px synthetic pairs."""
  c = base.get_base_config()
  c.method = method
  c.model.backbone_kwargs = {"widths": (4, 8, 8, 8, 8)}
  c.model.decoder_widths = (8, 8, 8, 8, 8)
  c.data.data_dir = data_dir
  c.data.builder_config = "tiny"
  c.data.image_size = 32
  c.data.augment.enabled = False
  c.loss = {loss: 1.0}
  c.optimizer.name = optimizer
  c.optimizer.learning_rate = lr
  c.train.num_steps = steps
  c.train.global_batch_size = batch
  c.train.log_every = 1
  c.train.checkpoint_every = checkpoint_every
  c.train.keep_checkpoints = 2
  c.train.eval_every = 0
  c.train.seed = seed
  c.train.ema_decay = ema_decay
  c.train.progress_bar = False
  c.mesh.data = devices
  return c


def flat_params(params):
  leaves = jax.tree_util.tree_leaves_with_path(params)
  # addressable_data(0): replicated arrays of a multi-process run are not
  # fully addressable, but every process holds a full copy.
  return {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0),
                                               np.float32)
          for k, v in leaves}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--out", default=None)
  p.add_argument("--method", default="baseline")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--devices", type=int, default=-1)
  p.add_argument("--optimizer", default="adam")
  p.add_argument("--lr", type=float, default=0.01)
  p.add_argument("--checkpoint_every", type=int, default=2)
  p.add_argument("--loss", default="lovasz", choices=("lovasz", "bce"))
  p.add_argument("--ema_decay", type=float, default=0.0)
  p.add_argument("--coordinator", default=None)
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  args = p.parse_args()

  logging.set_verbosity(logging.WARNING)

  config = tiny_config(data_dir=args.data_dir, steps=args.steps,
                       method=args.method, batch=args.batch,
                       devices=args.devices, optimizer=args.optimizer,
                       lr=args.lr, checkpoint_every=args.checkpoint_every,
                       loss=args.loss, ema_decay=args.ema_decay)
  if args.coordinator:
    config.mesh.coordinator_address = args.coordinator
    config.mesh.num_processes = args.num_processes
    config.mesh.process_id = args.process_id

  def report(step, state, metrics):
    del state
    print(f"STEP {step} loss {float(metrics['loss']):.8f}", flush=True)

  state = supervised.train_and_evaluate(config, args.workdir,
                                        step_hooks=[report])
  params = flat_params(state.params)
  if state.ema_params:
    params.update({f"ema{k}": v
                   for k, v in flat_params(state.ema_params).items()})
  if args.out and jax.process_index() == 0:
    np.savez(args.out, **params)
  print(f"DONE {int(jax.device_get(state.step))}", flush=True)


if __name__ == "__main__":
  main()
