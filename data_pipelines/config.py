"""The data config: every field ``data_pipelines.pipeline`` reads.

Method configs embed it as ``config.data`` and override fields, e.g.::

  config.data = default_data_config()
  config.data.name = 'pascal_voc_coseg'
  config.data.manual_dir = '/path/to/PASCAL_coseg'
  config.data.image_size = 320
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the default data config (synthetic pairs at 96 px).

  Fields:
    name: dataset name, one of ``registry.available_datasets()``.
    data_dir: where TFDS builds live (``<data_dir>/<name>/<config>/<version>``).
    manual_dir: the original distribution layout (None for 'synthetic' or when
      already built).
    builder_config: TFDS builder config name (None = the builder's default;
      for 'synthetic' None means "build from the ``synthetic.*`` fields").
    train_split / eval_split: split names used by training / evaluation.
    image_size: model input side (int) or (H, W).
    resize: 'stretch' or 'pad' (keep aspect, pad bottom/right, pad invalid).
    sampler: 'pairs', 'triplets' or 'groups'; pair-record datasets (tss,
      pf_pascal, pf_willow) ignore it and yield their pairs (K=2).
    group_size: K for the 'groups' sampler (pairs: 2, triplets: 3).
    negative_fraction: share of negative pairs (no common class,
      ``has_common=0``, empty targets) for the 'pairs' sampler.
    groups_per_epoch: training groups drawn per epoch (None = number of
      records in the split).
    eval_groups_per_split: groups of the deterministic eval pass (None = number
      of records in the split).
    classes: class names to keep (empty = all).
    exclude_classes: class names to drop.
    max_keypoints: keypoints per image are padded with NaN to this count
      (pf_* datasets).
    augment.enabled: random geometric augmentation in training.
    augment.scale_min / scale_max: zoom range (log-uniform).
    augment.max_rotation_deg: rotation range +- (degrees).
    augment.flip_prob: horizontal flip probability.
    augment.crop: random crop / placement after zooming.
    num_workers: grain multiprocessing workers (0 = in-process).
    prefetch_buffer_size: per-worker prefetch buffer (num_workers > 0).
    seed: data seed (sampling and augmentation); make_dataset's ``seed``
      argument overrides it when given.
    synthetic.*: generator settings when ``name == 'synthetic'`` and
      ``builder_config`` is None: num_classes, train_per_class,
      test_per_class, image_size (rendered side, independent of the model's
      ``image_size``), seed, min_distractors, max_distractors,
      category_colours, category_textures (see
      ``data_pipelines.synthetic.SyntheticConfig``; at most one of the two).
  """
  c = ml_collections.ConfigDict()
  c.name = "synthetic"
  c.data_dir = "~/tensorflow_datasets"
  c.manual_dir = config_dict.placeholder(str)
  c.builder_config = config_dict.placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = 96
  c.resize = "stretch"
  c.sampler = "pairs"
  c.group_size = 2
  c.negative_fraction = 0.0
  c.groups_per_epoch = config_dict.placeholder(int)
  c.eval_groups_per_split = config_dict.placeholder(int)
  c.classes = ()
  c.exclude_classes = ()
  c.max_keypoints = 32

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.scale_min = 0.8
  c.augment.scale_max = 1.25
  c.augment.max_rotation_deg = 15.0
  c.augment.flip_prob = 0.5
  c.augment.crop = True

  c.num_workers = 0
  c.prefetch_buffer_size = 2
  c.seed = 0

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_classes = 10
  c.synthetic.train_per_class = 40
  c.synthetic.test_per_class = 10
  c.synthetic.image_size = 96
  c.synthetic.seed = 0
  c.synthetic.min_distractors = 1
  c.synthetic.max_distractors = 3
  c.synthetic.category_colours = False
  c.synthetic.category_textures = False
  return c
