"""Dataset evaluation: co-segment evaluation groups and score P and J.

``evaluate_dataset`` enumerates the evaluation groups of a split (all pairs of
each class, or CycleSegNet's group strategies a-d, through the pipeline's
``eval_groups``), runs the model on each group at the model's input size,
resizes the predicted foreground probabilities back to every image's original
size and scores them there against the original-resolution ground truth.

Figures (every one labelled in the returned dict and the printed table):
- ``P``: fraction of correctly labelled pixels (foreground and background),
  over the pixels that are not marked ignore (mask value 255).
- ``J``: |pred n gt| / |pred u gt| of the foreground over non-ignored pixels.
  When both prediction and ground truth are empty, J = 1 (nothing to find and
  nothing found).
- ``avg_J_over_classes`` (the papers' "Avg. J", the primary figure): per-image
  J averaged within each class, then averaged over classes. ``avg_P_over_classes``
  likewise.
- ``mean_J_per_image`` / ``mean_P_per_image``: plain means over all images.
- ``pooled_J``: sum of intersections / sum of unions over the whole split.
- ``per_class``: per-class mean J, mean P and image count.

Choices the papers leave open:
- Threshold: foreground = probability >= ``config.eval.threshold`` (0.5),
  applied after resizing the probabilities (bilinear) back to the original
  size, so the score never depends on the network's input size.
  A method's ``predict_fn`` may post-process the probabilities first.
  ``config.eval.postprocess`` ('threshold' by default, or 'otsu', 'crf',
  'grabcut' from ``coseg_jax.postprocess``) replaces the fixed threshold by
  that conversion of the restored map, with the original image for CRF and
  GrabCut (``config.eval.postprocess_kwargs``, if present, holds its options).
- An image that occurs in several groups (all pairs, strategies a-d) gets the
  mean of its probability maps over those groups, then one threshold, then one
  score: each image counts once in every figure. Datasets whose target depends
  on the group (``voc2012_coseg``: the union of the classes the group shares)
  are scored once per (group, image) occurrence instead, with the occurrence's
  class being the smallest shared class index.
- Preprocessing at inference is the pipeline's: stretch or keep-aspect-and-pad
  to ``data.image_size`` (see ``preprocess_image``/``restore_size``).
- An image's class is the class its tuples were enumerated for
  (``data_pipelines.pipeline.eval_groups`` gives tuples per class).
- ``eval.max_groups`` >= 0 caps the tuples, taken round-robin over the
  classes so that a quick evaluation still covers every class.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_pipelines import augment

IGNORE = 255


def as_float_image(image: np.ndarray) -> np.ndarray:
  """uint8 / float image [H, W, C] -> float32 RGB [H, W, 3] in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return np.asarray(image, np.float32)


def preprocess_image(image: np.ndarray, *, image_size, resize: str = "stretch"
                     ) -> Tuple[np.ndarray, "augment.ResizeInfo"]:
  """Maps an image to the model input exactly as the data pipeline does.

  Args:
    image: [H, W, 3] uint8 or float in [0, 1] (grayscale is repeated).
    image_size: int or (height, width) of the model input.
    resize: 'stretch' (each axis scaled) or 'pad' (keep aspect, content at
      the top-left, zeros elsewhere); see ``data_pipelines.augment``.

  Returns:
    (float32 [h, w, 3] in [0, 1], ``data_pipelines.augment.ResizeInfo``).
  """
  if resize not in augment.RESIZE_MODES:
    raise ValueError(f"data.resize must be one of {augment.RESIZE_MODES}, "
                     f"got {resize!r}")
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(as_float_image(image) * 255.0), 0, 255)
    image = image.astype(np.uint8)
  out = augment.process_record(image, None, out_size=image_size,
                               resize=resize)
  return out["image"], out["info"]


def restore_size(prob: np.ndarray, info) -> np.ndarray:
  """Probability map [h, w] or [h, w, 1] at model input -> [H, W] original."""
  prob = np.asarray(prob, np.float32)
  if prob.ndim == 3:
    prob = prob[..., 0]
  return augment.restore_prediction(prob, info)


