"""The optimiser of every run: optax chain, schedules, per-subtree rates.

``make_optimizer(config.optimizer, num_steps)`` builds one optax
transformation for every trainer (the supervised loop, the per-collection
co-attention trainer, the pre-training stages and ``--mode benchmark``).

Per-subtree learning rates (``config.optimizer.lr_multipliers``) are one
mechanism: ``optax.multi_transform`` over parameter labels. A key names a
parameter subtree by its path, with ``/`` between nested names (``'backbone'``,
``'generator/backbone'``, ``'extractor_net'``); the longest matching prefix
decides a leaf's factor. A factor of 0 freezes the subtree: its updates are
``optax.set_to_zero()`` (so neither the moments nor weight decay move it, and
no optimiser state is kept for it) and :func:`frozen_paths` tells the train
step to treat it as a constant (no backward pass through a frozen encoder);
a longer key with a factor > 0 inside it (:func:`thawed_paths`) trains.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import optax

SCHEDULES = ("constant", "cosine", "step", "poly")
OPTIMIZERS = ("adam", "adamw", "sgd")


def make_schedule(optimizer_config, num_updates: int) -> optax.Schedule:
  """Learning-rate schedule over optimiser updates.

  Args:
    optimizer_config: ``config.optimizer`` (``learning_rate``, ``schedule`` in
      :data:`SCHEDULES`, ``warmup_steps``, ``step_boundaries`` as fractions of
      the run, ``step_factor``, ``poly_power``).
    num_updates: length of the run in optimiser updates.

  Returns:
    An optax schedule: linear warm-up from 0, then the named schedule.
  """
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
    raise ValueError(f"config.optimizer.schedule must be one of "
                     f"{', '.join(SCHEDULES)}; got {name!r}")
  if warmup > 0:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def lr_multipliers(optimizer_config) -> Dict[Tuple[str, ...], float]:
  """``config.optimizer.lr_multipliers`` as {path tuple: factor}."""
  raw = dict(optimizer_config.get("lr_multipliers") or {})
  out = {}
  for key, factor in raw.items():
    path = tuple(p for p in str(key).split("/") if p)
    if not path:
      raise ValueError("config.optimizer.lr_multipliers has an empty key")
    factor = float(factor)
    if factor < 0:
      raise ValueError(f"config.optimizer.lr_multipliers[{key!r}] must be >= "
                       f"0, got {factor}")
    out[path] = factor
  return out


def frozen_paths(optimizer_config) -> Tuple[Tuple[str, ...], ...]:
  """Parameter subtree paths whose ``lr_multipliers`` factor is 0."""
  return tuple(sorted(p for p, f in lr_multipliers(optimizer_config).items()
                      if f == 0.0))


def thawed_paths(optimizer_config) -> Tuple[Tuple[str, ...], ...]:
  """Paths with a factor > 0 inside a frozen subtree (e.g. the top blocks of
  a frozen encoder, ``{'backbone': 0, 'backbone/_blocks_20': 1}``): the
  train step keeps their gradient (:func:`frozen_paths` alone would stop it
  with the whole subtree)."""
  multipliers = lr_multipliers(optimizer_config)
  frozen = frozen_paths(optimizer_config)
  return tuple(sorted(
      p for p, f in multipliers.items()
      if f > 0 and any(len(q) < len(p) and p[:len(q)] == q for q in frozen)))


def longest_key(keys, path: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
  """The longest of ``keys`` (path tuples) that is a prefix of ``path``, or
  None: the key that decides a parameter's factor."""
  return max((k for k in keys if tuple(path[:len(k)]) == tuple(k)), key=len,
             default=None)


def _label(factor: float) -> str:
  return "frozen" if factor == 0.0 else f"lr_x{factor:g}"


def subtree_labels(multipliers: Mapping[Tuple[str, ...], float]):
  """``params -> pytree of labels`` for ``optax.multi_transform``.

  Raises (at ``init``): ValueError naming a multiplier path that the
  parameters do not have.
  """

  def labels(params):
    seen = set()

    def leaf_label(path, _):
      keys = tuple(getattr(k, "key", str(k)) for k in path)
      best = longest_key(multipliers, keys)
      if best is None:
        return "default"
      seen.add(best)
      return _label(multipliers[best])

    out = jax.tree_util.tree_map_with_path(leaf_label, params)
    missing = sorted("/".join(p) for p in set(multipliers) - seen)
    if missing:
      top = sorted(params) if isinstance(params, Mapping) else []
      raise ValueError(
          f"config.optimizer.lr_multipliers names {missing}, which the "
          f"model's parameters do not have (top-level names: {top})")
    return out

  return labels


def make_optimizer(optimizer_config, num_steps: int
                   ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation described by ``config.optimizer``.

  Order of operations on a gradient g (per update):
    1. ``clip_by_global_norm(grad_clip_norm)`` when > 0, over all parameters
       (as ``torch.nn.utils.clip_grad_norm_`` before ``step()``);
    2. L2-style decay (``decoupled_weight_decay=False``, not 'adamw'):
       g <- g + wd * p before the moments, so Adam rescales it (PyTorch
       ``Adam(weight_decay=wd)`` and Caffe semantics);
    3. the moment transform: Adam(b1, b2, eps) or SGD momentum (heavy ball,
       PyTorch convention m <- mu m + g);
    4. decoupled decay ('adamw' or ``decoupled_weight_decay``): u <- u + wd p
       after the moments (never rescaled by Adam);
    5. scale by -learning_rate(schedule);
    6. ``lr_multipliers``: steps 2-5 run per label of
       ``optax.multi_transform`` and a subtree's whole update (decay
       included) is multiplied by its factor; factor 0 is
       ``optax.set_to_zero()``.
  With ``grad_accum_steps`` k > 1 the whole chain is wrapped in
  ``optax.MultiSteps``: the mean gradient of k consecutive micro-batches
  makes one update, and the schedule counts updates.

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
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name must be one of "
                     f"{', '.join(OPTIMIZERS)}; got {name!r}")
  wd = float(cfg.get("weight_decay", 0.0) or 0.0)
  decoupled = bool(cfg.get("decoupled_weight_decay", False)) or name == "adamw"

  def inner(*extra):
    parts = []
    if wd > 0 and not decoupled:
      parts.append(optax.add_decayed_weights(wd))
    if name in ("adam", "adamw"):
      parts.append(optax.scale_by_adam(b1=float(cfg.get("beta1", 0.9)),
                                       b2=float(cfg.get("beta2", 0.999)),
                                       eps=float(cfg.get("eps", 1e-8))))
    else:
      momentum = float(cfg.get("momentum", 0.0) or 0.0)
      if momentum > 0:
        parts.append(optax.trace(decay=momentum, nesterov=False))
    if wd > 0 and decoupled:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts, *extra)

  multipliers = lr_multipliers(cfg)
  if multipliers:
    transforms: Dict[str, Any] = {"default": inner()}
    for factor in set(multipliers.values()):
      transforms[_label(factor)] = (
          optax.set_to_zero() if factor == 0.0 else
          inner(optax.scale(factor)))
    tx = optax.multi_transform(transforms, subtree_labels(multipliers))
  else:
    tx = inner()
  clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedule
