"""Shared machinery of the per-method speed/memory benchmarks (JAX vs PyTorch).

A method benchmark is a :class:`MethodBench`: the method's paper config (from
``configs/``), the paper's image size, batch and group size, the reduced
``small`` / ``tiny`` variants for CPU, and the PyTorch implementation
(``benchmarks/torch_impl``) with its loss. :func:`main` is the command line of
every ``benchmarks/bench_<method>.py``; one invocation measures ONE
(framework, precision, devices) cell and prints one JSON line, so that
``benchmarks/run_all.py`` runs every cell in a fresh process (the GPU peak
memory statistics are per process, JAX pre-allocates GPU memory, and a failed
``torch.compile`` must not take the other cells down).

What is measured, and how (identical for both frameworks where possible):

* JAX: ``coseg_jax.benchmark.run_benchmark`` on the method's config with the
  sizes overridden — the exact jitted train step training runs
  (the trainer's own step, ``coseg_jax.runtime.steps``: forward, loss, backward, optax
  update, donated state) and the jitted inference (``model.apply(train=
  False)`` + sigmoid), on a mesh of 1 device or all local devices
  (data-parallel via ``coseg_jax.sharding``; the global batch is then the
  per-device batch times the device count: weak scaling). Compile time is
  ``lower().compile()``; step times are the median of ``--steps`` calls
  after ``--warmup``, each blocked on with ``block_until_ready``; FLOPs are
  XLA's cost analysis of the compiled programs; peak memory is
  ``memory_stats()['peak_bytes_in_use']`` on GPU/TPU (process-wide peak,
  train step and inference) and XLA's static ``memory_analysis()`` estimate
  on CPU.
* PyTorch: the same architecture (parameter count asserted equal to the
  Flax model's before timing), the same random batch, the paper's optimiser
  (``torch.optim`` with the same weight-decay semantics); eager, and with
  ``torch.compile`` of the forward+loss (the optimiser step stays eager).
  bfloat16 is ``torch.autocast`` (params float32), the counterpart of the
  Flax ``dtype`` field. Timing: on CUDA, ``torch.cuda.Event`` pairs recorded
  around each call after the warm-up (median); on CPU, ``time.perf_counter``
  around each call (the CPU backend is synchronous). Compile time is the
  first call's wall time (``torch.compile`` compiles lazily). Peak memory:
  ``torch.cuda.max_memory_allocated`` (n/a on CPU). On GPU, TF32 is allowed
  for matmuls and convolutions (JAX's default float32 precision uses it
  too) and ``cudnn.benchmark`` is on (XLA autotunes its convolutions).
* Matrix-unit peak: the median time of a large ``jnp.dot`` (N x N x N, 2N^3
  FLOPs) in the precision of the cell; the fraction of peak of a step is
  (XLA FLOPs of the step / step time) / that peak, per device.
* Every cell: min and max of the timed steps beside the median, and the
  process's peak resident memory (``resource.getrusage`` ``ru_maxrss``: the
  whole cell, compilation, train step and inference; ``peak_rss_mib``) with
  its resident memory before the model is built (``rss_start_mib``: the
  framework and the harness, which imports coseg_jax in the PyTorch cells
  too for the config and the random batch). The PyTorch cells take their
  peak before the parameter-count check (a shape-only trace of the Flax
  model).

Sizes: ``paper`` (the paper's resolution and batch), ``cpu224`` (the CPU
recipes' sizes with an EfficientNet-Lite encoder chosen by ``--encoder``:
see each ``bench_<method>.py``), ``small`` and ``tiny`` (reduced, for
smoke runs and tests).

Threads (``--threads N``, CPU): the cell's process is restricted to N CPUs
(``os.sched_setaffinity``) before JAX or torch is imported, and
``torch.set_num_threads(N)``. XLA:CPU has no thread-count flag that its
current runtime honours (``--xla_cpu_multi_thread_eigen=false`` only makes
the Eigen kernels single-threaded); its intra-op pool is sized from the CPUs
the process may run on, so the affinity sets it (the cell reports the
number of ``tf_XLAEigen`` threads it found, and torch's thread count). This
is why ``jax`` and ``torch`` are imported inside the functions of this
module and of the bench scripts: the affinity must be set first.
"""

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np

