"""TSS: joint dense correspondence and co-segmentation pairs (Taniai et al. 2016).

400 image pairs in three subsets (FG3DCar 195, JODS 81, PASCAL 124), each with
both foreground masks and dense ground-truth flow in both directions. Expected
layout of `manual_dir` (the `Dataset/` folder of the author's evaluation kit,
`vis/` sub-folders optional and ignored):

    <manual_dir>/<Subset>/<pair>/image1.png image2.png
    <manual_dir>/<Subset>/<pair>/mask1.png  mask2.png
    <manual_dir>/<Subset>/<pair>/flow1.flo  flow2.flo   flow 1->2 and 2->1
    <manual_dir>/<Subset>/<pair>/corr.txt pair.txt flip_gt.txt

`<Subset>` in FG3DCar, JODS, PASCAL (other folders are refused).

Records: `image1`, `image2`, `mask1`, `mask2` (0/1), `flow12` (from
flow1.flo), `flow21` (from flow2.flo) float32 [H, W, 2] in pixels with NaN for
unknown flow (|u| or |v| > 1e9 in the file; see `io.read_flo`), `flip` (the
integer in flip_gt.txt, 0 when the file is absent), `label` (the subset) and
`pair_id` ('<Subset>/<pair>'). corr.txt (sparse correspondences) and pair.txt
(original names) are not stored: the dense flows carry the ground truth.

Masks: FG3DCar and PASCAL masks are 8-bit {0,255}, JODS masks palette PNGs
with indices {0,1}; one FG3DCar mask has anti-aliased values, so every TSS
mask uses the 'threshold' rule of `io.read_mask` (>= 128 -> 1; a {0,1} mask
kept). Each flow must have its source image's size (else refused).

Split: one split, 'test' (TSS is an evaluation benchmark).
"""

from __future__ import annotations

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

SUBSETS = ("FG3DCar", "JODS", "PASCAL")
PAIR_FILES = ("image1.png", "image2.png", "mask1.png", "mask2.png",
              "flow1.flo", "flow2.flo")

LAYOUT = """\
  <manual_dir>/<Subset>/<pair>/image1.png image2.png mask1.png mask2.png
  <manual_dir>/<Subset>/<pair>/flow1.flo flow2.flo  (Middlebury .flo, 1->2, 2->1)
  <manual_dir>/<Subset>/<pair>/flip_gt.txt          (optional)
  <Subset> in: FG3DCar, JODS, PASCAL"""


class Builder(bb.ManualLayoutBuilder):
  """TSS image pairs with masks and dense flows."""

  name = "tss"
  LAYOUT = LAYOUT

  def _features(self):
    return bb.pair_record_features(SUBSETS, masks=True, flows=True,
                                    flip=True)

  def _splits(self, manual_dir):
    folders = self._known_folders(manual_dir, SUBSETS, "subset")
    if not folders:
      return {}
    return {"test": self._generate(manual_dir, folders)}

  def _generate(self, root, subsets):
    for subset in subsets:
      for pair_dir in sorted(p for p in subset.iterdir()
                             if p.is_dir() and p.name != "vis"):
        for f in PAIR_FILES:
          if not (pair_dir / f).exists():
            raise dio.BadInputError(f"tss: missing file {pair_dir / f}")
        pair_id = bb.relpath(pair_dir, root)
        example = {"label": subset.name, "pair_id": pair_id}
        for i in (1, 2):
          image_path = pair_dir / f"image{i}.png"
          mask_path = pair_dir / f"mask{i}.png"
          image, hw = dio.image_feature_bytes(image_path)
          mask = dio.read_mask(mask_path, mode="threshold")
          dio.check_same_size(image_path, hw, mask_path, mask.shape)
          flow_path = pair_dir / f"flow{i}.flo"
          flow = dio.read_flo(flow_path)
          dio.check_same_size(image_path, hw, flow_path, flow.shape[:2])
          example[f"image{i}"] = image
          example[f"mask{i}"] = dio.mask_feature_bytes(mask[..., None])
          example["flow12" if i == 1 else "flow21"] = flow
        flip_path = pair_dir / "flip_gt.txt"
        example["flip"] = _read_flip(flip_path) if flip_path.exists() else 0
        yield pair_id, example


def _read_flip(path) -> int:
  text = path.read_text().split()
  try:
    return int(float(text[0]))
  except (IndexError, ValueError) as e:
    raise dio.BadInputError(f"tss: cannot read an integer from {path}") from e
