"""Shared machinery of the builders that read an original dataset layout.

`ManualLayoutBuilder` is a `tfds.core.GeneratorBasedBuilder` that
  * checks `manual_dir` before anything else and, when it is missing or empty,
    raises `FileNotFoundError` quoting the layout the builder expects (its
    `LAYOUT` string, also its `MANUAL_DOWNLOAD_INSTRUCTIONS`);
  * tallies every record it yields per split and per class into
    `self.record_counts` ({split: {class: n, '_total': n}}), which
    `registry.prepare` prints and stores as `record_counts.json`;
  * lets subclasses discover class names from the files (iCoseg folders,
    MSRC classes...) by leaving the `ClassLabel` without names in `_info` and
    setting them in `_splits` through `set_class_names`.

Nothing is ever skipped silently: a file that cannot be used raises
`io.BadInputError` naming it (rules in `data_pipelines/io.py`), which aborts
the build.

Image-record helpers (`image_mask_example`) implement the contract's
features: `image` (None, None, 3) uint8, `mask` (None, None, 1) uint8 with
0/1 (255 = ignore), `label`, `image_id`.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Iterator, Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import io as dio

TOTAL_KEY = "_total"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif")


def image_record_features(label_names=None) -> tfds.features.FeaturesDict:
  """Features of the image-record datasets (see the data contract)."""
  label = (tfds.features.ClassLabel(names=list(label_names))
           if label_names is not None else tfds.features.ClassLabel())
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
      "label": label,
      "image_id": tfds.features.Text(),
  })


def list_images(folder) -> list[epath.Path]:
  """Image files directly in `folder`, sorted by name (deterministic)."""
  folder = epath.Path(folder)
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_with_stem(folder, stem: str, extensions=IMAGE_EXTENSIONS):
  """The file `folder/<stem><ext>` for the first existing extension, or None."""
  folder = epath.Path(folder)
  for ext in extensions:
    for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
      if candidate.exists():
        return candidate
  return None


def image_mask_example(image_path, mask_path, *, label: str, image_id: str,
                       mask_mode: dio.MaskMode = "binary") -> dict:
  """Reads, validates and encodes one image-record example.

  Args:
    image_path: the image file.
    mask_path: its mask, or None when the layout has none at the expected
      place (refused, naming `expected_mask`).
    label: the class name.
    image_id: the image's path relative to manual_dir.
    mask_mode: the binarisation rule of `io.read_mask`.

  Raises:
    io.BadInputError: unusable image or mask, size mismatch (both named).
  """
  image_bytes, image_hw = dio.image_feature_bytes(image_path)
  mask = dio.read_mask(mask_path, mode=mask_mode)
  dio.check_same_size(image_path, image_hw, mask_path, mask.shape)
  return {
      "image": image_bytes,
      "mask": dio.mask_feature_bytes(mask[..., None]),
      "label": label,
      "image_id": image_id,
  }


def first_existing(candidates) -> epath.Path | None:
  """The first of `candidates` (paths, in order of preference) that exists."""
  return next((c for c in candidates if c.exists()), None)


def resolve_image(manual_dir, name: str, folders, where: str) -> epath.Path:
  """The image `name` of a pair list (row `where`): the first existing
  `manual_dir/<folder>/name` of `folders` ('' for `manual_dir` itself);
  refuses a missing image naming both."""
  path = first_existing(manual_dir / folder / name for folder in folders)
  if path is None:
    raise dio.BadInputError(f"{where}: image {name!r} not found under "
                            f"{manual_dir}")
  return path


def require_mask(mask_path, expected) -> epath.Path:
  """Refuses a missing mask, naming where it was expected."""
  if mask_path is None or not epath.Path(mask_path).exists():
    raise dio.BadInputError(f"Missing mask: expected {expected}")
  return epath.Path(mask_path)


class ManualLayoutBuilder(tfds.core.GeneratorBasedBuilder):
  """Base builder: manual_dir check, per-class tally, discovered classes.

  Subclasses define `LAYOUT` (the expected layout, shown in errors and as
  `MANUAL_DOWNLOAD_INSTRUCTIONS`), `_features()` (the record features; the
  info's description is the builder module's docstring) and
  `_splits(manual_dir) -> {split: iterator of (key, example)}`. The
  example's class is read from `COUNT_KEY` ('label', or 'labels' for a
  multi-label record) as a class-name string (or list of them).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LAYOUT = ""
  COUNT_KEY = "label"

  def __init_subclass__(cls, **kwargs):
    # TFDS shows the instructions when manual_dir is missing; they are the
    # layout, so a builder states it once.
    cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.LAYOUT
    super().__init_subclass__(**kwargs)

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.record_counts: dict[str, dict[str, int]] = {}

  def _manual_dir(self, dl_manager) -> epath.Path:
    try:
      path = dl_manager.manual_dir
    except Exception:  # TFDS asserts when the folder is missing.
      path = getattr(dl_manager, "_manual_dir", None)
    path = epath.Path(path) if path is not None else None
    if path is None or not path.is_dir() or not any(path.iterdir()):
      raise FileNotFoundError(
          f"{self.name}: manual_dir {path} is missing or empty (pass "
          f"manual_dir= to registry.prepare, or data_config.manual_dir). "
          f"Put the original distribution there, in this layout:\n"
          f"{self.LAYOUT}")
    return path

  def set_class_names(self, names) -> None:
    """Sets the discovered class names of the `label` ClassLabel (sorted)."""
    feature = self.info.features["label"]
    names = sorted(names)
    if feature.num_classes is not None and list(feature.names) != names:
      raise dio.BadInputError(
          f"{self.name}: classes found {names} differ from {feature.names}")
    if feature.num_classes is None:
      feature.names = names

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=sys.modules[type(self).__module__].__doc__,
        features=self._features())

  def _splits(self, manual_dir: epath.Path
              ) -> Mapping[str, Iterator[tuple[str, dict]]]:
    raise NotImplementedError

  def _known_folders(self, manual_dir: epath.Path, known,
                     what: str) -> list[epath.Path]:
    """The sub-folders of `manual_dir`, sorted; refuses one not in `known`.

    A typo in a folder name would otherwise drop its records silently.
    `what` names the folders in the message ('class', 'subset').
    """
    folders = sorted(p for p in manual_dir.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in known]
    if unknown:
      raise dio.BadInputError(
          f"{self.name}: unknown {what} folders {unknown} in {manual_dir}; "
          f"expected layout:\n{self.LAYOUT}")
    return folders

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    splits = self._splits(manual_dir)
    if not splits:
      raise FileNotFoundError(
          f"{self.name}: nothing found in {manual_dir}; expected layout:\n"
          f"{self.LAYOUT}")
    return {split: self._counted(split, gen) for split, gen in splits.items()}

  def _counted(self, split, generator):
    counts = collections.Counter()
    total = 0
    for key, example in generator:
      value = example[self.COUNT_KEY]
      for name in (value if isinstance(value, (list, tuple)) else [value]):
        counts[str(name)] += 1
      total += 1
      tally = dict(sorted(counts.items()))
      tally[TOTAL_KEY] = total
      self.record_counts[split] = tally
      yield key, example
    if total == 0:
      raise FileNotFoundError(
          f"{self.name}: split {split!r} is empty; expected layout:\n"
          f"{self.LAYOUT}")

  def _generate_examples(self, **kwargs):  # Unused: _split_generators yields.
    raise NotImplementedError