_MIB = 1024.0 * 1024.0
SIZES = ("paper", "cpu224", "small", "tiny")
FRAMEWORKS = ("jax", "torch", "torch_compile")
# --encoder short names.
ENCODERS = {"lite0": "efficientnet_lite0", "lite2": "efficientnet_lite2"}


@dataclasses.dataclass
class MethodBench:
  """One method's benchmark definition.

  Attributes:
    name: method name (``coseg_jax.models`` registry).
    config: module path of the paper config, e.g.
      ``'configs.cyclesegnet_voc2012'``.
    config_arg: argument for its ``get_config``.
    image_size: the paper's input side.
    batch: the paper's batch (groups per step).
    group_size: K images per group (2 = pairs).
    model_overrides: {size: {field: value}} applied to ``config.model`` for
      the reduced sizes ('small', 'tiny').
    reduced: {size: (image_size, batch)} for 'small' and 'tiny'.
    torch_module: module path under ``benchmarks.torch_impl`` providing
      ``build_model(model_config)``, ``train_loss(model, images, batch)``
      and ``infer(model, images)`` (or None: no torch implementation yet).
    notes: one line for the results table.
    configs: {size: (config module, argument)} for sizes that start from
      another config than ``config`` (cpu224: the CPU recipes).
    configure: {size: function(config)} applied after the overrides (e.g.
      :func:`trained_encoder`).
    group_sizes: {size: Ks} the suite (``run_all``) runs for that size
      (default: ``group_size`` alone).
    size_notes: {size: one line for the results table}.
  """
  name: str
  config: str
  config_arg: Optional[str]
  image_size: int
  batch: int
  group_size: int = 2
  model_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  reduced: Mapping[str, Sequence[int]] = dataclasses.field(
      default_factory=dict)
  torch_module: Optional[str] = None
  notes: str = ""
  configs: Mapping[str, Tuple[str, Optional[str]]] = dataclasses.field(
      default_factory=dict)
  configure: Mapping[str, Callable[[Any], None]] = dataclasses.field(
      default_factory=dict)
  group_sizes: Mapping[str, Sequence[int]] = dataclasses.field(
      default_factory=dict)
  size_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)


def random_init(config) -> None:
  """No pretrained weights: speed does not depend on their values, and no
  weight file is read."""
  config.init.pretrained = ml_collections.ConfigDict()
  config.init.backbone_weights = None
  config.init.require_pretrained = False


def trained_encoder(config) -> None:
  """The encoder trained with the rest (a recipe's frozen encoder undone):
  BatchNorm in training mode (and Lite's drop-connect), no learning-rate
  multiplier freezing it, images in (no feature cache); random weights."""
  random_init(config)
  config.model.backbone_eval_mode = False
  multipliers = dict(config.optimizer.get("lr_multipliers") or {})
  multipliers.pop("backbone", None)
  config.optimizer.lr_multipliers = multipliers
  if "feature_cache" in config.data:
    config.data.feature_cache.enabled = False


# ----------------------------------------------------------------------------
# Configs.

