"""CoSegNet / DCC training figures: synthetic sanity runs and the class-disjoint
PASCAL-VOC run (benchmarks/RESULTS.md, sections "CoSegNet" and "DCC").

Each run trains with the generic loop (``coseg_jax.train``), then reports:
* J (per class then averaged, pooled, per-image mean) of the untrained model
  (same initialisation: random heads, and the ImageNet encoder where the
  config loads one) and of the trained model, via ``coseg_jax.evaluate``;
* for CoSegNet, the decision accuracy on held-out positive and negative pairs
  (``data.sampler='pairs'``, half negatives, drawn without augmentation from
  the evaluation classes: for ``voc`` these are cross-class negatives among
  the 10 unseen classes).

Usage (what RESULTS.md records):

  nice -n 10 python benchmarks/cosegnet_dcc.py synthetic --method cosegnet \\
      --workdir /tmp/cds_cosegnet --steps 300
  nice -n 10 python benchmarks/cosegnet_dcc.py voc --method cosegnet \\
      --workdir /tmp/cdv_cosegnet --train_minutes 9

``--json`` writes every figure to a file.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))

import numpy as np  # pylint: disable=g-import-not-at-top


def synthetic_config(method: str, *, steps: int, data_dir=None,
                     builder_config="small64", image_size=64, batch=8):
  """A small CPU config on the synthetic set for ``method``."""
  from configs import cosegnet_voc  # pylint: disable=g-import-not-at-top
  from configs import dcc_voc  # pylint: disable=g-import-not-at-top
  if method == "dcc":
    c = dcc_voc.get_config("runlocal")
    c.model.decoder_widths = (32, 32, 16, 16, 8)
  else:
    c = cosegnet_voc.get_config(("base" if method == "base" else "cosegnet")
                                + ",runlocal")
    c.model.width_multiplier = 1 / 8
  c.model.backbone_kwargs = {"widths": (16, 32, 32, 64, 64)}
  if data_dir:
    c.data.data_dir = data_dir
  c.data.builder_config = builder_config
  c.data.image_size = image_size
  c.data.augment.enabled = True
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = min(50, steps // 10)
  c.train.num_steps = steps
  c.train.global_batch_size = batch
  c.train.log_every = max(steps // 10, 1)
  c.train.checkpoint_every = 0
  c.train.eval_every = 0
  c.eval.split = "test"
  c.eval.max_groups = -1
  c.eval.batch_size = 16
  c.predict.image_size = image_size
  return c


def voc_config(method: str, classes: str, *, steps=None, image_size=None):
  from configs import cosegnet_pascal_disjoint  # pylint: disable=g-import-not-at-top
  c = cosegnet_pascal_disjoint.get_config(f"{method},{classes},cpu")
  if steps:
    c.train.num_steps = steps
  if image_size:
    c.data.image_size = image_size
    c.predict.image_size = image_size
  return c


def initial_variables(config):
  """The untrained model's variables (as training starts: same seed, same
  pretrained encoder)."""
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  from coseg_jax import train  # pylint: disable=g-import-not-at-top
  model = models.get_method(config.method).build_model(config.model)
  tx, _ = train.make_optimizer(config.optimizer, int(config.train.num_steps))
  state, _ = train.create_train_state(
      model=model, tx=tx, rng=jax.random.PRNGKey(int(config.train.seed)),
      sample_shape=train.input_shape(config))
  state = train._init_from_pretrained(state, config)  # pylint: disable=protected-access
  return model, state.variables()


def decision_accuracy(*, config, model, variables, num_pairs=200, seed=123,
                      batch_size=16):
  """Accuracy of sigmoid(decision) > threshold on positive/negative pairs.

  Pairs come from ``config.data`` (its classes and eval split), half of them
  negatives (no shared class), without augmentation.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data.copy_and_resolve_references()
  d.sampler = "pairs"
  d.negative_fraction = 0.5
  d.eval_groups_per_split = num_pairs
  ds = pipeline.make_dataset(d, split=d.eval_split, batch_size=batch_size,
                             train=False, seed=seed)
  threshold = float(config.model.get("decision_threshold", 0.5))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False).decision_logits)
  right = {0: 0, 1: 0}
  total = {0: 0, 1: 0}
  for batch in ds:
    logits = np.asarray(apply(variables, batch["images"]))[:, 0]
    said = (1 / (1 + np.exp(-logits))) > threshold
    for yes, label in zip(said, batch["has_common"]):
      total[int(label)] += 1
      right[int(label)] += int(bool(yes) == bool(label))
  n = total[0] + total[1]
  return {"accuracy": (right[0] + right[1]) / max(n, 1),
          "positive_accuracy": right[1] / max(total[1], 1),
          "negative_accuracy": right[0] / max(total[0], 1),
          "num_positive": total[1], "num_negative": total[0]}


