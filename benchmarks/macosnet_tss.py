"""MaCoSNet on the six TSS sample pairs: flow-PCK and P/J before and after.

Reduced CPU setting (stated in benchmarks/RESULTS.md): EfficientNet-Lite0
encoder E and perceptual network F with their real ImageNet weights (frozen),
stage 2 of G on warped features, inputs ``--size`` (default 176, the
smallest size whose stride-16 grid, 11 x 11, G's VALID convs accept; the
paper uses 240 with ResNet-101). Phases, each time-budgeted:

1. init: G = identity (zero-initialised residual), decoder random;
2. synthetic pre-training of G (method ``macosnet_pretrain``: random affine +
   TPS warps, CNNGeo ranges, grid loss) on the PASCAL-VOC co-seg images (the
   TSS pairs are not used here);
3. joint weakly supervised training (all five losses, TSS paper weights
   5/5/10/10, matching 1) on the six TSS pairs (no masks or flows used).

After each phase: flow-PCK (alpha 0.05 and 0.1 of max(H, W), both directions,
over the source foreground) and P/J of both images at original resolution
under each ``--post`` conversion (0.5 threshold, Otsu, dense CRF, GrabCut by
default); the synthetic grid error on 32 held-out warps.

  nice -n 10 python benchmarks/macosnet_tss.py --size 176 \\
      --pretrain_s 300 --joint_s 300 --out /tmp/macos_tss.json

Loss ablations (Tables 7-8) from one saved pre-trained G, with an equal
number of joint steps each: ``--pretrained_in /tmp/macos_pretrained.pkl
--skip_init --joint_steps 120 --joint_s 1e9 --loss cycle=0`` (and
``transitivity=0``, ``contrastive=0``, ``cross_consistency=0``).
"""

import argparse
import json
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np

import macosnet_common as mc  # pylint: disable=g-bad-import-order
from coseg_jax import train
from coseg_jax.models import macosnet


def grid_error(apply_pre, variables, images, seed=123):
  """Mean grid loss of G on held-out synthetic warps (and of identity)."""
  x = jnp.asarray(images).reshape(-1, 2, *images.shape[1:])
  out = apply_pre(variables, x, jax.random.PRNGKey(seed))
  b, k = out.theta.shape[:2]
  gt = out.synthetic_theta.reshape(b * k, -1)
  err = float(macosnet.grid_loss(theta=out.theta.reshape(b * k, -1),
                                 theta_gt=gt, kind=macosnet.KIND))
  ident = float(macosnet.grid_loss(
      theta=jnp.tile(jnp.asarray(macosnet.geometry.AFFINE_TPS_IDENTITY),
                     (b * k, 1)), theta_gt=gt, kind=macosnet.KIND))
  return err, ident


def identity_grid_error(pre, images, seed=123):
  """Grid error of the identity on the held-out warps of grid_error."""
  syn = dict(macosnet.SYNTHETIC_DEFAULTS, **dict(pre.synthetic or {}))
  kind = syn.pop("kind")
  n = images.shape[0]
  gt = macosnet.random_synthetic_theta(jax.random.PRNGKey(seed), n,
                                       kind=kind, **syn)
  return float(macosnet.grid_loss(
      theta=jnp.tile(jnp.asarray(macosnet.geometry.AFFINE_TPS_IDENTITY),
                     (n, 1)), theta_gt=gt, kind=macosnet.KIND, kind_gt=kind))


