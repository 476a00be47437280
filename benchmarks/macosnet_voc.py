"""MaCoSNet on PASCAL-VOC co-segmentation: per-class P / J, weak supervision.

Reduced CPU setting (stated in benchmarks/RESULTS.md): Lite0 E and F (real
ImageNet weights, frozen), stage 2 of G on warped features, ``--size`` 176
inputs. G starts from the synthetic pre-training saved by
``benchmarks/macosnet_tss.py`` (``--pretrained``; the script waits for the
file). Training: weakly supervised, every mini-batch holds pairs of one class
(so the rolled transitivity triplets are of one class too); no masks are
used. Losses and weights as the Internet setting (cycle 5, transitivity 5,
contrastive 20, task 10, matching 1). Evaluation: ``--eval_per_class``
images per class (the first ones in file order), paired (0,1), (2,3), ...
within the class, both masks scored at original resolution (threshold 0.5
and Otsu): P and J per class, "Avg. J" = mean over classes.

  nice -n 10 python benchmarks/macosnet_voc.py --size 176 --train_s 300 \\
      --eval_per_class 10 --out /tmp/macos_voc.json
"""

import argparse
import json
import os
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import macosnet_common as mc  # pylint: disable=g-bad-import-order
from coseg_jax import evaluate
from coseg_jax import postprocess
from coseg_jax import train
from coseg_jax.models import macosnet


def evaluate_voc(apply_fn, variables, data, per_class, methods):
  x, originals, masks, labels, classes = data
  scores = {m: {c: [] for c in classes} for m in methods}
  for c, name in enumerate(classes):
    idx = np.flatnonzero(labels == c)[:per_class]
    idx = idx[:len(idx) // 2 * 2].reshape(-1, 2)
    out = apply_fn(variables, jnp.asarray(x[idx]))
    probs = np.asarray(jax.nn.sigmoid(out.mask_logits[..., 0]))
    for p, pair in enumerate(idx):
      for m, i in enumerate(pair):
        img = originals[i]
        prob = np.asarray(Image.fromarray(probs[p, m]).resize(
            (img.shape[1], img.shape[0]), Image.BILINEAR))
        for meth in methods:
          s = evaluate.score_image(pred=postprocess.binarize(meth, img, prob),
                                   gt=masks[i])
          scores[meth][name].append((s["P"], s["J"]))
  table = {}
  for meth in methods:
    per = {n: (float(np.mean([v[0] for v in vals])),
               float(np.mean([v[1] for v in vals])))
           for n, vals in scores[meth].items()}
    table[meth] = dict(per_class=per,
                       avg_P=float(np.mean([v[0] for v in per.values()])),
                       avg_J=float(np.mean([v[1] for v in per.values()])))
  return table


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=176)
  ap.add_argument("--train_s", type=float, default=300)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--eval_per_class", type=int, default=10)
  ap.add_argument("--pretrained", default="/tmp/macos_pretrained.pkl")
  ap.add_argument("--wait_s", type=float, default=900)
  ap.add_argument("--out", default="/tmp/macos_voc.json")
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--set", action="append", default=[],
                  help="config.model override key=value (repeatable)")
  args = ap.parse_args()
  s = args.size
  t0 = time.time()
  config = mc.base_config(s, lr=args.lr, batch=args.batch, steps=100000)
  mc.apply_overrides(config, args.set)
  # Internet-setting weights (cycle/trans/contrast/task = 5/5/20/10).
  config.loss.contrastive = 20.0
  model = macosnet.build_model(config.model, "joint")
  apply_eval = mc.inference_without_f(config)
  data = mc.load_voc(s)
  x, _, _, labels, classes = data
  print(f"loaded {len(x)} images ({time.time() - t0:.0f}s)", flush=True)
  loss_config = dict(config.loss)
  step = train.make_train_step(model=model, loss_fn=macosnet.loss_fn,
                               loss_config=loss_config)
  by_class = [np.flatnonzero(labels == c) for c in range(len(classes))]

  def batch(i):
    r = np.random.default_rng(5000 + i)
    idx = r.choice(by_class[r.integers(len(classes))], 2 * args.batch,
                   replace=False)
    return {"images": jnp.asarray(x[idx].reshape(args.batch, 2, s, s, 3))}

  while not os.path.exists(args.pretrained):
    if time.time() - t0 > args.wait_s:
      raise SystemExit(f"no pre-trained G at {args.pretrained}")
    time.sleep(10)
  time.sleep(5)  # let the writer finish
  with open(args.pretrained, "rb") as f:
    pre = pickle.load(f)
  state = mc.make_state(config, model, (1, 2, s, s, 3), params=pre["params"],
                        batch_stats=pre["batch_stats"])
  results = {"size": s, "classes": classes, "loss_weights": loss_config,
             "eval_per_class": args.eval_per_class, "lr": args.lr,
             "model_overrides": args.set}
  methods = ("threshold", "otsu")
  results["before"] = evaluate_voc(apply_eval, state.variables(), data,
                                   args.eval_per_class, methods)
  print("before", {m: (results["before"][m]["avg_P"],
                       results["before"][m]["avg_J"]) for m in methods},
        flush=True)
  state, log = mc.run_training(state, step, batch, budget_s=args.train_s,
                               max_steps=100000, name="voc", log_every=5)
  results["train"] = dict(steps=log["steps"], seconds=round(log["seconds"]),
                          compile_s=round(log["compile_s"]),
                          last_terms=log["log"][-1][2] if log["log"] else {})
  results["after"] = evaluate_voc(apply_eval, state.variables(), data,
                                  args.eval_per_class, methods)
  print("after", {m: (results["after"][m]["avg_P"],
                      results["after"][m]["avg_J"]) for m in methods},
        flush=True)
  results["wall_s"] = round(time.time() - t0)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results["after"], indent=1))


if __name__ == "__main__":
  main()