def _j_summary(results):
  keys = ("avg_J_over_classes", "avg_P_over_classes", "mean_J_per_image",
          "pooled_J", "num_images")
  out = {k: results[k] for k in keys}
  out["per_class_J"] = {c: round(v["J"], 4)
                        for c, v in results["per_class"].items()}
  return out


def ungated_config(config):
  """The same config with the decision gate open (threshold below 0)."""
  c = config.copy_and_resolve_references()
  c.model.decision_threshold = -1.0
  return c


def time_budget_hook(minutes):
  """A step hook that asks the loop to stop (SIGTERM: it saves and returns
  the state at the next step boundary) once ``minutes`` have passed."""
  import signal  # pylint: disable=g-import-not-at-top
  start = time.time()
  fired = []

  def hook(step, state, metrics):
    del step, state, metrics
    if not fired and time.time() - start > 60 * minutes:
      fired.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


def parse_loss_weights(spec: Optional[str]) -> Optional[Dict[str, float]]:
  """Loss weights from ``"term=w,term=w,..."``; None (or "paper") keeps the
  config's (the paper's) weights; "eq" puts every CoSegNet term at 1 except
  ``mask_neg`` (0)."""
  if not spec or spec == "paper":
    return None
  if spec == "eq":
    from coseg_jax.models import cosegnet  # pylint: disable=g-import-not-at-top
    weights = {term: 1.0 for term in cosegnet.LOSS_TERMS}
    weights["mask_neg"] = 0.0
    return weights
  weights = {}
  for item in spec.split(","):
    term, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--loss {spec!r}: expected term=weight, got {item!r}")
    weights[term.strip()] = float(value)
  return weights


def apply_training_options(train_cfg, *, loss=None, freeze_encoder=False):
  """--loss and --freeze_encoder on a training config (in place)."""
  if loss:
    # Every term the method knows must be named, so that a typo cannot leave
    # a term at its default weight unnoticed.
    missing = set(train_cfg.loss) - set(loss)
    unknown = set(loss) - set(train_cfg.loss)
    if missing or unknown:
      raise ValueError(f"--loss must give every term of {sorted(train_cfg.loss)}"
                       f"; missing {sorted(missing)}, unknown {sorted(unknown)}")
    train_cfg.loss = dict(loss)
  if freeze_encoder:
    # The pretrained encoder stays as loaded: the step skips its backward,
    # and it runs in evaluation mode (its BatchNorm statistics as loaded, no
    # drop-connect), so its features do not depend on the batch.
    train_cfg.optimizer.lr_multipliers = {"backbone": 0.0}
    train_cfg.model.backbone_eval_mode = True
  return train_cfg


def parse_overrides(items) -> Dict[str, object]:
  """``--set`` items ``"a.b=value"`` -> {"a.b": value}; values are Python
  literals where they parse as one (1e-3, 'f', (1, 2), True), else strings."""
  import ast  # pylint: disable=g-import-not-at-top
  out = {}
  for item in items or ():
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--set {item!r}: expected field.path=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    out[key.strip()] = value
  return out