def make_config(bench: MethodBench, *, size: str = "paper",
                dtype: str = "float32", devices: str = "1",
                image_size: Optional[int] = None, batch: Optional[int] = None,
                group_size: Optional[int] = None, steps: int = 10,
                warmup: int = 3, encoder: Optional[str] = None):
  """The method's config with the benchmark's sizes and precision.

  ``devices`` '1' or 'all'; with 'all' the global batch is ``batch`` times the
  local device count (each device keeps the per-device batch). ``encoder``
  (a full backbone name or an :data:`ENCODERS` short name) replaces
  ``config.model.backbone``. A group size other than the sampler's (pairs
  2, triplets 3) switches ``data.sampler`` to 'groups', so that the model
  input (``state.input_shape``) has K images on both frameworks; the
  co-attention trainer's images per step (``coattention.batch_size``)
  follow K.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import state  # pylint: disable=g-import-not-at-top
  if size not in SIZES:
    raise ValueError(f"size must be one of {SIZES}, got {size!r}")
  module, arg = bench.configs.get(size, (bench.config, bench.config_arg))
  config = importlib.import_module(module).get_config(arg)
  side, b = bench.image_size, bench.batch
  if size != "paper":
    side, b = bench.reduced[size]
    for k, v in bench.model_overrides.get(size, {}).items():
      config.model[k] = v
  if encoder:
    config.model.backbone = ENCODERS.get(encoder, encoder)
  if size in bench.configure:
    bench.configure[size](config)
  side = image_size or side
  b = batch or b
  k = int(group_size or bench.group_sizes.get(size, (bench.group_size,))[0])
  n_dev = jax.local_device_count() if devices == "all" else 1
  config.model.dtype = dtype
  config.data.image_size = side
  config.data.group_size = k
  if state.input_shape(config)[1] != k:
    config.data.sampler = "groups"
  if config.get("coattention") is not None:
    config.coattention.batch_size = k
  config.train.global_batch_size = b * n_dev
  config.mesh.data = n_dev
  config.benchmark = dict(steps=steps, warmup=warmup)
  return config


# ----------------------------------------------------------------------------
# Threads and memory of the cell's process.

def restrict_threads(n: int) -> Dict[str, Any]:
  """Runs this process on ``n`` CPUs (0: all it may use); call it before
  JAX or torch is imported (see the module docstring)."""
  allowed = sorted(os.sched_getaffinity(0))
  if n and n < len(allowed):
    os.sched_setaffinity(0, allowed[:n])
  n = len(os.sched_getaffinity(0))
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(n)
  return {"threads": n, "cpus": sorted(os.sched_getaffinity(0))}


def thread_names() -> Dict[str, int]:
  """{thread name: count} of this process (Linux; {} elsewhere)."""
  counts = {}
  try:
    for tid in os.listdir("/proc/self/task"):
      with open(f"/proc/self/task/{tid}/comm") as f:
        name = f.read().strip()
      counts[name] = counts.get(name, 0) + 1
  except OSError:
    return {}
  return counts


def current_rss_mib() -> float:
  """Resident memory now (VmRSS; nan where /proc is missing)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return float(line.split()[1]) / 1024.0
  except OSError:
    pass
  return float("nan")


def peak_rss() -> Dict[str, float]:
  """Peak resident memory of this process and of its finished children
  (torch.compile's compile workers), MiB (``ru_maxrss`` is KiB on Linux)."""
  return {"peak_rss_mib": resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024.0,
          "peak_rss_children_mib": resource.getrusage(
              resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}


# ----------------------------------------------------------------------------
# Device peak.

def matmul_peak(dtype: str = "float32", n: Optional[int] = None,
                repeats: int = 10) -> Dict[str, Any]:
  """Measured matrix-unit throughput of one device: an N^3 ``jnp.dot``.

  Args:
    dtype: 'float32' or 'bfloat16' (inputs and output; default precision).
    n: matrix side (default 8192 on GPU/TPU, 1024 on CPU).

  Returns:
    dict(peak_flops=FLOP/s, n, dtype, device).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  n = n or (1024 if dev.platform == "cpu" else 8192)
  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dt)
  b = jax.random.normal(kb, (n, n), dt)
  f = jax.jit(jnp.dot)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t)
  return {"peak_flops": 2.0 * n ** 3 / statistics.median(times), "n": n,
          "dtype": dtype, "device": dev.device_kind}


# ----------------------------------------------------------------------------
# JAX side.

def measure_jax(config) -> Dict[str, Any]:
  """``coseg_jax.runtime.benchmark.run_benchmark`` of ``config`` + parameter
  count."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import benchmark  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  report = benchmark.run_benchmark(config)
  report["param_count"] = jax_param_count(config)
  # What XLA was told (a speed figure is only as good as these).
  report["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  report["jax_disable_most_optimizations"] = bool(
      jax.config.read("jax_disable_most_optimizations"))
  report["n_devices"] = int(config.mesh.data)
  report["device"] = jax.devices()[0].device_kind
  report["platform"] = jax.devices()[0].platform
  del jnp, models
  return report


def jax_variables(config, seed: int = 0):
  """Initialised Flax variables of ``config``'s model at its input shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get_method(config.method).build_model(config.model)
  k, s = int(config.data.group_size), int(config.data.image_size)
  x = jnp.zeros((1, k, s, s, 3), jnp.float32)
  return model, jax.jit(lambda r, x: model.init(r, x))(
      jax.random.PRNGKey(seed), x)


def jax_param_count(config) -> int:
  """Parameters of ``config``'s model (shape-only: nothing is computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get_method(config.method).build_model(config.model)
  k, s = int(config.data.group_size), int(config.data.image_size)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, k, s, s, 3), jnp.float32)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


