"""The one Orbax wrapper: train state, data-iterator state and config.

A checkpoint at step N lives in ``<workdir>/checkpoints/<N>/`` and holds three
items of one ``orbax.checkpoint.CheckpointManager``:

* ``state``: the train state's arrays (step, params, batch_stats, opt_state,
  rng, and ema_params when the run keeps a moving average of its
  parameters) via ``StandardSave``. Restoring passes a target whose leaves carry the
  *current* mesh's shardings (``StandardRestore``), so a run saved on 4
  devices resumes on 1 or 8 (data parallelism: every leaf is replicated or
  sharded by the method's own rules, never tied to a device count).
* ``data_iter``: the grain iterator's ``get_state()``, one JSON file per
  process (grain's own Orbax handler), so each host resumes its own shard.
* ``config``: the run's config as JSON, for provenance
  (``Checkpointer.restore_config`` reads it back; ``--mode eval`` and
  ``predict`` build the model from the command line's config).

Saving is synchronous: the step function donates the state's buffers, so an
asynchronous save still reading them would race the next step; on the
checkpoint cadences we use the blocking save is a small cost. Orbax writes to
a temporary directory and renames it when complete, so a process killed in
the middle of a save leaves the previous checkpoint as the latest one.

Pre-emption: :class:`PreemptionWatcher` installs a SIGTERM handler that only
sets a flag; the loop checks it at step boundaries, saves and returns (exit
code 0). On a multi-process run the processes must agree on the step, so the
watcher asks Orbax's ``reached_preemption`` (JAX's distributed preemption
sync point) and, every ``sync_every`` steps, all-gathers the flags.
"""

import json
import signal
import threading
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import grain.checkpoint
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

STATE_KEYS = ("step", "params", "batch_stats", "opt_state", "rng")
# Saved only when non-empty, so that a run without a moving average writes
# (and reads) the same items as before it existed.
OPTIONAL_STATE_KEYS = ("ema_params",)


def _state_dict(state) -> Dict[str, Any]:
  out = {k: getattr(state, k) for k in STATE_KEYS}
  for k in OPTIONAL_STATE_KEYS:
    if getattr(state, k):
      out[k] = getattr(state, k)
  return out


