"""PF-PASCAL semantic-correspondence pairs (Ham et al., TPAMI 2018).

1,351 pairs of 20 PASCAL classes with keypoint correspondences, in the pair
lists distributed by the weakly-supervised matching code (CNNGeo / WeakAlign /
NC-Net). Expected layout of `manual_dir`:

    <manual_dir>/PF-dataset-PASCAL/JPEGImages/<name>.jpg
    <manual_dir>/[PF-dataset-PASCAL/]trn_pairs.csv, val_pairs.csv,
                                     test_pairs.csv   (any subset of them)

CSV columns (header row, by name): `source_image`, `target_image` (paths
relative to `manual_dir`, e.g. 'PF-dataset-PASCAL/JPEGImages/x.jpg'; a bare
file name is looked up in JPEGImages/), `class` (1-based index into the 20
VOC classes), and optionally `XA`, `YA`, `XB`, `YB` (keypoint coordinates as
';'-separated numbers, in pixels of the original images, stored as given) and
`flip` (an integer; 0 when absent). A keypoint given as (-1, -1), the pad
value of these lists, becomes (NaN, NaN): points keep their index so that
keypoints1[i] corresponds to keypoints2[i]. A pair list without keypoint
columns (the training list of some releases) gives empty [0, 2] keypoints.

Splits: 'train' (trn_pairs.csv), 'validation' (val_pairs.csv), 'test'
(test_pairs.csv), whichever exist. Records: `image1`, `image2`,
`keypoints1`, `keypoints2` float32 [N, 2] (x, y), `flip`, `label`,
`pair_id` ('<split csv>:<row>').
"""

from __future__ import annotations

import csv

import numpy as np

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")
SPLIT_FILES = (("train", "trn_pairs.csv"), ("validation", "val_pairs.csv"),
               ("test", "test_pairs.csv"))
MISSING = -1.0

LAYOUT = """\
  <manual_dir>/PF-dataset-PASCAL/JPEGImages/<name>.jpg
  <manual_dir>/[PF-dataset-PASCAL/]{trn,val,test}_pairs.csv
     columns: source_image,target_image,class[,XA,YA,XB,YB][,flip]
     (XA..YB: ';'-separated pixel coordinates)"""


def parse_coords(text: str, *, where: str) -> np.ndarray:
  """'1;2;3' -> float32 [3]; refuses non-numbers naming `where`."""
  text = (text or "").strip()
  if not text:
    return np.zeros((0,), np.float32)
  try:
    return np.asarray([float(t) for t in text.split(";") if t.strip()],
                      np.float32)
  except ValueError as e:
    raise dio.BadInputError(f"{where}: cannot parse coordinates "
                            f"{text[:40]!r}") from e


def make_keypoints(xs, ys, *, where: str) -> np.ndarray:
  """Stacks x/y lists into [N, 2]; (-1, -1) -> NaN; lengths must match."""
  if xs.shape != ys.shape:
    raise dio.BadInputError(f"{where}: {xs.size} x but {ys.size} y values")
  kp = np.stack([xs, ys], axis=-1).astype(np.float32).reshape(-1, 2)
  kp[(kp[:, 0] == MISSING) & (kp[:, 1] == MISSING)] = np.nan
  return kp


def _find_csv(manual_dir, filename):
  return bb.first_existing((manual_dir / filename,
                            manual_dir / "PF-dataset-PASCAL" / filename))


class Builder(bb.ManualLayoutBuilder):
  """PF-PASCAL keypoint pairs."""

  name = "pf_pascal"
  LAYOUT = LAYOUT

  def _features(self):
    return bb.pair_record_features(VOC_CLASSES, keypoints=True,
                                    flip=True)

  def _splits(self, manual_dir):
    return {split: self._generate(manual_dir, path)
            for split, filename in SPLIT_FILES
            if (path := _find_csv(manual_dir, filename)) is not None}

  def _resolve(self, manual_dir, name, where):
    return bb.resolve_image(
        manual_dir, name,
        ("", "PF-dataset-PASCAL", "PF-dataset-PASCAL/JPEGImages"), where)

  def _generate(self, manual_dir, csv_path):
    with open(csv_path, newline="") as f:
      rows = list(csv.DictReader(f))
    required = ("source_image", "target_image", "class")
    header = rows[0].keys() if rows else ()
    missing = [c for c in required if c not in header]
    if missing:
      raise dio.BadInputError(f"{csv_path}: missing columns {missing} "
                              f"(found {list(header)})")
    for i, row in enumerate(rows):
      where = f"{csv_path} row {i + 2}"
      try:
        cls = int(float(row["class"]))
      except ValueError as e:
        raise dio.BadInputError(f"{where}: bad class {row['class']!r}") from e
      if not 1 <= cls <= len(VOC_CLASSES):
        raise dio.BadInputError(f"{where}: class {cls} outside 1..20")
      example = {"label": VOC_CLASSES[cls - 1],
                 "pair_id": f"{csv_path.name}:{i}",
                 "flip": int(float(row.get("flip") or 0))}
      for k, col in (("1", "source_image"), ("2", "target_image")):
        path = self._resolve(manual_dir, row[col].strip(), where)
        example[f"image{k}"], _ = dio.image_feature_bytes(path)
      for k, (xc, yc) in (("1", ("XA", "YA")), ("2", ("XB", "YB"))):
        xs = parse_coords(row.get(xc), where=where)
        ys = parse_coords(row.get(yc), where=where)
        example[f"keypoints{k}"] = make_keypoints(xs, ys, where=where)
      if example["keypoints1"].shape != example["keypoints2"].shape:
        raise dio.BadInputError(f"{where}: source and target keypoint "
                                f"counts differ")
      yield example["pair_id"], example
