"""What a run prints, and the metric writers behind it.

A run shows the few lines a user reads: the config summary, a progress bar,
a metrics line at most about ten times per run, the results table and where
the files went. Library INFO logs (Orbax, TFDS, grain, our own ``absl``
logs) are off unless asked for with ``--verbosity`` (:func:`setup`).

* :func:`info` / :func:`warning`: user-facing lines on process 0 (written
  through tqdm so that an active progress bar is not broken);
* :class:`TensorBoardWriter` (``tensorboardX``: ``clu.metric_writers`` needs
  TensorFlow, which is not a dependency), :class:`ConsoleWriter` (a compact
  metrics line every ``every`` steps) and :func:`create_writer`, which gives
  process 0 both and every other process a no-op, so multi-host runs log
  once;
* :class:`Progress`: a tqdm bar on process 0 (rate and ETA) that also
  measures step time and examples/s between log points.
"""

import logging as py_logging
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import auto as tqdm

# Python loggers of libraries that log at INFO through the standard library.
_LIBRARY_LOGGERS = ("absl", "orbax", "jax", "tensorflow_datasets", "grain",
                    "etils")


def setup(verbosity: Optional[int] = None) -> None:
  """Sets how much library logging reaches the console.

  Args:
    verbosity: absl's scale (1 debug, 0 info, -1 warning, -2 error); None
      (the default of the command line) keeps only warnings and errors, so a
      run's console holds what :func:`info` prints.
  """
  level = -1 if verbosity is None else int(verbosity)
  logging.set_verbosity(level)
  py_level = {1: py_logging.DEBUG, 0: py_logging.INFO,
              -1: py_logging.WARNING}.get(max(min(level, 1), -1))
  for name in _LIBRARY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_level)


def _print(message: str, *, stream=None) -> None:
  if jax.process_index() != 0:
    return
  tqdm.tqdm.write(str(message), file=stream or sys.stdout)
  (stream or sys.stdout).flush()


def info(message: str) -> None:
  """A line the user reads (process 0), also kept in the absl log."""
  logging.info("%s", message)
  _print(message)


def warning(message: str) -> None:
  """``WARNING: message`` on stderr (process 0)."""
  _print(f"WARNING: {message}", stream=sys.stderr)


def _scalar(value) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Interface: every writer implements these."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    raise NotImplementedError

  def write_texts(self, step: int, texts: Mapping[str, str]):
    del step, texts

  def flush(self):
    pass

  def close(self):
    pass


class NoOpWriter(MetricWriter):

  def write_scalars(self, step, scalars):
    del step, scalars


class ConsoleWriter(MetricWriter):
  """Prints a compact metrics line every ``every`` steps (and the last).

  Shows the loss, every loss term, the learning rate and the step rate:
  ``step 200/2000  loss 0.412  lovasz 0.412  lr 2.9e-03  3.1 steps/s``.
  """

  def __init__(self, total: int, every: int):
    self._total, self._every = int(total), max(int(every), 1)

  def write_scalars(self, step, scalars):
    if step % self._every and step != self._total:
      return
    parts = [f"step {step}/{self._total}"]
    if "train/loss" in scalars:
      parts.append(f"loss {_scalar(scalars['train/loss']):.4g}")
      parts += [f"{k.split('/')[-1]} {_scalar(v):.4g}"
                for k, v in sorted(scalars.items())
                if k.startswith("train/loss_terms/")]
    if "train/learning_rate" in scalars:
      parts.append(f"lr {_scalar(scalars['train/learning_rate']):.2e}")
    if "perf/step_time_s" in scalars:
      rate = 1.0 / max(_scalar(scalars["perf/step_time_s"]), 1e-9)
      parts.append(f"{rate:.2f} steps/s")
    if len(parts) > 1:
      _print("  ".join(parts))


def console_interval(num_steps: int, log_every: int, lines: int = 10) -> int:
  """Steps between console metric lines: about ``lines`` per run, a
  multiple of ``log_every`` (the steps at which metrics exist)."""
  log_every = max(int(log_every), 1)
  target = max(int(num_steps) // max(lines, 1), 1)
  return max(log_every, (target + log_every - 1) // log_every * log_every)


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files via tensorboardX."""

  def __init__(self, logdir: str):
    self._writer = SummaryWriter(logdir=str(logdir))

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._writer.add_scalar(k, _scalar(v), global_step=step)

  def write_texts(self, step, texts):
    for k, v in texts.items():
      self._writer.add_text(k, str(v), global_step=step)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter(MetricWriter):
  """Forwards every call to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_texts(self, step, texts):
    for w in self._writers:
      w.write_texts(step, texts)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_writer(logdir: Optional[str], *, total: int = 0,
                  console_every: int = 0) -> MetricWriter:
  """TensorBoard (when ``logdir``) + console lines (when ``console_every``)
  on process 0; a no-op elsewhere."""
  if jax.process_index() != 0:
    return NoOpWriter()
  writers = []
  if logdir:
    writers.append(TensorBoardWriter(logdir))
  if console_every:
    writers.append(ConsoleWriter(total, console_every))
  return MultiWriter(writers)


def progress_bar(*, total: int, initial: int = 0, unit: str = "step",
                 desc: Optional[str] = None, enabled: bool = True):
  """A tqdm bar on process 0 (None elsewhere or when disabled).

  On a terminal it redraws in place; into a log file (no TTY) it writes a
  line at most every 30 s instead of hundreds of carriage returns.
  """
  if not enabled or jax.process_index() != 0:
    return _NoBar()
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=initial, unit=unit, desc=desc,
                   dynamic_ncols=True, smoothing=0.1, leave=False,
                   mininterval=0.5 if tty else 30.0)


class _NoBar:
  """Stands in for a disabled bar."""

  n = 0

  def update(self, n=1):
    del n

  def set_postfix(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


class Progress:
  """tqdm progress bar (process 0) + step-time / throughput measurement.

  Args:
    total: last step of the run.
    initial: first step (after a resume).
    enabled: show the bar (it is never shown on processes other than 0).
    description: a label shown before the bar.
  """

  def __init__(self, total: int, initial: int = 0, enabled: bool = True,
               description: Optional[str] = None):
    self._bar = None
    if enabled and jax.process_index() == 0:
      self._bar = progress_bar(total=total, initial=initial,
                               desc=description)
    self._last_time = time.perf_counter()
    self._last_step = initial

  def update(self, step: int, postfix: Optional[Mapping[str, Any]] = None):
    """Marks ``step`` as done; ``postfix`` values are shown on the bar."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if postfix:
        self._bar.set_postfix({k: f"{_scalar(v):.4g}" for k, v in
                               postfix.items()}, refresh=False)

  def rates(self, step: int, examples_per_step: int) -> dict:
    """Step time (s) and examples/s since the previous call."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    dt = (now - self._last_time) / steps
    self._last_time, self._last_step = now, step
    return {"perf/step_time_s": dt,
            "perf/examples_per_s": examples_per_step / max(dt, 1e-12)}

  def reset_timer(self, step: int):
    """Excludes time spent outside training steps (eval, checkpoints)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def close(self):
    if self._bar is not None:
      self._bar.close()
