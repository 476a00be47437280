"""The frozen-encoder feature cache: its storage and its training stream.

When a run's encoder is frozen, its output for a given input never changes,
so the run can encode every training scene (``data_pipelines.scenes``: the
records and, with ``data.composites``, the composite scenes) in V
augmentation views once, and train the heads from those features: no JPEG
decoding, no augmentation and no encoder forward pass inside the training
step. The runtime builds a cache (``coseg_jax.runtime.feature_cache``); this
module is everything that needs no model: the layout, the views, the writer
and the reader, and the grain stream of training batches.

Layout of one cache, a directory named by the digest of its spec::

  spec.json                  everything that shaped the cache, and the ids of
                             the cached scenes (those the samplers can draw)
  chunk-00000.array_record   cached scenes [0, S) x V views, scene-major
  chunk-00001.array_record   cached scenes [S, 2S) x V views
  ...
  COMPLETE                   written once every chunk exists

A chunk is written under a temporary name and renamed when complete, so a
killed build leaves whole chunks only and resumes with the missing ones.
Records are msgpack (``flax.serialization``) dicts: ``scene``, ``view``,
``class_map`` (uint8 [H, W], the scene's class map in that view, 255 where
the view shows no image) and ``features`` ({level: [h, w, C]} in the
cache's storage dtype). ArrayRecord is the format the data stack already
reads (TFDS builds, grain), with random access.

Views: view 0 is the plain resize to ``data.image_size`` (what evaluation
sees); views 1..V-1 are random augmentations (``data.augment``) seeded by
(seed, scene, view). Training batches pick one view per member uniformly,
seeded by the element index, after the groups are drawn by exactly the
live pipeline's samplers (``pipeline.group_sequence``) over the same scenes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

from array_record.python import array_record_module
from flax import serialization
import grain
import numpy as np

from data_pipelines import augment as augment_lib
from data_pipelines import pipeline
from data_pipelines import scenes as scenes_lib

SPEC_FILE = "spec.json"
COMPLETE_FILE = "COMPLETE"
STORAGE_DTYPES = ("float16", "float32")


def spec_digest(spec: Mapping[str, Any]) -> str:
  """16 hex digits identifying a spec (canonical JSON, sha256)."""
  text = json.dumps(spec, sort_keys=True, separators=(",", ":"),
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def chunk_path(directory: str, chunk: int) -> str:
  return os.path.join(directory, f"chunk-{chunk:05d}.array_record")


def num_chunks(num_scenes: int, chunk_size: int) -> int:
  return -(-int(num_scenes) // int(chunk_size))


def is_complete(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, COMPLETE_FILE))


def render_view(scene: Mapping[str, np.ndarray], *, scene_id: int, view: int,
                data_config, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """One view of a scene at the model input.

  Returns:
    (float32 image [H, W, 3] in [0, 1], uint8 class map [H, W]).
  """
  rng, params = None, None
  if view > 0:
    a = data_config.augment
    params = augment_lib.AugmentParams(
        scale_range=(float(a.scale_min), float(a.scale_max)),
        max_rotation_deg=float(a.max_rotation_deg),
        flip_prob=float(a.flip_prob), crop=bool(a.crop))
    rng = np.random.default_rng(
        np.random.SeedSequence([int(seed), 0x7E3, int(scene_id), int(view)]))
  size = data_config.image_size
  out = augment_lib.process_record(
      scene["image"], scene["class_map"],
      out_size=size if isinstance(size, int) else tuple(size),
      resize=data_config.resize, rng=rng, params=params)
  return out["image"], out["label"]


def write_chunk(directory: str, chunk: int,
                records: Sequence[Mapping[str, Any]]) -> str:
  """Writes one chunk atomically (temporary name, then rename)."""
  path = chunk_path(directory, chunk)
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  for record in records:
    writer.write(serialization.msgpack_serialize(dict(record)))
  writer.close()
  os.replace(tmp, path)
  return path


def write_spec(directory: str, spec: Mapping[str, Any]) -> None:
  """Writes ``spec.json`` (or checks that the one there is the same)."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, SPEC_FILE)
  text = json.dumps(spec, sort_keys=True, indent=1, default=str)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != json.loads(text):
        raise ValueError(f"{path} describes another cache than {spec}")
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_spec(directory: str) -> dict:
  with open(os.path.join(directory, SPEC_FILE)) as f:
    return json.load(f)


