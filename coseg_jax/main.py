"""The coseg_jax command line: train, evaluate, co-segment images, benchmark.

  python -m coseg_jax.main --config configs/baselines_synthetic.py:mcat \\
      --workdir /tmp/run --mode train|eval|predict|benchmark \\
      [--config.train.num_steps=100 ...] [--images DIR_OR_GLOB] [--out DIR]

Modes:
- ``train``: ``coseg_jax.runtime.stages.run(config, workdir)``: the config's
  stages (pre-training stages, then the main run with ``config.trainer``);
  resumes from the workdir.
- ``eval``: restores the latest checkpoint of ``--workdir`` and runs the
  config's evaluators (``config.eval.evaluators``: co-segmentation P/J,
  matching PCK, decision accuracy); the figures are printed and written to
  ``<workdir>/eval_<split>_step<N>.json``.
- ``predict``: co-segments the images of ``--images`` (a folder or a glob)
  with the latest checkpoint; masks, overlays and a contact sheet go to
  ``--out`` (default ``<workdir>/predictions``). Unreadable files are
  skipped with a warning that lists them (``config.predict.on_unreadable=
  'error'`` stops instead).
- ``benchmark``: compiles the trainer's own train step and the inference on
  random inputs of the configured shapes and prints compile time, step time,
  examples/s and peak memory (``coseg_jax.runtime.benchmark``); needs no
  data and no workdir.

Every usage problem is found before anything is built or compiled and
reported as one line ``ERROR: ...`` on stderr with exit code 2 (no
traceback): a config file that does not load, an unknown ``--config.*``
field or a bad value, an unknown method, backbone, trainer, stage or
evaluator, an unknown dataset, a dataset directory that does not exist, a
missing ``--workdir``, no checkpoint for eval/predict, a missing
``--images`` or one that names no image. Bad input found while running (a
corrupt or missing data file, a weights file that does not fit, unreadable
images with ``on_unreadable='error'``) is one line ``ERROR: ...`` naming the
file, exit code 1.

The console shows what a user reads (config summary, progress, metrics
lines, results, where files went); library INFO logs are off unless
``--verbosity=0`` (absl's flag) asks for them.
"""

import json
import os
import re
import sys
from typing import List, Optional

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from coseg_jax import backbones
from coseg_jax import models
from coseg_jax import postprocess
from coseg_jax.backbones import weights as weights_lib
from coseg_jax.runtime import benchmark
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import console
from coseg_jax.runtime import evaluators
from coseg_jax.runtime import predict
from coseg_jax.runtime import sharding
from coseg_jax.runtime import stages
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import trainers
from data_pipelines import config as data_config
from data_pipelines import io as data_io
from data_pipelines import registry

FLAGS = flags.FLAGS
MODES = ("train", "eval", "predict", "benchmark")

config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. "
    "configs/baselines_synthetic.py:mcat,runlocal; "
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
          f"configs/base.py for the fields)")
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
                     "configs/baselines_synthetic.py:baseline,runlocal)")
  for section in ("method", "model", "data", "eval", "predict"):
    if section not in config:
      raise UsageError(f"the config has no '{section}' section; build it on "
                       "configs.base.get_base_config()")
  try:
    models.get_method(config.method)
    trainers.get_trainer(config.get("trainer", "supervised"))
    stages.stage_names(config)
    evaluators.configured(config)
  except ValueError as e:
    raise UsageError(str(e)) from None
  backbone = config.model.get("backbone")
  if backbone is not None and backbone not in backbones.available_backbones():
    raise UsageError(f"config.model.backbone: unknown backbone {backbone!r}; "
                     f"available: {', '.join(backbones.available_backbones())}")
  if mode != "benchmark" and not workdir:
    raise UsageError(f"--workdir is required for --mode {mode}")
  if mode == "train" and not _checkpoint_steps(workdir):
    try:
      missing = state_lib.missing_pretrained(config)
    except ValueError as e:
      raise UsageError(str(e)) from None
    if missing:
      raise UsageError(missing)
  if mode in ("train", "eval"):
    _validate_data(config.data)
  if mode == "train":
    try:
      state_lib.ema_decay_of(config)
    except ValueError as e:
      raise UsageError(str(e)) from None
    for name in stages.stage_names(config)[:-1]:
      overrides = config[name].get("data")
      if overrides:  # a pre-stage that reads other data
        data = config.data.copy_and_resolve_references()
        with data.unlocked():
          for key, value in overrides.items():
            data[key] = value
        _validate_data(data, field=f"config.{name}.data")
    strategies = ("pairs", "a", "b", "c", "d")
    if config.eval.strategy not in strategies:
      raise UsageError(f"config.eval.strategy must be one of {strategies}, "
                       f"got {config.eval.strategy!r}")
  if mode in ("train", "eval", "predict"):
    method = config.eval.get("postprocess", "threshold")
    if method not in postprocess.METHODS:
      raise UsageError(f"config.eval.postprocess must be one of "
                       f"{postprocess.METHODS}, got {method!r}")
  if mode in ("eval", "predict") and not _checkpoint_steps(workdir):
    raise UsageError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}"
                     f" (train first with --mode train --workdir {workdir})")
  if mode == "predict":
    if not images:
      raise UsageError("--images is required for --mode predict (a folder "
                       "or a glob such as 'photos/*.jpg')")
    on_unreadable = config.predict.get("on_unreadable", "skip")
    if on_unreadable not in predict.ON_UNREADABLE:
      raise UsageError(f"config.predict.on_unreadable must be one of "
                       f"{predict.ON_UNREADABLE}, got {on_unreadable!r}")
    try:
      files = predict.list_images(images)
      predict.make_groups(len(files), config.predict.group_strategy)
    except (FileNotFoundError, ValueError) as e:
      raise UsageError(f"--images {images}: {e}") from None