def apply_overrides(config, overrides: Dict[str, object]):
  """Sets dotted config fields (in place); an unknown field is an error."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise ValueError(f"--set {key}: the config has no field {name!r}")
      node = node[name]
    if leaf not in node:
      raise ValueError(f"--set {key}: the config has no field {leaf!r}")
    node[leaf] = value
  return config


def run(kind, method, workdir, *, steps=None, image_size=None, data_dir=None,
        num_pairs=200, train_minutes=None, builder_config="small64",
        batch=8, max_groups=None, loss=None, freeze_encoder=False,
        overrides=None):
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax import evaluate  # pylint: disable=g-import-not-at-top
  from coseg_jax import train  # pylint: disable=g-import-not-at-top
  if kind == "synthetic":
    train_cfg = synthetic_config(method, steps=steps or 300,
                                 data_dir=data_dir,
                                 builder_config=builder_config,
                                 image_size=image_size or 64, batch=batch)
    eval_cfg = train_cfg
  else:
    train_cfg = voc_config(method, "train", steps=steps,
                           image_size=image_size)
    eval_cfg = voc_config(method, "unseen", steps=steps,
                          image_size=image_size)
  if max_groups:
    eval_cfg.eval.max_groups = max_groups
  apply_training_options(train_cfg, loss=loss, freeze_encoder=freeze_encoder)
  # The same overrides on both: model fields must agree for the evaluation.
  for cfg in {id(train_cfg): train_cfg, id(eval_cfg): eval_cfg}.values():
    apply_overrides(cfg, overrides or {})
  report = {"kind": kind, "method": train_cfg.method,
            "image_size": train_cfg.data.image_size,
            "steps": int(train_cfg.train.num_steps),
            "batch": int(train_cfg.train.global_batch_size),
            "backbone": train_cfg.model.backbone,
            "loss": dict(train_cfg.loss),
            "freeze_encoder": bool(freeze_encoder),
            "overrides": {k: repr(v) for k, v in (overrides or {}).items()},
            "devices": str(jax.devices())}
  model, init_vars = initial_variables(train_cfg)
  t0 = time.time()
  before = evaluate.evaluate_dataset(config=eval_cfg, model=model,
                                     variables=init_vars, verbose=False)
  report["untrained"] = _j_summary(before)
  if train_cfg.method == "cosegnet":
    report["untrained_ungated"] = _j_summary(evaluate.evaluate_dataset(
        config=ungated_config(eval_cfg), model=model, variables=init_vars,
        verbose=False))
    report["untrained_decision"] = decision_accuracy(
        config=eval_cfg, model=model, variables=init_vars,
        num_pairs=num_pairs)
  report["eval_seconds"] = time.time() - t0
  t0 = time.time()
  hooks = [time_budget_hook(train_minutes)] if train_minutes else []
  state = train.train_and_evaluate(train_cfg, workdir, step_hooks=hooks)
  report["train_seconds"] = time.time() - t0
  report["steps_done"] = int(jax.device_get(state.step))
  variables = jax.device_get(state.variables())
  after = evaluate.evaluate_dataset(config=eval_cfg, model=model,
                                    variables=variables, verbose=True)
  report["trained"] = _j_summary(after)
  if train_cfg.method == "cosegnet":
    report["trained_ungated"] = _j_summary(evaluate.evaluate_dataset(
        config=ungated_config(eval_cfg), model=model, variables=variables,
        verbose=False))
    report["trained_decision"] = decision_accuracy(
        config=eval_cfg, model=model, variables=variables,
        num_pairs=num_pairs)
  return report


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("kind", choices=("synthetic", "voc"))
  p.add_argument("--method", choices=("cosegnet", "base", "dcc"),
                 required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--image_size", type=int, default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--builder_config", default="small64",
                 help="synthetic builder config (synthetic runs)")
  p.add_argument("--batch", type=int, default=8, help="synthetic runs")
  p.add_argument("--max_groups", type=int, default=None,
                 help="evaluation pairs (round-robin over classes)")
  p.add_argument("--num_pairs", type=int, default=200)
  p.add_argument("--train_minutes", type=float, default=None,
                 help="stop training (checkpoint + evaluate) after this")
  p.add_argument("--loss", default=None,
                 help="loss weights term=w,... (all terms), 'eq' or 'paper'")
  p.add_argument("--freeze_encoder", action="store_true",
                 help="keep the encoder fixed (optimizer.lr_multipliers 0, "
                      "model.backbone_eval_mode)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, e.g. optimizer.learning_rate=1e-3 or "
                      "model.metric_layer='f' (repeatable; train and eval)")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  report = run(args.kind, args.method, args.workdir, steps=args.steps,
               image_size=args.image_size, data_dir=args.data_dir,
               num_pairs=args.num_pairs, train_minutes=args.train_minutes,
               builder_config=args.builder_config, batch=args.batch,
               max_groups=args.max_groups,
               loss=parse_loss_weights(args.loss),
               freeze_encoder=args.freeze_encoder,
               overrides=parse_overrides(args.set))
  text = json.dumps(report, indent=1, sort_keys=True)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
