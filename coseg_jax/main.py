"""The coseg_jax command line: train, evaluate, co-segment images, benchmark.

  python -m coseg_jax.main --config configs/baselines.py:mcat \\
      --workdir /tmp/run --mode train|eval|predict|benchmark \\
      [--config.train.num_steps=100 ...] [--images DIR_OR_GLOB] [--out DIR]

Modes:
- ``train``: ``coseg_jax.train.train_and_evaluate(config, workdir)``
  (resumes from the workdir's latest checkpoint).
- ``eval``: restores the latest checkpoint of ``--workdir`` and prints the
  labelled figures of ``coseg_jax.evaluate.evaluate_dataset``; they are also
  written to ``<workdir>/eval_<split>_step<N>.json``.
- ``predict``: co-segments the images of ``--images`` (a folder or a glob)
  with the latest checkpoint; masks, overlays and a contact sheet go to
  ``--out`` (default ``<workdir>/predictions``).
- ``benchmark``: compiles the config's train step and inference on random
  inputs of the configured shapes and prints compile time, step time,
  examples/s and peak memory (``coseg_jax.benchmark``); needs no data and no
  workdir.

Every usage problem is found before anything is built or compiled and
reported as one line ``ERROR: ...`` on stderr with exit code 2 (no
traceback): a config file that does not load, an unknown ``--config.*``
field or a bad value, an unknown method or backbone, an unknown dataset, a
dataset directory that does not exist, a missing ``--workdir``, no
checkpoint for eval/predict, a missing ``--images`` or one that names no
image. This module only parses and checks flags; the work is in
``train``, ``evaluate``, ``predict`` and ``benchmark``.
"""

import json
import os
import re
import sys
from typing import List, Optional

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS
MODES = ("train", "eval", "predict", "benchmark")

config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/baselines.py:mcat,runlocal; "
    "fields can be overridden with --config.<field>=<value>.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_string("images", None, "predict: a folder or a glob of images.")
flags.DEFINE_string("out", None,
                    "predict: output folder (default <workdir>/predictions).")


class UsageError(Exception):
  """A problem with the command line or config, reported as one line."""


def _fail(message: str):
  """Prints ``ERROR: message`` (one line) to stderr and exits with code 2."""
  message = " ".join(str(message).split())
  print(f"ERROR: {message}", file=sys.stderr)
  sys.exit(2)


def _config_path(argv: List[str]) -> Optional[str]:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _last_line(text: str) -> str:
  lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
  return lines[-1] if lines else str(text)


def parse_flags(argv: List[str]) -> List[str]:
  """absl flag parsing with every error turned into one line (exit 2)."""
  path = _config_path(argv)
  if path is not None:
    file_part = path.split(":", 1)[0]
    if not os.path.isfile(file_part):
      _fail(f"--config: no such config file {file_part}")
  try:
    rest = FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    _fail(f"unknown flag: {e}")
  except flags.IllegalFlagValueError as e:
    text = str(e)
    if "Error whilst parsing config file" in text:
      _fail(f"--config {path}: {_last_line(text)}")
    _fail(text.splitlines()[0])
  except (AttributeError, KeyError) as e:
    # ml_collections refuses an override of a field the config does not
    # have with AttributeError(KeyError("'name'[\nDid you mean ...?]")).
    inner = e.args[0] if e.args else e
    text = str(inner.args[0] if getattr(inner, "args", None) else inner)
    text = text.replace("\\n", "\n").replace("\\", "")
    match = re.match(r"\W*(\w+)", text)
    key = match.group(1) if match else text
    hint = re.search(r"Did you mean \W*(\w+)", text)
    bad = [a.split("=", 1)[0] for a in argv
           if a.startswith("--config.") and
           key in a.split("=", 1)[0].split(".")]
    where = bad[0].lstrip("-") if bad else key
    _fail(f"unknown config field {where!r} (the config has no field "
          f"{key!r}{f'; did you mean {hint.group(1)!r}?' if hint else ''}; see "
          f"configs/common.py for the fields)")
  except Exception as e:  # pylint: disable=broad-except
    _fail(f"could not parse the flags: {type(e).__name__}: {_last_line(e)}")
  return rest


