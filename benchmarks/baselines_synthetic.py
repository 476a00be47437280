"""Avg. J of the Table 1 baselines on synthetic pairs: untrained vs trained.

Trains each of ``--methods`` for ``--steps`` Adam steps on the procedural
synthetic set (``small64``: 10 classes x 40/10 images at 64 px) with the
tiny backbone, then evaluates Avg. J over classes on held-out test pairs with
``coseg_jax.evaluate.evaluate_dataset`` (threshold 0.5 at original size),
and prints one markdown table row per method with the wall time.

  python benchmarks/baselines_synthetic.py --steps 300 \
      --data_dir /tmp/coseg_tfds --methods baseline,mcat,mmul
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--data_dir", default="/tmp/coseg_tfds")
  p.add_argument("--methods", default="baseline,mcat,mmul")
  p.add_argument("--max_groups", type=int, default=60)
  args = p.parse_args()

  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax import evaluate, models, train  # pylint: disable=g-import-not-at-top
  import train_runner  # pylint: disable=g-import-not-at-top

  print("| method | steps | untrained Avg. J | trained Avg. J | wall s |")
  print("|---|---|---|---|---|")
  for name in args.methods.split(","):
    t0 = time.time()
    config = train_runner.tiny_config(
        data_dir=args.data_dir, steps=args.steps, method=name, batch=8,
        lr=3e-3, checkpoint_every=0)
    config.data.builder_config = "small64"
    config.data.image_size = 64
    config.model.use_skips = True
    config.model.backbone_kwargs = {"widths": (8, 16, 16, 16, 16)}
    config.model.decoder_widths = (16, 16, 16, 8, 8)
    config.train.log_every = 100
    config.eval.max_groups = args.max_groups
    model = models.get_method(name).build_model(config.model)
    tx, _ = train.make_optimizer(config.optimizer, args.steps)
    init, _ = train.create_train_state(
        model=model, tx=tx, rng=jax.random.PRNGKey(config.train.seed),
        sample_shape=train.input_shape(config))
    untrained = evaluate.evaluate_dataset(
        config=config, model=model,
        variables=init.variables())["avg_J_over_classes"]
    state = train.train_and_evaluate(config, tempfile.mkdtemp())
    trained = evaluate.evaluate_dataset(
        config=config, model=model,
        variables=state.variables())["avg_J_over_classes"]
    print(f"| {name} | {args.steps} | {untrained:.3f} | {trained:.3f} | "
          f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
  main()
