"""The command line: every usage error path, and the four modes end to end.

Error paths run ``python -m coseg_jax.main`` in subprocesses (all started at
once, then awaited, to keep the wall time low on a small machine) with
``JAX_LOG_COMPILES=1``: a compiled computation would log "Compiling", so its
absence shows the check happened before anything was built. Each must exit
with code 2 and print exactly one ``ERROR: ...`` line, no traceback.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "baselines.py")


def _env():
  env = dict(os.environ)
  env["JAX_LOG_COMPILES"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _start(args, cwd):
  return subprocess.Popen([sys.executable, "-m", "coseg_jax.main", *args],
                          cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _layout(root: pathlib.Path):
  """Workdirs with/without a checkpoint and image folders."""
  (root / "ckpt" / "checkpoints" / "3").mkdir(parents=True)
  (root / "empty_run").mkdir()
  (root / "no_images").mkdir()
  (root / "no_images" / "readme.txt").write_text("x")
  (root / "one").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "one" / "a.png")
  (root / "manual_empty").mkdir()
  return root


# name -> (arguments, substrings the one-line error must contain)
CASES = {
    "no_config": (["--mode", "train", "--workdir", "{r}/w"],
                  ["--config is required"]),
    "missing_config_file": (["--config", "{r}/nope.py"],
                            ["no such config file", "nope.py"]),
    "unknown_variant": (["--config", CONFIG + ":resnet9"],
                        ["unknown config variant 'resnet9'"]),
    "unknown_field": ([f"--config={CONFIG}", "--config.train.num_stepz=3"],
                      ["unknown config field 'config.train.num_stepz'"]),
    "unknown_section": ([f"--config={CONFIG}", "--config.trian.seed=3"],
                        ["unknown config field 'config.trian.seed'",
                         "did you mean 'train'?"]),
    "bad_value": ([f"--config={CONFIG}", "--config.train.num_steps=many"],
                  ["config.train.num_steps", "many"]),
    "unknown_flag": ([f"--config={CONFIG}", "--modes=train"],
                     ["unknown flag", "modes"]),
    "unknown_mode": ([f"--config={CONFIG}", "--mode=fit"],
                     ["--mode", "fit"]),
    "unknown_method": ([f"--config={CONFIG}", "--config.method=cyclesegnet9",
                        "--workdir", "{r}/w"],
                       ["unknown method 'cyclesegnet9'", "baseline"]),
    "unknown_backbone": ([f"--config={CONFIG}", "--config.model.backbone=r9",
                          "--workdir", "{r}/w"],
                         ["config.model.backbone", "'r9'", "tiny"]),
    "unknown_dataset": ([f"--config={CONFIG}", "--config.data.name=coco",
                         "--workdir", "{r}/w"],
                        ["config.data.name", "'coco'", "synthetic"]),
    "manual_dir_unset": ([f"--config={CONFIG}", "--config.data.name=icoseg",
                          "--config.data.data_dir={r}/tfds", "--workdir",
                          "{r}/w"],
                         ["config.data.manual_dir is not set", "icoseg",
                          "{r}/tfds"]),
    "manual_dir_missing": ([f"--config={CONFIG}", "--config.data.name=msrc",
                            "--config.data.data_dir={r}/tfds",
                            "--config.data.manual_dir={r}/MSRC", "--workdir",
                            "{r}/w"],
                           ["config.data.manual_dir={r}/MSRC does not exist"]),
    "manual_dir_empty": ([f"--config={CONFIG}", "--config.data.name=msrc",
                          "--config.data.data_dir={r}/tfds",
                          "--config.data.manual_dir={r}/manual_empty",
                          "--mode=eval", "--workdir", "{r}/ckpt"],
                         ["manual_dir={r}/manual_empty is empty"]),
    "unknown_postprocess": ([f"--config={CONFIG}", "--mode=eval",
                             "--config.eval.postprocess=median",
                             "--workdir", "{r}/ckpt"],
                            ["config.eval.postprocess", "'median'",
                             "grabcut"]),
    "no_workdir": ([f"--config={CONFIG}", "--mode=train"],
                   ["--workdir is required"]),
    "eval_no_checkpoint": ([f"--config={CONFIG}", "--mode=eval", "--workdir",
                            "{r}/empty_run"],
                           ["no checkpoint in {r}/empty_run/checkpoints"]),
    "predict_no_checkpoint": ([f"--config={CONFIG}", "--mode=predict",
                               "--workdir", "{r}/empty_run", "--images",
                               "{r}/one"],
                              ["no checkpoint"]),
    "predict_no_images_flag": ([f"--config={CONFIG}", "--mode=predict",
                                "--workdir", "{r}/ckpt"],
                               ["--images is required"]),
    "predict_empty_folder": ([f"--config={CONFIG}", "--mode=predict",
                              "--workdir", "{r}/ckpt", "--images",
                              "{r}/no_images"],
                             ["no image files", "{r}/no_images"]),
    "predict_glob_no_match": ([f"--config={CONFIG}", "--mode=predict",
                               "--workdir", "{r}/ckpt", "--images",
                               "{r}/one/*.jpg"],
                              ["no files match", "*.jpg"]),
    "predict_missing_folder": ([f"--config={CONFIG}", "--mode=predict",
                                "--workdir", "{r}/ckpt", "--images",
                                "{r}/nowhere"],
                               ["no such folder or file", "{r}/nowhere"]),
    "predict_one_image": ([f"--config={CONFIG}", "--mode=predict",
                           "--workdir", "{r}/ckpt", "--images", "{r}/one"],
                          ["at least 2 images"]),
    "stray_argument": ([f"--config={CONFIG}", "--workdir", "{r}/w", "extra"],
                       ["unexpected arguments: extra"]),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
  root = _layout(tmp_path_factory.mktemp("cli"))
  procs = {}
  for name, (args, _) in CASES.items():
    procs[name] = _start([a.format(r=root) for a in args], cwd=root)
  results = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    results[name] = (proc.returncode, out, err)
  return root, results


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_path_is_one_line_before_compiling(error_runs, name):
  root, results = error_runs
  code, out, err = results[name]
  assert code == 2, (name, code, out, err)
  assert "Traceback" not in err and "Traceback" not in out
  errors = [l for l in err.splitlines() if l.startswith("ERROR:")]
  assert len(errors) == 1, err
  for piece in CASES[name][1]:
    assert piece.format(r=root) in errors[0], (errors[0], piece)
  # Nothing was compiled (JAX_LOG_COMPILES would have logged it).
  assert "Compiling" not in err and "Finished XLA compilation" not in err


def test_synthetic_needs_no_dataset_directory(tmp_path):
  from coseg_jax import main  # pylint: disable=g-import-not-at-top
  from configs import baselines  # pylint: disable=g-import-not-at-top
  config = baselines.get_config("runlocal")
  config.data.data_dir = str(tmp_path / "nothing_here")
  assert config.data.manual_dir is None
  main.validate(config, mode="train", workdir=str(tmp_path), images=None)
  config.data.name = "icoseg"
  with pytest.raises(main.UsageError, match="manual_dir"):
    main.validate(config, mode="train", workdir=str(tmp_path), images=None)


@pytest.mark.slow
@pytest.mark.compile_bound
def test_train_eval_predict_benchmark_end_to_end(tmp_path):
  """The runlocal config through all four modes (2 training steps)."""
  images = tmp_path / "photos"
  images.mkdir()
  rng = np.random.default_rng(0)
  sizes = [(40, 50), (33, 27), (64, 48)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        images / f"im{i}.png")
  common = [f"--config={CONFIG}:mcat,runlocal", "--workdir",
            str(tmp_path / "run"), f"--config.data.data_dir={tmp_path}/tfds",
            "--config.train.num_steps=2"]

  def run(*extra):
    proc = subprocess.run([sys.executable, "-m", "coseg_jax.main", *common,
                           *extra], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  run("--mode=train")
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
  out = run("--mode=eval")
  for label in ("avg_J_over_classes", "pooled_J", "mean_J_per_image",
                "mean_P_per_image", "probability >= 0.5"):
    assert label in out
  assert (tmp_path / "run" / "eval_test_step2.json").exists()
  out = run("--mode=predict", f"--images={images}",
            f"--out={tmp_path}/pred")
  assert "3 masks" in out
  for i, (h, w) in enumerate(sizes):
    mask = np.asarray(Image.open(tmp_path / "pred" / "masks" / f"im{i}.png"))
    assert mask.shape == (h, w)
  assert (tmp_path / "pred" / "contact_sheet.png").exists()
  out = run("--mode=benchmark", "--config.benchmark.steps=1",
            "--config.benchmark.warmup=0")
  for label in ("train step compile time", "train step time",
                "train examples/s", "inference compile time",
                "inference step time", "peak memory"):
    assert label in out, out