def _abstract(tree, shardings=None):
  """ShapeDtypeStructs (with the target shardings) for a restore."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
      tree, shardings)


def config_to_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """JSON-safe dict of a config (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


class Checkpointer:
  """Saves and restores train state + data-iterator state + config.

  Args:
    workdir: run directory; checkpoints go to ``workdir/checkpoints``.
    keep: number of most recent checkpoints kept (``train.keep_checkpoints``).
    create: create the directory (False for read-only use, e.g. eval).
  """

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep and keep > 0 else None, create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    handlers["data_iter"] = _grain_handler()
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=tuple(handlers), options=options,
        item_handlers=handlers)

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self._manager

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state, *, data_iter=None,
           config: Optional[ml_collections.ConfigDict] = None) -> bool:
    """Saves a checkpoint at ``step`` (blocking). Returns True if saved."""
    items = {"state": ocp.args.StandardSave(_state_dict(state))}
    if data_iter is not None:
      items["data_iter"] = _grain_save(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config_to_dict(config))
    saved = self._manager.save(int(step), args=ocp.args.Composite(**items),
                               force=True)
    self._manager.wait_until_finished()
    if saved:
      logging.info("saved checkpoint %d in %s", step, self.directory)
    return saved

  def restore(self, state, *, shardings=None, step: Optional[int] = None,
              data_iter=None) -> Tuple[Any, int]:
    """Restores into a state shaped like ``state`` (on ``shardings``).

    Args:
      state: a TrainState giving structure, shapes and dtypes (its values are
        not read).
      shardings: a pytree of ``jax.sharding.Sharding`` matching ``state`` (the
        current mesh); None keeps Orbax's default placement.
      step: which checkpoint; default latest.
      data_iter: a grain iterator to ``set_state`` from the checkpoint.

    Returns:
      (restored state, step).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = _state_dict(state)
    target_sh = None if shardings is None else _state_dict(shardings)
    items = {"state": ocp.args.StandardRestore(_abstract(target, target_sh))}
    if data_iter is not None:
      items["data_iter"] = _grain_restore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored checkpoint %d from %s", step, self.directory)
    return state.replace(**restored["state"]), step

  def restore_config(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The config dict stored with a checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _grain_handler():
  return grain.checkpoint.CheckpointHandler()


def _grain_save(data_iter):
  return grain.checkpoint.CheckpointSave(data_iter)


def _grain_restore(data_iter):
  return grain.checkpoint.CheckpointRestore(data_iter)


def load_variables(workdir: str, *, step: Optional[int] = None
                   ) -> Tuple[Dict[str, Any], int]:
  """Params and batch_stats of another run's checkpoint (host numpy arrays).

  Used by ``config.init.from_checkpoint`` (fine-tuning from another run) and
  by evaluation: the optimiser state is not read. A run that kept a moving
  average of its parameters (``config.train.ema_decay``) gives the average,
  as ``TrainState.variables`` does during training.

  Returns:
    ({'params': ..., 'batch_stats': ...}, step).
  """
  ckpt = Checkpointer(workdir, create=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  restored = ckpt.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  ckpt.close()
  return {"params": state.get("ema_params") or state["params"],
          "batch_stats": state.get("batch_stats") or {}}, step


def load_apply_variables(workdir: str, *, step: Optional[int] = None
                         ) -> Tuple[Dict[str, Any], int]:
  """``load_variables`` ready for ``model.apply``: a model without
  BatchNorm gets ``{'params': ...}`` only (an empty ``batch_stats``
  collection would not match its variables)."""
  variables, step = load_variables(workdir, step=step)
  if not variables["batch_stats"]:
    variables = {"params": variables["params"]}
  return variables, step


def merge_params(target: Any, source: Any, *, path: str = "") -> Any:
  """Copies ``source`` leaves into ``target`` where the keys match.

  Shapes must agree for every shared key (a mismatch raises, naming the
  path); keys only in ``target`` keep their initial values (e.g. a new head).
  """
  if isinstance(target, dict):
    out = dict(target)
    for k, v in target.items():
      if isinstance(source, dict) and k in source:
        out[k] = merge_params(v, source[k], path=f"{path}/{k}")
    return out
  if np.shape(target) != np.shape(source):
    raise ValueError(f"init checkpoint: shape mismatch at {path}: "
                     f"{np.shape(source)} vs model {np.shape(target)}")
  return np.asarray(source).astype(np.asarray(target).dtype) if isinstance(
      target, np.ndarray) else jax.numpy.asarray(source, target.dtype)


class PreemptionWatcher:
  """SIGTERM -> save at the next step boundary and stop cleanly.

  The handler only sets a flag (signal handlers must not touch JAX). Restores
  the previous handler on ``close()``.
  """

  def __init__(self, checkpointer: Optional[Checkpointer] = None,
               sync_every: int = 10):
    self._flag = threading.Event()
    self._checkpointer = checkpointer
    self._sync_every = max(int(sync_every), 1)
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving at the next step boundary")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    """True when the run should save and stop before ``step + 1``.

    Multi-process: every process must answer the same at the same step, so
    the answer is JAX's preemption sync point (set up by
    ``jax.distributed``) or, every ``sync_every`` steps, whether any
    process received SIGTERM (one small all-gather).
    """
    if jax.process_count() == 1:
      return self._flag.is_set()
    if (self._checkpointer is not None and
        self._checkpointer.reached_preemption(step)):
      return True
    if step % self._sync_every:
      return False
    flags = multihost_utils.process_allgather(
        np.int32(self._flag.is_set()))
    return bool(np.any(flags))

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
