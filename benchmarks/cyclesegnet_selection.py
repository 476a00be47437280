"""Which object does a trained pair model mark, and does its partner decide it?

A diagnosis of a CycleSegNet (or any pair method) checkpoint trained on the
synthetic set, used for the demo's J analysis in benchmarks/RESULTS.md. The
synthetic generator knows each image's distractor pixels, so the held-out J
can be split into its causes. For every held-out image A of every class
(fresh renders of the test seed, same generator settings as the builder
config) the script predicts A's mask with

* every other image of A's class as partner ("same-class partner": the
  common object is in both images), and
* one image of a random other class ("other-class partner": nothing in
  common; a model that reads the pair should then mark little of A),

and reports, averaged over images: object recall, the fraction of the
distractor's pixels marked, the fraction of background marked, J; how much the
distractor marking varies between partners of the same image (a model that
decides from A alone has no spread); and the histogram of per-image
distractor marking (bimodal when a model marks a whole object or none).

A fixed, untrained reference says how far plain appearance matching gets on
the same pairs: every object or distractor pixel of A (colours after a 3x3
box blur) gets its RGB distance to the nearest object-or-distractor pixel of
the partner, and ``colour_match_auc`` is the ROC AUC of that distance for
telling A's object pixels (small distance: the partner shows the same
texture) from its distractor pixels. The model's distractor marking is then
split by that AUC: on pairs where colour alone separates the two objects
(AUC >= 0.99) a model that compares the images should mark no distractor.

  python benchmarks/cyclesegnet_selection.py --workdir /tmp/coseg_demo \\
      [--config configs/demo.py] [--override model.num_steps=7 ...]

``--override field=value`` applies the overrides the run was trained with
(the value is a Python literal, e.g. ``model.regions="'raw'"``).
"""

import argparse
import ast
import importlib.util
import json

import cv2
import numpy as np
from scipy import stats

from coseg_jax import checkpoint
from coseg_jax import evaluate
from coseg_jax import models
from data_pipelines import synthetic

# The test split of a synthetic builder renders with seed + 1 (see the
# builder); fresh renders with the same seed are the held-out images.
_TEST_SEED_OFFSET = 1


def load_config(path: str, overrides):
  """``get_config()`` of a config file, with ``field=literal`` overrides."""
  spec = importlib.util.spec_from_file_location("selection_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    field, _, literal = item.partition("=")
    if not literal:
      raise ValueError(f"--override {item!r}: expected field=value")
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = ast.literal_eval(literal)
  return config


def render_class(builder_config, category: int, count: int):
  """``count`` held-out renders of one class: (images [N,S,S,3] float in
  [0, 1], object masks [N,S,S] bool, distractor masks [N,S,S] bool)."""
  renders = [synthetic.render(builder_config, category,
                              seed=builder_config.seed + _TEST_SEED_OFFSET,
                              index=i) for i in range(count)]
  images = np.stack([r[0] for r in renders]).astype(np.float32) / 255.0
  return (images, np.stack([r[1] for r in renders]).astype(bool),
          np.stack([r[2] for r in renders]).astype(bool))


def mask_scores(pred, obj, distractor):
  """Per-prediction scores of masks pred [N,S,S] bool against one image."""
  background = ~(obj | distractor)
  axes = (-2, -1)
  union = (pred | obj).sum(axes)
  return {
      "J": np.where(union > 0, (pred & obj).sum(axes) / np.maximum(union, 1),
                    1.0),
      "object_recall": (pred & obj).sum(axes) / max(obj.sum(), 1),
      "distractor_marked": (pred & distractor).sum(axes)
                           / max(distractor.sum(), 1),
      "background_marked": (pred & background).sum(axes)
                           / max(background.sum(), 1),
  }


def roc_auc(positive, negative) -> float:
  """ROC AUC of scores (higher = positive); ties count one half."""
  positive, negative = np.ravel(positive), np.ravel(negative)
  if not (positive.size and negative.size):
    return float("nan")
  ranks = stats.rankdata(np.concatenate([positive, negative]))
  n = positive.size
  return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * negative.size))


