"""The compiled functions of a run: the train step and inference.

* :func:`make_train_step`: the jitted ``(state, batch) -> (state, metrics)``
  of every trainer.
* :func:`build_train_program`: model, state, mesh and train step of a config,
  assembled exactly as the supervised trainer runs them; ``--mode benchmark``
  times this very object, so a benchmark figure is the step training runs.
* :func:`make_forward` / :func:`make_predict_batch`: images -> foreground
  probabilities through the method's ``predict_fn`` (CoSegNet's decision
  gate) or ``sigmoid(mask_logits)``; used by evaluation, prediction, figures
  and the benchmark.
"""

import dataclasses
import functools
from typing import (Any, Callable, Dict, Mapping, Optional, Sequence, Tuple,
                    Union)

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from coseg_jax import common_selection
from coseg_jax import models
from coseg_jax.nn import resize
from coseg_jax.runtime import feature_cache
from coseg_jax.runtime import optimizer as optimizer_lib
from coseg_jax.runtime import sharding as sharding_lib
from coseg_jax.runtime import state as state_lib

PathLike = Union[str, Tuple[str, ...]]


def _as_path(p: PathLike) -> Tuple[str, ...]:
  return tuple(x for x in p.split("/") if x) if isinstance(p, str) else tuple(p)


def stop_gradient_at(params, paths: Sequence[Tuple[str, ...]],
                     keep: Sequence[Tuple[str, ...]] = ()):
  """``params`` with ``lax.stop_gradient`` on the subtrees at ``paths``,
  except the subtrees at ``keep`` inside them (which keep their gradient).

  A leaf follows the longest of ``paths`` and ``keep`` that is a prefix of
  its path, so a frozen path inside a kept one is frozen again.
  """
  if not paths:
    return params
  paths, keep = [tuple(p) for p in paths], [tuple(p) for p in keep]
  for kind, group in (("frozen", paths), ("trainable", keep)):
    for p in group:
      node = params
      for i, key in enumerate(p):
        if not isinstance(node, Mapping) or key not in node:
          raise ValueError(f"{kind} parameter subtree {'/'.join(p[:i + 1])!r}"
                           f" is not in the model's parameters "
                           f"{sorted(node) if isinstance(node, Mapping) else []}")
        node = node[key]
  rules = {**{p: False for p in keep}, **{p: True for p in paths}}

  def leaf(path, x):
    keys = tuple(getattr(k, "key", str(k)) for k in path)
    best = optimizer_lib.longest_key(rules, keys)
    return jax.lax.stop_gradient(x) if best and rules[best] else x

  return jax.tree_util.tree_map_with_path(leaf, params)


FEATURES_PREFIX = "features/"


def model_inputs(batch) -> Tuple[jax.Array, Optional[Dict[str, jax.Array]]]:
  """(images, features or None) of a batch.

  A batch from the feature cache carries ``features/<level>`` [B, K, h, w,
  C] instead of images; the model then runs from them and the images are a
  zero placeholder of the masks' spatial shape (only its shape is read, so
  XLA drops it).
  """
  feats = {k[len(FEATURES_PREFIX):]: v for k, v in batch.items()
           if k.startswith(FEATURES_PREFIX)}
  if not feats:
    return batch["images"], None
  return jnp.zeros(batch["masks"].shape[:-1] + (3,), jnp.float32), feats