# ----------------------------------------------------------------------------
# PyTorch side.

def torch_module(bench: MethodBench):
  if bench.torch_module is None:
    raise NotImplementedError(f"no PyTorch implementation of {bench.name}")
  return importlib.import_module(f"benchmarks.torch_impl.{bench.torch_module}")


def build_torch_model(bench: MethodBench, config):
  """The torch implementation of ``config.model`` (input size passed along
  to implementations whose layer shapes depend on it)."""
  build = torch_module(bench).build_model
  if "image_size" in inspect.signature(build).parameters:
    return build(config.model, image_size=int(config.data.image_size))
  return build(config.model)


def torch_batch(config, device):
  """The JAX benchmark's random batch (same seed) as torch NCHW tensors."""
  import torch  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import benchmark  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import state  # pylint: disable=g-import-not-at-top
  shape = (int(config.train.global_batch_size),) + tuple(
      state.input_shape(config)[1:])
  np_batch = benchmark.fake_batch(shape, int(config.train.seed))
  out = {}
  for k, v in np_batch.items():
    t = torch.from_numpy(np.array(v))
    if v.ndim == 5:  # [B, K, H, W, C] -> [B, K, C, H, W]
      t = t.permute(0, 1, 4, 2, 3).contiguous()
    out[k] = t.to(device)
  return out


def torch_optimizer(params, opt_config):
  """``torch.optim`` matching ``coseg_jax.runtime.optimizer`` semantics."""
  import torch  # pylint: disable=g-import-not-at-top
  name = opt_config.get("name", "adam")
  lr = float(opt_config.get("learning_rate", 1e-3))
  wd = float(opt_config.get("weight_decay", 0.0) or 0.0)
  decoupled = bool(opt_config.get("decoupled_weight_decay", False))
  if name in ("adam", "adamw"):
    betas = (float(opt_config.get("beta1", 0.9)),
             float(opt_config.get("beta2", 0.999)))
    if name == "adamw" or decoupled:
      return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd)
  if name == "sgd":
    return torch.optim.SGD(params, lr=lr, weight_decay=wd,
                           momentum=float(opt_config.get("momentum", 0.9)))
  raise ValueError(f"unknown optimizer {name!r}")


def _time_torch(fn: Callable[[], Any], *, warmup: int, steps: int,
                device) -> Dict[str, float]:
  """First-call, median, min and max wall seconds of ``fn`` (``warmup``
  calls counting the first, then ``steps`` timed ones)."""
  import torch  # pylint: disable=g-import-not-at-top
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  t0 = time.perf_counter()
  fn()
  sync()
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    fn()
  sync()
  times = []
  for _ in range(steps):
    if cuda:
      start, end = (torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True))
      start.record()
      fn()
      end.record()
      end.synchronize()
      times.append(start.elapsed_time(end) / 1e3)
    else:
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
  return {"first_call_s": first, "median_s": statistics.median(times),
          "min_s": min(times), "max_s": max(times)}


