"""PASCAL VOC 2012 segmentation images for pair co-segmentation (DOCS protocol).

Per-image records; the co-segmentation PAIRS (two images of one split that
share at least one object class; target = union of the shared classes, VOC's
void 255 kept as ignore) are produced by the sampler from `labels` and
`class_mask`, not stored here. Expected layout of `manual_dir` (the
directory holding `VOCdevkit/`, or `VOCdevkit/`, or `VOC2012/` itself):

    <manual_dir>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <manual_dir>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette PNG)
    <manual_dir>/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt, val.txt

Records: `image`; `class_mask` (None, None, 1) uint8 with the palette
INDICES of SegmentationClass (0 background, 1..20 the classes, 255 void;
read with PIL mode 'P', never through the palette colours; other values
refused); `labels` the sorted list of object classes present (VOC index i ->
ClassLabel index i - 1: VOC's order is already alphabetical); `image_id`
('<id>'). An image whose mask has no object class is kept with empty
`labels` (the sampler cannot pair it) and reported.

Splits: 'train' = train.txt (1,464 images); VOC's val.txt (1,449) is divided
into 'validation' (724) and 'test' (725): the sorted ids are permuted with
`np.random.RandomState(SPLIT_SEED)` and the first floor(n/2) go to
validation. SPLIT_SEED is a builder constant (changing it is a new version).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOID = 255
SPLIT_SEED = 20_12_724  # The recorded seed of the val -> val/test division.

LAYOUT = """\
  <manual_dir>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  <manual_dir>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette PNG)
  <manual_dir>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt"""


def split_val_test(ids, seed: int = SPLIT_SEED):
  """Divides VOC val ids into (validation, test): floor(n/2) / the rest."""
  ids = sorted(ids)
  order = np.random.RandomState(seed).permutation(len(ids))
  n_val = len(ids) // 2
  return ([ids[i] for i in sorted(order[:n_val])],
          [ids[i] for i in sorted(order[n_val:])])


def _voc_root(manual_dir):
  for candidate in (manual_dir / "VOCdevkit" / "VOC2012",
                    manual_dir / "VOC2012", manual_dir):
    if (candidate / "ImageSets" / "Segmentation").is_dir():
      return candidate
  raise FileNotFoundError(f"voc2012_coseg: no ImageSets/Segmentation under "
                          f"{manual_dir}; expected layout:\n{LAYOUT}")


def _read_ids(path):
  if not path.exists():
    raise FileNotFoundError(f"voc2012_coseg: missing split file {path}")
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


class Builder(bb.ManualLayoutBuilder):
  """VOC 2012 segmentation images with class masks and class sets."""

  name = "voc2012_coseg"
  LAYOUT = LAYOUT
  COUNT_KEY = "labels"

  def _features(self):
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3),
                                     dtype=np.uint8),
        "class_mask": tfds.features.Image(shape=(None, None, 1),
                                          dtype=np.uint8),
        "labels": tfds.features.Sequence(
            tfds.features.ClassLabel(names=list(VOC_CLASSES))),
        "image_id": tfds.features.Text(),
    })

  def _splits(self, manual_dir):
    root = _voc_root(manual_dir)
    sets = root / "ImageSets" / "Segmentation"
    val, test = split_val_test(_read_ids(sets / "val.txt"))
    return {
        "train": self._generate(root, _read_ids(sets / "train.txt")),
        "validation": self._generate(root, val),
        "test": self._generate(root, test),
    }

  def _generate(self, root, ids):
    valid = list(range(len(VOC_CLASSES) + 1)) + [VOID]
    for image_id in ids:
      image_path = root / "JPEGImages" / f"{image_id}.jpg"
      mask_path = bb.require_mask(
          root / "SegmentationClass" / f"{image_id}.png",
          root / "SegmentationClass" / f"{image_id}.png")
      image, hw = dio.image_feature_bytes(image_path)
      class_mask = dio.read_mask(mask_path, mode="index",
                                 valid_indices=valid)
      dio.check_same_size(image_path, hw, mask_path, class_mask.shape)
      present = [int(v) for v in np.unique(class_mask) if 0 < v < VOID]
      yield image_id, {
          "image": image,
          "class_mask": dio.mask_feature_bytes(class_mask[..., None]),
          "labels": [VOC_CLASSES[v - 1] for v in present],
          "image_id": image_id,
      }