def make_train_step(*, model, loss_fn, loss_config, mesh=None,
                    state_shardings=None, donate: bool = True,
                    frozen: Sequence[PathLike] = (),
                    thawed: Sequence[PathLike] = (),
                    complete_features: Optional[Callable[..., Any]] = None,
                    ema_decay: float = 0.0):
  """The jitted ``(state, batch) -> (state, metrics)`` step.

  The loss is ``loss_fn(outputs=..., batch=..., loss_config=...)`` of the
  method. Metrics: ``loss``, every weighted term under ``loss_terms/``,
  ``grad_norm`` and ``finite`` (1.0 when loss and gradient norm are finite),
  all float32 scalars, replicated. The per-step dropout key is
  ``fold_in(state.rng, state.step)``, so a resumed run draws exactly the
  numbers an uninterrupted one would.

  ``frozen`` names parameter subtrees (paths, ``'a/b'`` or tuples) that are
  constants of the loss (``stop_gradient``): their gradient is exactly 0 and
  JAX emits no backward pass for them, so a frozen encoder costs only its
  forward pass (their BatchNorm statistics still update unless the model
  runs its backbone in evaluation mode, ``model.backbone_eval_mode``). The
  trainers pass :func:`optimizer.frozen_paths`, the subtrees whose
  ``lr_multipliers`` factor is 0, and :func:`optimizer.thawed_paths`, the
  subtrees inside them that train (``thawed``).

  ``complete_features(params, batch_stats, features) -> features`` (from
  ``feature_cache.make_completion``) turns a cached batch's stored levels
  into the levels the model reads, inside the loss (so the encoder blocks
  it runs get gradients).

  ``ema_decay`` > 0 (``config.train.ema_decay``) updates the state's
  ``ema_params`` after every step (:func:`state.ema_update`); the state
  must have been created with the same setting.
  """
  loss_config = dict(loss_config)
  ema_decay = float(ema_decay)
  frozen = tuple(_as_path(p) for p in frozen)
  thawed = tuple(_as_path(p) for p in thawed)

  def step_fn(state: state_lib.TrainState, batch):
    if bool(state.ema_params) != (ema_decay > 0):
      raise ValueError(
          f"config.train.ema_decay={ema_decay} does not match the train "
          f"state, which {'keeps' if state.ema_params else 'has no'} moving "
          f"average of its parameters (create both from the same config)")
    rng = jax.random.fold_in(state.rng, state.step)
    has_bs = bool(state.batch_stats)

    images, feats = model_inputs(batch)
    kwargs = {} if feats is None else {"features": feats}

    def compute_loss(params):
      variables = {"params": stop_gradient_at(params, frozen, thawed)}
      if complete_features is not None and feats is not None:
        kwargs["features"] = complete_features(
            variables["params"], state.batch_stats, feats)
      if has_bs:
        variables["batch_stats"] = state.batch_stats
        outputs, new_vars = model.apply(
            variables, images, train=True, rngs={"dropout": rng},
            mutable=["batch_stats"], **kwargs)
      else:
        outputs = model.apply(variables, images, train=True,
                              rngs={"dropout": rng}, **kwargs)
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
    if ema_decay > 0:
      new_state = new_state.replace(ema_params=state_lib.ema_update(
          state.ema_params, params, state.step, ema_decay))
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


def loss_config_of(config, spec: models.MethodSpec) -> Dict[str, float]:
  """The loss weights of a run: ``config.loss``, else the method's default."""
  loss = config.get("loss")
  return dict(loss) if loss else dict(spec.default_loss)


@dataclasses.dataclass
class TrainProgram:
  """Everything a supervised run compiles and steps.

  Attributes:
    config: the run's config.
    spec: the method's registry entry.
    model: its Flax module.
    mesh: the 1-D 'data' mesh.
    state: the initial train state (on the mesh).
    shardings: the state's shardings.
    train_step: the jitted step (state donated).
    schedule: learning rate over optimiser updates.
    frozen: the frozen parameter paths.
    thawed: the trainable paths inside them.
    example_extras: batch entries besides the data contract's that the step
      reads (e.g. the co-attention stage's ``mask_weight``), with example
      values; ``--mode benchmark`` adds them to its random batch.
  """
  config: ml_collections.ConfigDict
  spec: models.MethodSpec
  model: Any
  mesh: Any
  state: state_lib.TrainState
  shardings: Any
  train_step: Callable[..., Any]
  schedule: optax.Schedule
  frozen: Tuple[Tuple[str, ...], ...]
  thawed: Tuple[Tuple[str, ...], ...] = ()
  example_extras: Dict[str, Any] = dataclasses.field(default_factory=dict)


def build_train_program(config, *, mesh=None, apply_init: bool = True,
                        loss_fn: Optional[Callable[..., Any]] = None
                        ) -> TrainProgram:
  """Model, state and train step of ``config``, as the trainer runs them.

  Args:
    config: the run's config.
    mesh: the device mesh (default: ``config.mesh.data`` devices).
    apply_init: apply ``config.init`` to the fresh state.
    loss_fn: replaces the method's loss (a trainer with its own schedule of
      terms, e.g. the co-attention stages).
  """
  spec = models.get_method(config.method)
  model = spec.build_model(config.model)
  if mesh is None:
    mesh = sharding_lib.make_mesh(config.mesh.get("data", -1))
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer,
                                              int(config.train.num_steps))
  state, shardings = state_lib.create_train_state(
      config, model, tx=tx, mesh=mesh, param_rules=spec.param_sharding_rules,
      apply_init=apply_init)
  frozen = optimizer_lib.frozen_paths(config.optimizer)
  thawed = optimizer_lib.thawed_paths(config.optimizer)
  train_step = make_train_step(
      model=model, loss_fn=loss_fn or spec.loss_fn,
      loss_config=loss_config_of(config, spec), mesh=mesh,
      state_shardings=shardings, frozen=frozen, thawed=thawed,
      complete_features=feature_cache.make_completion(config, model),
      ema_decay=state_lib.ema_decay_of(config))
  return TrainProgram(config=config, spec=spec, model=model, mesh=mesh,
                      state=state, shardings=shardings, train_step=train_step,
                      schedule=schedule, frozen=frozen, thawed=thawed)


