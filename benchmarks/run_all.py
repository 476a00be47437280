r"""The whole speed/memory suite, JAX vs PyTorch, in one command.

Runs every cell (method x precision x {JAX 1 device, JAX all local devices,
PyTorch eager, torch.compile}) of ``benchmarks/bench_<method>.py`` in its own
process (see ``benchmarks/common.py`` for what each cell measures and how),
the measured matrix-unit peak per precision, and the extras: CycleSegNet
group scaling (K = 2..16), the co-attention per-collection time for 100
images, and the grain input pipeline against the training step's consumption
rate. Writes a Markdown report (``--out``), the raw cells as JSON beside it,
a PNG of the speed ratios (``--plot``), and replaces its own section of
``docs/results.md`` (``--results_md``; between markers naming the
size, so a rerun replaces rather than appends).

GPU (the paper's sizes; what a session with a GPU should run)::

  python -m benchmarks.run_all --size paper --out /tmp/coseg_suite.md

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
import json
import math
import os
import platform
import sys
from typing import Any, Dict, List, Optional

from benchmarks import common

METHODS = ("cyclesegnet", "cosegnet", "dcc", "coattention", "macosnet")
EXTRAS = ("group_scaling", "collection", "loader")


def _fmt(x, spec=".1f", none="n/a"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return none
  return format(x, spec)


def _ratio(a, b):
  """a / b, or None."""
  if a is None or b is None or not b:
    return None
  return a / b


def _cell(results, method, dtype, framework, devices="1"):
  for r in results:
    if (r.get("_method") == method and r.get("_dtype") == dtype and
        r.get("_framework") == framework and r.get("_devices") == devices):
      return r
  return None


def local_device_count() -> int:
  """JAX's local device count, asked in a fresh process (this one never
  initialises a backend, so the cells' processes own the devices)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  p = subprocess.run([sys.executable, "-c", "import jax; print("
                      "jax.local_device_count())"], capture_output=True,
                     text=True, check=False)
  try:
    return int(p.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return 1


def threading_is_main() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def run_cells(args, results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Runs every requested cell in a subprocess, appending to ``results``."""
  if args.all_devices and not args.fake_cpu_devices and (
      local_device_count() < 2):
    print("one local device: the all-devices cells would repeat the "
          "1-device ones; skipped", flush=True)
    args.all_devices = False
  base = ["--size", args.size, "--steps", str(args.steps), "--warmup",
          str(args.warmup)]
  torch_env = ({"COSEG_BENCH_TORCH_THREADS": str(args.torch_threads)}
               if args.torch_threads else None)
  fake_env = ({"XLA_FLAGS": f"--xla_force_host_platform_device_count="
                            f"{args.fake_cpu_devices}"}
              if args.fake_cpu_devices else None)
  for dtype in args.dtypes:
    r = common.run_subprocess("benchmarks.bench_cyclesegnet",
                              ["--framework", "peak", "--dtype", dtype],
                              timeout=args.timeout)
    r.update(_method="peak", _dtype=dtype, _framework="peak", _devices="1")
    results.append(r)
    _log(r)
  for method in args.methods:
    module = f"benchmarks.bench_{method}"
    for dtype in args.dtypes:
      for fw in args.frameworks:
        devices_list = ["1"]
        if fw == "jax" and args.all_devices:
          devices_list.append("all")
        for devices in devices_list:
          env = fake_env if devices == "all" else (
              torch_env if fw.startswith("torch") else None)
          r = common.run_subprocess(
              module, base + ["--framework", fw, "--dtype", dtype,
                              "--devices", devices], env=env,
              timeout=args.timeout)
          r.update(_method=method, _dtype=dtype, _framework=fw,
                   _devices=devices)
          results.append(r)
          _log(r)
  extras = [e for e in args.extras if e != "none"]
  if "group_scaling" in extras and "cyclesegnet" in args.methods:
    for dtype in args.dtypes:
      r = common.run_subprocess(
          "benchmarks.bench_cyclesegnet",
          base + ["--extra", "group_scaling", "--dtype", dtype],
          timeout=args.timeout)
      r.update(_method="cyclesegnet", _dtype=dtype, _framework="group_scaling",
               _devices="1")
      results.append(r)
      _log(r)
  if "collection" in extras and "coattention" in args.methods:
    for dtype in args.dtypes:
      r = common.run_subprocess(
          "benchmarks.bench_coattention",
          base + ["--extra", "collection", "--dtype", dtype],
          timeout=args.timeout)
      r.update(_method="coattention", _dtype=dtype, _framework="collection",
               _devices="1")
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
  import subprocess  # pylint: disable=g-import-not-at-top
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
  keys = ("_method", "_dtype", "_framework", "_devices", "train_step_ms",
          "infer_step_ms", "peak_flops", "error")
  print(" ".join(f"{k.strip('_')}={r[k]}" for k in keys if k in r),
        flush=True)


def summarise(results, args) -> Dict[str, Any]:
  """Per-method rows with the ratios the report and the plot show."""
  peaks = {r["_dtype"]: r.get("peak_flops") for r in results
           if r["_method"] == "peak"}
  rows = []
  for method in args.methods:
    for dtype in args.dtypes:
      cells = {}
      for fw in args.frameworks:
        for dev in ("1", "all"):
          c = _cell(results, method, dtype, fw, dev)
          if c is not None:
            cells[(fw, dev)] = c
      jax1 = cells.get(("jax", "1"), {})
      eager = cells.get(("torch", "1"), {})
      comp = cells.get(("torch_compile", "1"), {})
      row = {"method": method, "dtype": dtype, "cells": cells}
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


def _err(c):
  return f"n/a ({c['error']})" if c and c.get("error") else None


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
    n = sum(1 for r in results if r["_method"] != "peak")
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
        name = {"jax": "coseg_jax", "torch": "PyTorch eager",
                "torch_compile": "torch.compile"}[fw]
        e = _err(c)
        if e:
          lines.append(f"| {r['dtype']} | {name} | {dev} | {e} | | | | | | |")
          continue
        frac = r.get(f"train_peak_fraction_{dev}") if fw == "jax" else None
        gflop = c.get("train_flops")
        lines.append(
            f"| {r['dtype']} | {name} | {c.get('n_devices', dev)} | "
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
      lines.append(f"| {r['dtype']} | {_fmt(r['train_vs_eager'], '.2f')} | "
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
  """Issue 10's targets against this run's figures (met / missed / n/a)."""
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
    m, d = r["method"], r["dtype"]
    for key, name, bound in (
        ("train_vs_eager", "train >= 1.5x PyTorch eager", 1.5),
        ("train_vs_compile", "train no slower than torch.compile", 1.0),
        ("infer_vs_eager", "inference >= 2x PyTorch eager", 2.0)):
      v = r.get(key)
      out.append(f"| {name} | {m} | {d} | {_fmt(v, '.2f')} | "
                 f"{verdict(v, lambda x, b=bound: x >= b)} |")
    if m == "cyclesegnet":
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
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = summary["rows"]
  keys = [("train_vs_eager", "train: eager/ours"),
          ("train_vs_compile", "train: compile/ours"),
          ("infer_vs_eager", "infer: eager/ours"),
          ("infer_vs_compile", "infer: compile/ours")]
  labels = [f"{r['method']}\n{r['dtype']}" for r in rows]
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
  p.add_argument("--torch_threads", type=int, default=0,
                 help="CPU only: torch.set_num_threads for the PyTorch cells "
                      "(0 = PyTorch's default)")
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
                 help="name of this run's RESULTS.md section (default: the "
                      "size); runs with the same tag replace each other")
  p.add_argument("--title", default=None, help="section heading suffix")
  p.add_argument("--render_json", default=None,
                 help="render the report from a previous run's JSON instead "
                      "of measuring")
  p.add_argument("--date", default=datetime.date.today().isoformat())
  p.add_argument("--device_note", default="",
                 help="free text for the device line (e.g. shared CPU)")
  args = p.parse_args(argv)
  for name in ("methods", "dtypes", "frameworks", "extras"):
    setattr(args, name, [s for s in getattr(args, name).split(",") if s])
  unknown = set(args.methods) - set(METHODS)
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; known {METHODS}")
  return args


class _Stop(Exception):
  """SIGTERM (e.g. an outer ``timeout``): report the cells measured so far."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise _Stop()


def main(argv=None) -> Optional[Dict[str, Any]]:
  args = parse_args(argv)
  import shlex  # pylint: disable=g-import-not-at-top
  command = "python -m benchmarks.run_all " + shlex.join(
      argv if argv is not None else sys.argv[1:])
  import signal  # pylint: disable=g-import-not-at-top
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
      with open(args.render_json) as f:
        results.extend(json.load(f))
    else:
      run_cells(args, results)
  except (_Stop, KeyboardInterrupt):
    args.stopped = True
    print("stopped: reporting the cells measured so far", flush=True)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  summary = summarise(results, args)
  section = render(results, summary, args, command)
  plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
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
