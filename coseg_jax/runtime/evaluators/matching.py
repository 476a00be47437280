"""Matching evaluator: PCK of predicted transformations (MaCoSNet).

For the pair-record data sets (``pipeline.PAIR_RECORD_DATASETS``) every
record is one pair, stretched to the model input as in training. The model
must predict 'affine_tps' transformations (``outputs.theta`` with its
``outputs.pairs``: MaCoSNet).

* TSS (records with flows): flow-PCK (Taniai et al.; CNNGeo / weakalign's
  protocol) at each alpha of ``config.eval.pck_alphas``, in both directions
  (image 1's foreground pixels carried into image 2 and back;
  ``coseg_jax.metrics.flow_pck``, L = max(H, W) of the source image).
* PF-PASCAL / PF-WILLOW (records with keypoints): keypoint PCK with L the
  bounding box of A's keypoints (``metrics.keypoint_pck``).
* Records with masks also get P and J of both images at original size
  (``config.eval`` binarisation), accumulated per class.

Figures: ``pck@<alpha>`` (mean over pairs and directions), its per-class
means, ``num_pairs``, and for masks the co-segmentation accumulator's
figures under ``coseg``.
"""

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax import metrics
from coseg_jax.runtime.evaluators import common
from data_pipelines import augment
from data_pipelines import pipeline

DEFAULT_ALPHAS = (0.05, 0.1)


def _check(config):
  if config.data.name not in pipeline.PAIR_RECORD_DATASETS:
    raise ValueError(f"the 'matching' evaluator needs a pair-record data set "
                     f"({', '.join(pipeline.PAIR_RECORD_DATASETS)}); "
                     f"config.data.name is {config.data.name!r}")
  if config.data.get("resize", "stretch") != "stretch":
    raise ValueError("the 'matching' evaluator needs config.data.resize="
                     "'stretch' (transformations are read in frames "
                     "normalised by each image's own size)")


def evaluate(*, config, model, variables, mesh=None) -> Dict[str, Any]:
  """PCK (and P/J where masks exist) of ``model`` on ``config.eval.split``.

  Raises:
    ValueError: for a data set without pair records, or a method whose
      outputs carry no transformation.
  """
  del mesh  # one pair at a time: the records have their own sizes
  _check(config)
  data = common.eval_data_config(config)
  alphas = tuple(float(a) for a in config.eval.get("pck_alphas",
                                                   DEFAULT_ALPHAS))
  source = pipeline.load_source(data, config.eval.split)
  names = source.dataset_info.features["label"].names
  size = data.image_size
  binarize = common.binarizer(config.eval)

  def forward(v, x):
    out = model.apply(v, x, train=False)
    if getattr(out, "theta", None) is None or not getattr(out, "pairs", ()):
      raise ValueError(f"the 'matching' evaluator needs a method that "
                       f"predicts transformations; {config.method} does not")
    index = {p: n for n, p in enumerate(out.pairs)}
    return (out.theta[0, index[(1, 0)]], out.theta[0, index[(0, 1)]],
            jax.nn.sigmoid(out.mask_logits[0].astype(jnp.float32)))

  run = jax.jit(forward)
  pck = {a: metrics.PCKAccumulator() for a in alphas}
  coseg = metrics.CosegAccumulator()
  for i in range(len(source)):
    rec = source[i]
    images = [rec["image1"], rec["image2"]]
    inputs, infos = zip(*[augment.preprocess_image(im, image_size=size)
                          for im in images])
    theta_21, theta_12, probs = jax.device_get(
        run(variables, jnp.asarray(np.stack(inputs))[None]))
    name = names[int(rec["label"])] if names else str(int(rec["label"]))
    hw = [im.shape[:2] for im in images]
    if "flow12" in rec:
      for theta, flow, mask, src, dst in (
          (theta_21, rec["flow12"], rec["mask1"], hw[0], hw[1]),
          (theta_12, rec["flow21"], rec["mask2"], hw[1], hw[0])):
        pred = metrics.dense_flow(theta=theta, src_size=src, dst_size=dst)
        for a in alphas:
          pck[a].update(values=metrics.flow_pck(
              pred_flow=pred, gt_flow=jnp.asarray(flow),
              mask=jnp.asarray(mask), alpha=a), class_names=name)
    elif "keypoints1" in rec:
      values = metrics.keypoint_pck(
          theta=jnp.asarray(theta_12)[None],
          points_a=jnp.asarray(rec["keypoints1"])[None],
          points_b=jnp.asarray(rec["keypoints2"])[None],
          size_a=hw[0], size_b=hw[1], alphas=alphas)
      for a in alphas:
        pck[a].update(values=values[a], class_names=name)
    if "mask1" in rec:
      for k in range(2):
        prob = augment.restore_prediction(probs[k], infos[k])
        coseg.update(class_names=name, scores=metrics.score_mask(
            pred=binarize(images[k], prob), gt=rec[f"mask{k + 1}"]))
  results: Dict[str, Any] = {"num_pairs": len(source), "alphas": alphas}
  for a in alphas:
    r = pck[a].result()
    results[f"pck@{a:g}"] = r["mean_pck"]
    results[f"per_class_pck@{a:g}"] = r["per_class"]
  if len(coseg):
    results["coseg"] = coseg.result()
    results["rule"] = common.binarizer_rule(config.eval)
  return results


def format_results(results: Dict[str, Any]) -> str:
  lines = [f"{results['num_pairs']} pairs: " + ", ".join(
      f"PCK@{a:g} {results[f'pck@{a:g}']:.3f}" for a in results["alphas"])]
  if "coseg" in results:
    c = results["coseg"]
    lines.append(f"masks ({results['rule']}): Avg. J {c['avg_J']:.3f}, "
                 f"Avg. P {c['avg_P']:.3f} over {c['num_classes']} classes")
  return "\n".join(lines)
