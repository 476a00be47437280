"""TFDS builder for the procedural ``synthetic`` co-segmentation set.

Nothing is read from ``manual_dir`` and nothing is downloaded: every record is
rendered by :mod:`data_pipelines.synthetic.generator` from the config's seed
(see that module for the scene model). The 'test' split uses a different seed
(``seed + 1``) from 'train', so it is a held-out draw of the same task.

Records follow the image-record contract: ``image`` (H, W, 3) uint8, ``mask``
(H, W, 1) uint8 in {0, 1} (no ignore pixels: masks are exact), ``label`` the
category (names sorted), ``image_id`` ``<split>/<category>/<index>.png``.

Configs (``name``: classes x train/test images per class, side in px):
  * ``default``: 10 x 40/10 at 96 px (the offline demo; builds in seconds).
  * ``tiny``: 3 x 6/3 at 32 px (unit tests).
  * ``small64``: 10 x 40/10 at 64 px.
  * ``easy64``: as ``small64`` with exactly one distractor per image.
  * ``hue64``: as ``small64`` with every object painted in its category's hue
    (``category_colours``): the common object is the one whose shape and hue
    the other images share.
  * ``same64``: as ``easy64`` (one distractor) with every object wearing its
    category's own texture (``category_textures``): the common object looks
    the same in every image of a group (instance co-segmentation; the
    offline demo's set). One distractor keeps most pairs unambiguous: with
    1-3 distractors from 9 other categories, about one pair in three also
    shares a distractor's category (one in nine with a single distractor),
    and then no pair model can tell which of the two shared objects the mask
    means.
  * ``apart64``: as ``same64`` with the distractor kept at least 3 px away
    from the common object (``min_gap``; object diameters 0.4-0.65 and
    distractor diameters 0.3-0.5 of the side, so that the gap fits). In
    ``same64`` three distractors in four touch the object; ``apart64``
    tests whether that is what makes the demo's model keep distractors (it is
    not the main cause: docs/notes/lab_notebook.md).
  * ``distinct64``: as ``same64`` with textures made distinct by
    construction (``distinct_textures``: category k has hue k/10 of the
    circle and pattern kind k mod 4). With ``same64``'s random textures a
    few categories look alike (two bright solids, warm stripes), and the
    demo's model marks both objects of exactly those category pairs (with
    distinct textures it still ends at the same J: docs/notes/lab_notebook.md).
  * ``equal64``: as ``same64`` with the common object and the distractor
    drawn from one size range (diameters 0.3-0.55 of the side) and kept
    3 px apart, so neither size nor occlusion says which one is common. In
    ``same64`` the common object is the larger of the two in 85 of 100
    renders (61 in ``equal64``), and a model that never sees the partner
    reaches held-out J 0.68 there against 0.49 here (docs/notes/lab_notebook.md).
  * ``bench512``: 4 x 16/4 at 512 px (loader throughput benchmark).
A ``SyntheticConfig`` with other values can be passed as ``config=``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import tensorflow_datasets as tfds

from data_pipelines.synthetic import generator

__all__ = ["Builder", "SyntheticConfig", "generator", "render"]


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size and count of the synthetic set.

  Attributes:
    num_classes: categories used (the first N shape families, 2..12).
    train_per_class: train images per category.
    test_per_class: test images per category.
    image_size: side length in pixels (square images).
    seed: train seed; test uses ``seed + 1``.
    min_distractors / max_distractors: distractor objects per image
      (inclusive range); fewer distractors make an easier task.
    category_colours: objects take their category's hue (see
      ``generator.render``); otherwise colours carry no information.
    category_textures: objects wear their category's texture.
    distinct_textures: with category_textures, one hue and one pattern kind
      per category (evenly spaced hues) instead of random textures.
    object_scale / distractor_scale: (min, max) diameters as fractions of
      the image side (None: the generator's defaults).
    min_gap: distractors keep this many pixels away from the common object
      (0: they may touch it and lie up to 30 % under it).
  """
  num_classes: int = 10
  train_per_class: int = 40
  test_per_class: int = 10
  image_size: int = 96
  seed: int = 0
  min_distractors: int = 1
  max_distractors: int = 3
  category_colours: bool = False
  category_textures: bool = False
  distinct_textures: bool = False
  object_scale: Optional[Tuple[float, float]] = None
  distractor_scale: Optional[Tuple[float, float]] = None
  min_gap: int = 0


