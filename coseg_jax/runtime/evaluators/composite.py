"""Composite evaluator: does the partner decide which object is segmented?

Composites (``data_pipelines.composites``) of two objects of different
classes c_a and c_b, cut from the evaluation data with their ground-truth
masks and pasted on a real background, are each co-segmented twice: with a
partner image of c_a (target: the c_a object only) and with a partner image
of c_b (target: the c_b object only). A partner-blind model gives the same
mask both times.

Figures, over the 2 x ``config.eval.composites`` predictions (the composite
canvas is ``data.image_size``; partners are preprocessed as in evaluation):

* ``conditional_J``: mean J of the mask against the partner's object;
* ``wrong_object_rate``: share of masks that cover more of the other object
  than of the target (|M n other| > |M n target|);
* ``both_rate``: share of masks that cover at least half of each object;
* ``mask_iou_between_partners``: mean IoU of a composite's two masks (1:
  the partner changes nothing);
* ``per_class``: conditional J by target class;
* ``layout_rates``: how the masks lie on the two objects (:func:`layout`):
  shares of ``separate`` (a connected component on each object),
  ``merged`` (both objects covered, but by components that each straddle
  them or lie on one object only), ``one`` (one object covered) and
  ``neither``. Scored with the common-object selection off, it says how
  often the model's own masks leave the selection a choice
  (``separate``); with it on, ``separate`` is how often it kept both;
* ``oracle_component_J``: conditional J when each mask keeps only its
  connected components that lie more on the target than on the other
  object (:func:`oracle_components`), chosen with the ground truth.
  Scored with the common-object selection off, it is the most that any
  choice among the model's own components can reach: what is left above it
  is mask quality, not the partner.

Deterministic: composites and partners are drawn with ``config.eval.seed``
from the evaluation data (``config.eval.data``), so the unseen classes of a
class-disjoint protocol give composites of unseen classes only.
"""

from typing import Any, Dict, List, Tuple

import numpy as np

from coseg_jax import common_selection
from coseg_jax.runtime import steps
from coseg_jax.runtime.evaluators import common
from data_pipelines import augment
from data_pipelines import composites as composites_lib
from data_pipelines import pipeline
from data_pipelines import scenes as scenes_lib

DEFAULT_COUNT = 100
# An object counts as covered when the mask holds this share of it.
COVERED = 0.25
# Components below this share of the image are ignored by :func:`layout`
# (the common-object selection's default ``min_area``).
MIN_COMPONENT = 0.01
LAYOUTS = ("separate", "merged", "one", "neither")


def composite_cases(config, *, count: int = None) -> Tuple[list, Any, Any]:
  """(cases, scenes, data config) of the evaluation composites.

  A case is (spec, partner of c_a, partner of c_b): record indices drawn
  with ``config.eval.seed`` among the other records of each class.
  """
  data = common.eval_data_config(config)
  source = pipeline.load_source(data, config.eval.split)
  index = pipeline.record_index_of(source, data)
  scenes = scenes_lib.Scenes(source, index, data, train=False)
  count = int(count if count is not None else
              config.eval.get("composites", DEFAULT_COUNT))
  seed = int(config.eval.get("seed", 0))
  specs = composites_lib.composite_specs(
      index.membership, count=count, seed=(seed, 0xC0DE),
      background=config.eval.get("composite_background", "inpaint"))
  rng = np.random.default_rng(np.random.SeedSequence((seed, 0xFA27)))
  cases = []
  for spec in specs:
    partners = []
    for c in spec.classes:
      pool = np.setdiff1d(np.flatnonzero(index.membership[:, c]),
                          list(spec.records) + [spec.background])
      if pool.size == 0:
        raise ValueError(f"class {index.class_names[c]!r} has no record left "
                         f"to be a composite's partner")
      partners.append(int(rng.choice(pool)))
    cases.append((spec, partners[0], partners[1]))
  return cases, scenes, data


def _size(data) -> Tuple[int, int]:
  s = data.image_size
  return (s, s) if isinstance(s, int) else tuple(s)


def predictions(*, config, model, variables, cases, scenes, data,
                mesh=None) -> List[Dict[str, Any]]:
  """For every case and both partners: the composite, its class map, the
  partner image and the predicted probability map (model input size)."""
  size = _size(data)
  predict_batch = steps.make_predict_batch(config=config, model=model,
                                           variables=variables, mesh=mesh)
  batch_size = common.eval_batch_size(config, mesh)
  items = []
  for spec, pa, pb in cases:
    canvas, class_map = composites_lib.render(spec, scenes.record, size=size)
    image = canvas.astype(np.float32) / 255.0
    for target, partner in ((0, pa), (1, pb)):
      partner_image, _ = augment.preprocess_image(
          scenes.record(partner)[0], image_size=size,
          resize=data.get("resize", "stretch"))
      items.append({"spec": spec, "target": target, "canvas": canvas,
                    "class_map": class_map, "input": image,
                    "partner": partner_image})
  for s in range(0, len(items), batch_size):
    chunk = items[s:s + batch_size]
    groups = np.stack([np.stack([it["input"], it["partner"]])
                       for it in chunk])
    pad = batch_size - len(chunk)
    if pad:
      groups = np.concatenate([groups, np.repeat(groups[-1:], pad, 0)])
    probs = predict_batch(groups)[:len(chunk), 0, ..., 0]
    for it, p in zip(chunk, probs):
      it["prob"] = p
  return items


