r"""Where a coseg_jax train step or inference spends its time: the top ops.

Builds one cell of ``benchmarks/bench_<method>.py`` (the suite's config:
``--size``, ``--encoder``, ``--group_size``, ``--threads``), compiles the
trainer's own train step (``--phase train``) or the evaluators' inference
(``--phase infer``) as ``coseg_jax.runtime.benchmark`` does, warms it up,
and traces ``--steps`` calls with ``jax.profiler.trace``. XLA:CPU runs each
fusion, convolution, dot or custom call of the compiled module as a thunk
named after its HLO instruction, and the trace holds one event per thunk
execution and thread; the summary adds them up per instruction and per
source primitive (the last part of the instruction's ``op_name`` metadata)
and lists the largest: CPU time summed over threads (a thunk split across
the intra-op pool counts every thread's share), per step, share of all
traced thunk time, calls, and the ``op_name`` (the module path and the
primitive it came from). XLA:CPU runs some thunks asynchronously on the
Eigen pool (its own convolutions, dots, some fusions): their thunk event
is the launch only, so a separate table gives each one's launch-to-end
wall time (``async_spans``; an upper bound, spans overlap). Read the two
tables together: the first for synchronous fusions, the second for
convolutions and dots.

Writes under ``--out``: the trace (``trace/plugins/profile/<run>/
*.xplane.pb``, for TensorBoard's or XProf's profile plugin), the compiled
module's text (``<phase>.hlo.txt``) and the summary
(``<phase>_top_ops.md``, also printed)::

  python -m benchmarks.profile_step --method cyclesegnet --size cpu224 \
      --encoder lite2 --phase train --out /tmp/profile_csn_lite2
  python -m benchmarks.profile_step --method dcc --size tiny --phase infer \
      --steps 2 --out /tmp/profile_dcc

XLA's per-pass dumps of the same module: add
``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`` (large).

``--framework torch`` (or ``torch_compile``) profiles the PyTorch port of
the same cell (``benchmarks/torch_impl``, the suite's batch and thread
count) with ``torch.profiler`` instead and lists the operators with the
most self CPU time (aten ops in eager mode; inductor's fused kernels and
the oneDNN ops they call under torch.compile). Self CPU time is measured on
the calling thread, so a kernel parallelised over the intra-op pool counts
once, whereas XLA's thunk time counts every thread's share: compare the two
frameworks by share of the step, not by summed milliseconds::

  python -m benchmarks.profile_step --method coattention --size cpu224 \
      --encoder lite2 --phase infer --framework torch \
      --out /tmp/profile_coatt_torch
"""

import argparse
import collections
import glob
import importlib
import os
import re
import statistics
import time
from typing import Dict, Tuple

from benchmarks import common

# One HLO instruction: name, shape, opcode (its op_name metadata apart).
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+) = (?P<shape>.+?) "
    r"(?P<op>[a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", required=True,
                 choices=("cyclesegnet", "cosegnet", "dcc", "coattention",
                          "macosnet"))
  p.add_argument("--size", choices=common.SIZES, default="cpu224")
  p.add_argument("--encoder", default=None,
                 help="lite0 / lite2 / a backbone name (default: config's)")
  p.add_argument("--group_size", type=int, default=None)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--image_size", type=int, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 default="float32")
  p.add_argument("--phase", choices=("train", "infer"), default="train")
  p.add_argument("--framework", choices=("jax", "torch", "torch_compile"),
                 default="jax",
                 help="coseg_jax (jax.profiler) or the PyTorch port "
                      "(torch.profiler), eager or torch.compile")
  p.add_argument("--steps", type=int, default=3, help="traced calls")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=0,
                 help="CPUs for the process (0 = all), as the suite's cells")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default="/tmp/coseg_profile")
  return p.parse_args(argv)


def hlo_metadata(text: str) -> Dict[str, Tuple[str, str]]:
  """{instruction name: (opcode, op_name)} of an HLO module's text."""
  out = {}
  for line in text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      op_name = _OP_NAME.search(line)
      out[m.group("name")] = (m.group("op"),
                              op_name.group("op_name") if op_name else "")
  return out


def _trace_events(trace_dir: str):
  """[(name, start_ns, end_ns)] of every event in the latest trace's planes."""
  # Like every JAX import here, after main has set the CPU affinity.
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  return [(event.name, event.start_ns, event.start_ns + event.duration_ns)
          for plane in ProfileData.from_file(paths[-1]).planes
          for line in plane.lines for event in line.events]


def thunk_times(events, names) -> Tuple[Dict[str, float], Dict[str, int]]:
  """(ns, calls) per HLO instruction: the durations of its thunk events."""
  ns, calls = collections.Counter(), collections.Counter()
  for name, start, end in events:
    if name in names:
      ns[name] += end - start
      calls[name] += 1
  return ns, calls