def pretrain_phases(args, results, config, joint, pcfg, pre, pairs, train_x,
                    held, apply_joint, apply_pre, dump):
  """Phases 1 (init) and 2 (synthetic pre-training); returns the states."""
  s = args.size
  jstate = mc.make_state(config, joint, (1, 2, s, s, 3))
  pstate = mc.make_state(pcfg, pre, (1, 2, s, s, 3))
  if not args.skip_init:
    summary, _ = mc.evaluate_tss(apply_joint, jstate.variables(), pairs,
                                  post=args.post)
    # G is exactly the identity at init (zero-initialised residual), so its
    # grid error is the identity's: no extra compile needed.
    results["init"] = dict(summary, grid_identity=identity_grid_error(
        pre, held))
    print("init", results["init"], flush=True)
    dump()

  # Phase 2: synthetic pre-training of G.
  pstep = train.make_train_step(model=pre, loss_fn=macosnet.loss_fn,
                                loss_config={"grid": 1.0})

  def pre_batch(step):
    idx = np.random.default_rng(step).choice(len(train_x), 2 * args.batch,
                                             replace=False)
    return {"images": jnp.asarray(train_x[idx].reshape(args.batch, 2, s, s,
                                                       3))}

  pstate, plog = mc.run_training(pstate, pstep, pre_batch,
                                 budget_s=args.pretrain_s, max_steps=100000,
                                 name="pretrain")
  pre_params = jax.device_get(pstate.params)
  pre_bs = jax.device_get(pstate.batch_stats)
  with open(args.save_pretrained, "wb") as f:
    pickle.dump({"params": pre_params, "batch_stats": pre_bs, "size": s}, f)
  jstate = mc.make_state(config, joint, (1, 2, s, s, 3), params=pre_params,
                         batch_stats=pre_bs)
  summary, _ = mc.evaluate_tss(apply_joint, jstate.variables(), pairs,
                                  post=args.post)
  results["pretrained"] = dict(
      summary, grid=grid_error(apply_pre, pstate.variables(), held),
      steps=plog["steps"], seconds=round(plog["seconds"]),
      compile_s=round(plog["compile_s"]))
  print("pretrained", results["pretrained"], flush=True)
  dump()

  return jstate, pstate


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=176)
  ap.add_argument("--pretrain_s", type=float, default=300)
  ap.add_argument("--joint_s", type=float, default=300)
  ap.add_argument("--joint_steps", type=int, default=100000,
                  help="at most this many joint steps (equal-step ablations)")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--out", default="/tmp/macos_tss.json")
  ap.add_argument("--save_pretrained", default="/tmp/macos_pretrained.pkl")
  ap.add_argument("--pretrained_in", default="",
                  help="skip phases 1-2: start from this saved G")
  ap.add_argument("--skip_init", action="store_true",
                  help="skip the phase-1 evaluation (deterministic: same "
                       "figures as a full run)")
  ap.add_argument("--lr", type=float, default=1e-4,
                  help="learning rate of the joint phase")
  ap.add_argument("--decoder_lr", type=float, default=0.0,
                  help="separate learning rate of the decoder (0: --lr)")
  ap.add_argument("--set", action="append", default=[],
                  help="config.model override key=value (repeatable)")
  ap.add_argument("--loss", action="append", default=[],
                  help="config.loss weight term=value (repeatable), e.g. "
                       "cycle=0 for the w/o-cycle ablation")
  ap.add_argument("--post", default="threshold,otsu,crf,grabcut",
                  help="soft mask -> mask conversions scored (comma list of "
                       "coseg_jax.postprocess.METHODS)")
  args = ap.parse_args()
  args.post = tuple(args.post.split(","))
  s = args.size
  t_start = time.time()
  results = {"size": s, "device": str(jax.devices()[0]), "lr": args.lr,
             "decoder_lr": args.decoder_lr,
             "model_overrides": args.set, "loss_overrides": args.loss}

  config = mc.base_config(s, lr=args.lr, batch=args.batch, steps=100000)
  mc.apply_overrides(config, args.set)
  mc.apply_loss_overrides(config, args.loss)
  joint = macosnet.build_model(config.model, "joint")
  pcfg = mc.base_config(s, lr=1e-3, batch=args.batch, steps=100000)
  pcfg.model.perceptual = None
  del pcfg.init.pretrained["perceptual_net"]
  pre = macosnet.build_model(pcfg.model, "pretrain")

  pairs = mc.load_tss(s)
  voc_x, _, _, _, _ = mc.load_voc(s)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(voc_x))
  held, train_x = voc_x[order[:32]], voc_x[order[32:]]
  print(f"data loaded ({time.time() - t_start:.0f}s)", flush=True)

  # Evaluation needs no F: the same network without it (extra params unused).
  apply_joint = mc.inference_without_f(config)

  def dump():
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  apply_pre = jax.jit(lambda v, x, r: pre.apply(v, x, train=False,
                                                rngs={"dropout": r}))

  if args.pretrained_in:
    with open(args.pretrained_in, "rb") as f:
      saved = pickle.load(f)
    jstate = mc.make_state(config, joint, (1, 2, s, s, 3),
                           params=saved["params"],
                           batch_stats=saved["batch_stats"],
                           decoder_lr=args.decoder_lr)
    results["pretrained"] = dict(source=args.pretrained_in)
  else:
    jstate, pstate = pretrain_phases(args, results, config, joint, pcfg, pre,
                                     pairs, train_x, held, apply_joint,
                                     apply_pre, dump)
  if args.joint_s <= 0:
    return
  # Phase 3: joint weakly supervised training on the six TSS pairs.
  loss_config = dict(config.loss)
  jstep = train.make_train_step(model=joint, loss_fn=macosnet.loss_fn,
                                loss_config=loss_config)
  tss_x = np.stack([np.stack([p["input1"], p["input2"]]) for p in pairs])

  def joint_batch(step):
    r = np.random.default_rng(1000 + step)
    idx = r.choice(len(tss_x), args.batch, replace=False)
    x = tss_x[idx].copy()
    swap = r.random(args.batch) < 0.5
    x[swap] = x[swap][:, ::-1]
    return {"images": jnp.asarray(x)}

  jstate, jlog = mc.run_training(jstate, jstep, joint_batch,
                                 budget_s=args.joint_s,
                                 max_steps=args.joint_steps,
                                 name="joint", log_every=5)
  summary, rows = mc.evaluate_tss(apply_joint, jstate.variables(), pairs,
                                  post=args.post)
  results["joint"] = dict(summary, steps=jlog["steps"],
                          seconds=round(jlog["seconds"]),
                          compile_s=round(jlog["compile_s"]),
                          last_terms=jlog["log"][-1][2] if jlog["log"] else {})
  results["joint_rows"] = rows
  results["loss_weights"] = loss_config
  results["wall_s"] = round(time.time() - t_start)
  print(json.dumps({k: v for k, v in results.items() if k != "joint_rows"},
                   indent=1), flush=True)
  dump()


if __name__ == "__main__":
  main()
