"""Co-segment the user's own images: masks, overlays and a contact sheet.

``predict_folder`` reads every image of a folder (or glob), groups them per
``config.predict.group_strategy``, runs the model at its input size and maps
the foreground probabilities back to each image's original size:

- 'group': all N images form one group (K = N). Every method whose model
  accepts any K (the baselines, CycleSegNet's group mode) sees the whole set
  at once.
- 'all_pairs': every unordered pair is one group (K = 2, N(N-1)/2 groups);
  an image's probability map is the mean over the N-1 pairs it belongs to
  (the same rule as the co-segmentation evaluator). This is the mode for
  pair-only methods and the default.

Then foreground = probability >= ``config.eval.threshold`` (0.5 unless the
method's ``predict_fn`` decides otherwise) at the original resolution, or the
conversion ``config.eval.postprocess`` names (Otsu, dense CRF, GrabCut;
``coseg_jax.postprocess.binarize``).

Files written into ``out_dir``:
- ``masks/<name>.png``: uint8 single-channel mask, 0 background / 255
  foreground, the size of the original image;
- ``overlays/<name>.png``: the image with the mask blended in and outlined;
- ``contact_sheet.png``: every image next to its overlay, one sheet.
``<name>`` is the file's stem; when two inputs share a stem (``a.jpg``,
``a.png``) the extension is kept in the name (``a_jpg``) so nothing is
overwritten.

Input reading follows ``data_pipelines.io.read_image`` (the builders' rules:
grayscale replicated, palette expanded, alpha dropped, 16-bit reduced, a
corrupt file refused naming it); EXIF orientation is NOT applied, so masks
align with the stored pixel grid (what every other tool reading the raw
pixels sees). Unreadable files are skipped and reported by default
(``config.predict.on_unreadable='skip'``), or stop the run ('error').
"""

import glob
import itertools
import os
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image

from coseg_jax.runtime import steps
from coseg_jax.runtime import viz
from coseg_jax.runtime.evaluators import common
from data_pipelines import augment
from data_pipelines import io as data_io

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp", ".ppm", ".pgm")
GROUP_STRATEGIES = ("all_pairs", "group")
ON_UNREADABLE = ("skip", "error")


