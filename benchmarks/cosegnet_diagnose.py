"""CoSegNet training diagnosis on synthetic triplets (benchmarks/RESULTS.md).

A plain loop over ``coseg_jax.train.make_train_step`` that prints every loss
term every ``--every`` steps, then the gated / ungated J and the decision
accuracy on held-out synthetic pairs (before and after training) and the
activation statistics of the metric / decision nets and decoder taps.

Data: the synthetic generator built from ``data.synthetic`` fields
(``--classes`` shape families, ``--ntrain`` train / 10 test images per
class rendered at ``--render`` px, ``--dist`` distractors). Options select
the learning rate, the loss terms (``--loss term=w,...``), the metric layer,
the Lite0 ImageNet encoder (``--lite 1``) or a tiny encoder first trained to
classify the train images for ``--pretrain`` steps (stand-in for the paper's
ImageNet pre-training). Example (what RESULTS.md records):

  nice -n 10 python benchmarks/cosegnet_diagnose.py --steps 400 --lr 3e-4 \
      --classes 2 --ntrain 60 --pretrain 200
"""
import argparse
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, jax, jax.numpy as jnp
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=200)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--size", type=int, default=64)
p.add_argument("--render", type=int, default=64)
p.add_argument("--dist", type=int, nargs=2, default=(0, 0))
p.add_argument("--classes", type=int, default=3)
p.add_argument("--ntrain", type=int, default=20)
p.add_argument("--wm", type=float, default=1/8)
p.add_argument("--enc", type=int, nargs=5, default=(16, 32, 32, 64, 64))
p.add_argument("--batch", type=int, default=4)
p.add_argument("--layer", default="cT9")
p.add_argument("--loss", default="paper")
p.add_argument("--sched", default="cosine")
p.add_argument("--opt", default="adam")
p.add_argument("--aug", type=int, default=1)
p.add_argument("--lite", type=int, default=0)
p.add_argument("--pretrain", type=int, default=0)
p.add_argument("--data_dir", default="/tmp/cosegnet_diagnose_data")
p.add_argument("--every", type=int, default=25)
a = p.parse_args()
import cosegnet_dcc as bench
from coseg_jax import evaluate, train, models
from data_pipelines import pipeline
from coseg_jax.models import cosegnet
c = bench.synthetic_config("cosegnet", steps=a.steps, data_dir=a.data_dir,
                           builder_config="tiny", image_size=a.size, batch=a.batch)
c.data.builder_config = None
s = c.data.synthetic
s.num_classes = a.classes; s.train_per_class = a.ntrain; s.test_per_class = 10
s.image_size = a.render; s.min_distractors, s.max_distractors = a.dist
c.data.augment.enabled = bool(a.aug)
c.model.width_multiplier = a.wm
c.model.backbone_kwargs = {"widths": tuple(a.enc)}
c.model.metric_layer = a.layer
c.optimizer.learning_rate = a.lr
c.optimizer.schedule = a.sched
c.optimizer.name = a.opt
if "=" in a.loss:
  c.loss = {k: float(v) for k, v in (t.split("=") for t in a.loss.split(","))}
elif a.loss == "eq":
  c.loss = {k: 1.0 for k in cosegnet.LOSS_TERMS if k != "mask_neg"}
  c.loss["mask_neg"] = 0.0
if a.lite:
  from coseg_jax.backbones import weights as W
  c.model.backbone = "efficientnet_lite0"; c.model.backbone_kwargs = {}
  c.init.backbone_weights = str(W.find_lite0_weights())
spec = models.get_method("cosegnet")
model = spec.build_model(c.model)
tx, _ = train.make_optimizer(c.optimizer, a.steps)
state, _ = train.create_train_state(model=model, tx=tx, rng=jax.random.PRNGKey(0),
                                    sample_shape=train.input_shape(c))
