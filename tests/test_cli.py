"""The command line: every usage error path, and the four modes end to end.

Error paths run ``python -m coseg_jax.main`` in subprocesses (all started at
once, then awaited, to keep the wall time low on a small machine) with
``JAX_LOG_COMPILES=1``: a compiled computation would log "Compiling", so its
absence shows the check happened before anything was built. Each must exit
with code 2 and print exactly one ``ERROR: ...`` line, no traceback.

The end-to-end tests share one 2-step training run of the runlocal config.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import baselines_synthetic
from configs import cyclesegnet_voc2012
from configs import macosnet_tss
from coseg_jax import main
from coseg_jax.runtime import state as state_lib
from data_pipelines import io as data_io

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "baselines_synthetic.py")


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
                        ["unknown argument 'resnet9'", "mcat", "runlocal"]),
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
    "unknown_trainer": ([f"--config={CONFIG}", "--config.trainer=fancy",
                         "--workdir", "{r}/w"],
                        ["config.trainer", "unknown trainer 'fancy'",
                         "supervised"]),
    "unknown_stage": ([f"--config={CONFIG}",
                       "--config.stages=('warmup', 'main')", "--workdir",
                       "{r}/w"],
                      ["config.stages", "unknown stage 'warmup'",
                       "encoder_pretrain"]),
    "unknown_evaluator": ([f"--config={CONFIG}", "--mode=eval",
                           "--config.eval.evaluators=('coseg', 'pck')",
                           "--workdir", "{r}/ckpt"],
                          ["config.eval.evaluators", "unknown ['pck']",
                           "matching"]),
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
    "paper_config_without_weights": (
        [f"--config={REPO / 'configs' / 'cyclesegnet_voc2012.py'}",
         "--workdir", "{r}/w"],
        ["config.init.require_pretrained", "config.init.backbone_weights",
         "resnet34"]),
}


# One case of each kind runs in the fast set (each case is a CLI process that
# imports JAX, a few seconds of CPU); the rest run with the slow tests.
FAST_CASES = ("no_config", "unknown_field", "unknown_section", "bad_value",
              "unknown_method", "manual_dir_missing", "eval_no_checkpoint",
              "predict_missing_folder", "paper_config_without_weights")
MORE_CASES = tuple(sorted(set(CASES) - set(FAST_CASES)))


def _run_cases(tmp_path_factory, names):
  root = _layout(tmp_path_factory.mktemp("cli"))
  procs = {}
  for name in names:
    procs[name] = _start([a.format(r=root) for a in CASES[name][0]],
                         cwd=root)
  results = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    results[name] = (proc.returncode, out, err)
  return root, results


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
  return _run_cases(tmp_path_factory, FAST_CASES)


@pytest.fixture(scope="module")
def more_error_runs(tmp_path_factory):
  return _run_cases(tmp_path_factory, MORE_CASES)


def _check_one_line_error(runs, name):
  root, results = runs
  code, out, err = results[name]
  assert code == 2, (name, code, out, err)
  assert "Traceback" not in err and "Traceback" not in out
  errors = [l for l in err.splitlines() if l.startswith("ERROR:")]
  assert len(errors) == 1, err
  for piece in CASES[name][1]:
    assert piece.format(r=root) in errors[0], (errors[0], piece)
  # Nothing was compiled (JAX_LOG_COMPILES would have logged it).
  assert "Compiling" not in err and "Finished XLA compilation" not in err


@pytest.mark.parametrize("name", FAST_CASES)
def test_error_path_is_one_line_before_compiling(error_runs, name):
  _check_one_line_error(error_runs, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MORE_CASES)
def test_more_error_paths_are_one_line_before_compiling(more_error_runs,
                                                        name):
  _check_one_line_error(more_error_runs, name)


def test_synthetic_needs_no_dataset_directory(tmp_path):
  config = baselines_synthetic.get_config("runlocal")
  config.data.data_dir = str(tmp_path / "nothing_here")
  assert config.data.manual_dir is None
  main.validate(config, mode="train", workdir=str(tmp_path), images=None)
  config.data.name = "icoseg"
  with pytest.raises(main.UsageError, match="manual_dir"):
    main.validate(config, mode="train", workdir=str(tmp_path), images=None)


def test_paper_configs_refuse_a_random_encoder(tmp_path):
  """CycleSegNet's and MaCoSNet's paper configs need their encoders'
  ImageNet weights: without them training stops before anything is built,
  naming config.init.backbone_weights; the weights, a checkpoint to start
  from, a run to resume or the runlocal variants pass the check."""
  work = str(tmp_path / "run")
  for config in (cyclesegnet_voc2012.get_config(),
                 cyclesegnet_voc2012.get_config("mcat"),
                 macosnet_tss.get_config()):
    with pytest.raises(main.UsageError,
                       match=r"^config\.init\.require_pretrained.*"
                             r"config\.init\.backbone_weights"):
      main.validate(config, mode="train", workdir=work, images=None)
    assert "\n" not in state_lib.missing_pretrained(config)
    # Benchmarks time random weights; evaluation restores a checkpoint.
    main.validate(config, mode="benchmark", workdir=None, images=None)
  c = cyclesegnet_voc2012.get_config()
  c.init.backbone_weights = "resnet34.pth"
  assert state_lib.missing_pretrained(c) is None
  c = cyclesegnet_voc2012.get_config()
  c.init.from_checkpoint = "/elsewhere"
  assert state_lib.missing_pretrained(c) is None
  c.init.from_checkpoint_subtrees = ("decoder",)
  assert "backbone_weights" in state_lib.missing_pretrained(c)
  c.init.from_checkpoint_subtrees = ("backbone",)
  assert state_lib.missing_pretrained(c) is None
  c = cyclesegnet_voc2012.get_config()
  c.init.require_pretrained = False
  assert state_lib.missing_pretrained(c) is None
  # MaCoSNet's encoder is the 'encoder' subtree; lite0 brings its weights.
  assert state_lib.missing_pretrained(macosnet_tss.get_config("lite0")) is None
  m = macosnet_tss.get_config()
  m.init.backbone_weights = "resnet101.pth"
  assert state_lib.missing_pretrained(m) is None
  for config in (cyclesegnet_voc2012.get_config("runlocal"),
                 macosnet_tss.get_config("runlocal")):
    assert state_lib.missing_pretrained(config) is None
  # A run with checkpoints resumes from them.
  (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(main.UsageError, match="manual_dir"):
    main.validate(cyclesegnet_voc2012.get_config(), mode="train",
                  workdir=work, images=None)


def test_input_error_finds_the_cause():
  """A bad input file wrapped by another error (TFDS wraps builder errors)
  is found through __cause__ and __context__; anything else is not."""
  bad = data_io.BadInputError("tss: missing file /data/TSS/a/flow1.flo")
  try:
    try:
      raise bad
    except data_io.BadInputError as e:
      raise RuntimeError("Failed to build the dataset") from e
  except RuntimeError as e:
    wrapped = e
  assert main.input_error(wrapped) is bad
  try:
    try:
      raise bad
    except data_io.BadInputError:
      raise KeyError("while handling it")  # pylint: disable=raise-missing-from
  except KeyError as e:
    implicit = e
  assert main.input_error(implicit) is bad
  assert main.input_error(bad) is bad
  assert main.input_error(RuntimeError("no file involved")) is None
  looped = RuntimeError("a")
  looped.__context__ = RuntimeError("b")
  looped.__context__.__context__ = looped  # a cycle ends the search
  assert main.input_error(looped) is None


def _run(args, cwd):
  return subprocess.run([sys.executable, "-m", "coseg_jax.main", *args],
                        cwd=cwd, env=_env(), capture_output=True, text=True,
                        timeout=600)


def _photos(folder, sizes):
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        folder / f"im{i}.png")
  return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """(common arguments, root) of a 2-step training run of the runlocal
  config (trained once for the tests below)."""
  root = tmp_path_factory.mktemp("cli_run")
  common = [f"--config={CONFIG}:mcat,runlocal", "--workdir",
            str(root / "run"), f"--config.data.data_dir={root}/tfds",
            "--config.train.num_steps=2"]
  proc = _run([*common, "--mode=train"], root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (root / "run" / "checkpoints" / "2").is_dir()
  return common, root


@pytest.mark.slow
@pytest.mark.compile_bound
def test_train_eval_predict_benchmark_end_to_end(trained_run, tmp_path):
  """The runlocal config through all four modes (2 training steps)."""
  common, root = trained_run
  sizes = [(40, 50), (33, 27), (64, 48)]
  images = _photos(tmp_path / "photos", sizes)

  def run(*extra):
    proc = _run([*common, *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unreadable" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout

  out = run("--mode=eval")
  for label in ("Avg. (classes)", "pooled J", "image-mean J", "J all-fg",
                "J centre", "probability >= 0.5", "[coseg]"):
    assert label in out, out
  assert (root / "run" / "eval_test_step2.json").exists()
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


@pytest.mark.slow
@pytest.mark.compile_bound
def test_predict_with_a_corrupt_file(trained_run, tmp_path):
  """One corrupt file among the images: skipped with a one-line warning
  naming it (exit 0, the good images' masks written), or with
  on_unreadable='error' one ERROR line naming it and exit code 1."""
  common, _ = trained_run
  images = _photos(tmp_path / "photos", [(40, 50), (33, 27)])
  bad = images / "im9_broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
  proc = _run([*common, "--mode=predict", f"--images={images}",
               f"--out={tmp_path}/pred"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # (JAX_LOG_COMPILES adds its own WARNING log lines: look for ours.)
  warnings = [l for l in proc.stderr.splitlines() if "unreadable" in l]
  assert len(warnings) == 1, proc.stderr
  assert warnings[0].startswith("WARNING: skipped 1 unreadable file(s): ")
  assert str(bad) in warnings[0]
  assert "2 masks" in proc.stdout
  assert sorted(p.name for p in (tmp_path / "pred" / "masks").iterdir()) == [
      "im0.png", "im1.png"]
  proc = _run([*common, "--mode=predict", f"--images={images}",
               f"--out={tmp_path}/pred_error",
               "--config.predict.on_unreadable=error"], tmp_path)
  assert proc.returncode == 1, (proc.stdout, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
  errors = [l for l in proc.stderr.splitlines() if l.startswith("ERROR:")]
  assert len(errors) == 1 and str(bad) in errors[0], proc.stderr
  assert not (tmp_path / "pred_error" / "masks").exists()