def colour_match_auc(image, obj, distractor, partner, partner_fg) -> float:
  """The untrained colour-matching reference for one (image, partner) pair.

  Args:
    image / partner: [S, S, 3] float images in [0, 1].
    obj / distractor: [S, S] bool masks of ``image``.
    partner_fg: [S, S] bool, the partner's object and distractor pixels.

  Returns:
    AUC of "RGB distance to the nearest partner foreground pixel is small"
    for object against distractor pixels of ``image`` (NaN without both).
  """
  a = cv2.blur(np.asarray(image, np.float32), (3, 3))
  b = cv2.blur(np.asarray(partner, np.float32), (3, 3))[partner_fg]
  if not b.size:
    return float("nan")

  def nearest(pixels):
    d = ((pixels[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d.min(1)) if pixels.size else pixels[:, 0]

  return roc_auc(-nearest(a[obj]), -nearest(a[distractor]))


def diagnose(*, predict, builder_config, images_per_class: int, seed: int):
  """Runs both partner settings over every held-out image; returns a dict."""
  rng = np.random.default_rng(seed)
  num_classes = builder_config.num_classes
  data = [render_class(builder_config, c, images_per_class)
          for c in range(num_classes)]
  same, other, spread, per_image, oracle = [], [], [], [], []
  for c, (images, objs, distractors) in enumerate(data):
    for i in range(images_per_class):
      partners = [j for j in range(images_per_class) if j != i]
      other_class = (c + 1 + rng.integers(num_classes - 1)) % num_classes
      pairs = [np.stack([images[i], images[j]]) for j in partners]
      pairs.append(np.stack([images[i],
                             data[other_class][0][rng.integers(
                                 images_per_class)]]))
      pred = predict(np.stack(pairs))[:, 0, ..., 0] >= 0.5
      scores = mask_scores(pred, objs[i], distractors[i])
      same.append({k: v[:-1].mean() for k, v in scores.items()})
      other.append({k: v[-1] for k, v in scores.items()})
      if distractors[i].any():
        spread.append(scores["distractor_marked"][:-1].std())
        per_image.append(scores["distractor_marked"][:-1].mean())
        for n, j in enumerate(partners):
          oracle.append((colour_match_auc(images[i], objs[i], distractors[i],
                                          images[j], objs[j] | distractors[j]),
                         scores["distractor_marked"][n]))

  def mean(rows):
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

  auc, marked = np.array(oracle, np.float64).reshape(-1, 2).T
  auc_bins = {"below_0.95": auc < 0.95,
              "0.95_to_0.99": (auc >= 0.95) & (auc < 0.99),
              "at_least_0.99": auc >= 0.99}

  return {
      "same_class_partner": mean(same),
      "other_class_partner": mean(other),
      "distractor_marked_std_over_partners": float(np.mean(spread)),
      "distractor_marked_histogram_0_to_1_in_5_bins":
          np.histogram(per_image, bins=5, range=(0, 1))[0].tolist(),
      "images": len(same),
      "colour_match_auc": float(np.nanmean(auc)) if auc.size else None,
      "distractor_marked_by_colour_match_auc": {
          name: {"pairs": int(sel.sum()),
                 "distractor_marked": (float(marked[sel].mean())
                                       if sel.any() else None)}
          for name, sel in auc_bins.items()},
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="training run whose latest checkpoint is read")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--override", nargs="*", default=[],
                      help="field=python-literal, as in training")
  parser.add_argument("--images_per_class", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)
  config = load_config(args.config, args.override)
  if config.data.name != "synthetic" or not isinstance(
      config.data.builder_config, str):
    raise ValueError("needs a config on a named synthetic builder config, "
                     f"got data.name={config.data.name!r}, "
                     f"builder_config={config.data.builder_config!r}")
  builder_config = synthetic.Builder.builder_configs[
      config.data.builder_config]
  if builder_config.image_size != config.data.image_size:
    raise ValueError(f"renders are {builder_config.image_size} px, the model "
                     f"runs at data.image_size={config.data.image_size}")
  model = models.get_method(config.method).build_model(config.model)
  variables, step = checkpoint.load_variables(args.workdir)
  predict = evaluate.make_predict_batch(config=config, model=model,
                                        variables=variables)
  result = diagnose(predict=predict, builder_config=builder_config,
                    images_per_class=args.images_per_class, seed=args.seed)
  result.update(workdir=args.workdir, step=step,
                builder_config=config.data.builder_config)
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