def measure_torch(bench: MethodBench, config, *, compile_model: bool,
                  check_params: bool = True) -> Dict[str, Any]:
  """Times the PyTorch implementation on ``config``'s shapes (one device)."""
  import torch  # pylint: disable=g-import-not-at-top
  impl = torch_module(bench)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  if device.type == "cpu":
    # As many threads as the CPUs this process may use (--threads), the
    # size of XLA's pool in the JAX cells.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  model = build_torch_model(bench, config).to(device)
  n_params = sum(p.numel() for p in model.parameters())
  report = {"framework": "torch.compile" if compile_model else "torch eager",
            "param_count": n_params, "device": (
                torch.cuda.get_device_name() if device.type == "cuda"
                else "cpu"), "n_devices": 1,
            "dtype": config.model.get("dtype", "float32"),
            "torch_threads": torch.get_num_threads()}
  batch = torch_batch(config, device)
  images = batch["images"]
  bf16 = config.model.get("dtype", "float32") == "bfloat16"
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch_optimizer(trainable, config.optimizer)

  def forward_loss(x, b):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                        enabled=bf16):
      return impl.train_loss(model, x, b)

  def forward_infer(x):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                        enabled=bf16):
      return impl.infer(model, x)

  if compile_model:
    forward_loss = torch.compile(forward_loss)
    forward_infer = torch.compile(forward_infer)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = forward_loss(images, batch)
    loss.backward()
    opt.step()
    return loss

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  model.train()
  steps = int(config.benchmark["steps"])
  warmup = int(config.benchmark["warmup"])
  if impl.train_loss is None:
    tr = None
    report["train_error"] = (f"no port of the objective: benchmarks/"
                             f"torch_impl/{bench.torch_module}.py")
  else:
    tr = _time_torch(train_step, warmup=warmup, steps=steps, device=device)
  if device.type == "cuda":
    report["peak_memory_mib"] = torch.cuda.max_memory_allocated() / _MIB
    report["peak_memory_source"] = "torch.cuda.max_memory_allocated"
  else:
    report["peak_memory_mib"] = float("nan")
    report["peak_memory_source"] = "n/a on CPU"
  model.eval()
  with torch.inference_mode():
    inf = _time_torch(lambda: forward_infer(images), warmup=warmup,
                      steps=steps, device=device)
  b = int(config.train.global_batch_size)
  phases = (("train", tr), ("infer", inf)) if tr is not None else (
      ("infer", inf),)
  for what, t in phases:
    # torch.compile compiles lazily: its first call is the compile time.
    # Eager's first call is reported too (allocator and kernel warm-up).
    report.update({
        f"{what}_first_call_s": t["first_call_s"],
        f"{what}_step_ms": 1e3 * t["median_s"],
        f"{what}_step_min_ms": 1e3 * t["min_s"],
        f"{what}_step_max_ms": 1e3 * t["max_s"],
        f"{what}_groups_per_s": b / t["median_s"]})
    if compile_model:
      report[f"{what}_compile_s"] = t["first_call_s"]
  report.update({"batch_shape": tuple(images.shape), "timed_steps": steps})
  # The peak before the check: its shape-only trace of the Flax model is
  # not the torch cell's memory.
  report.update(peak_rss())
  if check_params:
    expected = jax_param_count(config)
    if n_params != expected:
      raise AssertionError(f"{bench.name}: torch has {n_params} parameters, "
                           f"the Flax model {expected}")
    report["jax_param_count"] = expected
  return report


# ----------------------------------------------------------------------------
# Command line of bench_<method>.py.