def render(cfg: SyntheticConfig, category: int, *, seed: int, index: int):
  """``generator.render`` with every generator setting of ``cfg``.

  The one place that maps a config to the generator, for the builder and for
  tools that re-render records (e.g. with their distractor masks). Returns
  ``(image, mask, distractor_mask)`` as ``generator.render`` does; the
  builder's train split uses ``seed=cfg.seed``, its test split ``cfg.seed + 1``.
  """
  return generator.render(
      category, num_classes=cfg.num_classes, image_size=cfg.image_size,
      seed=seed, index=index,
      distractors=(cfg.min_distractors, cfg.max_distractors),
      category_colours=cfg.category_colours,
      category_textures=cfg.category_textures,
      distinct_textures=cfg.distinct_textures,
      object_scale=cfg.object_scale, distractor_scale=cfg.distractor_scale,
      min_gap=cfg.min_gap)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated co-segmentation groups (no manual data)."""

  name = "synthetic"

  VERSION = tfds.core.Version("1.5.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Distractor sizes overlap the object's (size is no cue).",
      "1.2.0": "Toned-down backgrounds: objects salient, category decides.",
      "1.3.0": "category_textures option and the same64 config.",
      "1.4.0": "Scale, min_gap and distinct_textures options, the apart64 "
               "and distinct64 configs (earlier configs' records unchanged).",
      "1.5.0": "The equal64 config (earlier configs' records unchanged).",
  }
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="10 x 40/10 at 96 px"),
      SyntheticConfig(name="tiny", description="3 x 6/3 at 32 px",
                      num_classes=3, train_per_class=6, test_per_class=3,
                      image_size=32),
      SyntheticConfig(name="small64", description="10 x 40/10 at 64 px",
                      image_size=64),
      SyntheticConfig(name="easy64",
                      description="10 x 40/10 at 64 px, one distractor each",
                      image_size=64, min_distractors=1, max_distractors=1),
      SyntheticConfig(name="hue64",
                      description="10 x 40/10 at 64 px, category hues",
                      image_size=64, category_colours=True),
      SyntheticConfig(name="same64",
                      description="10 x 40/10 at 64 px, category textures, "
                      "one distractor each",
                      image_size=64, min_distractors=1, max_distractors=1,
                      category_textures=True),
      SyntheticConfig(name="apart64",
                      description="as same64 with the distractor at least "
                      "3 px away from the common object",
                      image_size=64, min_distractors=1, max_distractors=1,
                      category_textures=True, object_scale=(0.4, 0.65),
                      distractor_scale=(0.3, 0.5), min_gap=3),
      SyntheticConfig(name="distinct64",
                      description="as same64 with one hue and one pattern "
                      "kind per category",
                      image_size=64, min_distractors=1, max_distractors=1,
                      category_textures=True, distinct_textures=True),
      SyntheticConfig(name="equal64",
                      description="as same64 with object and distractor "
                      "drawn from one size range and kept apart",
                      image_size=64, min_distractors=1, max_distractors=1,
                      category_textures=True, object_scale=(0.3, 0.55),
                      distractor_scale=(0.3, 0.55), min_gap=3),
      SyntheticConfig(name="bench512", description="4 x 16/4 at 512 px",
                      num_classes=4, train_per_class=16, test_per_class=4,
                      image_size=512),
  ]
  DEFAULT_CONFIG_NAME = "default"

  @property
  def record_counts(self) -> dict[str, dict[str, int]]:
    """{split: {class: n, '_total': n}}, known without decoding (registry)."""
    cfg = self.builder_config
    names = generator.category_names(cfg.num_classes)
    out = {}
    for split, n in (("train", cfg.train_per_class),
                     ("test", cfg.test_per_class)):
      out[split] = {name: n for name in names}
      out[split]["_total"] = n * len(names)
    return out

  def _info(self) -> tfds.core.DatasetInfo:
    names = generator.category_names(self.builder_config.num_classes)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=names),
            "image_id": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/coseg_jax",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download or read.
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", cfg.seed,
                                         cfg.train_per_class),
        "test": self._generate_examples("test", cfg.seed + 1,
                                        cfg.test_per_class),
    }

  def _generate_examples(self, split, seed, per_class):
    cfg = self.builder_config
    names = generator.category_names(cfg.num_classes)
    for label, name in enumerate(names):
      for index in range(per_class):
        image, mask, _ = render(cfg, label, seed=seed, index=index)
        image_id = f"{split}/{name}/{index:04d}.png"
        yield image_id, {
            "image": generator.encode_png(image),
            "mask": generator.encode_png(mask[..., None]),
            "label": label,
            "image_id": image_id,
        }
