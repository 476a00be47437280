"""Scenes: the unit the training samplers pair and the loaders render.

A scene is an image with a class map (uint8 [H, W]: 0 background, c + 1 on
pixels of class c, 255 ignore). A member's target mask is the union of its
scene's pixels of the group's target classes, so one rule serves every case:

* a single-class record (pascal_voc_coseg, internet, icoseg, msrc,
  synthetic): its mask marks class ``label``;
* a multi-class record (voc2012_coseg): its VOC class mask;
* a composite (``data_pipelines.composites``, with ``data.composites``):
  two objects of different classes on one background, a member of both
  classes, so a positive pair (composite, image of class c) targets the
  composite's object of class c only.

:class:`Scenes` puts the records of a split (those the class and holdout
selection keep) and, for training, ``data.composites.per_record`` x N
composites drawn from them behind one random-access interface, with the
membership matrix the samplers draw from.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from data_pipelines import composites as composites_lib

IGNORE = 255


def record_class_map(record, *, multilabel: bool, name: str = "") -> np.ndarray:
  """uint8 [H, W] class map of one data set record."""
  if multilabel:
    return np.asarray(record["class_mask"])[..., 0]
  mask = np.asarray(record["mask"])[..., 0]
  bad = ~np.isin(mask, (0, 1, IGNORE))
  if bad.any():
    raise ValueError(f"{name}: record {record.get('image_id')!r} has mask "
                     f"values {np.unique(mask[bad])[:5]} outside {{0,1,255}}")
  label = int(record["label"]) + 1
  return np.where(mask == 1, label, mask).astype(np.uint8)


def target_label_map(class_map: np.ndarray, target) -> np.ndarray:
  """uint8 {0, 1, 255} [H, W]: the pixels of the classes ``target`` (bool
  [C]) as foreground, ignore kept."""
  fg = np.isin(class_map, np.flatnonzero(np.asarray(target)) + 1)
  return np.where(class_map == IGNORE, IGNORE, fg).astype(np.uint8)


class Scenes:
  """Random-access scenes of one split (module docstring).

  Attributes:
    membership: bool [N + M, C]: records first, then composites.
    num_records: N.
    class_names: the C class names.
  """

  def __init__(self, source, index, data_config, *, train: bool):
    """Args: source (the split's records), index (its ``RecordIndex``),
    data_config, train (composites are for training only)."""
    self._source = source
    self._multilabel = index.multilabel
    self._name = data_config.name
    self.class_names = index.class_names
    self.num_records = index.membership.shape[0]
    self.specs = []
    options = data_config.get("composites") or {}
    ratio = float(options.get("per_record", 0.0) or 0.0)
    if train and ratio > 0:
      if index.multilabel:
        raise ValueError(f"data.composites: {self._name!r} records hold "
                         f"several classes; composites need single-class "
                         f"records")
      kept = int(index.membership.any(1).sum())
      self.specs = composites_lib.composite_specs(
          index.membership, count=int(round(ratio * kept)),
          seed=(int(options.get("seed", 0)), 0xC0),
          background=options.get("background", "inpaint"),
          scale_range=(float(options.get("scale_min", 0.45)),
                       float(options.get("scale_max", 0.7))))
      size = options.get("size") or data_config.image_size
      self._size = (size, size) if isinstance(size, int) else tuple(size)
    self.membership = np.concatenate([
        index.membership,
        composites_lib.membership_rows(self.specs, len(self.class_names))])

  def __len__(self):
    return self.membership.shape[0]

  def record(self, i: int):
    """(uint8 image, class map) of data set record ``i``."""
    rec = self._source[int(i)]
    return (np.asarray(rec["image"]),
            record_class_map(rec, multilabel=self._multilabel,
                             name=self._name))

  def __getitem__(self, i: int):
    """{'image': uint8 [H, W, 3], 'class_map': uint8 [H, W]} of scene i."""
    i = int(i)
    if i < self.num_records:
      image, class_map = self.record(i)
    else:
      image, class_map = composites_lib.render(
          self.specs[i - self.num_records], self.record, size=self._size)
    return {"image": image, "class_map": class_map}

  def scene_class(self, i: int, target: Optional[np.ndarray] = None) -> int:
    """The class reported for scene i in a group: its lowest target class
    present, else its lowest class (-1 for none)."""
    present = np.flatnonzero(self.membership[i] & (
        np.asarray(target, bool) if target is not None else True))
    if present.size == 0:
      present = np.flatnonzero(self.membership[i])
    return int(present[0]) if present.size else -1