def relpath(path, root) -> str:
  """`path` relative to `root` with forward slashes (the stored image_id)."""
  return os.path.relpath(os.fspath(path), os.fspath(root)).replace(os.sep, "/")


def pair_record_features(label_names=None, *, masks=False, flows=False,
                         keypoints=False, flip=False
                         ) -> tfds.features.FeaturesDict:
  """Features of the pair-record datasets (tss, pf_pascal, pf_willow).

  Flows are float32 [H, W, 2] (u, v) in pixels with NaN = unknown; keypoints
  float32 [N, 2] (x, y) in pixels with NaN where a point is absent. Both are
  stored zlib-compressed (flows are large and repetitive).
  """
  label = (tfds.features.ClassLabel(names=list(label_names))
           if label_names is not None else tfds.features.ClassLabel())
  feats = {
      "image1": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "image2": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "label": label,
      "pair_id": tfds.features.Text(),
  }
  if masks:
    for k in ("mask1", "mask2"):
      feats[k] = tfds.features.Image(shape=(None, None, 1), dtype=np.uint8)
  if flows:
    for k in ("flow12", "flow21"):
      feats[k] = tfds.features.Tensor(shape=(None, None, 2), dtype=np.float32,
                                      encoding=tfds.features.Encoding.ZLIB)
  if keypoints:
    for k in ("keypoints1", "keypoints2"):
      feats[k] = tfds.features.Tensor(shape=(None, 2), dtype=np.float32,
                                      encoding=tfds.features.Encoding.ZLIB)
  if flip:
    feats["flip"] = tfds.features.Scalar(dtype=np.int32)
  return tfds.features.FeaturesDict(feats)
