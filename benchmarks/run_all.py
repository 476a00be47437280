r"""The whole speed/memory suite, JAX vs PyTorch, in one command.

Runs every cell (method x encoder/group-size variant x precision x {JAX 1
device, JAX all local devices, PyTorch eager, torch.compile}) of
``benchmarks/bench_<method>.py`` in its own process (see
``benchmarks/common.py`` for what each cell measures and how), the measured
matrix-unit peak per precision, and the extras: CycleSegNet group scaling
(K = 2..16), the co-attention per-collection time for 100 images, and the
grain input pipeline against the training step's consumption rate. Writes a
Markdown report (``--out``), the raw cells as JSON beside it, a PNG of the
speed ratios (``--plot``), and replaces its own section of
``docs/results.md`` (``--results_md``; between markers naming the tag,
default the size, so a rerun replaces rather than appends).

CPU at the recipes' sizes (``cpu224``; run on an otherwise idle machine).
Every method with the EfficientNet-Lite0 and Lite2 encoders in float32,
three frameworks per cell, both frameworks on the same CPUs
(``--threads 0``: all of them; N restricts every cell to N CPUs)::

  python -m benchmarks.run_all --size cpu224 --dtypes float32 \
      --frameworks jax,torch,torch_compile --extras none --steps 10 \
      --warmup 3 --threads 0 --out benchmarks/results/suite_cpu224.md \
      --device_note "idle machine"

37 processes: the matmul peak, then per encoder (lite0, lite2) x framework
(jax, torch, torch_compile): CycleSegNet pairs and groups of K = 5 (N = 7;
12 cells), DCC pairs (6), CoSegNet triplets (6), MaCoSNet pairs at 240 px
(6; PyTorch training n/a: no port of the objective) and the co-attention
generator + extractor on one group of 16 images (6). The report has one
table per method (rows: encoder x train step / inference; columns: the three
frameworks' median [min-max] step time, eager/ours and compile/ours, the
targets met or missed, compile times, peak RSS), ``--out`` with ``.png`` for
the plot, and replaces the ``cpu224`` section of docs/results.md. One cell
alone, e.g. to rerun it::

  python -m benchmarks.bench_cyclesegnet --size cpu224 --encoder lite2 \
      --group_size 5 --framework torch_compile --threads 0

Part of the suite, to fill missing cells: ``--methods``, ``--encoders``,
``--frameworks`` and ``--group_sizes`` select cells, and ``--render_json``
merges the runs' JSON files into one report (a later run's cell replaces an
earlier one's), e.g. only CycleSegNet's K = 5 torch.compile cells::

  python -m benchmarks.run_all --size cpu224 --methods cyclesegnet \
      --encoders lite2 --group_sizes 5 --frameworks torch_compile \
      --extras none --timeout 2400 --out /tmp/suite_k5.md --results_md ''
  python -m benchmarks.run_all --size cpu224 --render_json \
      benchmarks/results/suite_cpu224.json,/tmp/suite_k5.json \
      --out benchmarks/results/suite_cpu224.md

Where a slow cell spends its time (per-op profile, top ops), in coseg_jax
(``jax.profiler``) and in the PyTorch port (``torch.profiler``, eager or
torch.compile), to compare the ops' shares::

  python -m benchmarks.profile_step --method cyclesegnet --size cpu224 \
      --encoder lite2 --phase train --out /tmp/profile_csn_lite2
  python -m benchmarks.profile_step --method cyclesegnet --size cpu224 \
      --encoder lite2 --phase train --framework torch \
      --out /tmp/profile_csn_lite2

GPU (the paper's sizes, both precisions, 1 and all devices)::

  python -m benchmarks.run_all --size paper --out benchmarks/results/suite_gpu.md

CPU (reduced sizes; runs anywhere, figures are not speed claims)::

  python -m benchmarks.run_all --size small --fake_cpu_devices 2 \
      --out /tmp/coseg_suite_cpu.md

Tiny smoke run (the test)::

  python -m benchmarks.run_all --size tiny --methods cyclesegnet \
      --dtypes float32 --frameworks jax,torch --extras none --steps 1 \
      --out /tmp/suite.md --results_md ''
"""

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from coseg_jax.runtime import machine as machine_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("cyclesegnet", "cosegnet", "dcc", "coattention", "macosnet")
EXTRAS = ("group_scaling", "collection", "loader")
FRAMEWORK_NAMES = {"jax": "coseg_jax", "torch": "PyTorch eager",
                   "torch_compile": "torch.compile"}
# (row key, phase, bound, label): the speed targets, PyTorch time / ours.
TARGETS = (("train_vs_eager", "train", 1.5, "train >= 1.5x PyTorch eager"),
           ("train_vs_compile", "train", 1.0, "train >= 1.0x torch.compile"),
           ("infer_vs_eager", "infer", 2.0, "inference >= 2x PyTorch eager"))


