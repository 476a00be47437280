"""Partner-dependence evaluator: how much does the other image matter?

For evaluation pairs (A, B) of one class (``config.eval.partner_pairs``,
taken round-robin over the classes), A is co-segmented with its real partner
B and then with B replaced by:

* ``other_class``: an image of another evaluation class (seeded draw);
* ``grey``: a uniform mid-grey image;
* ``noise``: uniform noise (seeded).

Figures per replacement: ``mean_abs_dprob``, the mean over A's pixels (at
the model input) of |p(A | B) - p(A | replacement)|, and ``delta_J``,
J(A | B) - J(A | replacement) at A's original size against A's ground truth
(``config.eval`` binarisation). ``J_with_partner`` is J(A | B). A model
that ignores its partner has both near 0; a co-segmentation model should
lose J when the partner shares nothing with A.
"""

from typing import Any, Dict

import numpy as np

from coseg_jax import metrics
from coseg_jax.runtime import steps
from coseg_jax.runtime.evaluators import common
from coseg_jax.runtime.evaluators import coseg
from data_pipelines import augment
from data_pipelines import pipeline

REPLACEMENTS = ("other_class", "grey", "noise")
DEFAULT_PAIRS = 100


def evaluate(*, config, model, variables, mesh=None) -> Dict[str, Any]:
  """Partner-dependence figures (module docstring)."""
  data = common.eval_data_config(config)
  split = config.eval.split
  seed = int(config.eval.get("seed", 0))
  tuples = pipeline.eval_groups(data, split=split, strategy="pairs", k=2,
                                seed=seed)
  groups, _, classes, class_names = coseg.select_groups(
      tuples, int(config.eval.get("partner_pairs", DEFAULT_PAIRS)))
  if len(class_names) < 2:
    raise ValueError("the 'partner' evaluator needs two or more classes")
  source = pipeline.load_source(data, split)
  index = pipeline.record_index_of(source, data)
  size = data.image_size
  resize = data.get("resize", "stretch")
  rng = np.random.default_rng(np.random.SeedSequence((seed, 0x9A27)))
  predict_batch = steps.make_predict_batch(config=config, model=model,
                                           variables=variables, mesh=mesh)
  batch_size = common.eval_batch_size(config, mesh)
  binarize = common.binarizer(config.eval)
  cache = {}

  def load(i):
    if i not in cache:
      rec = source[int(i)]
      x, info = augment.preprocess_image(rec["image"], image_size=size,
                                         resize=resize)
      cache[i] = (rec, x, info)
    return cache[i]

  names_of = {name: c for c, name in enumerate(index.class_names)}
  rows = []  # (A record, [partner inputs]) per pair
  for (a, b), c in zip(groups, classes):
    x_a = load(a)[1]
    own = names_of[class_names[c]]
    others = np.flatnonzero(index.membership.any(1) &
                            ~index.membership[:, own])
    other = load(int(rng.choice(others)))[1]
    grey = np.full_like(x_a, 0.5)
    noise = rng.uniform(size=x_a.shape).astype(np.float32)
    rows.append((a, [load(b)[1], other, grey, noise]))
  inputs = [np.stack([load(a)[1], p]) for a, partners in rows
            for p in partners]
  probs = []
  for s in range(0, len(inputs), batch_size):
    chunk = np.stack(inputs[s:s + batch_size])
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    probs.append(predict_batch(chunk)[:batch_size - pad, 0, ..., 0])
  probs = np.concatenate(probs).reshape(len(rows), 1 + len(REPLACEMENTS),
                                        *probs[0].shape[1:])
  dprob = {r: [] for r in REPLACEMENTS}
  j = {r: [] for r in ("partner",) + REPLACEMENTS}
  for (a, _), p in zip(rows, probs):
    rec, _, info = load(a)
    gt = coseg.record_target(rec, [rec])
    for n, name in enumerate(("partner",) + REPLACEMENTS):
      mask = binarize(rec["image"], augment.restore_prediction(p[n], info))
      j[name].append(metrics.score_mask(pred=mask, gt=gt)["jaccard"])
      if n:
        dprob[name].append(float(np.mean(np.abs(p[0] - p[n]))))
  return {
      "J_with_partner": float(np.mean(j["partner"])),
      "replacements": {r: {"mean_abs_dprob": float(np.mean(dprob[r])),
                           "delta_J": float(np.mean(j["partner"]) -
                                            np.mean(j[r]))}
                       for r in REPLACEMENTS},
      "num_pairs": len(rows),
      "rule": common.binarizer_rule(config.eval),
  }


def format_results(results: Dict[str, Any]) -> str:
  parts = [f"{r}: mean |dp| {v['mean_abs_dprob']:.3f}, dJ {v['delta_J']:+.3f}"
           for r, v in results["replacements"].items()]
  return (f"{results['num_pairs']} pairs, J with the real partner "
          f"{results['J_with_partner']:.3f}; partner replaced by " +
          "; ".join(parts))