def async_spans(events, names) -> Tuple[Dict[str, float], Dict[str, int]]:
  """(ns, calls) per asynchronous thunk: launch to its 'end: NAME' event.

  XLA:CPU runs some thunks asynchronously on its Eigen thread pool (its
  own convolutions, dots, some fusions): the thunk's event then times the
  launch only (~0.1 ms for a convolution that takes 80) and a later
  ``end: NAME`` event marks completion. The span from each launch to the
  next end of the same instruction bounds the work's wall time from above
  (it includes time queued behind other thunks), which the thunk times
  miss.
  """
  starts = collections.defaultdict(list)
  ends = collections.defaultdict(list)
  for name, start, end in events:
    if name in names:
      starts[name].append(start)
    elif name.startswith("end: ") and name[5:] in names:
      ends[name[5:]].append(end)
  ns, calls = collections.Counter(), collections.Counter()
  for name, finished in ends.items():
    launched = sorted(starts[name])
    for end in sorted(finished):
      before = [t for t in launched if t <= end]
      if before:  # the latest launch before this end is the one it closes
        launched.remove(before[-1])
        ns[name] += end - before[-1]
        calls[name] += 1
  return ns, calls


def summarise(ns, calls, meta, *, steps: int, step_ms, top: int,
              title: str, spans=None, span_calls=None) -> str:
  """Markdown: the top instructions and the top source primitives.

  ``spans``/``span_calls`` (from :func:`async_spans`), when given, add a
  table of the asynchronous thunks' launch-to-end wall time per call.
  """
  total = sum(ns.values()) or 1.0
  lines = [f"# {title}", "",
           f"Wall time per call: median {statistics.median(step_ms):.1f} ms "
           f"(min {min(step_ms):.1f}, max {max(step_ms):.1f}) over {steps} "
           f"traced calls. Thunk CPU time (summed over threads): "
           f"{total / 1e6 / steps:.1f} ms per call.", "",
           "## Top HLO instructions", "",
           "| instruction | opcode | ms / call | % | calls / call | "
           "op_name (its end) |", "|---|---|---|---|---|---|"]
  for name, t in ns.most_common(top):
    op, op_name = meta.get(name, ("?", ""))
    lines.append(f"| {name} | {op} | {t / 1e6 / steps:.2f} | "
                 f"{100 * t / total:.1f} | {calls[name] / steps:.0f} | "
                 f"{op_name[-100:]} |")
  by_primitive = collections.Counter()
  for name, t in ns.items():
    op, op_name = meta.get(name, ("?", ""))
    primitive = op_name.rsplit("/", 1)[-1] if op_name else f"({op})"
    by_primitive[re.sub(r"\[.*$", "", primitive)] += t
  lines += ["", "## By source primitive (last part of op_name)", "",
            "| primitive | ms / call | % |", "|---|---|---|"]
  for primitive, t in by_primitive.most_common(top):
    lines.append(f"| {primitive} | {t / 1e6 / steps:.2f} | "
                 f"{100 * t / total:.1f} |")
  if spans:
    wall = statistics.median(step_ms)
    span_total = sum(spans.values()) / 1e6 / steps
    lines += ["", "## Asynchronous thunks (launch to end, wall time)", "",
              "XLA:CPU runs these on its Eigen thread pool: their thunk "
              "events above time the launch only. Launch-to-end wall time: "
              f"{span_total:.1f} ms per call ({100 * span_total / wall:.0f} % "
              "of the median wall time; spans overlap and include time "
              "queued behind other thunks).", "",
              "| instruction | opcode | wall ms / call | % of wall | "
              "calls / call | op_name (its end) |",
              "|---|---|---|---|---|---|"]
    for name, t in spans.most_common(top):
      op, op_name = meta.get(name, ("?", ""))
      lines.append(f"| {name} | {op} | {t / 1e6 / steps:.2f} | "
                   f"{100 * t / 1e6 / steps / wall:.1f} | "
                   f"{span_calls[name] / steps:.0f} | {op_name[-100:]} |")
  return "\n".join(lines) + "\n"


def summarise_torch(rows, *, steps: int, step_ms, top: int,
                    title: str) -> str:
  """Markdown: the operators with the most self CPU time.

  Args:
    rows: ``(name, self CPU microseconds summed over the traced calls,
      occurrences)`` per operator, as ``torch.profiler``'s
      ``key_averages()`` gives them.
    steps: traced calls.
    step_ms: their wall times.
    top: rows listed.
    title: the heading.
  """
  total = sum(us for _, us, _ in rows) or 1.0
  lines = [f"# {title}", "",
           f"Wall time per call: median {statistics.median(step_ms):.1f} ms "
           f"(min {min(step_ms):.1f}, max {max(step_ms):.1f}) over {steps} "
           f"traced calls. Self CPU time of all operators (calling thread): "
           f"{total / 1e3 / steps:.1f} ms per call.", "",
           "## Top operators by self CPU time", "",
           "| operator | ms / call | % | calls / call |", "|---|---|---|---|"]
  for name, us, count in sorted(rows, key=lambda r: -r[1])[:top]:
    lines.append(f"| {name} | {us / 1e3 / steps:.2f} | "
                 f"{100 * us / total:.1f} | {count / steps:.0f} |")
  return "\n".join(lines) + "\n"


