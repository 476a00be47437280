"""Does MaCoSNet's weakly supervised objective train the masks? (diagnostic)

Two small experiments on the procedural co-segmentation groups of
``data_pipelines/synthetic`` (one shape category per pair, distractors of
other categories, random textures) and, for the loss landscape, on real
PASCAL-VOC co-seg images:

* ``--mode landscape``: the perceptual contrastive loss (eq. 8-10, m = 2)
  with the real Lite0 network F evaluated at fixed candidate masks (ground
  truth, inverted ground truth, all ones, all zeros, constant 0.5, a centred
  box). No training: it shows which masks the loss prefers.
* ``--mode train``: joint weakly supervised training (the five losses, TSS
  weights 1/5/5/10/10) of the Lite0 model (E and F frozen with their ImageNet
  weights, G from the synthetic pre-training of ``macosnet_tss.py`` when
  ``--pretrained`` exists, decoder D from scratch) on synthetic pairs of one
  category; J (threshold 0.5) and the mean mask value on held-out synthetic
  pairs every ``--eval_every`` steps. ``--set key=value`` overrides
  ``config.model`` fields (e.g. ``matching_mask_grad=true``) and ``--loss
  term=weight`` the loss weights.

  nice -n 10 python benchmarks/macosnet_synthetic.py --mode landscape
  nice -n 10 python benchmarks/macosnet_synthetic.py --mode train \\
      --steps 200 --set matching_mask_grad=true --out /tmp/macos_syn.json
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
from coseg_jax import backbones
from coseg_jax import metrics
from coseg_jax import postprocess
from coseg_jax import train
from coseg_jax.backbones import weights as weights_lib
from coseg_jax.models import macosnet
from data_pipelines.synthetic import generator


def synthetic_pairs(num_classes: int, per_class: int, size: int, seed: int):
  """images float32 [C * per_class // 2, 2, S, S, 3], masks [..., 1], labels."""
  xs, ms, ls = [], [], []
  for c in range(num_classes):
    recs = [generator.render(c, num_classes=num_classes, image_size=size,
                             seed=seed, index=i) for i in range(per_class)]
    for i in range(0, per_class - 1, 2):
      xs.append(np.stack([recs[i][0], recs[i + 1][0]]).astype(np.float32)
                / 255.0)
      ms.append(np.stack([recs[i][1], recs[i + 1][1]])[..., None]
                .astype(np.float32))
      ls.append(c)
  return np.stack(xs), np.stack(ms), np.asarray(ls)


def landscape(size: int):
  """Contrastive loss (d+, d-, L) of Lite0 F at candidate masks."""
  net = backbones.get_backbone("efficientnet_lite0")
  variables = weights_lib.load_pretrained("efficientnet_lite0", None,
                                          allow_removed_layers=True)
  pooled = jax.jit(lambda x: net.apply(variables, x, train=False).pooled)

  def terms(x, m):
    p = x.shape[0]
    flat = jnp.asarray(x.reshape((-1,) + x.shape[2:]))
    mm = jnp.asarray(m.reshape((-1,) + m.shape[2:]), jnp.float32)
    o = pooled(flat * mm).reshape(p, 2, -1)
    b = pooled(flat * (1.0 - mm)).reshape(p, 2, -1)
    c = o.shape[-1]
    dpos = np.asarray(jnp.sum((o[:, 0] - o[:, 1]) ** 2, -1) / c)
    dneg = np.asarray((jnp.sum((o[:, 0] - b[:, 0]) ** 2, -1) +
                       jnp.sum((o[:, 1] - b[:, 1]) ** 2, -1)) / c)
    return dict(d_pos=float(dpos.mean()), d_neg=float(dneg.mean()),
                loss=float(np.mean(dpos + np.maximum(0.0, 2.0 - dneg))))

  def candidates(gt):
    box = np.zeros(gt.shape[2:], np.float32)
    q = size // 4
    box[q:size - q, q:size - q] = 1.0
    return {"gt": gt, "inverted_gt": 1.0 - gt, "ones": np.ones_like(gt),
            "zeros": np.zeros_like(gt), "half": np.full_like(gt, 0.5),
            "centre_box": np.broadcast_to(box, gt.shape)}

  out = {}
  x, m, _ = synthetic_pairs(8, 2, size, seed=0)
  out["synthetic"] = {n: terms(x, c) for n, c in candidates(m).items()}
  vx, _, vmasks, labels, _ = mc.load_voc(size)
  idx = np.stack([np.flatnonzero(labels == c)[:2] for c in range(0, 20, 2)])
  gts = np.stack([[np.asarray(Image.fromarray(
      (vmasks[i] == 1).astype(np.uint8)).resize((size, size), Image.NEAREST),
                              np.float32) for i in pair] for pair in idx])
  out["voc"] = {n: terms(vx[idx], c)
                for n, c in candidates(gts[..., None]).items()}
  return out


def jaccard(pred: np.ndarray, masks: np.ndarray) -> float:
  """Mean per-image J of boolean pred against {0, 1} masks [..., H, W]."""
  as_mask = lambda m: np.asarray(m, np.float32)[..., None]
  return float(np.mean(metrics.jaccard(pred=as_mask(pred), gt=as_mask(masks))))


def train_run(args):
  s = args.size
  config = mc.base_config(s, lr=args.lr, batch=args.batch, steps=args.steps)
  mc.apply_overrides(config, args.set)
  for kv in args.loss:
    k, v = kv.split("=", 1)
    config.loss[k] = float(v)
  model = macosnet.build_model(config.model, "joint")
  apply_eval = mc.inference_without_f(config)
  tx_, _, tl = synthetic_pairs(args.classes, args.per_class, s, seed=0)
  ex, em, _ = synthetic_pairs(args.classes, 4, s, seed=1)
  params = bstats = None
  start = args.resume or args.pretrained
  if start and os.path.exists(start):
    # --resume: a state saved by --save (G and D); else G's pre-training.
    with open(start, "rb") as f:
      pre = pickle.load(f)
    if pre.get("size") == s:
      params, bstats = pre["params"], pre["batch_stats"]
  state = mc.make_state(config, model, (1, 2, s, s, 3), params=params,
                        batch_stats=bstats)

  def evaluate(state):
    probs = []
    for i in range(0, len(ex), 4):
      out = apply_eval(state.variables(), jnp.asarray(ex[i:i + 4]))
      probs.append(np.asarray(jax.nn.sigmoid(out.mask_logits)))
    probs = np.concatenate(probs)[..., 0]
    # Otsu per image: J at 0.5 stays at the foreground share while the mask
    # is > 0.5 everywhere, even when its spatial layout already carries the
    # object; the inverted Otsu mask shows a polarity flip (d- of eq. 9 is
    # symmetric in M <-> 1 - M).
    otsu = np.stack([postprocess.otsu(p) for p in probs.reshape(
        (-1,) + probs.shape[-2:])]).reshape(probs.shape)
    return dict(J=jaccard(probs > 0.5, em[..., 0]),
                J_otsu=jaccard(otsu, em[..., 0]),
                J_otsu_inverted=jaccard(~otsu, em[..., 0]),
                mean_mask=float(probs.mean()),
                gt_share=float(em.mean()))

  step = train.make_train_step(model=model, loss_fn=macosnet.loss_fn,
                               loss_config=dict(config.loss))
  by_class = [np.flatnonzero(tl == c) for c in range(args.classes)]

  def batch(i):
    # One category per mini-batch, so the rolled transitivity triplets are
    # of one category too (as benchmarks/macosnet_voc.py).
    r = np.random.default_rng(7000 + i)
    idx = r.choice(by_class[r.integers(args.classes)], args.batch,
                   replace=False)
    return {"images": jnp.asarray(tx_[idx])}

  results = dict(size=s, model_overrides=args.set,
                 loss=dict(config.loss), lr=args.lr, curve=[])
  results["curve"].append(dict(step=0, **evaluate(state)))
  print(results["curve"][-1], flush=True)
  done = 0
  t0 = time.time()
  while done < args.steps and time.time() - t0 < args.budget_s:
    n = min(args.eval_every, args.steps - done)
    state, log = mc.run_training(state, step, lambda i: batch(done + i),
                                 budget_s=args.budget_s - (time.time() - t0),
                                 max_steps=n, log_every=n, name="syn")
    done += log["steps"]
    results["curve"].append(dict(step=done, seconds=round(time.time() - t0),
                                 terms=log["log"][-1][2] if log["log"]
                                 else {}, **evaluate(state)))
    print(results["curve"][-1], flush=True)
  if args.save:
    with open(args.save, "wb") as f:
      pickle.dump({"params": jax.device_get(state.params),
                   "batch_stats": jax.device_get(state.batch_stats),
                   "size": s}, f)
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--mode", choices=("landscape", "train"), default="train")
  ap.add_argument("--size", type=int, default=176)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--budget_s", type=float, default=600)
  ap.add_argument("--eval_every", type=int, default=25)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--classes", type=int, default=8)
  ap.add_argument("--per_class", type=int, default=12)
  ap.add_argument("--pretrained", default="/tmp/macos_pretrained.pkl")
  ap.add_argument("--resume", default="",
                  help="start from a state saved with --save")
  ap.add_argument("--save", default="", help="save the trained state here")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--loss", action="append", default=[])
  ap.add_argument("--out", default="/tmp/macos_syn.json")
  args = ap.parse_args()
  res = landscape(args.size) if args.mode == "landscape" else train_run(args)
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res, indent=1))


if __name__ == "__main__":
  main()