state = train._init_from_pretrained(state, c)
if a.pretrain:
  import optax, flax.linen as nn
  from coseg_jax import backbones
  src = pipeline.load_source(c.data, "train")
  X = np.stack([pipeline.preprocess_for_eval(src[i]["image"], image_size=a.size)[0] for i in range(len(src))]).astype(np.float32)
  Y = np.array([src[i]["label"] for i in range(len(src))])
  class Cls(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      f = backbones.get_backbone("tiny", **c.model.backbone_kwargs).clone(parent=self, name="backbone")(x, train=train).features["stride32"]
      return nn.Dense(a.classes)(f.mean((1, 2)))
  cm = Cls(); cv = cm.init(jax.random.PRNGKey(0), X[:2], train=False)
  ctx = optax.adam(1e-3); co = ctx.init(cv["params"])
  @jax.jit
  def cstep(p, bs, o, x, y):
    def l(p):
      out, nv = cm.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), nv
    (loss, nv), g = jax.value_and_grad(l, has_aux=True)(p)
    u, o = ctx.update(g, o, p); return optax.apply_updates(p, u), nv["batch_stats"], o, loss
  cp, cbs = cv["params"], cv["batch_stats"]; r = np.random.default_rng(0)
  for i in range(a.pretrain):
    idx = r.choice(len(X), 16); xb = X[idx]
    if r.uniform() < 0.5: xb = xb[:, :, ::-1]
    cp, cbs, co, closs = cstep(cp, cbs, co, xb, Y[idx])
  print("pretrain loss", float(closs), flush=True)
  state = state.replace(params=dict(state.params, backbone=cp["backbone"]), batch_stats=dict(state.batch_stats, backbone=cbs["backbone"]))
step = train.make_train_step(model=model, loss_fn=spec.loss_fn, loss_config=dict(c.loss))
ds = pipeline.make_dataset(c.data, split="train", batch_size=a.batch, train=True, seed=0)
it = iter(ds)
def ev(variables, tag):
  r = evaluate.evaluate_dataset(config=c, model=model, variables=variables, verbose=False)
  ru = evaluate.evaluate_dataset(config=bench.ungated_config(c), model=model, variables=variables, verbose=False)
  acc = bench.decision_accuracy(config=c, model=model, variables=variables, num_pairs=40)
  print(f"[{tag}] J gated {r['avg_J_over_classes']:.3f} ungated {ru['avg_J_over_classes']:.3f} "
        f"dec acc {acc['accuracy']:.3f} (pos {acc['positive_accuracy']:.2f} neg {acc['negative_accuracy']:.2f})", flush=True)
ev(jax.device_get(state.variables()), "init")
t0 = time.time(); acc = {}
for i in range(a.steps):
  b = next(it)
  b = {k: v for k, v in b.items() if k in ("images", "masks", "valid")}
  state, m = step(state, b)
  for k, v in m.items(): acc.setdefault(k, []).append(v)
  if (i + 1) % a.every == 0:
    msg = " ".join(f"{k.split('/')[-1]}={np.mean(jax.device_get(v)):.3f}" for k, v in acc.items() if k != "finite")
    print(f"step {i+1} {time.time()-t0:.0f}s {msg}", flush=True); acc = {}
ev(jax.device_get(state.variables()), "trained")
# --- activation stats on a training batch (train-mode BN)
b = next(it)
_, inter = model.apply(state.variables(), b["images"], train=True, capture_intermediates=True, mutable=["intermediates", "batch_stats"], rngs={"dropout": jax.random.PRNGKey(1)})
I = inter["intermediates"]
for name in ("metric_fc1", "metric_fc2", "decision_fc1", "decision_fc2"):
  x = np.asarray(I[name]["__call__"][0])
  print(name, x.shape, "pre-act >0 frac", (x > 0).mean().round(3), "units ever active", ((x > 0).reshape(-1, x.shape[-1]).any(0)).mean().round(3), "std over batch", x.reshape(-1, x.shape[-1]).std(0).mean().round(4))
for i in (1, 5, 9, 12, 13):
  x = np.asarray(I["decoder"][f"cT{i}"]["__call__"][0])
  print(f"cT{i}", "pre-act >0 frac", (x > 0).mean().round(3), "channels ever active", (x > 0).reshape(-1, x.shape[-1]).any(0).mean().round(3), "GAP std over imgs", x.clip(0).mean((1,2)).std(0).mean().round(4))
f = np.asarray(I["backbone"]["__call__"][0].features["stride32"])
print("f GAP std over imgs", f.mean((1,2)).std(0).mean().round(4), "mean", f.mean().round(3))
