"""Metric writers (TensorBoard + console) and the training progress bar.

``clu.metric_writers`` writes TensorBoard summaries through TensorFlow, which
is not a dependency here, so :class:`TensorBoardWriter` uses ``tensorboardX``
(pure Python, same event-file format) behind the same small interface:
``write_scalars(step, dict)``, ``write_texts``, ``flush``, ``close``.
:func:`create_writer` returns the writer for this process: TensorBoard +
console on process 0, a no-op elsewhere, so multi-host runs log once.

:class:`Progress` is a tqdm bar on process 0 (rate and ETA) that also
measures step time and examples/s between log points.
"""

import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np


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
  """Logs scalars on one line through absl logging."""

  def __init__(self, prefix: str = ""):
    self._prefix = prefix

  def write_scalars(self, step, scalars):
    parts = ", ".join(f"{k}={_scalar(v):.6g}" for k, v in sorted(
        scalars.items()))
    logging.info("%s[%d] %s", self._prefix, step, parts)

  def write_texts(self, step, texts):
    for k, v in texts.items():
      logging.info("%s[%d] %s: %s", self._prefix, step, k, v)


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files via tensorboardX."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
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


def create_writer(logdir: Optional[str], *, console: bool = True
                  ) -> MetricWriter:
  """TensorBoard (when ``logdir``) + console on process 0; no-op elsewhere."""
  if jax.process_index() != 0:
    return NoOpWriter()
  writers = []
  if logdir:
    writers.append(TensorBoardWriter(logdir))
  if console:
    writers.append(ConsoleWriter())
  return MultiWriter(writers)


class Progress:
  """tqdm progress bar (process 0) + step-time / throughput measurement.

  Args:
    total: last step of the run.
    initial: first step (after a resume).
    enabled: show the bar (it is never shown on processes other than 0).
  """

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    self._bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step",
                            dynamic_ncols=True, smoothing=0.1)
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