def profile_torch(args, bench, config) -> str:
  """Profiles the PyTorch port of ``config``'s cell; returns the summary."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import profiler  # pylint: disable=g-import-not-at-top
  impl = common.torch_module(bench)
  if args.phase == "train" and impl.train_loss is None:
    raise SystemExit(f"profile_step: {bench.name} has no PyTorch port of "
                     f"its training objective; use --phase infer")
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  model = common.build_torch_model(bench, config)
  batch = common.torch_batch(config, torch.device("cpu"))
  images = batch["images"]
  compiled = args.framework == "torch_compile"
  autocast = lambda: torch.autocast(  # the suite's bfloat16 cells
      device_type="cpu", dtype=torch.bfloat16,
      enabled=config.model.get("dtype", "float32") == "bfloat16")
  if args.phase == "train":
    opt = common.torch_optimizer(
        [p for p in model.parameters() if p.requires_grad], config.optimizer)
    loss_fn = lambda: impl.train_loss(model, images, batch)
    loss_fn = torch.compile(loss_fn) if compiled else loss_fn
    model.train()

    def call():
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = loss_fn()
      loss.backward()
      opt.step()
  else:
    infer = lambda: impl.infer(model, images)
    infer = torch.compile(infer) if compiled else infer
    model.eval()

    def call():
      with torch.inference_mode(), autocast():
        infer()
  start = time.perf_counter()
  call()  # torch.compile compiles here; eager warms its allocator
  compile_s = time.perf_counter() - start
  for _ in range(max(args.warmup - 1, 0)):
    call()
  step_ms = []
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      t = time.perf_counter()
      call()
      step_ms.append(1e3 * (time.perf_counter() - t))
  rows = [(e.key, e.self_cpu_time_total, e.count)
          for e in prof.key_averages()]
  title = (f"{bench.name} {args.phase}, {args.size}, PyTorch "
           f"{'torch.compile' if compiled else 'eager'} {torch.__version__}, "
           f"encoder {config.model.get('backbone')}, batch "
           f"{tuple(images.shape)}, {torch.get_num_threads()} threads; first "
           f"call {compile_s:.1f} s")
  return summarise_torch(rows, steps=args.steps, step_ms=step_ms,
                         top=args.top, title=title)


def main(argv=None):
  args = parse_args(argv)
  common.restrict_threads(args.threads)
  # Built after the CPU affinity is set: XLA sizes its pool at start-up.
  bench = importlib.import_module(f"benchmarks.bench_{args.method}").BENCH
  config = common.make_config(
      bench, size=args.size, dtype=args.dtype, image_size=args.image_size,
      batch=args.batch, group_size=args.group_size, encoder=args.encoder)
  if args.framework != "jax":
    report = profile_torch(args, bench, config)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.phase}_{args.framework}"
                           f"_top_ops.md"), "w") as f:
      f.write(report)
    print(report)
    return report
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import benchmark  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime import steps as steps_lib  # pylint: disable=g-import-not-at-top
  program, host_batch, batch, shape, _ = benchmark.prepare(config)
  start = time.perf_counter()
  if args.phase == "train":
    compiled = program.train_step.lower(program.state, batch).compile()
    holder = {"state": program.state}

    def call():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics["loss"]
  else:
    variables = program.state.variables()
    infer = steps_lib.make_inference(config, program.model, program.mesh)
    images = (jax.device_put(host_batch["images"]) if program.mesh is None
              else sharding.shard_batch({"images": host_batch["images"]},
                                        program.mesh)["images"])
    compiled = infer.lower(variables, images).compile()

    def call():
      return compiled(variables, images)
  compile_s = time.perf_counter() - start
  os.makedirs(args.out, exist_ok=True)
  text = compiled.as_text()
  with open(os.path.join(args.out, f"{args.phase}.hlo.txt"), "w") as f:
    f.write(text)
  for _ in range(args.warmup):
    jax.block_until_ready(call())
  trace_dir = os.path.join(args.out, "trace")
  step_ms = []
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      t = time.perf_counter()
      jax.block_until_ready(call())
      step_ms.append(1e3 * (time.perf_counter() - t))
  meta = hlo_metadata(text)
  events = _trace_events(trace_dir)
  ns, calls = thunk_times(events, set(meta))
  spans, span_calls = async_spans(events, set(meta))
  title = (f"{args.method} {args.phase}, {args.size}, encoder "
           f"{config.model.get('backbone')}, batch {tuple(shape)}, "
           f"{args.dtype}, {jax.devices()[0].device_kind}, "
           f"{len(os.sched_getaffinity(0))} CPUs; compile {compile_s:.1f} s")
  report = summarise(ns, calls, meta, steps=args.steps, step_ms=step_ms,
                     top=args.top, title=title, spans=spans,
                     span_calls=span_calls)
  with open(os.path.join(args.out, f"{args.phase}_top_ops.md"), "w") as f:
    f.write(report)
  print(report)
  return report


if __name__ == "__main__":
  main()