def make_forward(config, model) -> Callable[[Any, jax.Array], jax.Array]:
  """Pure ``(variables, images [B,K,h,w,3]) -> probabilities [B,K,h,w,1]``.

  Uses the method's ``predict_fn`` when it has one (e.g. CoSegNet's decision
  gate), else ``sigmoid(mask_logits)`` in float32. Test-time augmentation
  (``config.eval``): with ``flip`` the probabilities are the mean of the
  group's and of its horizontal mirror's (every image of the group mirrored
  together, so that pairs stay pairs; the mirror's map is mirrored back),
  which makes the output exactly mirror-equivariant; with ``scales`` other
  than ``(1.0,)`` the group is also run resized by each factor (bilinear,
  antialiased when shrinking) and each map is resized back to h x w before
  the mean. The cost is one forward pass per scale and mirror.
  """
  spec = models.get_method(config.method)
  options = config.get("eval", None) or {}
  flip = bool(options.get("flip", False))
  scales = tuple(float(s) for s in options.get("scales", (1.0,)))
  if not scales or min(scales) <= 0:
    raise ValueError(f"config.eval.scales must be positive factors, got "
                     f"{scales}")

  def probabilities(variables, images):
    outputs = model.apply(variables, images, train=False)
    if spec.predict_fn is not None:
      return spec.predict_fn(outputs=outputs, batch={"images": images},
                             config=config)
    return jax.nn.sigmoid(outputs.mask_logits.astype(jnp.float32))

  def at_scale(variables, images, scale):
    if scale == 1.0:
      return probabilities(variables, images)
    b, k, h, w, c = images.shape
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = resize.bilinear_resize(images.reshape((b * k, h, w, c)), size)
    probs = probabilities(variables, resized.reshape((b, k) + size + (c,)))
    back = resize.bilinear_resize(
        probs.reshape((b * k,) + probs.shape[2:]), (h, w))
    return back.reshape((b, k, h, w, probs.shape[-1]))

  def forward(variables, images):
    maps = []
    for scale in scales:
      maps.append(at_scale(variables, images, scale))
      if flip:
        mirrored = at_scale(variables, jnp.flip(images, axis=3), scale)
        maps.append(jnp.flip(mirrored, axis=3))
    return maps[0] if len(maps) == 1 else sum(maps) / len(maps)

  return forward


def make_inference(config, model, mesh=None):
  """The jitted inference ``(variables, images) -> probabilities`` that
  evaluation and prediction run: :func:`make_forward` under ``jax.jit``;
  with a ``mesh`` the output is replicated (so every process of a
  multi-host run can read it) and the caller places the images sharded on
  'data'."""
  forward = make_forward(config, model)
  if mesh is None:
    return jax.jit(forward)
  return jax.jit(forward, out_shardings=sharding_lib.replicated(mesh))


def make_predict_batch(*, config, model, variables, mesh=None
                       ) -> Callable[[np.ndarray], np.ndarray]:
  """``images [B,K,h,w,3] (numpy) -> probabilities [B,K,h,w,1] (numpy)``
  through :func:`make_inference` (with a mesh, B must divide by its 'data'
  axis)."""
  run = make_inference(config, model, mesh)
  sharding = None if mesh is None else sharding_lib.data_sharding(mesh)
  selection = common_selection_of(config)

  def predict_batch(images):
    images = np.asarray(images, np.float32)
    placed = images if sharding is None else jax.device_put(images, sharding)
    probs = np.asarray(jax.device_get(run(variables, placed)))
    if selection is not None:
      describe, settings = selection
      selected, _ = common_selection.select_common_batch(
          images, probs[..., 0], describe, settings)
      probs = selected[..., None]
    return probs

  return predict_batch


@functools.lru_cache(maxsize=2)
def _describer(backbone: str, path: str):
  return common_selection.make_describer(backbone, path or None)


def common_selection_of(config):
  """(describer, ``SelectionConfig``) of ``config.eval.common_selection``,
  or None when it is off or absent.

  Its ``threshold`` left at None (or absent) is the evaluation's cut,
  ``config.eval.threshold`` (0.5 when unset): components found at a
  higher threshold than the masks are cut at would leave the pixels
  between the two foreground without being judged.

  Raises:
    ValueError: naming an unknown field of ``config.eval.common_selection``.
  """
  options = (config.get("eval", None) or {}).get("common_selection", None)
  if not options or not options.get("enabled", False):
    return None
  fields = {f.name for f in dataclasses.fields(common_selection.SelectionConfig)}
  unknown = sorted(set(options) - fields - {"enabled", "backbone", "path"})
  if unknown:
    raise ValueError(f"config.eval.common_selection: unknown field(s) "
                     f"{unknown}")
  kwargs = {k: options[k] for k in fields if k in options}
  if kwargs.get("threshold") is None:
    kwargs["threshold"] = float(config.eval.get("threshold", 0.5))
  settings = common_selection.SelectionConfig(**kwargs)
  return (_describer(str(options.get("backbone", "efficientnet_lite2")),
                     str(options.get("path", "") or "")), settings)
