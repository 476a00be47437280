"""The data config: every field ``data_pipelines.pipeline`` reads.

Method configs embed it as ``config.data`` and override fields, e.g.::

  config.data = default_data_config()
  config.data.name = 'pascal_voc_coseg'
  config.data.manual_dir = '/path/to/PASCAL_coseg'
  config.data.image_size = 320
"""

from __future__ import annotations

import os
from typing import Optional

import ml_collections
from ml_collections import config_dict

# A folder holding the original data sets, each in a subfolder named after
# the data set (or one of FOLDER_NAMES); used when data.manual_dir is unset.
DATA_DIR_ENV = "COSEG_DATA_DIR"
FOLDER_NAMES = {"tss": ("tss", "tss_sample")}


def resolve_manual_dir(data_config) -> Optional[str]:
  """``data.manual_dir``, else ``$COSEG_DATA_DIR/<data set folder>`` when that
  folder exists, else None."""
  manual = data_config.get("manual_dir")
  if manual:
    return os.path.expanduser(str(manual))
  root = os.environ.get(DATA_DIR_ENV)
  if not root:
    return None
  for folder in FOLDER_NAMES.get(data_config.name, (data_config.name,)):
    path = os.path.join(os.path.expanduser(root), folder)
    if os.path.isdir(path):
      return path
  return None


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the default data config (synthetic pairs at 96 px).

  Fields:
    name: dataset name, one of ``registry.available_datasets()``.
    data_dir: where TFDS builds live (``<data_dir>/<name>/<config>/<version>``).
    manual_dir: the original distribution layout (None for 'synthetic', when
      already built, or to use ``$COSEG_DATA_DIR/<name>``).
    builder_config: TFDS builder config name (None = the builder's default;
      for 'synthetic' None means "build from the ``synthetic.*`` fields").
    train_split: the split training reads (evaluation reads
      ``config.eval.split``).
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
    class_slice: (start, stop) into the builder's sorted class names, or
      None (all); combined with ``classes`` / ``exclude_classes``.
    holdout_fraction / holdout_seed / holdout_part: a fixed per-class split
      of the records ('train' or 'test' part; 'all' = no split), see
      ``pipeline.holdout_selection``.
    max_keypoints: keypoints per image are padded with NaN to this count
      (pf_* datasets).
    composites.*: composite training scenes (``data_pipelines.scenes``):
      per_record (their number per training record; 0 = none), seed,
      background ('inpaint' | 'side_by_side'), scale_min / scale_max,
      size (canvas side; None = image_size).
    feature_cache.*: train from cached frozen-encoder features
      (``data_pipelines.feature_cache``): enabled, views (V), dir (None:
      ``<workdir>/feature_cache``), dtype (storage), chunk_size (scenes per
      file), batch_size (encoder batch while building), finetune_from (a
      level: cache up to it and train the encoder's later blocks).
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
  c.image_size = 96
  c.resize = "stretch"
  c.sampler = "pairs"
  c.group_size = 2
  c.negative_fraction = 0.0
  c.groups_per_epoch = config_dict.placeholder(int)
  c.eval_groups_per_split = config_dict.placeholder(int)
  c.classes = ()
  c.exclude_classes = ()
  c.class_slice = config_dict.placeholder(tuple)
  c.holdout_fraction = 0.0
  c.holdout_seed = 0
  c.holdout_part = "all"
  c.max_keypoints = 32

  # Composite scenes for training (data_pipelines.composites): two objects
  # of different training classes on one background, a member of both
  # classes; per_record x (training records) of them join the sampled
  # scenes. 0 disables them.
  c.composites = ml_collections.ConfigDict()
  c.composites.per_record = 0.0
  c.composites.seed = 0
  c.composites.background = "inpaint"  # 'inpaint' | 'side_by_side'
  c.composites.scale_min = 0.45  # object box's longer side / canvas height
  c.composites.scale_max = 0.7
  c.composites.size = config_dict.placeholder(int)  # canvas; None: image_size

  # The frozen-encoder feature cache (data_pipelines.feature_cache and
  # coseg_jax.runtime.feature_cache): with a frozen backbone in evaluation
  # mode, train the heads from encoder features computed once per scene and
  # view. Off by default (the live pipeline).
  c.feature_cache = ml_collections.ConfigDict()
  c.feature_cache.enabled = False
  c.feature_cache.views = 4  # view 0 = plain resize, others augmented
  c.feature_cache.dir = config_dict.placeholder(str)  # None: <workdir>/...
  c.feature_cache.dtype = "float16"  # storage: 'float16' | 'float32'
  c.feature_cache.chunk_size = 16  # scenes per chunk file
  c.feature_cache.batch_size = 16  # images per encoder call while building
  # A level ('stride16'...): cache up to it, fine-tune the blocks after it
  # (coseg_jax.runtime.feature_cache); None: the whole encoder frozen.
  c.feature_cache.finetune_from = config_dict.placeholder(str)

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
