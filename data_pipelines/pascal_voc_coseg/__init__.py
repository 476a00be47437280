"""PASCAL-VOC co-segmentation benchmark (Faktor & Irani, ICCV 2013).

1,037 images of 20 classes built from PASCAL VOC 2010 (images resized to a
longest side of 375 px and renamed). Expected layout of `manual_dir`:

    <manual_dir>/<Class>/images/img_NNNN.jpg
    <manual_dir>/<Class>/masks/img_NNNN.png   (same stem as the image)

with `<Class>` one of `CLASS_COUNTS` (Aero, Bicycle, ..., Train). Masks are RGB
PNGs with three identical channels and values {0, 255}; they are converted
to {0, 1} by the 'binary' rule of `data_pipelines/io.py` (anything else is
refused naming the file). Every image needs its mask (missing -> error).

Split: ONE split, 'train', holding all 1,037 images. The set is an evaluation
benchmark (each class is one co-segmentation group; the unsupervised methods
also train on it per class); class-disjoint supervised experiments filter by
class in the pipeline (`classes` / `exclude_classes`). Folders that are not one
of the 20 classes are refused (a typo would otherwise drop a class silently).
"""

from __future__ import annotations

from data_pipelines import builder_base as bb

# Per-class image counts of the published set (SOURCE.txt of the real data).
CLASS_COUNTS = {
    "Aero": 66, "Bicycle": 43, "Bird": 77, "Boat": 54, "Bottle": 44,
    "Bus": 47, "Car": 63, "Cat": 75, "Chair": 48, "Cow": 34, "Dog": 76,
    "Horse": 40, "Mbike": 56, "Monitor": 47, "Person": 115, "Plant": 41,
    "Sheep": 39, "Sofa": 26, "Table": 14, "Train": 32,
}
CLASSES = tuple(sorted(CLASS_COUNTS))

LAYOUT = """\
  <manual_dir>/<Class>/images/img_NNNN.jpg
  <manual_dir>/<Class>/masks/img_NNNN.png   (RGB or L PNG, {0,255} or {0,1})
  <Class> in: """ + ", ".join(CLASSES)


class Builder(bb.ManualLayoutBuilder):
  """PASCAL-VOC co-segmentation (Faktor & Irani) image records."""

  name = "pascal_voc_coseg"
  LAYOUT = LAYOUT

  def _features(self):
    return bb.image_record_features(CLASSES)

  def _splits(self, manual_dir):
    folders = self._known_folders(manual_dir, CLASS_COUNTS, "class")
    if not folders:
      return {}
    return {"train": self._generate(manual_dir, folders)}

  def _generate(self, root, folders):
    for folder in folders:
      images_dir = folder / "images"
      if not images_dir.is_dir():
        raise FileNotFoundError(f"pascal_voc_coseg: missing folder "
                                f"{images_dir}; expected layout:\n{LAYOUT}")
      for image_path in bb.list_images(images_dir):
        mask_path = bb.require_mask(
            bb.find_with_stem(folder / "masks", image_path.stem, (".png",)),
            folder / "masks" / f"{image_path.stem}.png")
        image_id = bb.relpath(image_path, root)
        yield image_id, bb.image_mask_example(
            image_path, mask_path, label=folder.name, image_id=image_id)