def _checkpoint_steps(workdir: str) -> List[int]:
  """Steps of the complete checkpoints in ``<workdir>/checkpoints``."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def validate(config: ml_collections.ConfigDict, *, mode: str,
             workdir: Optional[str], images: Optional[str]) -> None:
  """Checks everything that can be checked without building anything.

  Raises:
    UsageError: with a one-line message naming the field, flag or path.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError("--config is required (e.g. --config "
                     "configs/baselines.py:baseline,runlocal)")
  for section in ("method", "model", "data", "eval", "predict"):
    if section not in config:
      raise UsageError(f"the config has no '{section}' section; build it on "
                       "configs.common.get_base_config()")
  from coseg_jax import backbones  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  try:
    models.get_method(config.method)
  except ValueError as e:
    raise UsageError(f"config.method: {e}") from None
  backbone = config.model.get("backbone")
  if backbone is not None and backbone not in backbones.available_backbones():
    raise UsageError(f"config.model.backbone: unknown backbone {backbone!r}; "
                     f"available: {', '.join(backbones.available_backbones())}")
  if mode != "benchmark" and not workdir:
    raise UsageError(f"--workdir is required for --mode {mode}")
  if mode in ("train", "eval"):
    _validate_data(config)
    strategies = ("pairs", "a", "b", "c", "d")
    if config.eval.strategy not in strategies:
      raise UsageError(f"config.eval.strategy must be one of {strategies}, "
                       f"got {config.eval.strategy!r}")
  if mode in ("train", "eval", "predict"):
    from coseg_jax import postprocess  # pylint: disable=g-import-not-at-top
    method = config.eval.get("postprocess", "threshold")
    if method not in postprocess.METHODS:
      raise UsageError(f"config.eval.postprocess must be one of "
                       f"{postprocess.METHODS}, got {method!r}")
  if mode in ("eval", "predict") and not _checkpoint_steps(workdir):
    raise UsageError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}"
                     f" (train first with --mode train --workdir {workdir})")
  if mode == "predict":
    from coseg_jax import predict  # pylint: disable=g-import-not-at-top
    if not images:
      raise UsageError("--images is required for --mode predict (a folder "
                       "or a glob such as 'photos/*.jpg')")
    try:
      files = predict.list_images(images)
      predict.make_groups(len(files), config.predict.group_strategy)
    except (FileNotFoundError, ValueError) as e:
      raise UsageError(f"--images {images}: {e}") from None


def _validate_data(config) -> None:
  """Dataset name and directories (the synthetic set needs none)."""
  from data_pipelines import registry  # pylint: disable=g-import-not-at-top
  data = config.data
  if data.name not in registry.available_datasets():
    raise UsageError(f"config.data.name: unknown dataset {data.name!r}; "
                     f"known: {', '.join(registry.available_datasets())}")
  if data.name == "synthetic":
    return
  data_dir = os.path.expanduser(str(data.data_dir))
  if data.get("builder_config") is None or isinstance(data.builder_config,
                                                      str):
    # Already built: nothing else is needed.
    try:
      path = registry.dataset_path(data.name, data_dir=data_dir,
                                   builder_config=data.get("builder_config"))
      if (path / "dataset_info.json").exists():
        return
    except Exception:  # pylint: disable=broad-except
      pass  # An unknown builder config is reported by the build itself.
  manual = data.get("manual_dir")
  if not manual:
    raise UsageError(
        f"config.data.manual_dir is not set and dataset {data.name!r} is not "
        f"built in config.data.data_dir={data_dir}; set "
        f"--config.data.manual_dir to the dataset's original layout")
  manual = os.path.expanduser(str(manual))
  if not os.path.isdir(manual):
    raise UsageError(f"config.data.manual_dir={manual} does not exist "
                     f"(dataset {data.name!r})")
  if not os.listdir(manual):
    raise UsageError(f"config.data.manual_dir={manual} is empty "
                     f"(dataset {data.name!r})")


def _restore(config, workdir):
  """(model, variables, step) of the latest checkpoint in ``workdir``."""
  from coseg_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get_method(config.method).build_model(config.model)
  variables, step = checkpoint.load_variables(workdir)
  if not variables.get("batch_stats"):
    variables = {"params": variables["params"]}
  return model, variables, step


def run(config, *, mode, workdir, images=None, out=None):
  """Runs one mode (after ``validate``)."""
  if mode == "train":
    from coseg_jax import models  # pylint: disable=g-import-not-at-top
    from coseg_jax import train  # pylint: disable=g-import-not-at-top
    spec = models.get_method(config.method)
    if spec.train_fn is not None:  # a method with its own schedule
      spec.train_fn(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  elif mode == "eval":
    from coseg_jax import evaluate  # pylint: disable=g-import-not-at-top
    model, variables, step = _restore(config, workdir)
    print(f"checkpoint step {step} from {workdir}")
    import jax  # pylint: disable=g-import-not-at-top
    from coseg_jax import sharding  # pylint: disable=g-import-not-at-top
    # Several devices: shard each evaluation batch over the 'data' axis.
    mesh = (sharding.make_mesh(config.mesh.get("data", -1))
            if jax.device_count() > 1 else None)
    results = evaluate.evaluate_dataset(config=config, model=model,
                                        variables=variables, mesh=mesh)
    path = os.path.join(workdir, f"eval_{results['split']}_step{step}.json")
    with open(path, "w") as f:
      json.dump(dict(results, step=step), f, indent=1)
    print(f"figures written to {path}")
  elif mode == "predict":
    from coseg_jax import predict  # pylint: disable=g-import-not-at-top
    model, variables, step = _restore(config, workdir)
    out = out or os.path.join(workdir, "predictions")
    written = predict.predict_folder(config=config, model=model,
                                     variables=variables, images=images,
                                     out_dir=out)
    n = sum(1 for w in written if os.sep + "masks" + os.sep in w)
    print(f"checkpoint step {step}: {n} masks, {n} overlays and "
          f"contact_sheet.png written to {out}")
  elif mode == "benchmark":
    from coseg_jax import benchmark  # pylint: disable=g-import-not-at-top
    benchmark.print_report(benchmark.run_benchmark(config))


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    validate(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
             images=FLAGS.images)
  except UsageError as e:
    _fail(str(e))
  run(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
      images=FLAGS.images, out=FLAGS.out)


def entry_point():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry_point()