def _fmt(x, spec=".1f", none="n/a"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return none
  return format(x, spec)


def _ratio(a, b):
  """a / b, or None."""
  if a is None or b is None or not b:
    return None
  return a / b


def _cell(results, method, dtype, framework, devices="1", variant=""):
  for r in results:
    if (r.get("_method") == method and r.get("_dtype") == dtype and
        r.get("_framework") == framework and r.get("_devices") == devices
        and r.get("_variant", "") == variant):
      return r
  return None


def bench_of(method: str) -> common.MethodBench:
  """``benchmarks/bench_<method>.py``'s definition (imports no framework)."""
  return importlib.import_module(f"benchmarks.bench_{method}").BENCH


def variants(method: str, args) -> List[Tuple[str, Optional[str],
                                              Optional[int]]]:
  """[(label, encoder, group size)] measured for ``method``: every
  ``--encoders`` entry (none: the config's) x the bench's group sizes for
  the size (none: its default), of which ``--group_sizes`` (when given)
  keeps only those listed. A bench that measures one K (or none) is
  unaffected: the option selects among a bench's K variants, it does not
  drop methods. Labels name K whenever the bench measures several, so a
  partial run's cells merge with a full run's."""
  ks = list(bench_of(method).group_sizes.get(args.size, ())) or [None]
  keep = [k for k in ks
          if len(ks) == 1 or not args.group_sizes or k in args.group_sizes]
  out = []
  for encoder in args.encoders or [None]:
    for k in keep:
      parts = [encoder] if encoder else []
      if k is not None and len(ks) > 1:
        parts.append(f"K={k}")
      out.append((" ".join(parts), encoder, k))
  return out


def local_device_count() -> int:
  """JAX's local device count, asked in a fresh process (this one never
  initialises a backend, so the cells' processes own the devices)."""
  p = subprocess.run([sys.executable, "-c", "import jax; print("
                      "jax.local_device_count())"], capture_output=True,
                     text=True, check=False)
  try:
    return int(p.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return 1


def threading_is_main() -> bool:
  return threading.current_thread() is threading.main_thread()


def run_cells(args, results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Runs every requested cell in a subprocess, appending to ``results``."""
  if args.all_devices and not args.fake_cpu_devices and (
      local_device_count() < 2):
    print("one local device: the all-devices cells would repeat the "
          "1-device ones; skipped", flush=True)
    args.all_devices = False
  base = ["--size", args.size, "--steps", str(args.steps), "--warmup",
          str(args.warmup), "--threads", str(args.threads)]
  fake_env = ({"XLA_FLAGS": f"--xla_force_host_platform_device_count="
                            f"{args.fake_cpu_devices}"}
              if args.fake_cpu_devices else None)
  for dtype in args.dtypes:
    r = common.run_subprocess("benchmarks.bench_cyclesegnet",
                              ["--framework", "peak", "--dtype", dtype,
                               "--threads", str(args.threads)],
                              timeout=args.timeout)
    r.update(_method="peak", _dtype=dtype, _framework="peak", _devices="1")
    results.append(r)
    _log(r)
  for method in args.methods:
    module = f"benchmarks.bench_{method}"
    for label, encoder, k in variants(method, args):
      extra = (["--encoder", encoder] if encoder else []) + (
          ["--group_size", str(k)] if k else [])
      for dtype in args.dtypes:
        for fw in args.frameworks:
          devices_list = ["1"]
          if fw == "jax" and args.all_devices:
            devices_list.append("all")
          for devices in devices_list:
            r = common.run_subprocess(
                module, base + extra + ["--framework", fw, "--dtype", dtype,
                                        "--devices", devices],
                env=fake_env if devices == "all" else None,
                timeout=args.timeout)
            r.update(_method=method, _dtype=dtype, _framework=fw,
                     _devices=devices, _variant=label)
            results.append(r)
            _log(r)
  extras = [e for e in args.extras if e != "none"]
  # The method-specific extras: (extra, the method whose bench runs it).
  for extra, method in (("group_scaling", "cyclesegnet"),
                        ("collection", "coattention")):
    if extra not in extras or method not in args.methods:
      continue
    for dtype in args.dtypes:
      r = common.run_subprocess(
          f"benchmarks.bench_{method}",
          base + ["--extra", extra, "--dtype", dtype],
          timeout=args.timeout)
      r.update(_method=method, _dtype=dtype, _framework=extra, _devices="1")
      results.append(r)
      _log(r)
  if "loader" in extras:
    r = loader_throughput(args)
    r.update(_method="loader", _dtype="-", _framework="loader", _devices="1")
    results.append(r)
    _log(r)
  return results


def loader_throughput(args) -> Dict[str, Any]:
  """grain pairs/s with all CPUs as workers (benchmarks/loader_throughput.py)."""
  side = 512 if args.size == "paper" else 64
  workers = os.cpu_count() or 1
  cmd = [sys.executable, "-m", "benchmarks.loader_throughput", "--dataset",
         "synthetic", "--image_size", str(side), "--workers", str(workers),
         "--batch_size", "4", "--num_batches", str(args.loader_batches)]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env,
                       timeout=args.timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": "timeout"}
  for line in p.stdout.splitlines():
    parts = [s.strip() for s in line.strip().strip("|").split("|")]
    if len(parts) == 2 and parts[0] == str(workers):
      return {"pairs_per_s": float(parts[1]), "workers": workers,
              "image_size": side, "command": " ".join(cmd[1:])}
  return {"error": f"exit {p.returncode}: "
                   f"{(p.stderr or p.stdout).strip().splitlines()[-1:]}"}


_PROGRESS = {"path": None, "results": None}


def _log(r):
  if _PROGRESS["path"] and _PROGRESS["results"] is not None:
    with open(_PROGRESS["path"], "w") as f:  # survives a crash or a kill
      json.dump(common._jsonable(_PROGRESS["results"]), f, indent=1)  # pylint: disable=protected-access
  keys = ("_method", "_variant", "_dtype", "_framework", "_devices",
          "train_step_ms", "infer_step_ms", "peak_rss_mib", "peak_flops",
          "error")
  print(" ".join(f"{k.strip('_')}={r[k]}" for k in keys if k in r),
        flush=True)


def summarise(results, args) -> Dict[str, Any]:
  """Per-method rows (one per variant and precision) with the ratios the
  report and the plot show."""
  peaks = {r["_dtype"]: r.get("peak_flops") for r in results
           if r["_method"] == "peak"}
  rows = []
  for method in args.methods:
    for label, _, _ in variants(method, args):
      for dtype in args.dtypes:
        cells = {}
        for fw in args.frameworks:
          for dev in ("1", "all"):
            c = _cell(results, method, dtype, fw, dev, label)
            if c is not None:
              cells[(fw, dev)] = c
        jax1 = cells.get(("jax", "1"), {})
        eager = cells.get(("torch", "1"), {})
        comp = cells.get(("torch_compile", "1"), {})
        row = {"method": method, "variant": label, "dtype": dtype,
               "cells": cells}
        for what in ("train", "infer"):
          j = jax1.get(f"{what}_step_ms")
          row[f"{what}_vs_eager"] = _ratio(eager.get(f"{what}_step_ms"), j)
          row[f"{what}_vs_compile"] = _ratio(comp.get(f"{what}_step_ms"), j)
        peak = peaks.get(dtype)
        for dev in ("1", "all"):
          c = cells.get(("jax", dev), {})
          ms, flops = c.get("train_step_ms"), c.get("train_flops")
          if ms and flops and peak:
            row[f"train_peak_fraction_{dev}"] = flops / (ms / 1e3) / peak
        rows.append(row)
  return {"rows": rows, "peaks": peaks}


def _label(r):
  """Precision, with the variant when there is one."""
  return f"{r['dtype']} {r['variant']}".strip()


def _variant_label(r, dtypes):
  """The variant, with the precision when the run has several."""
  if len(dtypes) > 1 or not r["variant"]:
    return _label(r)
  return r["variant"]


def _err(c):
  return f"n/a ({c['error']})" if c and c.get("error") else None


def machine() -> str:
  """CPU model, architecture, CPU count and host name of this machine."""
  return (f"{machine_lib.cpu_model()} ({platform.machine()}), "
          f"{os.cpu_count()} CPUs, host "
          f"{platform.node() or '?'}")


def _short(text, n=70):
  text = str(text)
  return text if len(text) <= n else text[:n - 3] + "..."


def _step_ms(c, what):
  """'median [min-max]' ms of a cell's step, or why there is none."""
  if c is None:
    return "not run"
  if c.get("error"):
    return f"n/a ({_short(c['error'])})"
  if c.get(f"{what}_error"):
    return f"n/a ({_short(c[f'{what}_error'])})"
  v = c.get(f"{what}_step_ms")
  if v is None:
    return "n/a"
  return (f"{_fmt(v)} [{_fmt(c.get(f'{what}_step_min_ms'))}-"
          f"{_fmt(c.get(f'{what}_step_max_ms'))}]")


def _rss(c):
  """'peak (+growth over the imports)' MiB of a cell, or n/a."""
  if not c or c.get("peak_rss_mib") is None:
    return "n/a"
  start = c.get("rss_start_mib")
  growth = (f" (+{c['peak_rss_mib'] - start:.0f})" if start is not None
            else "")
  return f"{c['peak_rss_mib']:.0f}{growth}"


def _verdict(value, bound):
  if value is None:
    return "n/a"
  return "met" if value >= bound else "missed"


def render_variants(results, summary, args, command: str) -> str:
  """The Markdown section of the variants layout (cpu224): one table per
  method, rows encoder x {train step, inference}."""
  meta = next((r for r in results if r.get("_method") == "meta"), {})
  cells = [r for r in results if r.get("_method") not in ("peak", "meta")
           and not r.get("error")]
  jax_cells = [c for c in cells if c["_framework"] == "jax"]
  torch_cells = [c for c in cells if c["_framework"].startswith("torch")]

  def values(cs, key):
    return ", ".join(str(v) for v in sorted({c.get(key) for c in cs} - {None},
                                            key=str)) or "?"
  title = args.title or f"CPU, {args.size} sizes"
  lines = [f"## Speed/memory suite vs PyTorch ({title})", "",
           f"Command: `{command}`", "",
           f"Machine: {meta.get('machine') or machine()}. Threads per cell, "
           f"both frameworks: {values(cells, 'threads')} (the cell's "
           f"process runs on those CPUs; XLA intra-op pool: "
           f"{values(jax_cells, 'xla_eigen_threads')} threads found; "
           f"torch.get_num_threads(): {values(torch_cells, 'torch_threads')})."
           f" jax {values(jax_cells, 'framework_version')}, torch "
           f"{values(torch_cells, 'framework_version')}. Date: {args.date}. "
           f"{args.device_note}".rstrip(), "",
           f"Each cell in a fresh process: median [min-max] of {args.steps} "
           f"timed steps after {args.warmup} warm-up calls, ms. Ratios are "
           f"PyTorch time / coseg_jax time (> 1: coseg_jax faster). Targets: "
           f"train step >= 1.5x PyTorch eager and >= 1.0x torch.compile; "
           f"inference >= 2x PyTorch eager. coseg_jax times the trainer's own "
           f"jitted train step and the evaluators' inference; PyTorch the "
           f"port with the same parameter count (asserted per cell), "
           f"torch.compile (inductor) wrapping forward + loss with an eager "
           f"optimiser step. Compile: coseg_jax lower + compile; "
           f"torch.compile its first call (compiles lazily). Peak RSS: "
           f"ru_maxrss of the cell's process (compile, train step and "
           f"inference together), and in brackets its growth over the "
           f"resident memory before the model was built (the framework and "
           f"the harness, which loads coseg_jax in the PyTorch cells too).",
           ""]
  if any(c.get("jax_disable_most_optimizations") for c in jax_cells):
    lines += ["**JAX_DISABLE_MOST_OPTIMIZATIONS was set: the coseg_jax cells "
              "ran without XLA's optimisation passes (not a speed figure).**",
              ""]
  flags = {c.get("xla_flags") for c in jax_cells} - {None, ""}
  if flags:
    lines += [f"XLA_FLAGS of the coseg_jax cells: "
              f"{', '.join(f'`{f}`' for f in sorted(flags))}.", ""]
  if getattr(args, "stopped", False):
    lines += [f"**Stopped early (time limit): {len(cells)} cells measured; "
              f"the cells not listed were not run.**", ""]
  tally = {key: [0, 0] for key, _, _, _ in TARGETS}
  for method in args.methods:
    bench = bench_of(method)
    mrows = [r for r in summary["rows"] if r["method"] == method]
    lines += [f"### {method}", "",
              bench.size_notes.get(args.size, bench.notes) + "."]
    shapes, params = [], []
    for r in mrows:
      c = next((c for c in r["cells"].values() if not c.get("error")), None)
      if c:
        label = _variant_label(r, args.dtypes)
        n = c.get("param_count")
        shapes.append(f"{label}: {tuple(c.get('batch_shape', ()))}")
        params.append(f"{label}: {n:,}" if isinstance(n, int) else
                      f"{label}: ?")
    if shapes:
      lines += ["", "Batch " + "; ".join(shapes) + ". Parameters " +
                "; ".join(params) + " (PyTorch count equal: asserted)."]
    lines += ["", "| encoder | step | coseg_jax ms | PyTorch eager ms | "
              "torch.compile ms | eager/ours | compile/ours | targets | "
              "compile s (ours / torch.compile) | peak RSS MiB, + over the "
              "imports (ours / eager / compile) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in mrows:
      get = lambda fw, r=r: r["cells"].get((fw, "1"))
      rss = " / ".join(_rss(get(fw))
                       for fw in ("jax", "torch", "torch_compile"))
      for what, name in (("train", "train step"), ("infer", "inference")):
        marks = []
        for key, phase, bound, _ in TARGETS:
          if phase == what:
            v = r.get(key)
            marks.append(f"{'eager' if 'eager' in key else 'compile'} "
                         f"{_verdict(v, bound)}")
            if v is not None:
              tally[key][0] += v >= bound
              tally[key][1] += 1
        compile_s = " / ".join(
            _fmt((get(fw) or {}).get(f"{what}_compile_s"), ".1f")
            for fw in ("jax", "torch_compile"))
        lines.append(
            f"| {_variant_label(r, args.dtypes)} | {name} | "
            f"{_step_ms(get('jax'), what)} | {_step_ms(get('torch'), what)} | "
            f"{_step_ms(get('torch_compile'), what)} | "
            f"{_fmt(r.get(f'{what}_vs_eager'), '.2f')} | "
            f"{_fmt(r.get(f'{what}_vs_compile'), '.2f')} | "
            f"{', '.join(marks)} | {compile_s} | {rss} |")
    lines.append("")
  lines += ["### Targets", "", "| target | met | cells with a figure |",
            "|---|---|---|"]
  for key, _, _, name in TARGETS:
    lines.append(f"| {name} | {tally[key][0]} | {tally[key][1]} |")
  return "\n".join(lines) + "\n"


def render(results, summary, args, command: str) -> str:
  """The Markdown section."""
  first = next((r for r in results if r.get("platform")),
               next((r for r in results if r.get("device")), {}))
  device = first.get("device", "?")
  lines = [f"## Speed/memory suite vs PyTorch ({args.title or args.size + ' sizes'})",
           ""]
  lines += [f"Command: `{command}`", "",
            f"Device: {device} ({first.get('platform', '')}); host "
            f"{platform.node() or '?'}, {os.cpu_count()} CPUs. "
            f"{args.device_note}", "",
            f"Date: {args.date}. Median of {args.steps} timed steps after "
            f"{args.warmup} warm-up; each cell in a fresh process. Ratios are "
            f"PyTorch time / JAX time (> 1: JAX faster), JAX on 1 device.", ""]
  if getattr(args, "stopped", False):
    n = sum(1 for r in results if r["_method"] not in ("peak", "meta"))
    lines += [f"**Stopped early (time limit): {n} cells measured; the cells "
              f"not listed were not run.**", ""]
  if args.size != "paper":
    lines += [f"Not the paper's sizes ({args.size}: see each "
              f"`benchmarks/bench_<method>.py` docstring); not a speed "
              f"claim.", ""]
  peaks = summary["peaks"]
  lines += ["Measured matmul peak (one device, N^3 `jnp.dot`): " + ", ".join(
      f"{d} {_fmt((p or 0) / 1e12, '.3g')} TFLOP/s" for d, p in peaks.items()),
            ""]
  for method in args.methods:
    mrows = [r for r in summary["rows"] if r["method"] == method]
    any_cell = next((c for r in mrows for c in r["cells"].values()
                     if not c.get("error")), {})
    lines += [f"### {method}", ""]
    if any_cell:
      lines += [f"Batch {tuple(any_cell.get('batch_shape', ()))}, "
                f"{any_cell.get('param_count', '?')} parameters "
                f"(JAX and PyTorch counts equal: asserted in each torch "
                f"cell).", ""]
    lines += ["| precision | impl | devices | train step ms | train compile s "
              "| infer ms | infer groups/s | peak MiB | train GFLOP | "
              "% of peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in mrows:
      for (fw, dev), c in r["cells"].items():
        name = FRAMEWORK_NAMES[fw]
        e = _err(c)
        if e:
          lines.append(f"| {_label(r)} | {name} | {dev} | {e} | | | | | | |")
          continue
        frac = r.get(f"train_peak_fraction_{dev}") if fw == "jax" else None
        gflop = c.get("train_flops")
        lines.append(
            f"| {_label(r)} | {name} | {c.get('n_devices', dev)} | "
            f"{_fmt(c.get('train_step_ms'))} | "
            f"{_fmt(c.get('train_compile_s'), '.1f')} | "
            f"{_fmt(c.get('infer_step_ms'))} | "
            f"{_fmt(c.get('infer_groups_per_s'), '.2f')} | "
            f"{_fmt(c.get('peak_memory_mib'), '.0f')} | "
            f"{_fmt(gflop / 1e9 if gflop else None, '.2f')} | "
            f"{_fmt(100 * frac if frac else None, '.1f')} |")
    lines += ["", "| precision | train: eager/ours | train: compile/ours | "
              "infer: eager/ours | infer: compile/ours |", "|---|---|---|---|---|"]
    for r in mrows:
      lines.append(f"| {_label(r)} | {_fmt(r['train_vs_eager'], '.2f')} | "
                   f"{_fmt(r['train_vs_compile'], '.2f')} | "
                   f"{_fmt(r['infer_vs_eager'], '.2f')} | "
                   f"{_fmt(r['infer_vs_compile'], '.2f')} |")
    lines.append("")
    for r in results:
      if r["_method"] == method and r["_framework"] == "group_scaling":
        lines += _render_group(r)
      if r["_method"] == method and r["_framework"] == "collection":
        lines += _render_collection(r)
  for r in results:
    if r["_method"] == "loader":
      lines += _render_loader(r, results, args)
  lines += _render_targets(results, summary, args)
  return "\n".join(lines) + "\n"


def _render_targets(results, summary, args):
  """The speed targets against this run's figures (met / missed / n/a)."""
  def verdict(value, ok):
    if value is None:
      return "n/a"
    return "met" if ok(value) else "missed"
  out = ["### Targets", ""]
  if args.size != "paper":
    out += ["Reduced sizes: the verdicts below do not speak to the targets, "
            "which are defined at the paper's sizes on a GPU.", ""]
  out += ["| target | method | precision | value | verdict |",
          "|---|---|---|---|---|"]
  for r in summary["rows"]:
    m, d = r["method"], _label(r)
    for key, _, bound, name in TARGETS:
      v = r.get(key)
      out.append(f"| {name} | {m} | {d} | {_fmt(v, '.2f')} | "
                 f"{verdict(v, lambda x, b=bound: x >= b)} |")
    if m == "cyclesegnet":
      d = r["dtype"]
      c = r["cells"].get(("jax", "1"), {})
      v = c.get("infer_groups_per_s")
      out.append(f"| inference >= 50 x 8.8 = 440 pairs/s | {m} | {d} | "
                 f"{_fmt(v, '.1f')} | {verdict(v, lambda x: x >= 440)} |")
      if d == "bfloat16":
        v = r.get("train_peak_fraction_1")
        out.append(f"| bf16 train >= 40% of matmul peak | {m} | {d} | "
                   f"{_fmt(100 * v if v else None, '.1f')}% | "
                   f"{verdict(v, lambda x: x >= 0.4)} |")
  for r in results:
    if r["_framework"] == "collection" and not r.get("error"):
      v = r["impls"].get("coseg_jax", {}).get("collection_s")
      out.append(f"| 100-image collection < 60 s | coattention | "
                 f"{r['_dtype']} | {_fmt(v, '.1f')} s | "
                 f"{verdict(v, lambda x: x < 60)} |")
  return out + [""]


def _render_group(r):
  if r.get("error"):
    return [f"Group scaling ({r['_dtype']}): n/a ({r['error']})", ""]
  out = [f"Group-mode inference, one group of K images at "
         f"{r['image_size']}x{r['image_size']}, {r['dtype']} (JAX memory: "
         f"XLA estimate of the compiled inference):", "",
         "| K | JAX ms | JAX MiB (args+out+temp) | PyTorch eager ms | "
         "eager/ours |", "|---|---|---|---|---|"]
  for row in r["rows"]:
    out.append(f"| {row['k']} | {_fmt(row['jax_ms'])} | "
               f"{_fmt(row['jax_memory_mib'])} | "
               f"{_fmt(row.get('torch_eager_ms'))} | "
               f"{_fmt(_ratio(row.get('torch_eager_ms'), row['jax_ms']), '.2f')}"
               f" |")
  if r.get("torch_error"):
    out.append(f"\nPyTorch: n/a ({r['torch_error']})")
  return out + [""]


def _render_collection(r):
  if r.get("error"):
    return [f"Collection of 100 images ({r['_dtype']}): n/a ({r['error']})",
            ""]
  return [f"Co-attention, collection of {r['num_images']} images, "
          f"{r['dtype']}: {r['method_note']}", "",
          f"| impl | step ms | steps | estimated collection time s |",
          "|---|---|---|---|",
          *[f"| {k} | {_fmt(v['step_ms'])} | {r['steps']} | "
            f"{_fmt(v['collection_s'])} |" for k, v in r["impls"].items()],
          ""]


def _render_loader(r, results, args):
  if r.get("error"):
    return [f"### Input pipeline", "", f"n/a ({r['error']})", ""]
  out = ["### Input pipeline", "",
         f"grain, synthetic pairs at {r['image_size']}x{r['image_size']} with "
         f"augmentation, {r['workers']} workers (all CPUs): "
         f"{r['pairs_per_s']:.1f} pairs/s (`python {r['command']}`).", "",
         "| method | precision | JAX train step consumes (groups/s) | "
         "loader / consumption |", "|---|---|---|---|"]
  for m in args.methods:
    for d in args.dtypes:
      c = _cell(results, m, d, "jax", "1")
      if c and c.get("train_groups_per_s"):
        rate = c["train_groups_per_s"]
        out.append(f"| {m} | {d} | {rate:.1f} | "
                   f"{r['pairs_per_s'] / rate:.2f} |")
  return out + ["", "A ratio below 1 means the input pipeline would be the "
                "bottleneck (for CycleSegNet's pairs; the other methods' "
                "inputs differ in size and K).", ""]


def plot(summary, path):
  """Bar chart of the PyTorch/JAX time ratios per method and precision."""
  rows = summary["rows"]
  keys = [("train_vs_eager", "train: eager/ours"),
          ("train_vs_compile", "train: compile/ours"),
          ("infer_vs_eager", "infer: eager/ours"),
          ("infer_vs_compile", "infer: compile/ours")]
  labels = [f"{r['method']}\n{_label(r)}" for r in rows]
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) + 2), 4))
  width = 0.8 / len(keys)
  for i, (k, name) in enumerate(keys):
    vals = [r.get(k) or 0.0 for r in rows]
    ax.bar([j + i * width for j in range(len(rows))], vals, width, label=name)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
  ax.set_xticklabels(labels, fontsize=8)
  ax.set_ylabel("PyTorch time / coseg_jax time")
  ax.set_title("Speed ratio (> 1: coseg_jax faster); missing bars: n/a")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_variants(summary, path, dtypes):
  """The ratios of the variants layout: a train-step panel and an
  inference panel, eager/ours and compile/ours per (method, variant), the
  targets as dashed lines; n/a bars are missing and labelled."""
  rows = summary["rows"]
  labels = [f"{r['method']}\n{_variant_label(r, dtypes)}" for r in rows]
  fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.9 * len(rows) + 2) + 3,
                                          7), sharex=True)
  width = 0.38
  for ax, what, name in ((axes[0], "train", "train step"),
                         (axes[1], "infer", "inference")):
    for i, (key, fw, colour) in enumerate(
        ((f"{what}_vs_eager", "PyTorch eager / coseg_jax", "tab:blue"),
         (f"{what}_vs_compile", "torch.compile / coseg_jax", "tab:orange"))):
      xs = [j + (i - 0.5) * width for j in range(len(rows))]
      vals = [r.get(key) for r in rows]
      ax.bar(xs, [v or 0.0 for v in vals], width, label=fw, color=colour)
      for x, v in zip(xs, vals):
        ax.annotate("n/a" if v is None else f"{v:.2f}", (x, v or 0.0),
                    ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="k", lw=0.8)
    for key, phase, bound, target in TARGETS:
      if phase == what:
        ax.axhline(bound, color="tab:red" if "eager" in key else "tab:green",
                   ls="--", lw=0.8, label=f"target: {target}")
    ax.set_ylabel("PyTorch time / ours")
    ax.set_title(f"{name} (> 1: coseg_jax faster)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  axes[1].set_xticks(range(len(rows)))
  axes[1].set_xticklabels(labels, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def replace_section(path: str, section: str, tag: str) -> None:
  """Replaces (or appends) the text between this suite's markers in ``path``."""
  begin, end = f"<!-- bench-suite:{tag}:begin -->", f"<!-- bench-suite:{tag}:end -->"
  text = open(path).read() if os.path.exists(path) else ""
  block = f"{begin}\n{section}{end}\n"
  if begin in text and end in text:
    pre = text[:text.index(begin)]
    post = text[text.index(end) + len(end):].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
  else:
    text = text.rstrip("\n") + "\n\n" + block
  with open(path, "w") as f:
    f.write(text)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=common.SIZES, default="paper")
  p.add_argument("--small", action="store_const", const="small", dest="size")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--frameworks", default="jax,torch,torch_compile")
  p.add_argument("--no_all_devices", dest="all_devices", action="store_false",
                 help="skip the JAX all-local-devices cells")
  p.add_argument("--fake_cpu_devices", type=int, default=0,
                 help="CPU only: split the host into this many XLA devices "
                      "for the all-devices cells (exercises the sharded "
                      "path; they share the same cores)")
  p.add_argument("--threads", type=int, default=0,
                 help="CPU: every cell runs on this many CPUs, PyTorch with "
                      "as many threads (0 = all; see benchmarks/common.py)")
  p.add_argument("--encoders", default=None,
                 help="comma-separated --encoder values, one variant each "
                      "(default: lite0,lite2 for cpu224, else the config's)")
  p.add_argument("--group_sizes", default="",
                 help="comma-separated group sizes K to keep of those a "
                      "method's bench measures at --size (default: all)")
  p.add_argument("--layout", choices=("auto", "devices", "variants"),
                 default="auto",
                 help="report layout: 'variants' (one row per encoder x "
                      "step, the cpu224 default) or 'devices' (per "
                      "precision and device count, the other sizes)")
  p.add_argument("--extras", default=",".join(EXTRAS))
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--loader_batches", type=int, default=20)
  p.add_argument("--timeout", type=float, default=3600)
  p.add_argument("--out", default="/tmp/coseg_suite.md")
  p.add_argument("--plot", default=None,
                 help="PNG path (default: --out with .png)")
  p.add_argument("--results_md", default="docs/results.md",
                 help="file whose suite section is replaced ('' = none)")
  p.add_argument("--tag", default=None,
                 help="name of this run's --results_md section (default: the "
                      "size); runs with the same tag replace each other")
  p.add_argument("--title", default=None, help="section heading suffix")
  p.add_argument("--render_json", default=None,
                 help="render the report from previous runs' JSON instead "
                      "of measuring (comma-separated paths: the runs' cells "
                      "are merged, a later run's cell replacing an earlier "
                      "one's)")
  p.add_argument("--date", default=datetime.date.today().isoformat())
  p.add_argument("--device_note", default="",
                 help="free text for the device line (e.g. shared CPU)")
  args = p.parse_args(argv)
  if args.encoders is None:
    args.encoders = "lite0,lite2" if args.size == "cpu224" else ""
  for name in ("methods", "dtypes", "frameworks", "extras", "encoders"):
    setattr(args, name, [s for s in getattr(args, name).split(",") if s])
  try:
    args.group_sizes = [int(k) for k in args.group_sizes.split(",") if k]
  except ValueError:
    p.error(f"--group_sizes: integers expected, got {args.group_sizes!r}")
  if args.layout == "auto":
    args.layout = "variants" if args.size == "cpu224" else "devices"
  unknown = set(args.methods) - set(METHODS)
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; known {METHODS}")
  return args


def _cell_key(cell):
  return tuple(cell.get(k) for k in ("_method", "_variant", "_dtype",
                                     "_framework", "_devices"))


def merge_runs(runs):
  """The cells of several runs' JSON lists as one list: every run's meta
  record kept (in order), and of two cells with the same method, variant,
  dtype, framework and devices the later run's."""
  metas, cells = [], {}
  for run in runs:
    for cell in run:
      if cell.get("_method") == "meta":
        metas.append(cell)
      else:
        cells[_cell_key(cell)] = cell
  return metas + list(cells.values())


class _Stop(Exception):
  """SIGTERM (e.g. an outer ``timeout``): report the cells measured so far."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise _Stop()


def main(argv=None) -> Optional[Dict[str, Any]]:
  args = parse_args(argv)
  command = "python -m benchmarks.run_all " + shlex.join(
      argv if argv is not None else sys.argv[1:])
  previous = None
  if threading_is_main():
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
  results = []
  args.stopped = False
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  json_path = os.path.splitext(args.out)[0] + ".json"
  _PROGRESS.update(path=json_path, results=results)
  try:
    if args.render_json:
      runs = []
      for path in args.render_json.split(","):
        with open(path) as f:
          runs.append(json.load(f))
      results.extend(merge_runs(runs))
      metas = [r for r in results if r.get("_method") == "meta"]
      if metas:  # the measuring runs' commands and dates
        command = " ; ".join(dict.fromkeys(m["command"] for m in metas))
        args.date = ", ".join(dict.fromkeys(m["date"] for m in metas))
    else:
      results.append({"_method": "meta", "_dtype": "-", "_framework": "meta",
                      "_devices": "-", "command": command, "date": args.date,
                      "machine": machine()})
      run_cells(args, results)
  except (_Stop, KeyboardInterrupt):
    args.stopped = True
    print("stopped: reporting the cells measured so far", flush=True)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  summary = summarise(results, args)
  plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
  if args.layout == "variants":
    section = render_variants(results, summary, args, command)
    plot_variants(summary, plot_path, args.dtypes)
  else:
    section = render(results, summary, args, command)
    plot(summary, plot_path)
  section += f"\nPlot: `{plot_path}`.\n"
  with open(args.out, "w") as f:
    f.write(section)
  with open(json_path, "w") as f:
    json.dump(common._jsonable(results), f, indent=1)  # pylint: disable=protected-access
  if args.results_md:
    replace_section(args.results_md, section, args.tag or args.size)
  print(section)
  return {"results": results, "summary": summary, "section": section}


if __name__ == "__main__":
  main()
