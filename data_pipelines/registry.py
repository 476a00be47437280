"""Dataset registry: name -> TFDS builder, prepare once, read back records.

Every dataset lives in its own package `data_pipelines/<name>/` that exports a
`Builder` (a `tfds.core.GeneratorBasedBuilder`). Builders read the original
distribution layout from a `manual_dir` (nothing is downloaded) and are always
written with `file_format='array_record'`, so that they can be read without
TensorFlow through `tfds.builder_from_directory(path).as_data_source(split)`,
which gives random access to decoded numpy records (the form grain needs).

`prepare` reports how many records were written per split and per class. The
report is computed while generating (see `data_pipelines/builder_base.py`) and
stored as `record_counts.json` beside the dataset, so a second `prepare` of an
already built dataset prints the same table without decoding anything. For a
builder that does not keep such a tally (e.g. the procedural `synthetic`), the
counts are computed once from the written records and then stored the same way.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import os
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

# Every dataset name the library knows, one package each under data_pipelines/.
_DATASETS = (
    "pascal_voc_coseg",
    "voc2012_coseg",
    "internet",
    "icoseg",
    "msrc",
    "tss",
    "pf_pascal",
    "pf_willow",
    "synthetic",
)

COUNTS_FILENAME = "record_counts.json"
TOTAL_KEY = "_total"


def available_datasets() -> tuple[str, ...]:
  """Returns the names accepted by `builder_class`, `prepare`, `load_source`."""
  return _DATASETS


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """Imports `data_pipelines.<name>` and returns its `Builder` class.

  Args:
    name: one of `available_datasets()`.

  Raises:
    ValueError: unknown name (the message lists the known names).
  """
  if name not in _DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: "
                     f"{', '.join(_DATASETS)}")
  module = importlib.import_module(f"data_pipelines.{name}")
  return module.Builder


def _make_builder(name: str, data_dir, builder_config):
  cls = builder_class(name)
  kwargs = dict(data_dir=os.fspath(data_dir), file_format="array_record")
  if builder_config is not None:
    kwargs["config"] = builder_config
  return cls(**kwargs)


def _label_names(features, key):
  feature = features[key]
  if isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  if isinstance(feature, tfds.features.ClassLabel):
    return feature.names
  return None


def count_records(path) -> dict[str, dict[str, int]]:
  """Counts the written records of a built dataset per split and per class.

  Decodes every record (slow for big datasets); `prepare` calls it only for
  builders that did not keep a tally while generating.

  Args:
    path: a built dataset directory (`<data_dir>/<name>/<config>/<version>`).

  Returns:
    {split: {class_name: n, ..., '_total': n}}. For a multi-label feature
    (`labels`, a Sequence of ClassLabel) an image counts once for each class
    it contains.
  """
  builder = tfds.builder_from_directory(os.fspath(path))
  features = builder.info.features
  label_key = "label" if "label" in features else (
      "labels" if "labels" in features else None)
  names = _label_names(features, label_key) if label_key else None
  counts = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    per_class = collections.Counter()
    for i in range(len(source)):
      if names is None:
        continue
      value = source[i][label_key]
      for v in ([value] if label_key == "label" else list(value)):
        per_class[names[int(v)]] += 1
    split_counts = dict(sorted(per_class.items()))
    split_counts[TOTAL_KEY] = len(source)
    counts[split] = split_counts
  return counts


def format_counts(name: str, counts: Mapping[str, Mapping[str, int]]) -> str:
  """A human-readable table of per-split, per-class record counts."""
  lines = [f"{name}: records written"]
  for split, per_class in counts.items():
    lines.append(f"  split {split!r}: {per_class.get(TOTAL_KEY, 0)} records")
    for cls, n in per_class.items():
      if cls != TOTAL_KEY:
        lines.append(f"    {cls}: {n}")
  return "\n".join(lines)


def summarise_counts(name: str, counts: Mapping[str, Mapping[str, int]]
                     ) -> str:
  """One line: records and classes per split."""
  parts = [f"{split} {per_class.get(TOTAL_KEY, 0):,} records in "
           f"{sum(1 for c in per_class if c != TOTAL_KEY)} classes"
           for split, per_class in counts.items()]
  return f"{name}: " + "; ".join(parts)


def prepare(name: str, *, data_dir, manual_dir=None, builder_config=None,
            force: bool = False, verbose: Optional[bool] = None
            ) -> epath.Path:
  """Builds dataset `name` as array_record into `data_dir` unless already built.

  Args:
    name: one of `available_datasets()`.
    data_dir: where TFDS writes `<name>/<config>/<version>/`.
    manual_dir: the original distribution layout (see the builder's module
      docstring); not needed by `synthetic` or when already built.
    builder_config: a config name or `BuilderConfig` (e.g. 'subset100').
    force: rebuild even when a complete build exists.
    verbose: after a build, print TFDS's own progress and the per-split,
      per-class table (True), or one summary line (False); None follows the
      absl log level (INFO and below: verbose), which the command line keeps
      at WARNING unless ``--verbosity`` asks for more.

  Returns:
    The built dataset directory, to pass to `tfds.builder_from_directory`. Its
    `record_counts.json` holds {split: {class: n, '_total': n}}.

  Raises:
    ValueError: unknown name.
    FileNotFoundError: `manual_dir` missing or empty where a build is needed
      (the message describes the expected layout).
  """
  builder = _make_builder(name, data_dir, builder_config)
  path = epath.Path(builder.data_dir)
  built = (path / "dataset_info.json").exists()
  if force and built:
    path.rmtree()
    builder = _make_builder(name, data_dir, builder_config)
    built = False
  if verbose is None:
    verbose = logging.get_verbosity() >= logging.INFO
  if not built:
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
    quiet = contextlib.ExitStack()
    if not verbose:  # TFDS prints its progress bars and banners itself
      quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
      quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
      tfds.display_progress_bar(False)
    try:
      with quiet:
        builder.download_and_prepare(download_config=download_config,
                                     file_format="array_record")
    finally:
      tfds.display_progress_bar(True)
    path = epath.Path(builder.data_dir)
    tally = getattr(builder, "record_counts", None)
    if tally:
      (path / COUNTS_FILENAME).write_text(json.dumps(tally, indent=1))
    counts = read_counts(path)
    print(format_counts(name, counts) if verbose else
          f"built {summarise_counts(name, counts)} (in {path})")
  return path


def read_counts(path) -> dict[str, dict[str, int]]:
  """Per-split, per-class record counts of a built dataset (cached on disk)."""
  path = epath.Path(path)
  counts_file = path / COUNTS_FILENAME
  if counts_file.exists():
    return json.loads(counts_file.read_text())
  counts = count_records(path)
  try:
    counts_file.write_text(json.dumps(counts, indent=1))
  except OSError:  # A read-only data_dir still gets its counts, uncached.
    pass
  return counts


def dataset_path(name: str, *, data_dir, builder_config=None) -> epath.Path:
  """Where `prepare` writes (or wrote) dataset `name`; not checked to exist."""
  return epath.Path(_make_builder(name, data_dir, builder_config).data_dir)


def load_source(name: str, *, data_dir, split: str,
                builder_config=None) -> Any:
  """Random-access source of decoded numpy records of a built dataset.

  Raises:
    FileNotFoundError: the dataset has not been prepared in `data_dir`.
  """
  path = dataset_path(name, data_dir=data_dir, builder_config=builder_config)
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(
        f"Dataset {name!r} (config {builder_config!r}) is not built in "
        f"{data_dir}: call data_pipelines.registry.prepare({name!r}, "
        f"data_dir=..., manual_dir=...) first (expected {path}).")
  return tfds.builder_from_directory(os.fspath(path)).as_data_source(split)