class CachedViews:
  """Random access to a complete cache: ``view(scene, v)`` -> record dict."""

  def __init__(self, directory: str):
    if not is_complete(directory):
      raise FileNotFoundError(f"feature cache {directory} is not complete")
    spec = read_spec(directory)
    self.views = int(spec["views"])
    self.scene_ids = np.asarray(spec["scene_ids"], np.int64)
    self.num_scenes = int(self.scene_ids.size)
    self._position = {int(s): i for i, s in enumerate(self.scene_ids)}
    self.levels = tuple(spec["levels"])
    paths = [chunk_path(directory, c) for c in range(
        num_chunks(self.num_scenes, int(spec["chunk_size"])))]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(f"feature cache {directory}: missing {missing}")
    self._source = grain.sources.ArrayRecordDataSource(paths)
    if len(self._source) != self.num_scenes * self.views:
      raise ValueError(f"feature cache {directory} holds {len(self._source)} "
                       f"records, expected {self.num_scenes} scenes x "
                       f"{self.views} views")

  def __len__(self):
    return len(self._source)

  def view(self, scene: int, view: int) -> dict:
    if int(scene) not in self._position:
      raise KeyError(f"scene {scene} is not in the feature cache")
    record = serialization.msgpack_restore(
        self._source[self._position[int(scene)] * self.views + int(view)])
    if int(record["scene"]) != int(scene) or int(record["view"]) != view:
      raise ValueError(f"feature cache record ({record['scene']}, "
                       f"{record['view']}) found where ({scene}, {view}) "
                       f"belongs")
    return record


class _LoadCachedGroup(grain.transforms.MapWithIndex):
  """The K members of a group from their cached views (one view each)."""

  def __init__(self, views: CachedViews, membership: np.ndarray, *,
               seed: int):
    self._views = views
    self._membership = membership
    self._seed = seed

  def map_with_index(self, index, element):
    ids, has_common, targets = element
    rng = np.random.default_rng(
        np.random.SeedSequence([self._seed, 0xCAC4E, int(index)]))
    feats = {level: [] for level in self._views.levels}
    out = {"masks": [], "valid": [], "class_ids": [], "views": []}
    for sid, target in zip(ids, targets):
      v = int(rng.integers(self._views.views))
      record = self._views.view(int(sid), v)
      for level in self._views.levels:
        feats[level].append(record["features"][level])
      label = scenes_lib.target_label_map(record["class_map"], target)
      out["masks"].append((label == 1).astype(np.float32)[..., None])
      out["valid"].append((label != scenes_lib.IGNORE).astype(
          np.float32)[..., None])
      present = np.flatnonzero(self._membership[int(sid)] & target)
      if present.size == 0:
        present = np.flatnonzero(self._membership[int(sid)])
      out["class_ids"].append(int(present[0]) if present.size else -1)
      out["views"].append(v)
    batch = {k: np.stack(v) for k, v in out.items()}
    batch.update({f"features/{level}": np.stack(x)
                  for level, x in feats.items()})
    batch["class_ids"] = batch["class_ids"].astype(np.int32)
    batch["views"] = batch["views"].astype(np.int32)
    batch["has_common"] = np.int32(has_common)
    batch["record_ids"] = np.asarray(ids, np.int32)
    return batch


def make_cached_dataset(data_config, directory: str, membership: np.ndarray,
                        *, batch_size: int, seed: int,
                        groups_per_epoch: Optional[int] = None,
                        process_index: int = 0, process_count: int = 1,
                        num_epochs: int = 1_000_000) -> grain.IterDataset:
  """The training stream over a complete cache.

  Args:
    data_config: the run's data config (sampler, negatives, workers).
    directory: the cache.
    membership: bool [num_scenes, C] of the scenes (``Scenes``); the cache
      holds exactly its member scenes.
    batch_size: per-process batch size B.
    seed: data seed.
    groups_per_epoch: groups per epoch (None: the number of member scenes).
    process_index / process_count: this process's shard of the groups.
    num_epochs: length of the stream in epochs.

  Returns:
    A grain IterDataset of batches: ``features/<level>`` [B, K, h, w, C]
    (storage dtype), ``masks`` / ``valid`` float32 [B, K, H, W, 1],
    ``class_ids``, ``views``, ``record_ids`` (scene ids) int32 [B, K],
    ``has_common`` int32 [B]; its iterator has get_state / set_state.
  """
  views = CachedViews(directory)
  members = np.flatnonzero(membership.any(1))
  if not np.array_equal(members, views.scene_ids):
    raise ValueError(f"feature cache {directory} holds other scenes than "
                     f"the data config selects ({views.num_scenes} vs "
                     f"{members.size})")
  per_epoch = groups_per_epoch or int(membership.any(1).sum())
  groups = pipeline.group_sequence(data_config, membership,
                                   groups_per_epoch=per_epoch, seed=seed,
                                   num_epochs=num_epochs)
  ds = grain.MapDataset.source(groups)[process_index::process_count]
  ds = ds.map_with_index(_LoadCachedGroup(views, membership, seed=seed))
  return pipeline.with_workers(
      ds.to_iter_dataset().batch(batch_size, drop_remainder=True),
      data_config)