def list_images(images: str) -> List[str]:
  """Image files named by a folder or a glob pattern, sorted.

  Args:
    images: a directory (its files with an image extension, not recursive)
      or a glob pattern (every matching file, whatever its extension).

  Raises:
    FileNotFoundError: nothing matches (the message names the folder or
      pattern).
  """
  if not images:
    raise FileNotFoundError("no images given (--images is empty)")
  if os.path.isdir(images):
    files = [os.path.join(images, f) for f in sorted(os.listdir(images))
             if f.lower().endswith(IMAGE_EXTENSIONS)
             and os.path.isfile(os.path.join(images, f))]
    if not files:
      raise FileNotFoundError(
          f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {images}")
    return files
  files = sorted(f for f in glob.glob(os.path.expanduser(images))
                 if os.path.isfile(f))
  if not files:
    if not glob.has_magic(images):
      raise FileNotFoundError(f"--images {images}: no such folder or file")
    raise FileNotFoundError(f"no files match the pattern {images}")
  return files


class UnreadableImagesError(ValueError):
  """Some inputs could not be read; ``str()`` is one line naming them."""


def read_images(paths: Sequence[str], *, on_unreadable: str = "skip"
                ) -> Tuple[List[str], List[np.ndarray], List[str]]:
  """Reads every file with the data builders' rules.

  Args:
    paths: image files.
    on_unreadable: 'skip' (leave unreadable files out and report them) or
      'error' (stop at the first one).

  Returns:
    (readable paths, their uint8 [H, W, 3] images, messages of the skipped
    files, each naming its file).

  Raises:
    UnreadableImagesError: with 'error' and an unreadable file, or when
      fewer than two images remain (co-segmentation needs two).
  """
  if on_unreadable not in ON_UNREADABLE:
    raise ValueError(f"predict.on_unreadable must be one of {ON_UNREADABLE},"
                     f" got {on_unreadable!r}")
  kept, arrays, skipped = [], [], []
  for path in paths:
    try:
      arrays.append(data_io.read_image(path))
      kept.append(path)
    except (OSError, ValueError) as e:
      message = " ".join(str(e).split()) or f"{path}: unreadable"
      if path not in message:
        message = f"{path}: {message}"
      if on_unreadable == "error":
        raise UnreadableImagesError(message) from None
      skipped.append(message)
  if len(arrays) < 2:
    raise UnreadableImagesError(
        f"{len(arrays)} readable image(s) of {len(paths)}; co-segmentation "
        f"needs at least 2" + (f" (unreadable: {'; '.join(skipped)})"
                               if skipped else ""))
  return kept, arrays, skipped


def make_groups(n: int, strategy: str) -> List[tuple]:
  """Index groups of ``n`` images for a group strategy (module docstring)."""
  if strategy not in GROUP_STRATEGIES:
    raise ValueError(f"predict.group_strategy must be one of "
                     f"{GROUP_STRATEGIES}, got {strategy!r}")
  if n < 2:
    raise ValueError(f"co-segmentation needs at least 2 images, got {n}")
  if strategy == "group":
    return [tuple(range(n))]
  return list(itertools.combinations(range(n), 2))


def _output_names(paths: Sequence[str]) -> List[str]:
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  counts = {s: stems.count(s) for s in stems}
  names = []
  for path, stem in zip(paths, stems):
    if counts[stem] > 1:
      stem = os.path.basename(path).replace(".", "_")
    names.append(stem)
  if len(set(names)) != len(names):  # Same file name in different folders.
    names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
  return names


def cosegment_images(*, predict_batch: Callable[[np.ndarray], np.ndarray],
                     images: Sequence[np.ndarray], strategy: str, image_size,
                     resize: str = "stretch", batch_size: int = 8
                     ) -> List[np.ndarray]:
  """Foreground probabilities [H_i, W_i] at each image's original size.

  Args:
    predict_batch: images [B, K, h, w, 3] -> probabilities [B, K, h, w, 1].
    images: uint8 [H_i, W_i, 3] images of any sizes.
    strategy: 'all_pairs' or 'group'.
    image_size, resize: model input (``augment.preprocess_image``).
    batch_size: groups per model call ('all_pairs'); the last call is padded.

  Returns:
    float32 probability maps, one per image, each averaged over its groups.
  """
  groups = make_groups(len(images), strategy)
  inputs, infos = zip(*[augment.preprocess_image(
      im, image_size=image_size, resize=resize) for im in images])
  batch_size = 1 if strategy == "group" else batch_size
  sums = [0.0] * len(images)
  counts = [0] * len(images)
  for start in range(0, len(groups), batch_size):
    chunk = groups[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = np.stack([np.stack([inputs[i] for i in g]) for g in padded])
    probs = np.asarray(predict_batch(batch), np.float32)[:len(chunk)]
    for g, group_probs in zip(chunk, probs):
      for k, i in enumerate(g):
        sums[i] = sums[i] + augment.restore_prediction(group_probs[k],
                                                       infos[i])
        counts[i] += 1
  return [s / c for s, c in zip(sums, counts)]


def write_outputs(*, paths: Sequence[str], images: Sequence[np.ndarray],
                  probabilities: Sequence[np.ndarray], out_dir: str,
                  binarize: Callable[[np.ndarray, np.ndarray], np.ndarray]
                  ) -> List[str]:
  """Writes masks, overlays and the contact sheet; returns the file paths.

  ``binarize`` is ``(image, probability) -> bool mask``
  (``evaluators.common.binarizer`` of the config).
  """
  os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)
  written, tiles, labels = [], [], []
  for name, image, prob in zip(_output_names(paths), images, probabilities):
    mask = np.where(binarize(image, prob), 255, 0).astype(np.uint8)
    mask_path = os.path.join(out_dir, "masks", f"{name}.png")
    Image.fromarray(mask).save(mask_path)
    over = viz.overlay(image, mask)
    over_path = os.path.join(out_dir, "overlays", f"{name}.png")
    Image.fromarray(over).save(over_path)
    written += [mask_path, over_path]
    tiles += [image, over]
    labels += [name, f"{100.0 * (mask > 0).mean():.0f}% fg"]
  columns = 2 * min(3, len(images))
  # Cap the cell size so a few large photos do not make a huge sheet.
  cell_h = min(256, max(t.shape[0] for t in tiles))
  cell_w = min(256, max(t.shape[1] for t in tiles))
  sheet = viz.contact_sheet(tiles, columns=columns, labels=labels,
                            cell_size=(cell_h, cell_w))
  sheet_path = os.path.join(out_dir, "contact_sheet.png")
  Image.fromarray(sheet).save(sheet_path)
  written.append(sheet_path)
  return written


def predict_folder(*, config, model, variables, images: str,
                   out_dir: str) -> Tuple[List[str], List[str]]:
  """Co-segments the images named by ``images`` and writes the results.

  Unreadable files follow ``config.predict.on_unreadable``: 'skip' (the
  default: one broken file in a folder of photos should not cost the masks
  of the others; every skipped file is returned and reported) or 'error'.

  Args:
    config: experiment config (``method``, ``predict.group_strategy``,
      ``predict.image_size``, ``predict.on_unreadable``, ``data.resize``,
      ``eval.threshold``, ``eval.postprocess``).
    model: the method's Flax module.
    variables: its variables.
    images: a folder or a glob pattern.
    out_dir: output folder (created).

  Returns:
    (the written file paths: masks, overlays, then the contact sheet;
    the messages of the skipped files).

  Raises:
    UnreadableImagesError: see :func:`read_images`.
  """
  paths, arrays, skipped = read_images(
      list_images(images),
      on_unreadable=config.predict.get("on_unreadable", "skip"))
  predict_batch = steps.make_predict_batch(config=config, model=model,
                                           variables=variables)
  probs = cosegment_images(
      predict_batch=predict_batch, images=arrays,
      strategy=config.predict.group_strategy,
      image_size=config.predict.image_size,
      resize=config.data.get("resize", "stretch"),
      batch_size=int(config.eval.get("batch_size", 8)))
  written = write_outputs(paths=paths, images=arrays, probabilities=probs,
                          out_dir=out_dir,
                          binarize=common.binarizer(config.eval))
  return written, skipped
