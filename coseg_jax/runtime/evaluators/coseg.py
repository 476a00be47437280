"""Co-segmentation evaluator: P and J of evaluation groups, per class.

:func:`evaluate` enumerates the evaluation groups of a split (all pairs of
each class, or CycleSegNet's group strategies a-d, through
``data_pipelines.pipeline.eval_groups``), runs the model on each group at its
input size, resizes the foreground probabilities back to every image's
original size and scores them there against the original-resolution ground
truth (``coseg_jax.metrics.score_mask``, accumulated by
``coseg_jax.metrics.CosegAccumulator``).

Figures (the accumulator's keys): ``avg_J`` (per-image J averaged within each
class, then over classes: the papers' "Avg. J", the primary figure),
``avg_P``, ``image_mean_J`` / ``image_mean_P`` (over all images),
``pooled_J`` (sum of intersections / sum of unions), ``per_class``. Next to
them, the same figures of two references that need no model, so that a
number can be judged at a glance:

* ``reference/all_foreground``: every pixel foreground (its J is the
  foreground share);
* ``reference/centre``: the centred ellipse whose axes are half the image's
  width and height (19.6 % of the image), a centre prior.

Choices the papers leave open:

- Threshold: foreground = probability >= ``config.eval.threshold`` (0.5)
  after resizing the probabilities (bilinear) back to the original size, so
  the score never depends on the network's input size; or the conversion of
  ``config.eval.postprocess`` (Otsu, dense CRF, GrabCut).
- An image that occurs in several groups (all pairs, strategies a-d) gets the
  mean of its probability maps over those groups, then one binarisation,
  then one score: each image counts once. Datasets whose target depends on
  the group (``voc2012_coseg``: the union of the classes the group shares)
  are scored once per (group, image) occurrence instead, the occurrence's
  class being the smallest shared class index.
- Preprocessing is the pipeline's (``data_pipelines.augment.
  preprocess_image``).
- ``eval.max_groups`` >= 0 caps the tuples, taken round-robin over the
  classes so that a quick evaluation still covers every class.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from coseg_jax import metrics
from coseg_jax.runtime import steps
from coseg_jax.runtime.evaluators import common
from data_pipelines import augment
from data_pipelines import pipeline

REFERENCES = ("all_foreground", "centre")


def centre_prior(shape: Tuple[int, int]) -> np.ndarray:
  """bool [H, W]: the centred ellipse with semi-axes W/4 and H/4."""
  h, w = shape
  ys = (np.arange(h) + 0.5 - h / 2) / (h / 4)
  xs = (np.arange(w) + 0.5 - w / 2) / (w / 4)
  return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0


def reference_mask(name: str, shape: Tuple[int, int]) -> np.ndarray:
  """The model-free reference prediction ``name`` (see REFERENCES)."""
  if name == "all_foreground":
    return np.ones(shape, bool)
  if name == "centre":
    return centre_prior(shape)
  raise ValueError(f"unknown reference {name!r}; expected one of "
                   f"{REFERENCES}")


def record_target(record, group_records) -> np.ndarray:
  """Ground truth uint8 [H, W] (0/1/255) of one record within its group."""
  if "mask" in record:
    mask = np.asarray(record["mask"])
    return mask[..., 0] if mask.ndim == 3 else mask
  if "class_mask" in record:
    shared = set(np.asarray(group_records[0]["labels"]).tolist())
    for other in group_records[1:]:
      shared &= set(np.asarray(other["labels"]).tolist())
    cm = np.asarray(record["class_mask"])
    cm = cm[..., 0] if cm.ndim == 3 else cm
    # VOC index 0 is background, so object class l is index l + 1.
    target = np.isin(cm, [l + 1 for l in shared]).astype(np.uint8)
    target[cm == metrics.IGNORE] = metrics.IGNORE
    return target
  raise ValueError("evaluation records need a 'mask' or 'class_mask' feature; "
                   f"got {sorted(record)}")


def _record_class(record, group_records) -> int:
  if "label" in record:
    return int(record["label"])
  shared = set(np.asarray(group_records[0]["labels"]).tolist())
  for other in group_records[1:]:
    shared &= set(np.asarray(other["labels"]).tolist())
  return min(shared) if shared else -1


def evaluate_groups(*, predict_batch: Callable[[np.ndarray], np.ndarray],
                    source, groups: Sequence[Sequence[int]],
                    score: Optional[Sequence[Sequence[bool]]] = None,
                    group_classes: Optional[Sequence[int]] = None,
                    image_size, resize: str = "stretch",
                    binarize: Optional[Callable[..., np.ndarray]] = None,
                    batch_size: int = 8, class_names: Sequence[str] = (),
                    references: Sequence[str] = REFERENCES
                    ) -> Dict[str, Any]:
  """Scores a model on explicit groups of records (the testable core).

  Args:
    predict_batch: images float32 [B, K, h, w, 3] -> foreground probabilities
      [B, K, h, w, 1] (numpy). Always called with ``batch_size`` groups of one
      size K (the last batch of a size is padded by repeating its first
      group; padding is dropped).
    source: random-access records (``source[i]`` -> dict with 'image' and
      'mask' or 'class_mask'/'labels', and 'label').
    groups: record indices per group; groups may have different sizes K
      (they are batched by size).
    score: optional bool per member of each group: which members'
      predictions count for their image (``EvalTuples.score``). Default: all.
    group_classes: optional class index per group (the class the group was
      enumerated for); default: the record's ``label`` (or the smallest class
      the group shares, for multi-label records).
    image_size, resize: the model input (``augment.preprocess_image``).
    binarize: ``(image, probability [H, W]) -> bool [H, W]`` (default: the
      0.5 threshold).
    batch_size: groups per model call.
    class_names: names for the class ids (for the per-class table).
    references: model-free references scored on the same images.

  Returns:
    The accumulator's figures, ``reference/<name>`` figures, 'num_groups'
    and 'combine' (how repeated predictions of an image were combined).
  """
  binarize = binarize or common.binarizer()
  groups = [tuple(int(i) for i in g) for g in groups]
  if not groups:
    raise ValueError("no evaluation groups (empty split or max_groups=0)")
  if score is None:
    score = [np.ones(len(g), bool) for g in groups]
  score = [np.asarray(s, bool).reshape(-1) for s in score]
  if len(score) != len(groups) or any(
      s.shape[0] != len(g) for s, g in zip(score, groups)):
    raise ValueError("score mask shape does not match the groups")
  per_group_target = "mask" not in source[groups[0][0]]
  cache: Dict[int, Any] = {}

  def load(i):
    if i not in cache:
      rec = source[i]
      x, info = augment.preprocess_image(rec["image"], image_size=image_size,
                                         resize=resize)
      cache[i] = (rec, x, info)
    return cache[i]

  def class_name(c):
    return class_names[c] if 0 <= c < len(class_names) else str(int(c))

  def class_of(g_index, k, recs):
    if group_classes is not None:
      return int(group_classes[g_index])
    return _record_class(recs[k], recs)

  model_acc = metrics.CosegAccumulator()
  ref_acc = {r: metrics.CosegAccumulator() for r in references}

  def add(image, prob, gt, c):
    model_acc.update(class_names=class_name(c), scores=metrics.score_mask(
        pred=binarize(image, prob), gt=gt))
    for r, acc in ref_acc.items():
      acc.update(class_names=class_name(c), scores=metrics.score_mask(
          pred=reference_mask(r, gt.shape), gt=gt))

  sums: Dict[int, np.ndarray] = {}
  counts: Dict[int, int] = {}
  image_class: Dict[int, int] = {}
  by_size: Dict[int, List[int]] = {}
  for gi, g in enumerate(groups):
    by_size.setdefault(len(g), []).append(gi)
  for members in by_size.values():
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      padded = chunk + [chunk[0]] * (batch_size - len(chunk))
      images = np.stack([np.stack([load(i)[1] for i in groups[gi]])
                         for gi in padded])
      probs = np.asarray(predict_batch(images), np.float32)[:len(chunk)]
      for gi, group_probs in zip(chunk, probs):
        g = groups[gi]
        recs = [load(i)[0] for i in g]
        for k, i in enumerate(g):
          if not score[gi][k]:
            continue
          prob = augment.restore_prediction(group_probs[k], load(i)[2])
          if per_group_target:
            add(recs[k]["image"], prob, record_target(recs[k], recs),
                class_of(gi, k, recs))
          else:
            sums[i] = sums.get(i, 0.0) + prob
            counts[i] = counts.get(i, 0) + 1
            image_class.setdefault(i, class_of(gi, k, recs))
  for i in sorted(sums):
    rec = load(i)[0]
    add(rec["image"], sums[i] / counts[i], record_target(rec, [rec]),
        image_class[i])
  if not len(model_acc):
    raise ValueError("no images were evaluated (every member unscored)")
  results = model_acc.result()
  for r, acc in ref_acc.items():
    results[f"reference/{r}"] = acc.result()
  results.update(num_groups=len(groups),
                 combine=("per (group, image) occurrence" if per_group_target
                          else "mean of probabilities over an image's groups"))
  return results


def select_groups(tuples_by_class, max_groups: int = -1):
  """Flattens ``{class: EvalTuples}`` into groups, scores and class indices.

  ``max_groups`` >= 0 keeps that many groups taken round-robin over the
  classes (one from each class in turn), so a capped evaluation still covers
  every class instead of only the first ones.

  Returns:
    (groups, score masks, class index per group, class names).
  """
  names = list(tuples_by_class)
  queues = [[(tuple(int(i) for i in idx), np.asarray(sc, bool), c)
             for idx, sc in zip(tuples_by_class[n].indices,
                                tuples_by_class[n].score)]
            for c, n in enumerate(names)]
  if max_groups is None or max_groups < 0:
    flat = [item for q in queues for item in q]
  else:
    flat, depth = [], 0
    while len(flat) < max_groups and any(depth < len(q) for q in queues):
      for q in queues:
        if depth < len(q) and len(flat) < max_groups:
          flat.append(q[depth])
      depth += 1
  return ([f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat],
          names)


def format_results(results: Dict[str, Any]) -> str:
  """Per-class table (model and references), then the summary lines."""
  refs = [r for r in REFERENCES if f"reference/{r}" in results]
  head = f"{'class':<16}{'images':>7}{'P':>8}{'J':>8}"
  head += "".join(f"{'J ' + r.replace('_foreground', '-fg'):>12}"
                  for r in refs)
  lines = [head]
  for name, row in sorted(results["per_class"].items()):
    line = (f"{name:<16}{row['num_images']:>7d}{row['P']:>8.3f}"
            f"{row['J']:>8.3f}")
    for r in refs:
      line += f"{results[f'reference/{r}']['per_class'][name]['J']:>12.3f}"
    lines.append(line)
  lines.append("-" * len(head))
  line = (f"{'Avg. (classes)':<16}{results['num_images']:>7d}"
          f"{results['avg_P']:>8.3f}{results['avg_J']:>8.3f}")
  for r in refs:
    line += f"{results[f'reference/{r}']['avg_J']:>12.3f}"
  lines.append(line)
  lines.append(f"image-mean J {results['image_mean_J']:.3f}, pooled J "
               f"{results['pooled_J']:.3f}; {results['num_classes']} classes,"
               f" {results['num_groups']} groups; "
               f"{results.get('rule', 'probability >= 0.5')} at original "
               f"size; {results['combine']}")
  return "\n".join(lines)


def evaluate(*, config, model, variables, mesh=None,
             split: Optional[str] = None,
             max_groups: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates ``model`` on a split of ``config.data``.

  Args:
    config: the run's config (``data``, ``eval``, ``method``).
    model: the Flax module of ``config.method``.
    variables: its variables ({'params', 'batch_stats'}).
    mesh: optional mesh with a 'data' axis (batches sharded over it).
    split: defaults to ``config.eval.split``.
    max_groups: defaults to ``config.eval.max_groups`` (-1 = all).

  Returns:
    :func:`evaluate_groups`'s figures plus 'split', 'strategy', 'rule'.
  """
  data = common.eval_data_config(config)
  split = split or config.eval.split
  if max_groups is None:
    max_groups = config.eval.get("max_groups", -1)
  tuples = pipeline.eval_groups(
      data, split=split, strategy=config.eval.strategy,
      k=int(config.eval.group_size), seed=int(config.eval.get("seed", 0)),
      images_per_class=int(config.eval.get("images_per_class", -1)))
  groups, score, classes, class_names = select_groups(tuples, max_groups)
  batch_size = common.eval_batch_size(config, mesh)
  results = evaluate_groups(
      predict_batch=steps.make_predict_batch(config=config, model=model,
                                             variables=variables, mesh=mesh),
      source=pipeline.load_source(data, split), groups=groups, score=score,
      group_classes=classes, image_size=data.image_size,
      resize=data.get("resize", "stretch"),
      binarize=common.binarizer(config.eval), batch_size=batch_size,
      class_names=class_names)
  results.update(split=split, strategy=config.eval.strategy,
                 rule=common.binarizer_rule(config.eval))
  return results
