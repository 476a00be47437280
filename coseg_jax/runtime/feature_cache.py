"""Building the frozen-encoder feature cache of a run.

With ``config.data.feature_cache.enabled``, the supervised trainer calls
:func:`build` before training: every training scene (records and composite
scenes, ``data_pipelines.scenes``) is rendered in ``views`` views, encoded by
the run's own frozen backbone (its ImageNet weights, or whatever
``config.init`` loaded) in evaluation mode, and stored with its class map
(layout and reader: ``data_pipelines.feature_cache``). Training then reads
batches of features from the cache (:func:`make_dataset_fn`) and the model
runs from them (``model.apply(..., features=...)``): no decoding, no
augmentation and no encoder pass in the step.

* Where: ``config.data.feature_cache.dir`` or ``<workdir>/feature_cache``,
  in a subdirectory named by the digest of the cache's spec.
* What shapes it (the spec): the data set, split, class and holdout
  selection, image size and resize, augmentation, composites, seed, the
  number of views, the encoder (name, attributes, compute dtype, and a
  digest of its weights and statistics), the levels the model reads and the
  storage dtype. A change of any of them gives another digest, hence a new
  cache: never a stale one.
* Sharded per JAX process: chunk c is built by process c mod P; all
  processes then read every chunk (the workdir is shared on multi-host
  runs). Resumable: whole chunks survive a kill and are not built again.
* Requirements: the backbone frozen (``optimizer.lr_multipliers`` 0 on
  ``'backbone'``) and in evaluation mode (``model.backbone_eval_mode``), a
  model that reads precomputed features (``feature_levels``), a data set of
  image records. Anything else is a one-line error naming the field.
* Fine-tuning the top of the encoder (``feature_cache.finetune_from``, a
  level such as 'stride16'): the cache stores the levels up to that one,
  computed by the frozen bottom of the backbone; the train step runs the
  backbone's later blocks from the stored level (``make_completion``) with
  their parameters trainable (a factor > 0 in ``lr_multipliers`` on each of
  them, e.g. ``configs/pascal_voc_coseg.finetune_top``), still in evaluation
  mode. Evaluation and prediction run the whole backbone on images, with
  those fine-tuned blocks. The bottom's cost stays out of the step; only the
  top's forward and backward pass are paid, at its small spatial sizes.
"""

import hashlib
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from coseg_jax import backbones
from coseg_jax.runtime import console
from coseg_jax.runtime import optimizer as optimizer_lib
from data_pipelines import feature_cache as cache_lib
from data_pipelines import pipeline
from data_pipelines import scenes as scenes_lib

FORMAT_VERSION = 1


def enabled(config) -> bool:
  cache = config.data.get("feature_cache")
  return bool(cache is not None and cache.get("enabled", False))


def finetune_from(config) -> Optional[str]:
  """The level the train step resumes the backbone from, or None (the whole
  backbone frozen and cached)."""
  if not enabled(config):
    return None
  return config.data.feature_cache.get("finetune_from") or None


def stored_levels(config, model) -> Tuple[str, ...]:
  """The levels the cache stores: the model's (``feature_levels``), or with
  ``finetune_from`` those up to it plus that level itself."""
  levels = tuple(model.feature_levels)
  level = finetune_from(config)
  if level is None:
    return levels
  order = backbones.FEATURE_LEVELS
  below = {l for l in levels if order.index(l) < order.index(level)}
  return tuple(sorted(below | {level}, key=order.index))


def _backbone_module(model):
  return backbones.get_backbone(model.backbone, dtype=model.dtype,
                                **model.encoder_kwargs)


def _frozen_modules(config, model) -> Tuple[str, ...]:
  """Names of the backbone submodules that compute the stored levels, when
  fine-tuning the top (else ())."""
  level = finetune_from(config)
  if level is None:
    return ()
  return tuple(_backbone_module(model).modules_through(level))


def _check_finetune(config, program, level: str) -> None:
  """Raises unless the backbone can resume from ``level`` and exactly its
  bottom (the modules computing the stored levels) is frozen."""
  module = _backbone_module(program.model)
  field = "config.data.feature_cache.finetune_from"
  if not hasattr(module, "modules_through"):
    raise ValueError(f"{field}: backbone {program.model.backbone!r} cannot "
                     f"resume a forward pass from a level (EfficientNet-Lite "
                     f"can)")
  try:
    bottom = module.modules_through(level)
  except ValueError as e:
    raise ValueError(f"{field}: {e}") from None
  multipliers = optimizer_lib.lr_multipliers(config.optimizer)

  def factor(name):
    best = optimizer_lib.longest_key(multipliers, ("backbone", name))
    return 1.0 if best is None else multipliers[best]

  thawed = [n for n in bottom if factor(n) != 0.0]
  if thawed:
    raise ValueError(f"{field}={level!r} caches what backbone/{thawed[0]} "
                     f"computes, so config.optimizer.lr_multipliers must "
                     f"freeze it (factor 0)")
  top = [n for n in program.state.params["backbone"] if n not in bottom]
  if not any(factor(n) > 0 for n in top):
    raise ValueError(f"{field}={level!r}: no backbone module past it has a "
                     f"factor > 0 in config.optimizer.lr_multipliers, so "
                     f"nothing would be fine-tuned")


