r"""J and P of predicted masks against a folder of ground-truth masks.

What ``--mode predict`` writes to ``<out>/masks/`` can be scored against
masks a user drew for the same photos:

  python -m experiments.score_masks --pred /tmp/csn_all/predictions/masks \
      --truth /path/to/truth_masks [--out scores.json]

Files are paired by name without extension (``masks/cat.png`` with
``truth/cat.png`` or ``truth/cat.bmp``). A prediction with no truth file,
two truth files of one name, an unreadable file or a size mismatch is an
error that names the file; truth files with no prediction are listed on
the console, not scored. Files are read by ``data_pipelines.io.read_mask``
(palette PNGs by index, grey or identical-channel colour files by value):
predictions must hold {0, 255} or {0, 1} (what predict writes); truth masks
are thresholded by that module's rule (foreground at >= 128, or at 1 when
the mask's values are only 0 and 1, as in TSS's JODS palette masks).
Scores are ``coseg_jax.metrics.score_mask`` per image, at the truth mask's
size, then the mean J and P over images and the pooled J (sum of
intersections / sum of unions).
"""

import json
import os
from typing import Dict, Sequence

from absl import app
from absl import flags

from coseg_jax import metrics
from coseg_jax.runtime import console
from data_pipelines import io

FLAGS = flags.FLAGS
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def define_flags():
  """The command line's flags (only when run as a script)."""
  flags.DEFINE_string("pred", None, "Folder of predicted masks.")
  flags.DEFINE_string("truth", None, "Folder of ground-truth masks.")
  flags.DEFINE_string("out", None, "Optional JSON file for the scores.")


def _by_stem(folder: str) -> Dict[str, str]:
  """{name without extension: path} of a folder's image files."""
  if not os.path.isdir(folder):
    raise ValueError(f"score_masks: {folder} is not a folder")
  found = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in IMAGE_SUFFIXES:
      continue
    if stem in found:
      raise ValueError(f"score_masks: two files named {stem!r} in {folder}: "
                       f"{os.path.basename(found[stem])} and {name}")
    found[stem] = os.path.join(folder, name)
  return found


def score_folders(pred_dir: str, truth_dir: str) -> Dict:
  """Per-image and summary scores of ``pred_dir`` against ``truth_dir``.

  Returns:
    {'images': [{'name', 'J', 'P'}], 'mean_J', 'mean_P', 'pooled_J',
    'num_images', 'unscored_truth': [names with no prediction]}.

  Raises:
    ValueError naming the file: a prediction without truth, an unreadable
    file or one with values its rule refuses, a size mismatch, or an empty
    prediction folder.
  """
  preds, truths = _by_stem(pred_dir), _by_stem(truth_dir)
  if not preds:
    raise ValueError(f"score_masks: no image files in {pred_dir}")
  missing = [n for n in preds if n not in truths]
  if missing:
    raise ValueError(f"score_masks: no truth mask in {truth_dir} for "
                     f"{', '.join(missing)}")
  # Each photo is its own "class" of the accumulator, which then gives the
  # per-photo rows, the mean over photos and the pooled J.
  acc = metrics.CosegAccumulator()
  for name, path in preds.items():
    pred = io.read_mask(path, mode="binary").astype(bool)
    truth = io.read_mask(truths[name], mode="threshold")
    io.check_same_size(path, pred.shape, truths[name], truth.shape)
    acc.update(class_names=name,
               scores=metrics.score_mask(pred=pred, gt=truth))
  r = acc.result()
  return {
      "images": [{"name": n, "J": c["J"], "P": c["P"]}
                 for n, c in r["per_class"].items()],
      "num_images": r["num_images"],
      "mean_J": r["image_mean_J"],
      "mean_P": r["image_mean_P"],
      "pooled_J": r["pooled_J"],
      "unscored_truth": sorted(n for n in truths if n not in preds),
  }


def format_scores(scores: Dict) -> str:
  """A per-image table and the summary line."""
  width = max([len("image")] + [len(r["name"]) for r in scores["images"]])
  lines = [f"{'image':<{width}}  {'J':>6}  {'P':>6}"]
  lines += [f"{r['name']:<{width}}  {r['J']:>6.3f}  {r['P']:>6.3f}"
            for r in scores["images"]]
  lines.append(f"{scores['num_images']} images: mean J "
               f"{scores['mean_J']:.3f}, mean P {scores['mean_P']:.3f}, "
               f"pooled J {scores['pooled_J']:.3f}")
  if scores["unscored_truth"]:
    lines.append("truth masks with no prediction (not scored): "
                 + ", ".join(scores["unscored_truth"]))
  return "\n".join(lines)


def main(argv: Sequence[str]):
  del argv
  console.setup(None)
  if not FLAGS.pred or not FLAGS.truth:
    raise app.UsageError("--pred and --truth are required")
  scores = score_folders(FLAGS.pred, FLAGS.truth)
  console.info(format_scores(scores))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(scores, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