def _validate_data(data, field: str = "config.data") -> None:
  """Dataset name and directories (the synthetic set needs none)."""
  if data.name not in registry.available_datasets():
    raise UsageError(f"{field}.name: unknown dataset {data.name!r}; "
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
  manual = data_config.resolve_manual_dir(data)
  if not manual:
    raise UsageError(
        f"{field}.manual_dir is not set and dataset {data.name!r} is not "
        f"built in {field}.data_dir={data_dir}; set "
        f"--{field}.manual_dir (or COSEG_DATA_DIR) to the dataset's "
        f"original layout")
  manual = os.path.expanduser(str(manual))
  if not os.path.isdir(manual):
    raise UsageError(f"{field}.manual_dir={manual} does not exist "
                     f"(dataset {data.name!r})")
  if not os.listdir(manual):
    raise UsageError(f"{field}.manual_dir={manual} is empty "
                     f"(dataset {data.name!r})")


def _restore(config, workdir):
  """(model, variables, step) of the latest checkpoint in ``workdir``."""
  model = models.get_method(config.method).build_model(config.model)
  variables, step = checkpoint.load_apply_variables(workdir)
  return model, variables, step


def config_summary(config, *, mode: str, workdir: Optional[str]) -> str:
  """One line a user reads first: what runs, on what, where."""
  size = config.data.get("image_size")
  parts = [f"{mode}: {config.method}", f"backbone {config.model.get('backbone')}",
           f"data {config.data.name}"]
  if mode == "train":
    names = stages.stage_names(config)
    if len(names) > 1:
      parts.append("stages " + " -> ".join(names))
    parts.append(f"{int(config.train.num_steps)} steps of "
                 f"{int(config.train.global_batch_size)} groups at {size} px")
  if workdir:
    parts.append(f"workdir {workdir}")
  return ", ".join(parts)


def run(config, *, mode, workdir, images=None, out=None):
  """Runs one mode (after ``validate``)."""
  console.info(config_summary(config, mode=mode, workdir=workdir))
  if mode == "train":
    stages.run(config, workdir)
    console.info(f"checkpoints and TensorBoard logs in {workdir}")
  elif mode == "eval":
    model, variables, step = _restore(config, workdir)
    # Several devices: shard each evaluation batch over the 'data' axis.
    mesh = (sharding.make_mesh(config.mesh.get("data", -1))
            if jax.device_count() > 1 else None)
    results = evaluators.evaluate(config=config, model=model,
                                  variables=variables, mesh=mesh)
    path = os.path.join(workdir, f"eval_{config.eval.split}_step{step}.json")
    with open(path, "w") as f:
      json.dump(dict(results, step=step), f, indent=1)
    console.info(f"checkpoint step {step}; figures written to {path}")
  elif mode == "predict":
    model, variables, step = _restore(config, workdir)
    out = out or os.path.join(workdir, "predictions")
    written, skipped = predict.predict_folder(
        config=config, model=model, variables=variables, images=images,
        out_dir=out)
    if skipped:
      console.warning(f"skipped {len(skipped)} unreadable file(s): "
                      + "; ".join(skipped))
    n = sum(1 for w in written if os.sep + "masks" + os.sep in w)
    console.info(f"checkpoint step {step}: {n} masks, {n} overlays and "
                 f"contact_sheet.png written to {out}")
  elif mode == "benchmark":
    console.info(benchmark.format_report(benchmark.run_benchmark(config)))


# Errors about the input data or files found while running: reported as one
# line naming the file (their messages do), exit code 1.
INPUT_ERRORS = (data_io.BadInputError, weights_lib.WeightsError,
                predict.UnreadableImagesError, FileNotFoundError)


def input_error(error: BaseException) -> Optional[BaseException]:
  """The input error behind ``error`` (TFDS wraps builder errors), or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, INPUT_ERRORS):
      return error
    error = error.__cause__ or error.__context__
  return None


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  console.setup(FLAGS.verbosity if FLAGS["verbosity"].present else None)
  if isinstance(FLAGS.config, ml_collections.ConfigDict):
    sharding.configure(FLAGS.config)  # before JAX starts its backends
  try:
    validate(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
             images=FLAGS.images)
  except UsageError as e:
    _fail(str(e))
  try:
    run(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
        images=FLAGS.images, out=FLAGS.out)
  except Exception as e:  # pylint: disable=broad-except
    cause = input_error(e)
    if cause is None:
      raise
    message = " ".join(str(cause).split())
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)


def entry_point():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry_point()