def check(config, program) -> None:
  """Raises ValueError (one line, naming the field) when the run cannot
  train from cached features."""
  level = finetune_from(config)
  if level is not None:
    _check_finetune(config, program, level)
  elif ("backbone",) not in program.frozen:
    raise ValueError("config.data.feature_cache needs a frozen backbone: set "
                     "config.optimizer.lr_multipliers={'backbone': 0.0}")
  if not config.model.get("backbone_eval_mode", False):
    raise ValueError("config.data.feature_cache needs "
                     "config.model.backbone_eval_mode=True (a backbone in "
                     "training mode gives batch-dependent features)")
  if not hasattr(program.model, "feature_levels"):
    raise ValueError(f"config.data.feature_cache: method {config.method!r} "
                     f"cannot run from precomputed features")
  if config.data.name in pipeline.PAIR_RECORD_DATASETS:
    raise ValueError(f"config.data.feature_cache: {config.data.name!r} holds "
                     f"pair records; the cache covers image data sets")
  storage = config.data.feature_cache.get("dtype", "float16")
  if storage not in cache_lib.STORAGE_DTYPES:
    raise ValueError(f"config.data.feature_cache.dtype must be one of "
                     f"{cache_lib.STORAGE_DTYPES}, got {storage!r}")
  if int(config.data.feature_cache.views) < 1:
    raise ValueError("config.data.feature_cache.views must be >= 1")


def weights_digest(program, modules=()) -> str:
  """sha256 of the backbone's parameters and statistics (its identity);
  with ``modules``, of those submodules only (the frozen bottom that a
  fine-tuning run caches, whose top changes as it trains)."""
  digest = hashlib.sha256()
  trees = [program.state.params["backbone"],
           (program.state.batch_stats or {}).get("backbone", {})]
  if modules:
    trees = [{k: v for k, v in t.items() if k in modules} for t in trees]
  for tree in trees:
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(
        x[0])):
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def cache_spec(config, program, *, scene_ids) -> Dict[str, Any]:
  """Everything that shapes the cache of ``config`` (see module docstring)."""
  d = config.data
  keys = ("name", "builder_config", "train_split", "classes",
          "exclude_classes", "class_slice", "holdout_fraction", "holdout_seed",
          "holdout_part", "image_size", "resize", "seed")
  data = {k: d.get(k) for k in keys}
  data["augment"] = d.augment.to_dict()
  data["composites"] = d.composites.to_dict() if d.get("composites") else {}
  if d.name == "synthetic" and d.get("builder_config") is None:
    data["synthetic"] = d.synthetic.to_dict()
  model = program.model
  cache = d.feature_cache
  spec = {
      "format": FORMAT_VERSION,
      "data": data,
      "views": int(cache.views),
      "chunk_size": int(cache.chunk_size),
      "scene_ids": [int(i) for i in scene_ids],
      "encoder": {"backbone": model.backbone,
                  "kwargs": dict(model.encoder_kwargs),
                  "dtype": str(jnp.dtype(model.dtype)),
                  "weights": weights_digest(
                      program, _frozen_modules(config, model))},
      "levels": list(stored_levels(config, model)),
      "dtype": cache.get("dtype", "float16"),
  }
  if finetune_from(config) is not None:
    spec["finetune_from"] = finetune_from(config)
  return spec


def cache_root(config, workdir: str) -> str:
  return os.path.expanduser(config.data.feature_cache.get("dir") or
                            os.path.join(workdir, "feature_cache"))


def training_scenes(config) -> scenes_lib.Scenes:
  """The scenes a run trains on (the same ones the live pipeline samples)."""
  split = config.data.get("train_split", "train")
  source = pipeline.load_source(config.data, split)
  index = pipeline.record_index_of(source, config.data)
  return scenes_lib.Scenes(source, index, config.data, train=True)


def _encoder(config, program):
  """Jitted images [N, H, W, 3] -> {level: [N, h, w, C]} of the frozen
  backbone in evaluation mode (the stored levels)."""
  model = program.model
  module = _backbone_module(model)
  variables = {"params": program.state.params["backbone"]}
  stats = (program.state.batch_stats or {}).get("backbone")
  if stats:
    variables["batch_stats"] = stats
  variables = jax.device_get(variables)
  levels = stored_levels(config, model)

  @jax.jit
  def run(images):
    feats = module.apply(variables, images, train=False).features
    missing = [l for l in levels if l not in feats]
    if missing:
      raise ValueError(f"backbone {model.backbone!r} gives no {missing}")
    return {l: feats[l] for l in levels}

  return run


