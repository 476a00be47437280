"""MSRC co-segmentation subset (14 classes, ~420 images; Joulin / Rubinstein).

The co-segmentation protocol uses a subset of MSRC-v2 with one binary
foreground mask per image (the object class of its group), as distributed
with the co-segmentation benchmarks (e.g. alongside Rubinstein et al.'s
Internet dataset). Two layouts are accepted:

  (a) per-class folders, masks in a GroundTruth sub-folder:
        <manual_dir>/<class>/<name>.bmp|jpg|png
        <manual_dir>/<class>/GroundTruth/<name>[_GT].png|bmp
  (b) parallel trees:
        <manual_dir>/Images/<class>/<name>.bmp|jpg|png
        <manual_dir>/GroundTruth/<class>/<name>[_GT].png|bmp

Class names are the folder names as found (discovered and sorted; 14 in the
usual subset, reported not enforced). A mask may have the image's stem or the
stem plus '_GT'. Masks must be binary ({0,255}/{0,1}, grey or identical RGB
channels): the multi-class COLOUR ground truth of full MSRC-v2 is refused by
`io.read_mask` (channels differ), since turning it into a foreground mask
needs the group's class colour, which this layout does not provide. BMP
images are decoded by PIL and stored as PNG (lossless).

Split: one split, 'train'.
"""

from __future__ import annotations

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

LAYOUT = """\
  (a) <manual_dir>/<class>/<name>.bmp|jpg|png
      <manual_dir>/<class>/GroundTruth/<name>[_GT].png|bmp
  (b) <manual_dir>/Images/<class>/<name>.bmp|jpg|png
      <manual_dir>/GroundTruth/<class>/<name>[_GT].png|bmp"""


class Builder(bb.ManualLayoutBuilder):
  """MSRC co-segmentation image records."""

  name = "msrc"
  LAYOUT = LAYOUT

  def _features(self):
    return bb.image_record_features(None)

  def _splits(self, manual_dir):
    if (manual_dir / "Images").is_dir():  # layout (b)
      classes = sorted(p.name for p in (manual_dir / "Images").iterdir()
                       if p.is_dir())
      dirs = {c: (manual_dir / "Images" / c, manual_dir / "GroundTruth" / c)
              for c in classes}
    else:  # layout (a)
      classes = sorted(p.name for p in manual_dir.iterdir() if p.is_dir())
      dirs = {c: (manual_dir / c, manual_dir / c / "GroundTruth")
              for c in classes}
    if not classes:
      return {}
    for c, (_, mask_dir) in dirs.items():
      if not mask_dir.is_dir():
        raise FileNotFoundError(f"msrc: missing mask folder {mask_dir}; "
                                f"expected layout:\n{LAYOUT}")
    self.set_class_names(classes)
    return {"train": self._generate(manual_dir, dirs)}

  def _generate(self, manual_dir, dirs):
    for cls, (image_dir, mask_dir) in dirs.items():
      for image_path in bb.list_images(image_dir):
        mask_path = (bb.find_with_stem(mask_dir, image_path.stem)
                     or bb.find_with_stem(mask_dir, image_path.stem + "_GT"))
        mask_path = bb.require_mask(
            mask_path, mask_dir / f"{image_path.stem}[_GT].png|bmp")
        image_id = bb.relpath(image_path, manual_dir)
        yield image_id, bb.image_mask_example(
            image_path, mask_path, label=cls, image_id=image_id)
