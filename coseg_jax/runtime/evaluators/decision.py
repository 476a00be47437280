"""Decision-accuracy evaluator: does the model say whether a pair shares an
object? (CoSegNet's decision network, Banerjee et al. Sec. 3.2.)

Pairs come from ``config.data`` (its classes and evaluation split) through
the training pipeline's pair sampler with half of them negatives (two images
with no class in common), without augmentation: ``config.eval.
decision_pairs`` pairs, seed ``config.eval.seed``. A pair is called positive
when sigmoid(decision logit) exceeds the threshold the masks are gated with
(``cosegnet.decision_cut``: ``config.model.decision_threshold``, 0.5,
optionally reweighted by the decision loss's weights).

Figures: ``accuracy`` over all pairs, ``positive_accuracy`` and
``negative_accuracy`` (each side's share called right), the counts, and
``auc``: the area under the ROC curve of the decision logits, the
probability that a random positive pair gets a higher logit than a random
negative one (ties count half). The AUC does not depend on the threshold:
a decision net that ranks the pairs well but sits on the wrong side of
0.5 (as one trained on other classes can) shows a high AUC and a low
accuracy.
"""

from typing import Any, Dict

import jax
import numpy as np

from coseg_jax.models import cosegnet
from coseg_jax.runtime import sharding as sharding_lib
from coseg_jax.runtime.evaluators import common
from data_pipelines import pipeline


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative),
  ties counting half (the Mann-Whitney U statistic over n+ n- pairs).

  Args:
    scores: [N] float scores (higher = more positive).
    labels: [N] 0/1 labels, both present.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  pos, neg = scores[labels], scores[~labels]
  if not len(pos) or not len(neg):
    raise ValueError("roc_auc needs positive and negative labels")
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def evaluate(*, config, model, variables, mesh=None) -> Dict[str, Any]:
  """Decision accuracy of ``model`` on positive and negative pairs.

  Raises:
    ValueError: when the method's outputs have no ``decision_logits``.
  """
  d = common.eval_data_config(config)
  with d.unlocked():
    d.sampler = "pairs"
    d.group_size = 2
    d.negative_fraction = 0.5
    d.eval_groups_per_split = int(config.eval.get("decision_pairs", 200))
  batch_size = common.eval_batch_size(config, mesh)
  dataset = pipeline.make_dataset(
      d, split=config.eval.split,
      batch_size=batch_size, train=False, seed=int(config.eval.get("seed", 0)))
  threshold = cosegnet.decision_cut(config)

  def decide(v, x):
    out = model.apply(v, x, train=False)
    if getattr(out, "decision_logits", None) is None:
      raise ValueError(f"the 'decision' evaluator needs a method with a "
                       f"decision output; {config.method} has none")
    return out.decision_logits[:, 0]

  run = jax.jit(decide)
  all_logits, all_labels = [], []
  for batch in dataset:
    n = batch["images"].shape[0]
    images = batch["images"]
    if n < batch_size:  # pad the last batch to the compiled shape
      images = np.concatenate([images, np.repeat(images[-1:],
                                                 batch_size - n, 0)])
    if mesh is not None:
      images = jax.device_put(images, sharding_lib.data_sharding(mesh))
    all_logits.append(np.asarray(jax.device_get(run(variables, images)))[:n])
    all_labels.append(np.asarray(batch["has_common"]).astype(bool))
  if not all_labels:
    raise ValueError("the 'decision' evaluator drew no pairs (empty split?)")
  logits, labels = np.concatenate(all_logits), np.concatenate(all_labels)
  said = 1.0 / (1.0 + np.exp(-logits)) > threshold
  right = said == labels
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  return {"accuracy": float(right.mean()),
          "positive_accuracy": float(right[labels].sum()) / max(n_pos, 1),
          "negative_accuracy": float(right[~labels].sum()) / max(n_neg, 1),
          "num_positive": n_pos, "num_negative": n_neg,
          "threshold": threshold,
          "auc": (roc_auc(logits, labels) if n_pos and n_neg
                  else float("nan"))}


def format_results(results: Dict[str, Any]) -> str:
  return (f"decision accuracy {results['accuracy']:.3f} (positive pairs "
          f"{results['positive_accuracy']:.3f} of {results['num_positive']}, "
          f"negative pairs {results['negative_accuracy']:.3f} of "
          f"{results['num_negative']}; sigmoid > {results['threshold']:.3g}); "
          f"ROC AUC {results['auc']:.3f}")
