"""Internet dataset (Rubinstein, Joulin, Kopf & Liu, CVPR 2013).

Images of three classes downloaded from the web, with many noise images that
do not contain the object. Two builder configs:

  * 'subset100' (default): the 100-image subsets used for evaluation by most
    co-segmentation papers, folders `Airplane100/ Car100/ Horse100/`;
  * 'full': the full collections, folders `Airplane/ Car/ Horse/`.

Expected layout of `manual_dir` (the authors' `Data/` folder, or its parent):

    <manual_dir>/[Data/]<Class>[100]/<name>.jpg
    <manual_dir>/[Data/]<Class>[100]/GroundTruth/<name>.png   (same stem)

with `<Class>` in Airplane, Car, Horse. Ground-truth masks are {0,255} (or
{0,1}) single-channel or grey RGB PNGs, converted by the 'binary' rule of
`io.read_mask`. Images without the object have an ALL-ZERO mask; they are
kept (they are part of the benchmark: a method must output empty masks on
them) and counted like the others. Every image needs its mask.

Split: one split, 'train' (the whole collection; the papers train per
collection without labels and evaluate on the same images).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

CLASSES = ("Airplane", "Car", "Horse")

LAYOUT = """\
  <manual_dir>/[Data/]<Class>100/<name>.jpg               (config 'subset100')
  <manual_dir>/[Data/]<Class>100/GroundTruth/<name>.png
  <manual_dir>/[Data/]<Class>/<name>.jpg                  (config 'full')
  <manual_dir>/[Data/]<Class>/GroundTruth/<name>.png
  <Class> in: Airplane, Car, Horse"""


@dataclasses.dataclass
class InternetConfig(tfds.core.BuilderConfig):
  folder_suffix: str = ""


class Builder(bb.ManualLayoutBuilder):
  """Internet dataset image records."""

  name = "internet"
  LAYOUT = LAYOUT
  BUILDER_CONFIGS = [
      InternetConfig(name="subset100", folder_suffix="100",
                     description="Airplane100, Car100, Horse100."),
      InternetConfig(name="full", folder_suffix="",
                     description="Full Airplane, Car, Horse collections."),
  ]

  def _features(self):
    return bb.image_record_features(CLASSES)

  def _splits(self, manual_dir):
    root = manual_dir / "Data" if (manual_dir / "Data").is_dir() else manual_dir
    suffix = self.builder_config.folder_suffix
    folders = []
    for cls in CLASSES:
      folder = root / f"{cls}{suffix}"
      if not folder.is_dir():
        raise FileNotFoundError(
            f"internet ({self.builder_config.name}): missing folder {folder};"
            f" expected layout:\n{LAYOUT}")
      folders.append((cls, folder))
    return {"train": self._generate(manual_dir, folders)}

  def _generate(self, manual_dir, folders):
    for cls, folder in folders:
      for image_path in bb.list_images(folder):
        mask_path = bb.require_mask(
            bb.find_with_stem(folder / "GroundTruth", image_path.stem),
            folder / "GroundTruth" / f"{image_path.stem}.png")
        image_id = bb.relpath(image_path, manual_dir)
        yield image_id, bb.image_mask_example(
            image_path, mask_path, label=cls, image_id=image_id)
