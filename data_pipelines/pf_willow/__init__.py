"""PF-WILLOW semantic-correspondence pairs (Ham et al., CVPR 2016).

900 test pairs of 10 object classes (4 categories x viewpoint/background
variants), 10 keypoints per image, in the pair list `test_pairs_pf.csv`
distributed with CNNGeo. Expected layout of `manual_dir`:

    <manual_dir>/PF-dataset/<class>/<name>.png
    <manual_dir>/[PF-dataset/]test_pairs_pf.csv

CSV: a header row, then per pair: imageA, imageB (paths relative to
`manual_dir`, e.g. 'PF-dataset/car(G)/x.png'), then XA1..XA10, YA1..YA10,
XB1..XB10, YB1..YB10 (pixel coordinates of the original images, stored as
given). Columns are taken by POSITION after the two names (the header's
spelling varies between copies): 4 equal groups of N values. The class is the
image's parent folder name (both images of a pair must agree) and must be one
of `CLASSES`. A (-1, -1) keypoint becomes NaN (see pf_pascal).

Split: one split, 'test'. Records: `image1`, `image2`, `keypoints1`,
`keypoints2` float32 [N, 2] (x, y), `label`, `pair_id` ('<row>').
"""

from __future__ import annotations

import csv

import numpy as np

from data_pipelines import builder_base as bb
from data_pipelines import io as dio
from data_pipelines.pf_pascal import make_keypoints

CLASSES = ("car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)",
           "motorbike(M)", "motorbike(S)", "winebottle(M)", "winebottle(wC)",
           "winebottle(woC)")

LAYOUT = """\
  <manual_dir>/PF-dataset/<class>/<name>.png
  <manual_dir>/[PF-dataset/]test_pairs_pf.csv
     columns: imageA,imageB,XA1..XAn,YA1..YAn,XB1..XBn,YB1..YBn
  <class> in: """ + ", ".join(CLASSES)


class Builder(bb.ManualLayoutBuilder):
  """PF-WILLOW keypoint pairs."""

  name = "pf_willow"
  LAYOUT = LAYOUT

  def _features(self):
    return bb.pair_record_features(CLASSES, keypoints=True)

  def _splits(self, manual_dir):
    path = bb.first_existing((manual_dir / "test_pairs_pf.csv",
                              manual_dir / "PF-dataset" / "test_pairs_pf.csv"))
    if path is not None:
      return {"test": self._generate(manual_dir, path)}
    raise FileNotFoundError(f"pf_willow: test_pairs_pf.csv not found in "
                            f"{manual_dir}; expected layout:\n{LAYOUT}")

  def _resolve(self, manual_dir, name, where):
    return bb.resolve_image(manual_dir, name, ("", "PF-dataset"), where)

  def _generate(self, manual_dir, csv_path):
    with open(csv_path, newline="") as f:
      rows = list(csv.reader(f))[1:]
    for i, row in enumerate(rows):
      where = f"{csv_path} row {i + 2}"
      if not row:
        continue  # A trailing blank line is not a pair.
      values = row[2:]
      if len(values) == 0 or len(values) % 4:
        raise dio.BadInputError(f"{where}: expected 4 equal groups of "
                                f"coordinates, got {len(values)} values")
      try:
        coords = np.asarray([float(v) for v in values], np.float32)
      except ValueError as e:
        raise dio.BadInputError(f"{where}: non-numeric coordinate") from e
      xa, ya, xb, yb = np.split(coords, 4)
      paths = [self._resolve(manual_dir, row[j].strip(), where)
               for j in (0, 1)]
      classes = {p.parent.name for p in paths}
      if len(classes) != 1 or next(iter(classes)) not in CLASSES:
        raise dio.BadInputError(f"{where}: class folders {sorted(classes)} "
                                f"are not one of {CLASSES}")
      example = {"label": classes.pop(), "pair_id": str(i),
                 "keypoints1": make_keypoints(xa, ya, where=where),
                 "keypoints2": make_keypoints(xb, yb, where=where)}
      for k, path in zip(("1", "2"), paths):
        example[f"image{k}"], _ = dio.image_feature_bytes(path)
      yield example["pair_id"], example
