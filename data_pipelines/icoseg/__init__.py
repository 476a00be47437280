"""iCoseg (Batra et al., CVPR 2010): 38 groups, 643 images, binary masks.

Expected layout of `manual_dir` (the `dataset_public/` folder of the CMU /
Cornell release, or its parent):

    <manual_dir>/[dataset_public/]images/<folder>/<name>.jpg
    <manual_dir>/[dataset_public/]ground_truth/<folder>/<name>.png  (same stem)

Each `<folder>` is one class (group); its name is used as the class name, as
found on disk (the release's folder names vary between copies, so they are
discovered, sorted, and recorded in the dataset's ClassLabel). Masks are
{0,255} or {0,1}, converted by the 'binary' rule of `io.read_mask`; every
image needs its mask. Folders present in `images/` but not `ground_truth/`
(or the reverse) are refused, naming the folder.

Builder configs:
  * 'all' (default): every group found (38 in the full release; the count is
    reported, not enforced, so partial copies can still be built);
  * 'subset8': the 8-group subset used by earlier co-segmentation work
    (Joulin et al. 2010 / Rubinstein et al. 2013 comparisons): `SUBSET8`.
    Folder names are matched after lower-casing and removing everything but
    letters and digits; a missing group is an error naming it. The paper list
    is the one choice here the data itself cannot confirm: check it against
    your copy (the build prints the matched folders).

Split: one split, 'train' (iCoseg is an evaluation set; the supervised
methods train on other data).
"""

from __future__ import annotations

import dataclasses
import re

import tensorflow_datasets as tfds

from data_pipelines import builder_base as bb
from data_pipelines import io as dio

SUBSET8 = ("bear2", "brownbear", "cheetah", "elephant", "helicopter",
           "hotballoon", "panda1", "panda2")

LAYOUT = """\
  <manual_dir>/[dataset_public/]images/<folder>/<name>.jpg
  <manual_dir>/[dataset_public/]ground_truth/<folder>/<name>.png
  (one <folder> per group; config 'subset8' needs the folders """ + (
      ", ".join(SUBSET8)) + ")"


def normalize_name(name: str) -> str:
  """Lower-case letters and digits only (matches folder-name variants)."""
  return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclasses.dataclass
class ICosegConfig(tfds.core.BuilderConfig):
  groups: tuple[str, ...] | None = None


class Builder(bb.ManualLayoutBuilder):
  """iCoseg image records."""

  name = "icoseg"
  LAYOUT = LAYOUT
  BUILDER_CONFIGS = [
      ICosegConfig(name="all", groups=None, description="All groups."),
      ICosegConfig(name="subset8", groups=SUBSET8,
                   description="The 8-group subset."),
  ]

  def _features(self):
    return bb.image_record_features(None)

  def _splits(self, manual_dir):
    root = (manual_dir / "dataset_public"
            if (manual_dir / "dataset_public").is_dir() else manual_dir)
    images_root, masks_root = root / "images", root / "ground_truth"
    for d in (images_root, masks_root):
      if not d.is_dir():
        raise FileNotFoundError(f"icoseg: missing folder {d}; expected "
                                f"layout:\n{LAYOUT}")
    image_groups = {p.name for p in images_root.iterdir() if p.is_dir()}
    mask_groups = {p.name for p in masks_root.iterdir() if p.is_dir()}
    if image_groups != mask_groups:
      raise dio.BadInputError(
          f"icoseg: groups without masks {sorted(image_groups - mask_groups)}"
          f", masks without images {sorted(mask_groups - image_groups)} "
          f"(under {images_root} and {masks_root})")
    groups = sorted(image_groups)
    wanted = self.builder_config.groups
    if wanted is not None:
      by_key = {normalize_name(g): g for g in groups}
      missing = [w for w in wanted if normalize_name(w) not in by_key]
      if missing:
        raise FileNotFoundError(
            f"icoseg (subset8): groups {missing} not found in {images_root}"
            f" (found {groups})")
      groups = sorted(by_key[normalize_name(w)] for w in wanted)
    if not groups:
      return {}
    self.set_class_names(groups)
    return {"train": self._generate(manual_dir, images_root, masks_root,
                                    groups)}

  def _generate(self, manual_dir, images_root, masks_root, groups):
    for group in groups:
      for image_path in bb.list_images(images_root / group):
        mask_path = bb.require_mask(
            bb.find_with_stem(masks_root / group, image_path.stem),
            masks_root / group / f"{image_path.stem}.png")
        image_id = bb.relpath(image_path, manual_dir)
        yield image_id, bb.image_mask_example(
            image_path, mask_path, label=group, image_id=image_id)
