"""CoSegNet training diagnosis on synthetic triplets (benchmarks/RESULTS.md).

A plain loop over ``coseg_jax.train.make_train_step`` that prints every loss
term every ``--every`` steps, then the gated / ungated J and the decision
accuracy on held-out synthetic pairs (before and after training) and the
activation statistics of the metric / decision nets and decoder taps.

Data: the synthetic generator built from ``data.synthetic`` fields
(``--classes`` shape families, ``--ntrain`` train / 10 test images per
class rendered at ``--render`` px, ``--dist`` distractors, ``--textures 1``
for every object in its category's fixed texture). Options select
the learning rate, the loss terms (``--loss term=w,...``), the metric layer,
the Lite0 ImageNet encoder (``--lite 1``) or a tiny encoder first trained to
classify the train images for ``--pretrain`` steps (stand-in for the paper's
ImageNet pre-training). Example (what RESULTS.md records):

  nice -n 10 python benchmarks/cosegnet_diagnose.py --steps 400 --lr 3e-4 \
      --classes 2 --ntrain 60 --pretrain 200
  python benchmarks/cosegnet_diagnose.py --steps 2500 --classes 10 \
      --ntrain 40 --render 64 --size 128 --dist 0 0 --textures 1 \
      --loss mask_pos=1,triplet_pos=0.33,decision_pos=0.33,mask_neg=0,\
triplet_neg=0.5,decision_neg=0.5
"""

import argparse
import os
import sys
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

# Run as a script from anywhere: the repository root holds ``coseg_jax``,
# ``configs`` and ``data_pipelines``; this folder holds ``cosegnet_dcc``.
_BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_BENCHMARKS_DIR, ".."))
sys.path.insert(0, _BENCHMARKS_DIR)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import cosegnet_dcc as bench
from flax import linen as nn
import jax
import ml_collections
import numpy as np
import optax

from coseg_jax import backbones
from coseg_jax import evaluate
from coseg_jax import models
from coseg_jax import train
from coseg_jax.backbones import weights as weights_lib
from data_pipelines import pipeline
# pylint: enable=g-import-not-at-top,g-bad-import-order