def feature_shapes(config, program,
                   image_size) -> Dict[str, Tuple[int, ...]]:
  """{level: [h, w, C]} the cache stores for images of ``image_size``."""
  module = _backbone_module(program.model)
  h, w = image_size
  shapes = jax.eval_shape(
      lambda x: module.init_with_output(jax.random.PRNGKey(0), x)[0].features,
      jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  return {l: tuple(shapes[l].shape[1:])
          for l in stored_levels(config, program.model)}


def make_completion(config, model) -> Optional[Callable[..., Any]]:
  """The train step's completion of cached features, or None without
  ``finetune_from``.

  Returns ``complete(params, batch_stats, features) -> features``: from the
  stored level [B, K, h, w, C] of ``features``, runs the backbone's later
  blocks with ``params['backbone']`` (and its statistics, evaluation mode)
  and returns the levels the model reads, {level: [B, K, h', w', C']}. Run
  inside the loss, so the gradient reaches those blocks.
  """
  level = finetune_from(config)
  if level is None:
    return None
  module = _backbone_module(model)
  wanted = tuple(model.feature_levels)

  def complete(params, batch_stats, features):
    x = features[level]
    b, k = x.shape[:2]
    variables = {"params": params["backbone"]}
    stats = (batch_stats or {}).get("backbone")
    if stats:
      variables["batch_stats"] = stats
    top = module.apply(variables, x.reshape(b * k, *x.shape[2:]),
                       train=False, input_level=level).features
    return {l: (features[l] if l in features else
                top[l].reshape(b, k, *top[l].shape[1:])) for l in wanted}

  return complete


def build(config, program, workdir: str) -> Tuple[str, np.ndarray]:
  """Builds (or completes, or reuses) the cache of ``config``.

  Returns:
    (the cache directory, complete; the membership [num_scenes, C] of its
    scenes, for the samplers).
  """
  check(config, program)
  scenes = training_scenes(config)
  # Only scenes the samplers can draw (the class and holdout selection).
  scene_ids = np.flatnonzero(scenes.membership.any(1))
  spec = cache_spec(config, program, scene_ids=scene_ids)
  directory = os.path.join(cache_root(config, workdir),
                           cache_lib.spec_digest(spec))
  if cache_lib.is_complete(directory):
    console.info(f"feature cache: reusing {directory}")
    return directory, scenes.membership
  cache_lib.write_spec(directory, spec)
  chunk_size, views = spec["chunk_size"], spec["views"]
  n_chunks = cache_lib.num_chunks(len(scene_ids), chunk_size)
  mine = [c for c in range(n_chunks)
          if c % jax.process_count() == jax.process_index()
          and not os.path.exists(cache_lib.chunk_path(directory, c))]
  storage = np.dtype(spec["dtype"])
  encode = _encoder(config, program)
  batch = int(config.data.feature_cache.get("batch_size", 16))
  seed = int(config.data.get("seed", 0))
  start = time.time()
  todo = sum(min(chunk_size, len(scene_ids) - c * chunk_size) for c in mine)
  console.info(f"feature cache: {len(scene_ids)} scenes x {views} views of "
               f"{config.model.backbone} features into {directory} "
               f"({todo * views} views to build here)")
  bar = console.progress_bar(total=todo * views, unit="view",
                             desc="feature cache")
  for c in mine:
    ids = scene_ids[c * chunk_size:(c + 1) * chunk_size]
    items = []  # (scene, view, image, class map)
    for sid in ids:
      sid = int(sid)
      scene = scenes[sid]
      for v in range(views):
        image, class_map = cache_lib.render_view(
            scene, scene_id=sid, view=v, data_config=config.data, seed=seed)
        items.append((sid, v, image, class_map))
    records = []
    for s in range(0, len(items), batch):
      part = items[s:s + batch]
      images = np.stack([it[2] for it in part])
      pad = batch - len(part)
      if pad:  # one compiled shape
        images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
      feats = jax.device_get(encode(jnp.asarray(images)))
      for i, (sid, v, _, class_map) in enumerate(part):
        records.append({
            "scene": sid, "view": v, "class_map": class_map,
            "features": {l: np.asarray(f[i]).astype(storage)
                         for l, f in feats.items()}})
      bar.update(len(part))
    cache_lib.write_chunk(directory, c, records)
  bar.close()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("feature cache built")
  if jax.process_index() == 0:
    missing = [c for c in range(n_chunks)
               if not os.path.exists(cache_lib.chunk_path(directory, c))]
    if missing:
      raise RuntimeError(f"feature cache {directory}: chunks {missing} are "
                         f"missing after the build")
    with open(os.path.join(directory, cache_lib.COMPLETE_FILE), "w") as f:
      f.write(f"{len(scene_ids)} scenes x {views} views\n")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("feature cache complete")
  console.info(f"feature cache: built in {time.time() - start:.0f} s")
  return directory, scenes.membership


def make_dataset_fn(directory: str, membership: np.ndarray):
  """A trainer ``dataset_fn`` streaming batches from the cache."""

  def dataset_fn(config, *, batch_size, process_index, process_count):
    return cache_lib.make_cached_dataset(
        config.data, directory, membership, batch_size=batch_size,
        seed=int(config.train.seed),
        groups_per_epoch=config.data.get("groups_per_epoch"),
        process_index=process_index, process_count=process_count)

  return dataset_fn
