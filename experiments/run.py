r"""Run one accuracy experiment through the public API and record it.

Trains a config as ``--mode train`` does (``stages.prepare`` runs the
pre-stages, then the config's trainer; the supervised trainer is called with
a learning-curve hook), evaluates it with every evaluator the config names
(as ``--mode eval``), and writes ``<workdir>/experiment.json``: the command,
the machine, the date, the git commit, the wall time of each phase (pre
stages, feature-cache build, training, evaluation), the learning curve
(Avg. J every ``--curve_every`` steps, with the wall time since the start)
and the final figures. Overrides are the command line's ``--config.x=y``.

  python -m experiments.run \
      --config configs/cyclesegnet_pascal_voc_coseg.py:disjoint \
      --workdir /tmp/exp/csn_disjoint --curve_every 200 \
      --config.data.manual_dir=/path/to/pascal_voc_coseg

``experiments/README.md`` lists the experiments of the results page with
their commands; ``python -m experiments.plot_curves`` draws J against
training minutes from several ``experiment.json`` files.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import console
from coseg_jax.runtime import evaluators
from coseg_jax.runtime import figures
from coseg_jax.runtime import machine as machine_lib
from coseg_jax.runtime import stages
from coseg_jax.runtime import trainers
from coseg_jax.runtime.trainers import supervised

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory.")
flags.DEFINE_integer("curve_every", 0, "Evaluate (the 'coseg' evaluator) "
                     "every this many steps for the learning curve; 0: only "
                     "at the end.")
flags.DEFINE_bool("skip_train", False, "Evaluate the latest checkpoint only.")


def _git_commit() -> str:
  try:
    return subprocess.check_output(
        ["git", "rev-parse", "--short", "HEAD"], text=True,
        stderr=subprocess.DEVNULL,
        cwd=os.path.dirname(os.path.abspath(__file__))).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def machine() -> str:
  """One line: CPU count and model / accelerator, for the results page."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"{os.cpu_count()}-core CPU ({machine_lib.cpu_model()})"
  return f"{jax.device_count()} x {dev.device_kind}"


def _scalars(results):
  """The headline numbers of each evaluator (for the curve)."""
  out = {}
  coseg = results.get("coseg")
  if coseg:
    out["avg_J"] = coseg["avg_J"]
    out["avg_P"] = coseg["avg_P"]
  return out


def main(argv):
  del argv
  console.setup(None)
  config, workdir = FLAGS.config, FLAGS.workdir
  if config is None or not workdir:
    raise app.UsageError("--config and --workdir are required")
  os.makedirs(workdir, exist_ok=True)
  record = {"command": " ".join(["python -m experiments.run"] + sys.argv[1:]),
            "machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "commit": _git_commit(), "config": checkpoint.config_to_dict(
                config)}
  start = time.time()
  curve = []
  if not FLAGS.skip_train:
    main_config = stages.prepare(config, workdir)
    record["pre_stage_minutes"] = (time.time() - start) / 60
    trainer_name = main_config.get("trainer", "supervised")
    if trainer_name != "supervised":
      # Per-collection training evaluates inside the trainer.
      record["collection_results"] = trainers.get_trainer(
          trainer_name).train(main_config, workdir)
      record["total_train_minutes"] = (time.time() - start) / 60
      _write(record, workdir)
      return
    model = models.get_method(main_config.method).build_model(
        main_config.model)
    eval_fn = None
    if FLAGS.curve_every:
      with main_config.unlocked():
        main_config.train.eval_every = int(FLAGS.curve_every)

      def eval_fn(variables, step):
        t = time.time()
        res = {"coseg": evaluators.EVALUATORS["coseg"].evaluate(
            config=main_config, model=model, variables=variables)}
        curve.append({"step": step, "minutes": (t - start) / 60,
                      "eval_minutes": (time.time() - t) / 60,
                      **_scalars(res)})
        console.info(f"curve: step {step}, {curve[-1]['minutes']:.1f} min, "
                     f"Avg. J {curve[-1].get('avg_J', float('nan')):.3f}")
        return res

    timings = {}
    state = supervised.train_and_evaluate(main_config, workdir,
                                          eval_fn=eval_fn, timings=timings)
    record["cache_minutes"] = timings.get("feature_cache", 0.0) / 60
    record["train_minutes"] = timings["train"] / 60
    vis = main_config.get("visualise")
    if vis is not None and int(vis.get("num_groups", 0) or 0) > 0:
      figures.write_figures(config=main_config, workdir=workdir,
                            result=state, num_groups=int(vis.num_groups),
                            out_dir=os.path.join(workdir, "figures"))
  record["total_train_minutes"] = (time.time() - start) / 60
  # Final evaluation of the saved checkpoint with every configured
  # evaluator (the curve's evaluation time is in train_minutes).
  t = time.time()
  model = models.get_method(config.method).build_model(config.model)
  variables, step = checkpoint.load_apply_variables(workdir)
  record["final_step"] = step
  record["results"] = evaluators.evaluate(config=config, model=model,
                                          variables=variables)
  record["eval_minutes"] = (time.time() - t) / 60
  record["curve"] = curve
  _write(record, workdir)


def _write(record, workdir):
  path = os.path.join(workdir, "experiment.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=1, default=float)
  console.info(f"experiment record written to {path}")


if __name__ == "__main__":
  app.run(main)