# Held-out images per class of the synthetic set.
_TEST_PER_CLASS = 10
# Held-out pairs for the decision accuracy.
_DECISION_PAIRS = 40
# Encoder pre-training: batch size and Adam learning rate.
_PRETRAIN_BATCH = 16
_PRETRAIN_LR = 1e-3
# Batch keys the train step consumes (the pipeline yields more).
_TRAIN_KEYS = ("images", "masks", "valid")
# Activation statistics: the metric / decision layers and decoder taps.
_HEAD_LAYERS = ("metric_fc1", "metric_fc2", "decision_fc1", "decision_fc2")
_DECODER_TAPS = (1, 5, 9, 12, 13)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses the command line (``argv`` defaults to ``sys.argv[1:]``)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=200,
                      help="training steps")
  parser.add_argument("--lr", type=float, default=1e-3,
                      help="peak learning rate")
  parser.add_argument("--size", type=int, default=64,
                      help="model input size (px)")
  parser.add_argument("--render", type=int, default=64,
                      help="synthetic render size (px)")
  parser.add_argument("--dist", type=int, nargs=2, default=(0, 0),
                      help="min and max distractors per image")
  parser.add_argument("--classes", type=int, default=3,
                      help="synthetic shape families")
  parser.add_argument("--ntrain", type=int, default=20,
                      help="train images per class")
  parser.add_argument("--wm", type=float, default=1 / 8,
                      help="decoder width multiplier")
  parser.add_argument("--enc", type=int, nargs=5,
                      default=(16, 32, 32, 64, 64),
                      help="tiny encoder widths")
  parser.add_argument("--batch", type=int, default=4,
                      help="triplets per batch")
  parser.add_argument("--layer", default="cT9", help="metric layer")
  parser.add_argument("--loss", default="paper",
                      help="'paper', 'eq' or term=weight,...")
  parser.add_argument("--sched", default="cosine",
                      help="learning-rate schedule")
  parser.add_argument("--opt", default="adam", help="optimizer")
  parser.add_argument("--textures", type=int, default=0,
                      help="1: every object in its category's fixed texture "
                      "(data.synthetic.category_textures)")
  parser.add_argument("--aug", type=int, default=1,
                      help="training augmentation (0/1)")
  parser.add_argument("--lite", type=int, default=0,
                      help="ImageNet EfficientNet-Lite0 encoder (0/1)")
  parser.add_argument("--pretrain", type=int, default=0,
                      help="steps of encoder classification pre-training")
  parser.add_argument("--data_dir", default="/tmp/cosegnet_diagnose_data",
                      help="where the synthetic set is built")
  parser.add_argument("--every", type=int, default=25,
                      help="print the loss terms every this many steps")
  return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The small synthetic CoSegNet config, adjusted by the flags."""
  config = bench.synthetic_config(
      "cosegnet", steps=args.steps, data_dir=args.data_dir,
      builder_config="tiny", image_size=args.size, batch=args.batch)
  # Build the set from the ``data.synthetic`` fields below instead.
  config.data.builder_config = None
  synthetic = config.data.synthetic
  synthetic.num_classes = args.classes
  synthetic.train_per_class = args.ntrain
  synthetic.test_per_class = _TEST_PER_CLASS
  synthetic.image_size = args.render
  synthetic.min_distractors, synthetic.max_distractors = args.dist
  synthetic.category_textures = bool(args.textures)
  config.data.augment.enabled = bool(args.aug)
  config.model.width_multiplier = args.wm
  config.model.backbone_kwargs = {"widths": tuple(args.enc)}
  config.model.metric_layer = args.layer
  config.optimizer.learning_rate = args.lr
  config.optimizer.schedule = args.sched
  config.optimizer.name = args.opt
  weights = bench.parse_loss_weights(args.loss)
  if weights is not None:
    config.loss = weights
  if args.lite:
    config.model.backbone = "efficientnet_lite0"
    config.model.backbone_kwargs = {}
    config.init.backbone_weights = str(
        weights_lib.find_lite_weights("efficientnet_lite0"))
  return config


class EncoderClassifier(nn.Module):
  """An encoder with a linear classifier on its pooled stride-32 features.

  Trained to classify the synthetic train images, it stands in for the
  paper's ImageNet pre-training of the encoder.

  Attributes:
    backbone: the encoder (its parameters end up under ``"backbone"``, the
      same name as in the CoSegNet model, so that they can be copied over).
    num_classes: number of classes.
  """
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images, is_training: bool):
    """Logits ``[B, num_classes]`` for ``images`` ``[B, H, W, 3]``."""
    features = self.backbone(images, train=is_training).features["stride32"]
    return nn.Dense(self.num_classes)(features.mean((1, 2)))


def _classifier_train_step(classifier: nn.Module,
                           tx: optax.GradientTransformation):
  """A jitted softmax cross-entropy step for ``classifier``.

  The step maps ``(params, batch_stats, opt_state, images, labels)`` to
  ``(params, batch_stats, opt_state, loss)``.
  """

  @jax.jit
  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, new_vars = classifier.apply(
          {"params": params, "batch_stats": batch_stats}, images,
          is_training=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), new_vars
    (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_vars["batch_stats"],
            opt_state, loss)

  return step


def pretrain_encoder(config: ml_collections.ConfigDict,
                     args: argparse.Namespace,
                     state: train.TrainState) -> train.TrainState:
  """Pre-trains a tiny encoder by classification; returns it in ``state``.

  ``args.pretrain`` steps on the train images, in batches of
  ``_PRETRAIN_BATCH`` drawn with replacement, each batch flipped left-right
  half of the time. Prints the last step's loss.
  """
  source = pipeline.load_source(config.data, "train")
  images = np.stack([
      pipeline.preprocess_for_eval(source[i]["image"],
                                   image_size=args.size)[0]
      for i in range(len(source))]).astype(np.float32)
  labels = np.array([source[i]["label"] for i in range(len(source))])
  # Always the tiny encoder (with the config's kwargs), as in the CoSegNet
  # model built from the default config.
  classifier = EncoderClassifier(
      backbone=backbones.get_backbone("tiny",
                                      **config.model.backbone_kwargs),
      num_classes=args.classes)
  variables = classifier.init(jax.random.PRNGKey(0), images[:2],
                              is_training=False)
  tx = optax.adam(_PRETRAIN_LR)
  opt_state = tx.init(variables["params"])
  step = _classifier_train_step(classifier, tx)
  params, batch_stats = variables["params"], variables["batch_stats"]
  rng = np.random.default_rng(0)
  for _ in range(args.pretrain):
    index = rng.choice(len(images), _PRETRAIN_BATCH)
    batch_images = images[index]
    if rng.uniform() < 0.5:
      batch_images = batch_images[:, :, ::-1]
    params, batch_stats, opt_state, loss = step(
        params, batch_stats, opt_state, batch_images, labels[index])
  print("pretrain loss", float(loss), flush=True)
  return state.replace(
      params=dict(state.params, backbone=params["backbone"]),
      batch_stats=dict(state.batch_stats, backbone=batch_stats["backbone"]))


def evaluate_and_print(config: ml_collections.ConfigDict, model: nn.Module,
                       variables: Mapping[str, Any], tag: str) -> None:
  """Prints the held-out gated / ungated J and the decision accuracy."""
  gated = evaluate.evaluate_dataset(config=config, model=model,
                                    variables=variables, verbose=False)
  ungated = evaluate.evaluate_dataset(config=bench.ungated_config(config),
                                      model=model, variables=variables,
                                      verbose=False)
  decision = bench.decision_accuracy(config=config, model=model,
                                     variables=variables,
                                     num_pairs=_DECISION_PAIRS)
  print(f"[{tag}] J gated {gated['avg_J_over_classes']:.3f} "
        f"ungated {ungated['avg_J_over_classes']:.3f} "
        f"dec acc {decision['accuracy']:.3f} "
        f"(pos {decision['positive_accuracy']:.2f} "
        f"neg {decision['negative_accuracy']:.2f})", flush=True)


def train_loop(state: train.TrainState, train_step,
               batches: Iterator[Mapping[str, Any]], *, num_steps: int,
               every: int) -> train.TrainState:
  """Runs ``num_steps`` train steps, printing the metrics as it goes.

  Every ``every`` steps prints the elapsed time and the mean of each metric
  (but ``finite``) since the last print.
  """
  start = time.time()
  pending = {}
  for step in range(num_steps):
    batch = {k: v for k, v in next(batches).items() if k in _TRAIN_KEYS}
    state, metrics = train_step(state, batch)
    for name, value in metrics.items():
      pending.setdefault(name, []).append(value)
    if (step + 1) % every == 0:
      terms = " ".join(
          f"{name.split('/')[-1]}={np.mean(jax.device_get(values)):.3f}"
          for name, values in pending.items() if name != "finite")
      print(f"step {step + 1} {time.time() - start:.0f}s {terms}",
            flush=True)
      pending = {}
  return state


def print_activation_stats(model: nn.Module, variables: Mapping[str, Any],
                           images) -> None:
  """Prints how alive and how input-dependent the activations are.

  On ``images``, in train mode (batch statistics), as during training.

  For the metric / decision layers: the fraction of positive
  pre-activations, the fraction of units positive at least once and the
  per-unit std over the batch. For the decoder taps: the same fractions and
  the std over images of the globally pooled ReLU outputs. For the encoder
  output ``f``: the std over images of its pooled features and its mean.
  """
  _, captured = model.apply(
      variables, images, train=True, capture_intermediates=True,
      mutable=["intermediates", "batch_stats"],
      rngs={"dropout": jax.random.PRNGKey(1)})
  intermediates = captured["intermediates"]
  for name in _HEAD_LAYERS:
    x = np.asarray(intermediates[name]["__call__"][0])
    units = x.reshape(-1, x.shape[-1])
    print(name, x.shape,
          "pre-act >0 frac", (x > 0).mean().round(3),
          "units ever active", ((units > 0).any(0)).mean().round(3),
          "std over batch", units.std(0).mean().round(4))
  for tap in _DECODER_TAPS:
    x = np.asarray(intermediates["decoder"][f"cT{tap}"]["__call__"][0])
    print(f"cT{tap}",
          "pre-act >0 frac", (x > 0).mean().round(3),
          "channels ever active",
          (x > 0).reshape(-1, x.shape[-1]).any(0).mean().round(3),
          "GAP std over imgs",
          x.clip(0).mean((1, 2)).std(0).mean().round(4))
  features = np.asarray(
      intermediates["backbone"]["__call__"][0].features["stride32"])
  print("f GAP std over imgs",
        features.mean((1, 2)).std(0).mean().round(4),
        "mean", features.mean().round(3))


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Builds, (pre-)trains and diagnoses the model as the flags say."""
  args = parse_args(argv)
  config = build_config(args)
  spec = models.get_method("cosegnet")
  model = spec.build_model(config.model)
  tx, _ = train.make_optimizer(config.optimizer, args.steps)
  state, _ = train.create_train_state(
      model=model, tx=tx, rng=jax.random.PRNGKey(0),
      sample_shape=train.input_shape(config))
  # No public equivalent in coseg_jax.train (it loads config.init weights).
  state = train._init_from_pretrained(state, config)  # pylint: disable=protected-access
  if args.pretrain:
    state = pretrain_encoder(config, args, state)
  train_step = train.make_train_step(model=model, loss_fn=spec.loss_fn,
                                     loss_config=dict(config.loss))
  dataset = pipeline.make_dataset(config.data, split="train",
                                  batch_size=args.batch, train=True, seed=0)
  batches = iter(dataset)
  evaluate_and_print(config, model, jax.device_get(state.variables()),
                     "init")
  state = train_loop(state, train_step, batches, num_steps=args.steps,
                     every=args.every)
  evaluate_and_print(config, model, jax.device_get(state.variables()),
                     "trained")
  # The next training batch (augmented, as the loop saw them).
  print_activation_stats(model, state.variables(), next(batches)["images"])


if __name__ == "__main__":
  main()
