"""Device mesh, batch placement and multi-host start-up (data parallelism).

One mesh axis, ``'data'``, spans the devices (all of them by default, over
every process). Batches are split along their leading axis over ``'data'``;
parameters and optimiser state are replicated unless a method supplies its
own rules (``MethodSpec.param_sharding_rules``). Everything goes through
``jax.jit`` with ``NamedSharding``s: no ``pmap``.

Multi-host: every process calls :func:`maybe_initialize_distributed` before
touching devices, reads its own disjoint slice of the data
(``jax.process_index()`` of ``jax.process_count()``), and
:func:`shard_batch` assembles the per-process local batches into one global
``jax.Array`` with ``jax.make_array_from_process_local_data``. The global batch
is therefore the concatenation of the processes' local batches in process
order, which is what makes a 2-process run equal a 1-process run that reads
the same records.
"""

import os
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def maybe_initialize_distributed(mesh_config: Optional[Any] = None) -> bool:
  """Calls ``jax.distributed.initialize`` when a multi-process run asks for it.

  Triggered by ``mesh_config.initialize_distributed`` or an explicit
  ``mesh_config.coordinator_address`` / env ``COSEG_COORDINATOR``. With only
  the flag set, JAX auto-detects the cluster (TPU pod slices, SLURM, Open
  MPI); otherwise the address, process count and id come from the config or
  from env ``COSEG_COORDINATOR``, ``COSEG_NUM_PROCESSES``, ``COSEG_PROCESS_ID``.

  Returns:
    True when this call initialised the distributed runtime.
  """
  get = (lambda k: mesh_config.get(k)) if mesh_config is not None else (
      lambda k: None)
  address = get("coordinator_address") or os.environ.get("COSEG_COORDINATOR")
  wanted = bool(get("initialize_distributed")) or bool(address)
  if not wanted:
    return False
  if jax.distributed.is_initialized():
    return False
  num = get("num_processes")
  pid = get("process_id")
  if num is None and os.environ.get("COSEG_NUM_PROCESSES"):
    num = int(os.environ["COSEG_NUM_PROCESSES"])
  if pid is None and os.environ.get("COSEG_PROCESS_ID"):
    pid = int(os.environ["COSEG_PROCESS_ID"])
  if address:
    # Cross-process collectives on the CPU backend need an implementation;
    # the setting only affects CPU devices, so it is harmless on GPU/TPU.
    # (Asking jax.default_backend() here would start the backends too early.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if address:
    kwargs.update(coordinator_address=address, num_processes=num,
                  process_id=pid)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d",
               jax.process_index(), jax.process_count())
  return True


def configure(config) -> None:
  """What must happen before JAX starts its backends: deterministic GPU
  reductions (``config.train.deterministic``, through XLA_FLAGS) and the
  multi-host start-up (:func:`maybe_initialize_distributed`). The command
  line calls it first thing; calling it again is harmless."""
  if config.get("train") is not None and config.train.get("deterministic",
                                                         False):
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true"
                                 ).strip()
  maybe_initialize_distributed(config.get("mesh"))


def make_mesh(num_data: int = -1) -> Mesh:
  """A 1-D mesh with axis 'data' over ``num_data`` devices (-1 = all).

  Uses every process's devices (``jax.devices()``), so on a multi-host run the
  mesh is global. With ``num_data`` > 0 on one process, the first
  ``num_data`` devices are used (tests, benchmarks).
  """
  devices = jax.devices()
  if num_data in (-1, None, 0):
    num_data = len(devices)
  if num_data > len(devices):
    raise ValueError(f"config.mesh.data={num_data} but only {len(devices)} "
                     f"devices are visible")
  if jax.process_count() > 1 and num_data != len(devices):
    raise ValueError("multi-host runs use every device: set config.mesh.data "
                     "to -1")
  return Mesh(np.asarray(devices[:num_data]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch array: leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of the global batch; checks divisibility."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(f"config.train.global_batch_size={global_batch_size} is "
                     f"not divisible by the {n_dev} devices of the mesh")
  if global_batch_size % jax.process_count():
    raise ValueError(f"global batch {global_batch_size} not divisible by "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Places this process's local batch into global arrays sharded on 'data'.

  Args:
    batch: dict of numpy arrays with the local batch on axis 0 (every process
      passes its own, equally sized, slice).
    mesh: the data mesh.

  Returns:
    dict of global ``jax.Array``s whose axis 0 is the process-ordered
    concatenation of the local batches.
  """
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def param_shardings(params: Any, mesh: Mesh,
                    rules: Optional[Callable[[Any, Mesh], Any]] = None) -> Any:
  """NamedShardings for a params-shaped pytree (replicated by default).

  Args:
    params: pytree of arrays or ShapeDtypeStructs.
    mesh: the mesh.
    rules: optional method hook ``(params, mesh) -> pytree of PartitionSpec``
      with the structure of ``params``.
  """
  if rules is None:
    return jax.tree.map(lambda _: replicated(mesh), params)
  specs = rules(params, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def state_shardings(state: Any, mesh: Mesh,
                    rules: Optional[Callable[[Any, Mesh], Any]] = None) -> Any:
  """Shardings for a whole TrainState: params and their moving average by
  ``rules``, the rest replicated (optimiser moments of non-replicated params
  follow them only when ``rules`` is None; methods with rules should shard
  their own state)."""
  shardings = jax.tree.map(lambda _: replicated(mesh), state)
  if rules is not None:
    shardings = shardings.replace(
        params=param_shardings(state.params, mesh, rules))
    if state.ema_params:
      shardings = shardings.replace(
          ema_params=param_shardings(state.ema_params, mesh, rules))
  return shardings


def to_host(tree: Any) -> Any:
  """Fully replicated (or addressable) arrays -> numpy, for logging/saving."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