def parse_args(bench: MethodBench, argv=None):
  p = argparse.ArgumentParser(
      description=f"Speed/memory benchmark of {bench.name}: one cell "
                  f"(framework x precision x devices), one JSON line.")
  p.add_argument("--framework", choices=FRAMEWORKS + ("peak", "parity"),
                 default="jax")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 default="float32")
  p.add_argument("--devices", choices=("1", "all"), default="1")
  p.add_argument("--size", choices=SIZES, default="paper",
                 help="paper = the paper's resolution and batch; cpu224 = "
                      "the CPU recipes' sizes (with --encoder); small/tiny "
                      "= reduced CPU variants")
  p.add_argument("--encoder", default=None,
                 help=f"encoder (config.model.backbone): "
                      f"{'/'.join(ENCODERS)} or a backbone name (default: "
                      f"the config's)")
  p.add_argument("--threads", type=int, default=0,
                 help="CPU: run the cell on this many CPUs, torch with as "
                      "many threads (0 = every CPU the process may use)")
  p.add_argument("--small", action="store_const", const="small", dest="size",
                 help="shorthand for --size small")
  p.add_argument("--image_size", type=int, default=None)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--group_size", type=int, default=None)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--extra", default="",
                 help="method-specific mode (see the bench script)")
  p.add_argument("--json", action="store_true",
                 help="print only the JSON line")
  return p.parse_args(argv)


def run_cell(bench: MethodBench, args) -> Dict[str, Any]:
  """Measures one cell described by parsed ``args``."""
  if args.framework == "peak":
    return matmul_peak(args.dtype)
  framework = importlib.import_module(
      "jax" if args.framework == "jax" else "torch")
  config = make_config(bench, size=args.size, dtype=args.dtype,
                       devices=args.devices, image_size=args.image_size,
                       batch=args.batch, group_size=args.group_size,
                       steps=args.steps, warmup=args.warmup,
                       encoder=args.encoder)
  # The harness (configs, the random batch) loads coseg_jax in both
  # frameworks' cells; what the cell adds to this is its own memory.
  importlib.import_module("coseg_jax.runtime.benchmark")
  start_rss = current_rss_mib()
  if args.framework == "jax":
    report = measure_jax(config)
    report["xla_eigen_threads"] = sum(
        n for name, n in thread_names().items()
        if name.startswith("tf_XLAEigen"))
  else:
    if args.devices != "1":
      raise ValueError("the PyTorch implementations run on one device")
    report = measure_torch(bench, config,
                           compile_model=args.framework == "torch_compile")
  for key, value in peak_rss().items():
    report.setdefault(key, value)
  report.update(method=bench.name, size=args.size,
                image_size=int(config.data.image_size),
                group_size=int(config.data.group_size),
                encoder=config.model.get("backbone"),
                rss_start_mib=start_rss,
                framework_version=framework.__version__)
  return report


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  return x


def emit(report: Dict[str, Any]) -> None:
  """Prints the report as the last stdout line, prefixed 'RESULT '."""
  print("RESULT " + json.dumps(_jsonable(report)), flush=True)


def main(bench: MethodBench, argv=None,
         extra: Optional[Callable[[MethodBench, Any], Dict[str, Any]]] = None):
  """Entry point of ``bench_<method>.py``; exits 0 and prints one RESULT line
  (``{"error": ...}`` with exit status 1 when the cell fails)."""
  args = parse_args(bench, argv)
  threads = restrict_threads(args.threads)  # before JAX or torch starts
  try:
    if args.extra:
      if extra is None:
        raise ValueError(f"{bench.name} has no --extra modes")
      report = extra(bench, args)
    else:
      report = run_cell(bench, args)
  except Exception as e:  # pylint: disable=broad-except
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    emit({"method": bench.name, "framework": args.framework,
          "dtype": args.dtype, "devices": args.devices, "error": msg[:300]})
    if not args.json:
      raise
    sys.exit(1)
  report.setdefault("framework", args.framework)
  report.setdefault("devices", args.devices)
  report.update(threads)
  emit(report)


def run_subprocess(module: str, args: Sequence[str], *,
                   env: Optional[Mapping[str, str]] = None,
                   timeout: float = 1800) -> Dict[str, Any]:
  """Runs ``python -m module args --json`` in a fresh process; its RESULT."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  full_env = dict(os.environ)
  full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
  full_env.update(env or {})
  cmd = [sys.executable, "-m", module, *args, "--json"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                          env=full_env, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
  return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