def layout(mask: np.ndarray, target: np.ndarray, other: np.ndarray) -> str:
  """How a bool [H, W] mask lies on a composite's two objects (bool
  [H, W] each): 'separate' when it covers >= ``COVERED`` of each and has a
  connected component (8-connected, >= ``MIN_COMPONENT`` of the image)
  with most of its pixels on each object; 'merged' when it covers both
  without such a pair; 'one' when it covers one; else 'neither'."""
  covered = [np.sum(mask & obj) >= COVERED * max(int(obj.sum()), 1)
             for obj in (target, other)]
  if not any(covered):
    return "neither"
  if not all(covered):
    return "one"
  labels, judged = common_selection.components(mask, min_area=MIN_COMPONENT)
  sizes = [np.sum(labels == j) for j in judged]
  on = [[np.sum((labels == j) & obj) > 0.5 * n for j, n in zip(judged, sizes)]
        for obj in (target, other)]
  return "separate" if any(on[0]) and any(on[1]) else "merged"


def oracle_components(mask: np.ndarray, target: np.ndarray,
                      other: np.ndarray) -> np.ndarray:
  """bool [H, W]: the 8-connected components of ``mask`` (every size)
  that hold some of ``target`` and at least as much of it as of ``other``
  (all bool [H, W]): the best component choice the ground truth allows."""
  labels, _ = common_selection.components(mask, min_area=0.0)
  count = int(labels.max())
  on_target = np.bincount(labels[target], minlength=count + 1)
  on_other = np.bincount(labels[other], minlength=count + 1)
  keep = (on_target > 0) & (on_target >= on_other)
  keep[0] = False
  return keep[labels]


def _jaccard(pred: np.ndarray, target: np.ndarray) -> float:
  union = np.sum(pred | target)
  return float(np.sum(pred & target) / union) if union else 1.0


def score(items, binarize, class_names) -> Dict[str, Any]:
  """The figures of the module docstring from :func:`predictions`."""
  js, oracle_js, wrong, both, per_class = [], [], [], [], {}
  layouts = {name: 0 for name in LAYOUTS}
  masks = {}
  for it in items:
    spec, t = it["spec"], it["target"]
    target = it["class_map"] == spec.classes[t] + 1
    other = it["class_map"] == spec.classes[1 - t] + 1
    pred = np.asarray(binarize(it["canvas"], it["prob"]), bool)
    j = _jaccard(pred, target)
    js.append(j)
    oracle_js.append(_jaccard(oracle_components(pred, target, other),
                              target))
    wrong.append(np.sum(pred & other) > np.sum(pred & target))
    both.append(np.sum(pred & target) >= 0.5 * max(target.sum(), 1) and
                np.sum(pred & other) >= 0.5 * max(other.sum(), 1))
    per_class.setdefault(class_names[spec.classes[t]], []).append(j)
    layouts[layout(pred, target, other)] += 1
    masks.setdefault(id(spec), []).append(pred)
  ious = []
  for pair in masks.values():
    if len(pair) == 2:
      ious.append(_jaccard(pair[0], pair[1]))
  return {
      "conditional_J": float(np.mean(js)),
      "oracle_component_J": float(np.mean(oracle_js)),
      "wrong_object_rate": float(np.mean(wrong)),
      "both_rate": float(np.mean(both)),
      "mask_iou_between_partners": float(np.mean(ious)),
      "per_class": {c: float(np.mean(v)) for c, v in sorted(
          per_class.items())},
      "layout_rates": {name: n / len(items) for name, n in layouts.items()},
      "num_composites": len(masks),
  }


def evaluate(*, config, model, variables, mesh=None) -> Dict[str, Any]:
  """Composite co-segmentation figures (module docstring)."""
  cases, scenes, data = composite_cases(config)
  items = predictions(config=config, model=model, variables=variables,
                      cases=cases, scenes=scenes, data=data, mesh=mesh)
  results = score(items, common.binarizer(config.eval), scenes.class_names)
  results["rule"] = common.binarizer_rule(config.eval)
  return results


def format_results(results: Dict[str, Any]) -> str:
  rates = results["layout_rates"]
  layouts = ", ".join(f"{name} {100 * rates[name]:.1f}%" for name in LAYOUTS)
  return (f"{results['num_composites']} composites x 2 partners: conditional "
          f"J {results['conditional_J']:.3f}, wrong object "
          f"{100 * results['wrong_object_rate']:.1f}%, both objects "
          f"{100 * results['both_rate']:.1f}%, IoU of the two masks "
          f"{results['mask_iou_between_partners']:.3f}, J of the best "
          f"component choice {results['oracle_component_J']:.3f}; masks on "
          f"the two objects: {layouts} ({results['rule']})")