def score_image(*, pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
  """Counts for one image at original resolution.

  Args:
    pred: bool [H, W] predicted foreground.
    gt: uint8 [H, W] with 0 background, 1 foreground, 255 ignore.

  Returns:
    dict with 'intersection', 'union', 'correct', 'valid' pixel counts and
    the image's 'P' and 'J' (J = 1 for an empty union).
  """
  valid = gt != IGNORE
  fg = gt == 1
  pred = np.asarray(pred, bool) & valid
  inter = float(np.sum(pred & fg))
  union = float(np.sum(pred | fg))
  correct = float(np.sum((pred == fg) & valid))
  n_valid = float(np.sum(valid))
  return dict(intersection=inter, union=union, correct=correct, valid=n_valid,
              P=correct / n_valid if n_valid else 1.0,
              J=inter / union if union else 1.0)


def summarise(scores: Sequence[Dict[str, float]], class_ids: Sequence[int],
              class_names: Sequence[str]) -> Dict[str, Any]:
  """Turns per-image scores into the labelled figures (see module docstring)."""
  if not scores:
    raise ValueError("no images were evaluated (empty split or max_groups=0)")
  j = np.array([s["J"] for s in scores], np.float64)
  p = np.array([s["P"] for s in scores], np.float64)
  cls = np.asarray(class_ids)
  per_class = {}
  for c in np.unique(cls):
    name = class_names[c] if 0 <= c < len(class_names) else str(int(c))
    sel = cls == c
    per_class[name] = dict(J=float(j[sel].mean()), P=float(p[sel].mean()),
                           images=int(sel.sum()))
  inter = sum(s["intersection"] for s in scores)
  union = sum(s["union"] for s in scores)
  return {
      "avg_J_over_classes": float(np.mean([v["J"] for v in per_class.values()])),
      "avg_P_over_classes": float(np.mean([v["P"] for v in per_class.values()])),
      "mean_J_per_image": float(j.mean()),
      "mean_P_per_image": float(p.mean()),
      "pooled_J": inter / union if union else 1.0,
      "num_images": len(scores),
      "num_classes": len(per_class),
      "per_class": per_class,
  }


def _record_target(record, group_records) -> np.ndarray:
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
    target[cm == IGNORE] = IGNORE
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


def make_binarizer(*, postprocess: str = "threshold", threshold: float = 0.5,
                   postprocess_kwargs=None
                   ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  """(image [H, W, 3], probability [H, W]) -> bool foreground [H, W].

  Args:
    postprocess: one of ``coseg_jax.postprocess.METHODS``; 'threshold' keeps
      ``probability >= threshold``.
    threshold: the threshold of 'threshold' (the other methods choose their
      own split).
    postprocess_kwargs: options of the method, a dict or ConfigDict (e.g.
      ``{'iterations': 10}`` for 'crf'); 'threshold' takes none.

  Raises:
    ValueError: naming ``eval.postprocess`` for an unknown method.
  """
  from coseg_jax import postprocess as pp  # pylint: disable=g-import-not-at-top
  if postprocess not in pp.METHODS:
    raise ValueError(f"eval.postprocess must be one of {pp.METHODS}, got "
                     f"{postprocess!r}")
  kwargs = dict(postprocess_kwargs.to_dict() if hasattr(
      postprocess_kwargs, "to_dict") else (postprocess_kwargs or {}))
  if postprocess == "threshold":
    if kwargs:
      raise ValueError("eval.postprocess_kwargs: 'threshold' takes no options"
                       f" (set eval.threshold), got {sorted(kwargs)}")
    return lambda image, prob: np.asarray(prob) >= threshold
  return lambda image, prob: pp.binarize(postprocess, image, prob, **kwargs)


def evaluate_groups(*, predict_batch: Callable[[np.ndarray], np.ndarray],
                    source, groups: Sequence[Sequence[int]],
                    score: Optional[Sequence[Sequence[bool]]] = None,
                    group_classes: Optional[Sequence[int]] = None,
                    image_size, resize: str = "stretch",
                    threshold: float = 0.5, batch_size: int = 8,
                    class_names: Sequence[str] = (),
                    postprocess: str = "threshold",
                    postprocess_kwargs=None) -> Dict[str, Any]:
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
      predictions count for their image (the pipeline's ``EvalTuples.score``;
      strategies a, b and d score only the first member). Default: all.
    group_classes: optional class index per group (the class the group was
      enumerated for); default: the record's ``label`` (or the smallest class
      the group shares, for multi-label records).
    image_size, resize: the model input (see ``preprocess_image``).
    threshold: foreground threshold on the restored probabilities.
    batch_size: groups per model call.
    class_names: names for the class ids (for the per-class table).
    postprocess, postprocess_kwargs: how a restored probability map becomes
      a mask (``make_binarizer``; the default is the threshold).

  Returns:
    the labelled figures of ``summarise`` plus 'threshold', 'postprocess',
    'num_groups' and 'combine' (how repeated predictions of an image were
    combined).
  """
  binarize = make_binarizer(postprocess=postprocess, threshold=threshold,
                            postprocess_kwargs=postprocess_kwargs)
  groups = [tuple(int(i) for i in g) for g in groups]
  if not groups:
    raise ValueError("no evaluation groups (empty split or max_groups=0)")
  if score is None:
    score = [np.ones(len(g), bool) for g in groups]
  score = [np.asarray(s, bool).reshape(-1) for s in score]
  if len(score) != len(groups) or any(
      s.shape[0] != len(g) for s, g in zip(score, groups)):
    raise ValueError("score mask shape does not match the groups")
  first = source[groups[0][0]]
  per_group_target = "mask" not in first
  cache: Dict[int, Any] = {}

  def load(i):
    if i not in cache:
      rec = source[i]
      x, info = preprocess_image(rec["image"], image_size=image_size,
                                 resize=resize)
      cache[i] = (rec, x, info)
    return cache[i]

  def class_of(g_index, k, recs):
    if group_classes is not None:
      return int(group_classes[g_index])
    return _record_class(recs[k], recs)

  sums: Dict[int, np.ndarray] = {}
  counts: Dict[int, int] = {}
  image_class: Dict[int, int] = {}
  occurrences: List[Tuple[Dict[str, float], int]] = []
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
          prob = restore_size(group_probs[k], load(i)[2])
          if per_group_target:
            s = score_image(pred=binarize(recs[k]["image"], prob),
                            gt=_record_target(recs[k], recs))
            occurrences.append((s, class_of(gi, k, recs)))
          else:
            sums[i] = sums.get(i, 0.0) + prob
            counts[i] = counts.get(i, 0) + 1
            image_class.setdefault(i, class_of(gi, k, recs))
  if not per_group_target:
    for i in sorted(sums):
      rec = load(i)[0]
      mean_prob = sums[i] / counts[i]
      occurrences.append((score_image(pred=binarize(rec["image"], mean_prob),
                                      gt=_record_target(rec, [rec])),
                          image_class[i]))
  results = summarise([s for s, _ in occurrences],
                      [c for _, c in occurrences], class_names)
  results.update(threshold=float(threshold), postprocess=postprocess,
                 num_groups=len(groups),
                 combine=("per (group, image) occurrence" if per_group_target
                          else "mean of probabilities over an image's groups"))
  return results


def select_groups(tuples_by_class, max_groups: int = -1):
  """Flattens ``{class: EvalTuples}`` into groups, scores and class indices.

  ``max_groups`` >= 0 keeps that many groups taken round-robin over the
  classes (one from each class in turn), so a capped evaluation still covers
  every class instead of only the first ones.
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
  groups = [f[0] for f in flat]
  score = [f[1] for f in flat]
  classes = [f[2] for f in flat]
  return groups, score, classes, names


def format_results(results: Dict[str, Any]) -> str:
  """A plain-text table of the figures (per-class rows, then the summary)."""
  lines = [f"{'class':<24}{'images':>8}{'P':>9}{'J':>9}"]
  for name, row in sorted(results["per_class"].items()):
    lines.append(f"{name:<24}{row['images']:>8d}{row['P']:>9.4f}"
                 f"{row['J']:>9.4f}")
  lines.append("-" * 50)
  for key in ("avg_J_over_classes", "avg_P_over_classes", "mean_J_per_image",
              "mean_P_per_image", "pooled_J"):
    lines.append(f"{key:<32}{results[key]:>10.4f}")
  method = results.get("postprocess", "threshold")
  rule = (f"probability >= {results['threshold']:g}" if method == "threshold"
          else f"{method} of the probability map")
  lines.append(f"{results['num_images']} images, {results['num_classes']} "
               f"classes, {results['num_groups']} groups; foreground = "
               f"{rule} at original size; {results['combine']}")
  return "\n".join(lines)


def make_predict_batch(*, config, model, variables, mesh=None
                       ) -> Callable[[np.ndarray], np.ndarray]:
  """A jitted ``images [B,K,h,w,3] -> probabilities [B,K,h,w,1]`` (numpy).

  Uses the method's ``predict_fn`` when it has one, else
  ``sigmoid(mask_logits)``. With a ``mesh``, the batch is sharded on its
  'data' axis (the batch size must divide by that axis).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax import models  # pylint: disable=g-import-not-at-top

  spec = models.get_method(config.method)

  def forward(variables, images):
    outputs = model.apply(variables, images, train=False)
    if spec.predict_fn is not None:
      return spec.predict_fn(outputs=outputs, batch={"images": images},
                             config=config)
    return jax.nn.sigmoid(outputs.mask_logits.astype(np.float32))

  sharding = None
  if mesh is None:
    run = jax.jit(forward)
  else:
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data"))
    # Every process evaluates the same groups; a replicated output can be
    # read back on each of them (also on a multi-host mesh).
    run = jax.jit(forward, out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))

  def predict_batch(images):
    images = np.asarray(images, np.float32)
    if sharding is not None:
      images = jax.device_put(images, sharding)
    return np.asarray(jax.device_get(run(variables, images)))

  return predict_batch


def evaluate_dataset(*, config, model, variables, split: Optional[str] = None,
                     max_groups: Optional[int] = None, mesh=None,
                     verbose: bool = True) -> Dict[str, Any]:
  """Evaluates ``model`` on a dataset split; returns the labelled figures.

  Args:
    config: the experiment config (``data``, ``eval``, ``method`` sections).
    model: the Flax module of ``config.method``.
    variables: its variables ({'params', 'batch_stats', ...}).
    split: defaults to ``config.eval.split``.
    max_groups: defaults to ``config.eval.max_groups`` (-1 = all).
    mesh: optional ``jax.sharding.Mesh`` with a 'data' axis.
    verbose: print the table.

  Returns:
    dict (see ``summarise``) plus 'split', 'strategy', 'threshold',
    'postprocess', 'num_groups', 'seconds'.
  """
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top

  start = time.time()
  data = config.data
  split = split or config.eval.split
  if max_groups is None:
    max_groups = config.eval.get("max_groups", -1)
  tuples = pipeline.eval_groups(
      data, split=split, strategy=config.eval.strategy,
      k=int(config.eval.group_size), seed=int(config.eval.get("seed", 0)))
  groups, score, classes, class_names = select_groups(tuples, max_groups)
  source = pipeline.load_source(data, split)
  batch_size = int(config.eval.get("batch_size", 8))
  if mesh is not None:
    n = mesh.shape["data"]
    batch_size = max(n, (batch_size + n - 1) // n * n)
  results = evaluate_groups(
      predict_batch=make_predict_batch(config=config, model=model,
                                       variables=variables, mesh=mesh),
      source=source, groups=groups, score=score, group_classes=classes,
      image_size=data.image_size, resize=data.get("resize", "stretch"),
      threshold=config.eval.threshold, batch_size=batch_size,
      class_names=class_names,
      postprocess=config.eval.get("postprocess", "threshold"),
      postprocess_kwargs=config.eval.get("postprocess_kwargs"))
  results.update(split=split, strategy=config.eval.strategy,
                 seconds=time.time() - start)
  if verbose:
    print(f"Evaluation of {config.method} on {data.name}/{split} "
          f"(strategy {config.eval.strategy}, group size "
          f"{len(groups[0])}):")
    print(format_results(results))
  return results
