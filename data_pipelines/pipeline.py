"""The grain input pipeline: sampled groups -> augmented, batched numpy dicts.

``make_dataset`` builds, for one JAX process::

  groups of record ids (samplers, a pure function of (seed, epoch))
    -> this process's shard (every process_count-th group)
    -> load the K records + augment/resize them (seeded by the group's index)
    -> batch (drop_remainder in training) -> optional multiprocessing prefetch

on top of ``registry.load_source`` (TFDS array_record data sources, random
access). Because every step is a deterministic function of the element index,
the iterator state is just a position: ``get_state()`` / ``set_state()``
restore a run exactly, with or without workers.

Batches (B = per-process batch, K = group size; docs/design.md):
  images float32 [B, K, H, W, 3] in [0, 1]; masks float32 [B, K, H, W, 1] in
  {0, 1}; valid float32 [B, K, H, W, 1]; has_common int32 [B]; class_ids int32
  [B, K]; record_ids int32 [B, K]. Pair-record datasets (tss, pf_pascal,
  pf_willow) yield each record as one K=2 group (record_ids = [i, i]) and add
  ``keypoints`` float32 [B, 2, P, 2] (NaN padded to ``max_keypoints``, pf_*) or
  ``flows`` float32 [B, 2, H, W, 2] (flow12, flow21 resized to the input and
  rescaled to input pixels; tss). Their geometry is only resized, never
  randomly augmented, so keypoints and flows stay exact; pf_* records have no
  masks (``valid`` = 0 everywhere).

Target masks: a member's mask is foreground on the classes in its sampled
target (see ``samplers``); image-record datasets store a binary mask of their
one class, so the target is that mask or (negatives, triplet negatives) empty.
voc2012_coseg stores ``class_mask`` with VOC indices (0 = background, c + 1 =
``labels`` class c, 255 void); the target is the union of the shared classes,
255 stays ignore. ``class_ids`` is the member's class (for multi-label records
the lowest target class, else the lowest class present).

Epoch length: ``groups_per_epoch`` (default: records in the split); training
is an endless stream of epochs, each a fresh draw. Evaluation (``train=False``)
is one deterministic pass without augmentation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Optional, Sequence

from absl import flags
import cv2
import grain
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import augment as augment_lib
from data_pipelines import config as config_lib
from data_pipelines import registry
from data_pipelines import samplers
from data_pipelines import scenes as scenes_lib
from data_pipelines import synthetic

PAIR_RECORD_DATASETS = ("tss", "pf_pascal", "pf_willow")
# Epochs in the virtual training index space: effectively endless.
_MAX_EPOCHS = 1_000_000

def _expand(path):
  return None if path is None else os.path.expanduser(os.fspath(path))


def builder_config_for(data_config) -> Any:
  """The TFDS builder config to use (a name, a BuilderConfig or None)."""
  if data_config.builder_config is not None:
    return data_config.builder_config
  if data_config.name == "synthetic":
    s = data_config.synthetic
    colours = bool(s.get("category_colours", False))
    textures = bool(s.get("category_textures", False))
    # The name keys the prepared directory, so every field that changes the
    # renders is in it (the appearance suffix only when set, which keeps the
    # names of sets prepared before these fields existed).
    appearance = ("_colours" if colours else "") + (
        "_textures" if textures else "")
    return synthetic.SyntheticConfig(
        name=(f"c{s.num_classes}_n{s.train_per_class}-{s.test_per_class}"
              f"_px{s.image_size}_seed{s.seed}"
              f"_d{s.min_distractors}-{s.max_distractors}{appearance}"),
        description="built from data_config.synthetic",
        num_classes=s.num_classes, train_per_class=s.train_per_class,
        test_per_class=s.test_per_class, image_size=s.image_size, seed=s.seed,
        min_distractors=s.min_distractors, max_distractors=s.max_distractors,
        category_colours=colours, category_textures=textures)
  return None


def load_source(data_config, split: str):
  """Prepares the dataset when needed and returns its data source."""
  cfg = builder_config_for(data_config)
  data_dir = _expand(data_config.data_dir)
  path = registry.dataset_path(data_config.name, data_dir=data_dir,
                               builder_config=cfg)
  if not (path / "dataset_info.json").exists():
    registry.prepare(data_config.name, data_dir=data_dir,
                     manual_dir=config_lib.resolve_manual_dir(data_config),
                     builder_config=cfg)
  return registry.load_source(data_config.name, data_dir=data_dir,
                              split=split, builder_config=cfg)


@dataclasses.dataclass(frozen=True)
class RecordIndex:
  """Class information of a split, read without decoding images.

  Attributes:
    membership: bool [N, C] class membership of every record.
    class_names: the C class names.
    multilabel: True for voc2012_coseg style records (``labels``).
  """
  membership: np.ndarray
  class_names: tuple[str, ...]
  multilabel: bool


def _skip_image_decoders(features):
  return {k: tfds.decode.SkipDecoding() for k, f in features.items()
          if isinstance(f, tfds.features.Image)}


def record_index(data_config, split: str) -> RecordIndex:
  """Reads labels of a split (images are not decoded)."""
  source = load_source(data_config, split)
  return record_index_of(source, data_config)


def record_index_of(source, data_config) -> RecordIndex:
  info = source.dataset_info
  features = info.features
  builder = tfds.builder_from_directory(os.fspath(info.data_dir))
  light = builder.as_data_source(
      source.split, decoders=_skip_image_decoders(features))
  n = len(light)
  if "labels" in features:
    names = tuple(features["labels"].feature.names)
    sets = [np.asarray(light[i]["labels"]) for i in range(n)]
    m = samplers.membership_from_label_sets(sets, len(names))
    multilabel = True
  elif "label" in features:
    names = tuple(features["label"].names)
    m = samplers.membership_from_labels([light[i]["label"] for i in range(n)],
                                        len(names))
    multilabel = False
  else:
    raise ValueError(f"dataset {data_config.name!r}: records have neither "
                     "'label' nor 'labels'")
  keep = class_selection(data_config, names)
  records = holdout_selection(data_config, m & keep[None])
  return RecordIndex(m & keep[None] & records[:, None], names, multilabel)


def class_selection(data_config, names: Sequence[str]) -> np.ndarray:
  """bool [C]: the classes ``data.class_slice`` / ``classes`` /
  ``exclude_classes`` keep, out of the builder's class ``names``.

  ``class_slice`` = (start, stop) indexes the builder's (sorted) class list,
  so a protocol such as "train on the first ten classes, evaluate on the
  other ten" needs no class names written into a config.
  """
  keep = np.ones(len(names), bool)
  class_slice = data_config.get("class_slice")
  if class_slice:
    start, stop = (int(v) for v in class_slice)
    if not 0 <= start < stop <= len(names):
      raise ValueError(f"data.class_slice={tuple(class_slice)} is outside the "
                       f"{len(names)} classes of {data_config.name!r}")
    keep[:] = False
    keep[start:stop] = True
  unknown = set(data_config.classes) | set(data_config.exclude_classes)
  unknown -= set(names)
  if unknown:
    raise ValueError(f"data.classes/exclude_classes name unknown classes "
                     f"{sorted(unknown)}; known: {list(names)}")
  if data_config.classes:
    keep &= np.isin(names, list(data_config.classes))
  if data_config.exclude_classes:
    keep &= ~np.isin(names, list(data_config.exclude_classes))
  return keep


HOLDOUT_PARTS = ("all", "train", "test")


def holdout_selection(data_config, membership: np.ndarray) -> np.ndarray:
  """bool [N]: the records of ``data.holdout_part`` of a per-class split.

  With ``holdout_fraction`` f > 0, the records of every class are split once
  by a permutation seeded with (``holdout_seed``, class index): the first
  round(f x n_c) records of the permutation (at least one) are the 'test'
  part, the rest the 'train' part. A record is assigned by its first class,
  so the parts are disjoint; the split depends only on the seed and the
  records, never on the order of training. 'all' keeps every record.
  """
  part = data_config.get("holdout_part", "all") or "all"
  fraction = float(data_config.get("holdout_fraction", 0.0) or 0.0)
  if part not in HOLDOUT_PARTS:
    raise ValueError(f"data.holdout_part must be one of {HOLDOUT_PARTS}, got "
                     f"{part!r}")
  n = membership.shape[0]
  if part == "all":
    return np.ones(n, bool)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.holdout_part={part!r} needs 0 < "
                     f"data.holdout_fraction < 1, got {fraction}")
  seed = int(data_config.get("holdout_seed", 0) or 0)
  first = np.where(membership.any(1), membership.argmax(1), -1)
  test = np.zeros(n, bool)
  for c in range(membership.shape[1]):
    members = np.flatnonzero(first == c)
    if members.size:
      order = np.random.default_rng((seed, c)).permutation(members)
      test[order[:max(1, int(round(fraction * members.size)))]] = True
  return test if part == "test" else ~test & (first >= 0)


def _augment_params(data_config) -> Optional[augment_lib.AugmentParams]:
  a = data_config.augment
  if not a.enabled:
    return None
  return augment_lib.AugmentParams(
      scale_range=(float(a.scale_min), float(a.scale_max)),
      max_rotation_deg=float(a.max_rotation_deg),
      flip_prob=float(a.flip_prob), crop=bool(a.crop))


def group_sequence(data_config, membership, *, groups_per_epoch: int,
                   seed: int, num_epochs: int) -> "GroupSequence":
  """The sampled groups of ``data_config.sampler`` over ``membership``."""
  group_size = {"pairs": 2, "triplets": 3}.get(data_config.sampler,
                                               data_config.group_size)
  groups = GroupSequence(
      membership, sampler=data_config.sampler, group_size=group_size,
      negative_fraction=float(data_config.negative_fraction),
      groups_per_epoch=int(groups_per_epoch), seed=seed,
      num_epochs=num_epochs)
  groups.epoch(0)  # Fail early on an impossible sampler / class filter.
  return groups


class GroupSequence:
  """Random-access sequence of sampled groups over many epochs.

  Element ``i`` is group ``i % G`` of epoch ``i // G``; an epoch's groups are
  drawn on first use (and cached) from ``(seed, epoch)``, so any element can
  be produced in any process in any order.
  """

  def __init__(self, membership, *, sampler, group_size, negative_fraction,
               groups_per_epoch, seed, num_epochs):
    self._m = membership
    self._kw = dict(sampler=sampler, group_size=group_size,
                    negative_fraction=negative_fraction,
                    num_groups=groups_per_epoch, seed=seed)
    self._g = groups_per_epoch
    self._n = groups_per_epoch * num_epochs
    self._cache = {}
    self._lock = threading.Lock()

  def __len__(self):
    return self._n

  def epoch(self, e) -> samplers.Groups:
    # grain's prefetch threads call this concurrently: without the lock two
    # of them could evict the same epoch (KeyError) or one could evict the
    # epoch another is about to return.
    with self._lock:
      groups = self._cache.get(e)
      if groups is None:
        if len(self._cache) > 2:
          self._cache.pop(min(self._cache))
        groups = samplers.epoch_groups(self._m, epoch=e, **self._kw)
        self._cache[e] = groups
      return groups

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < self._n:
      raise IndexError(i)
    g = self.epoch(i // self._g)
    j = i % self._g
    return (g.indices[j], int(g.has_common[j]), g.targets[j])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


class _LoadGroup(grain.transforms.MapWithIndex):
  """Loads and augments the K scenes of one group (seeded by its index)."""

  def __init__(self, scenes: scenes_lib.Scenes, *, out_size, resize, params,
               seed):
    self._scenes = scenes
    self._out_size = out_size
    self._resize = resize
    self._params = params
    self._seed = seed

  def map_with_index(self, index, element):
    ids, has_common, targets = element
    rng = None
    if self._params is not None:
      rng = np.random.default_rng(
          np.random.SeedSequence([self._seed, 0x5EED, int(index)]))
    out = {"images": [], "masks": [], "valid": [], "class_ids": []}
    for sid, target in zip(ids, targets):
      scene = self._scenes[int(sid)]
      lab = scenes_lib.target_label_map(scene["class_map"], target)
      p = augment_lib.process_record(scene["image"], lab,
                                     out_size=self._out_size,
                                     resize=self._resize, rng=rng,
                                     params=self._params)
      out["images"].append(p["image"])
      out["masks"].append(p["mask"])
      out["valid"].append(p["valid"])
      out["class_ids"].append(self._scenes.scene_class(int(sid), target))
    batch = {k: np.stack(v) for k, v in out.items()}
    batch["class_ids"] = batch["class_ids"].astype(np.int32)
    batch["has_common"] = np.int32(has_common)
    batch["record_ids"] = np.asarray(ids, np.int32)
    return batch


class _LoadPairRecord(grain.transforms.Map):
  """Turns one pair record (tss / pf_*) into a K=2 group (resize only)."""

  def __init__(self, source, *, out_size, resize, max_keypoints, name):
    self._source = source
    self._out_size = out_size
    self._resize = resize
    self._max_kp = max_keypoints
    self._name = name

  def map(self, rid):
    rec = self._source[int(rid)]
    out = {"images": [], "masks": [], "valid": []}
    kps, mats = [], []
    for k in (1, 2):
      has_mask = f"mask{k}" in rec
      p = augment_lib.process_record(
          rec[f"image{k}"], rec[f"mask{k}"] if has_mask else None,
          out_size=self._out_size, resize=self._resize)
      out["images"].append(p["image"])
      out["masks"].append(p["mask"])
      out["valid"].append(p["valid"] if has_mask else np.zeros_like(p["valid"]))
      m = p["matrix"]
      if f"keypoints{k}" in rec:
        pts = augment_lib.transform_points(rec[f"keypoints{k}"], m)
        if pts.shape[0] > self._max_kp:
          raise ValueError(f"{self._name}: pair {rec.get('pair_id')!r} has "
                           f"{pts.shape[0]} keypoints > data.max_keypoints="
                           f"{self._max_kp}")
        pad = np.full((self._max_kp, 2), np.nan, np.float32)
        pad[:pts.shape[0]] = pts
        kps.append(pad)
      mats.append(m)
    out_hw = out["images"][0].shape[:2]
    flows = [_resize_flow(rec[key], mats[a], mats[b], out_hw)
             for key, a, b in (("flow12", 0, 1), ("flow21", 1, 0))
             if key in rec]
    batch = {k: np.stack(v) for k, v in out.items()}
    batch["has_common"] = np.int32(1)
    batch["class_ids"] = np.full((2,), int(rec.get("label", -1)), np.int32)
    batch["record_ids"] = np.full((2,), int(rid), np.int32)
    if kps:
      batch["keypoints"] = np.stack(kps)
    if flows:
      batch["flows"] = np.stack(flows)
    return batch


def _resize_flow(flow, m_src, m_dst, out_hw):
  """Resamples a [H, W, 2] flow to the input grid, in input pixels.

  ``flow`` maps pixel x of the source image to ``x + flow(x)`` in the
  destination image; ``m_src`` / ``m_dst`` are the two images' forward resize
  matrices (they differ when the images differ in size). At output pixel x'
  the source point is ``x = m_src^-1 x'`` and the new flow is
  ``m_dst (x + flow) - x'``. Flow values are sampled with nearest neighbour so
  unknown (NaN) entries stay NaN and do not bleed into their neighbours.
  """
  oh, ow = out_hw
  u = cv2.warpAffine(np.ascontiguousarray(flow, np.float32),
                     np.asarray(m_src, np.float64)[:2], (ow, oh),
                     flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=np.nan)
  yy, xx = np.mgrid[:oh, :ow].astype(np.float64)
  inv = np.linalg.inv(m_src)
  x = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
  y = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
  tx, ty = x + u[..., 0], y + u[..., 1]
  md = np.asarray(m_dst, np.float64)
  nx = md[0, 0] * tx + md[0, 1] * ty + md[0, 2] - xx
  ny = md[1, 0] * tx + md[1, 1] * ty + md[1, 2] - yy
  return np.stack([nx, ny], -1).astype(np.float32)


def make_dataset(data_config, *, split: str, batch_size: int, train: bool,
                 seed: Optional[int] = None, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The batched grain dataset of one process (see the module docstring).

  Args:
    data_config: a ``default_data_config()``-shaped ConfigDict.
    split: split name.
    batch_size: per-process batch size B.
    train: training (endless epochs of sampled groups, augmentation,
      drop_remainder) or evaluation (one deterministic pass, no augmentation,
      last partial batch kept).
    seed: data seed (None = ``data_config.seed``).
    process_index: this JAX process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``).

  Returns:
    A ``grain.IterDataset``; ``iter(ds)`` has ``get_state()``/``set_state()``.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  seed = int(data_config.seed if seed is None else seed)
  source = load_source(data_config, split)
  out_size = data_config.image_size
  if not isinstance(out_size, int):
    out_size = tuple(out_size)
  name = data_config.name

  if name in PAIR_RECORD_DATASETS:
    n = len(source)
    if train:
      ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    else:
      ds = grain.MapDataset.range(n)
    ds = ds[process_index::process_count]
    ds = ds.map(_LoadPairRecord(source, out_size=out_size,
                                resize=data_config.resize,
                                max_keypoints=data_config.max_keypoints,
                                name=name))
  else:
    index = record_index_of(source, data_config)
    scenes = scenes_lib.Scenes(source, index, data_config, train=train)
    # An epoch is one group per member scene (records, and composites in
    # training), as in the feature cache's stream.
    n_scenes = int(scenes.membership.any(1).sum())
    if train:
      per_epoch = data_config.groups_per_epoch or n_scenes
      epochs = _MAX_EPOCHS
      params = _augment_params(data_config)
    else:
      per_epoch = data_config.eval_groups_per_split or n_scenes
      epochs = 1
      params = None
    groups = group_sequence(data_config, scenes.membership,
                            groups_per_epoch=int(per_epoch), seed=seed,
                            num_epochs=epochs)
    ds = grain.MapDataset.source(groups)[process_index::process_count]
    ds = ds.map_with_index(_LoadGroup(
        scenes, out_size=out_size, resize=data_config.resize, params=params,
        seed=seed))

  it = ds.to_iter_dataset().batch(batch_size, drop_remainder=train)
  return with_workers(it, data_config)


def with_workers(it: grain.IterDataset, data_config) -> grain.IterDataset:
  """``it`` prefetched by ``data.num_workers`` grain worker processes (as
  is, with 0)."""
  if data_config.num_workers > 0:
    # grain's worker start-up reads absl flags; outside an absl app (tests,
    # notebooks, scripts) they are unparsed, so accept their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(data_config.num_workers),
        per_worker_buffer_size=int(data_config.prefetch_buffer_size)))
  return it


# ----------------------------------------------------------------------------
# Evaluation helpers.


def eval_groups(data_config, *, split: str,
                strategy: str = "pairs", k: int = 2, seed: int = 0,
                max_tuples: Optional[int] = None,
                images_per_class: int = -1
                ) -> dict[str, samplers.EvalTuples]:
  """Evaluation tuples per class: {class name: EvalTuples}.

  Args:
    data_config: the data config.
    split: split name.
    strategy: 'pairs' (every pair of the class's images, both scored) or a
      CycleSegNet group strategy 'a'-'d' (see ``samplers``) with tuple size k.
    k: tuple size for 'a'-'d'.
    seed: seed of the strategies' random choices.
    max_tuples: strategy 'a' refuses a class with more tuples (None: no
      limit).
    images_per_class: > 0 keeps that many images of each class (a seeded
      draw, ``seed``), so that every strategy and tuple size is evaluated on
      the same images (-1: all).
  """
  index = record_index(data_config, split)
  out = {}
  for c, cname in enumerate(index.class_names):
    members = np.flatnonzero(index.membership[:, c])
    if 0 < images_per_class < members.size:
      members = np.sort(np.random.default_rng((seed, c, 0x1A6E)).choice(
          members, images_per_class, replace=False))
    if members.size < 2:
      continue
    if strategy == "pairs":
      out[cname] = samplers.all_pairs(members)
    else:
      out[cname] = samplers.group_strategy(
          members, strategy=strategy, k=min(k, members.size),
          seed=(seed, c), max_tuples=max_tuples)
  return out
