"""Helpers for the MaCoSNet real-data runs (benchmarks/macosnet_*.py).

In-memory loading of the small real sets under ../shared/data (read with
``data_pipelines.io``, resized by stretching to the model input as the
pipeline's 'stretch' mode), a time-budgeted training loop on top of
``coseg_jax.train``'s state and step, and the scores: flow-PCK (TSS protocol,
``coseg_jax.metrics.flow_pck``) and P / J at the original resolution
(``coseg_jax.evaluate.score_image``).
"""

import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from coseg_jax import evaluate
from coseg_jax import metrics
from coseg_jax import postprocess
from coseg_jax import train
from coseg_jax.nn import geometry
from coseg_jax.models import macosnet
from data_pipelines import io as dio

SHARED = pathlib.Path(os.environ.get(
    "COSEG_SHARED_DATA",
    pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1] (bilinear)."""
  return np.asarray(Image.fromarray(img).resize((size, size),
                                                Image.BILINEAR),
                    np.float32) / 255.0


def load_tss(size: int):
  """The six TSS pairs: list of dicts (images resized, originals kept)."""
  pairs = []
  root = SHARED / "tss_sample"
  for d in sorted(root.glob("*/*")):
    if not d.is_dir():
      continue
    rec = {"id": f"{d.parent.name}/{d.name}"}
    for n in (1, 2):
      img = dio.read_image(d / f"image{n}.png")
      rec[f"image{n}"] = img
      rec[f"mask{n}"] = dio.read_mask(d / f"mask{n}.png", mode="threshold")
      rec[f"flow{n}"] = dio.read_flo(d / f"flow{n}.flo")
      rec[f"input{n}"] = resize_image(img, size)
    pairs.append(rec)
  return pairs


def load_voc(size: int):
  """PASCAL-VOC co-seg: (images [N, s, s, 3], originals, masks, class ids,
  class names)."""
  root = SHARED / "pascal_voc_coseg"
  classes = sorted(p.name for p in root.iterdir() if p.is_dir())
  inputs, originals, masks, labels = [], [], [], []
  for c, name in enumerate(classes):
    for img_path in sorted((root / name / "images").glob("*.jpg")):
      img = dio.read_image(img_path)
      originals.append(img)
      masks.append(dio.read_mask(root / name / "masks" /
                                 (img_path.stem + ".png")))
      inputs.append(resize_image(img, size))
      labels.append(c)
  return (np.stack(inputs), originals, masks, np.asarray(labels), classes)


def make_state(config, model, sample_shape, params=None, batch_stats=None,
               decoder_lr=None):
  """TrainState with the config's real weights (+ optional params merged).

  ``decoder_lr``: a separate Adam learning rate for the decoder D (params
  'decoder'); everything else keeps ``config.optimizer`` (a fresh decoder and
  a pre-trained G want different rates).
  """
  from coseg_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  tx, _ = train.make_optimizer(config.optimizer, config.train.num_steps)
  if decoder_lr:
    import optax  # pylint: disable=g-import-not-at-top
    dcfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    dcfg.learning_rate = float(decoder_lr)
    dtx, _ = train.make_optimizer(dcfg, config.train.num_steps)
    tx = optax.multi_transform(
        {"decoder": dtx, "rest": tx},
        lambda p: {k: jax.tree.map(lambda _, k=k: "decoder" if k == "decoder"
                                   else "rest", v) for k, v in p.items()})
  # Eager init: XLA:CPU takes minutes to compile a jitted Lite0 init on a
  # loaded 2-core machine, op-by-op init takes seconds.
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(0))
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros(sample_shape, jnp.float32), train=False)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(variables["params"]), rng=train_rng, tx=tx)
  state = train._init_from_pretrained(state, config)  # pylint: disable=protected-access
  if params is not None:
    merged = ckpt_lib.merge_params(jax.device_get(state.params), params)
    bs = state.batch_stats
    if batch_stats is not None:
      bs = ckpt_lib.merge_params(jax.device_get(bs), batch_stats)
    state = state.replace(params=jax.tree.map(jnp.asarray, merged),
                          batch_stats=jax.tree.map(jnp.asarray, bs),
                          opt_state=tx.init(jax.tree.map(jnp.asarray,
                                                         merged)))
  return state


def run_training(state, step_fn, next_batch, *, budget_s: float,
                 max_steps: int, log_every: int = 10, name: str = ""):
  """Steps until the budget or max_steps; returns (state, log).

  The budget counts from the end of the first step, whose time is mostly
  XLA compilation (reported separately as ``compile_s``).
  """
  log = []
  t_first = time.time()
  t0 = None
  compile_s = 0.0
  step = 0
  while step < max_steps and (t0 is None or time.time() - t0 < budget_s):
    state, m = step_fn(state, next_batch(step))
    step += 1
    if t0 is None:
      jax.block_until_ready(m)
      t0 = time.time()
      compile_s = t0 - t_first
    if step % log_every == 0 or step == 1:
      m = jax.device_get(m)
      if m["finite"] < 0.5:
        raise FloatingPointError(f"{name}: non-finite loss at step {step}")
      log.append((step, float(m["loss"]),
                  {k[len("loss_terms/"):]: round(float(v), 4)
                   for k, v in m.items() if k.startswith("loss_terms/")}))
      print(f"[{name}] step {step} loss {float(m['loss']):.4f} "
            f"{log[-1][2]} ({time.time() - t0:.0f}s)", flush=True)
  return state, dict(steps=step, seconds=time.time() - (t0 or t_first),
                     compile_s=compile_s, log=log)


def pixel_grid_normalized(h: int, w: int) -> np.ndarray:
  """Normalised (x, y) of every pixel centre of an h x w image, [h, w, 2]."""
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  pts = np.stack([xs, ys], -1).astype(np.float32)
  return np.asarray(geometry.pixels_to_normalized(jnp.asarray(pts), (h, w)))


def predicted_flow(theta_pull: np.ndarray, src_hw, dst_hw) -> np.ndarray:
  """Flow [H1, W1, 2] from image 1 to image 2 given theta whose point map
  sends image 1's frame to image 2's frame (theta of the pair (2 -> 1))."""
  h, w = src_hw
  grid = pixel_grid_normalized(h, w).reshape(1, -1, 2)
  pts = geometry.transform_points(points=jnp.asarray(grid),
                                  theta=jnp.asarray(theta_pull)[None],
                                  kind=macosnet.KIND)
  px = np.asarray(geometry.normalized_to_pixels(pts, tuple(dst_hw)))[0]
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return px.reshape(h, w, 2) - np.stack([xs, ys], -1)


def evaluate_tss(apply_fn, variables, pairs, *, alphas=(0.05, 0.1),
                 post=("threshold", "otsu")):
  """Flow-PCK (both directions) and P/J of both images for every pair."""
  rows = []
  for rec in pairs:
    x = np.stack([rec["input1"], rec["input2"]])[None]
    out = apply_fn(variables, jnp.asarray(x))
    index = {p: n for n, p in enumerate(out.pairs)}
    theta = np.asarray(out.theta[0])
    probs = np.asarray(jax.nn.sigmoid(out.mask_logits[0, ..., 0]))
    row = {"id": rec["id"]}
    for n, (src, dst, pair) in enumerate(((1, 2, (1, 0)), (2, 1, (0, 1)))):
      flow = rec[f"flow{src}"]
      pred = predicted_flow(theta[index[pair]], flow.shape[:2],
                            rec[f"image{dst}"].shape[:2])
      for a in alphas:
        row[f"pck{a}_{src}{dst}"] = float(metrics.flow_pck(
            pred_flow=jnp.asarray(pred), gt_flow=jnp.asarray(flow),
            mask=jnp.asarray(rec[f"mask{src}"]), alpha=a))
    for m in (1, 2):
      img = rec[f"image{m}"]
      prob = np.asarray(Image.fromarray(probs[m - 1]).resize(
          (img.shape[1], img.shape[0]), Image.BILINEAR))
      for method in post:
        pred = postprocess.binarize(method, img, prob)
        s = evaluate.score_image(pred=pred, gt=rec[f"mask{m}"])
        row[f"P_{method}_{m}"], row[f"J_{method}_{m}"] = s["P"], s["J"]
    rows.append(row)
  summary = {}
  for a in alphas:
    summary[f"flow_pck@{a}"] = float(np.mean(
        [r[f"pck{a}_{d}"] for r in rows for d in ("12", "21")]))
  for method in post:
    for k in ("P", "J"):
      summary[f"{k}_{method}"] = float(np.mean(
          [r[f"{k}_{method}_{m}"] for r in rows for m in (1, 2)]))
  return summary, rows


def base_config(size: int, *, lr: float, batch: int, steps: int):
  """Lite0 MaCoSNet TSS config at reduced size (see the scripts)."""
  from configs import macosnet_tss  # pylint: disable=g-import-not-at-top
  config = macosnet_tss.get_config("lite0")
  config.data.image_size = size
  config.model.stage2_input = "features"  # CPU: no re-encoding in stage 2
  config.optimizer.learning_rate = lr
  config.train.num_steps = steps
  config.train.global_batch_size = batch
  return config


def parse_value(v: str):
  """'true' / '3' / '0.5' / 'name' -> bool / int / float / str."""
  low = v.lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return v


def _set_fields(node, items, *, flag: str, cast):
  """``name=value`` strings -> existing fields of ``node`` (in place).

  Raises:
    ValueError: a name that ``node`` does not have (naming the known ones:
      a typo must not add a field that nothing reads) or a value that
      ``cast`` refuses.
  """
  for kv in items:
    k, sep, v = kv.partition("=")
    if not sep or k not in node:
      raise ValueError(f"{flag} {kv!r}: expected name=value with name one "
                       f"of {sorted(node.keys())}")
    try:
      node[k] = cast(v)
    except ValueError:
      raise ValueError(f"{flag} {kv!r}: the value must be a number") from None


def apply_overrides(config, items):
  """``key=value`` strings -> config.model fields (e.g. perceptual_size=112)."""
  _set_fields(config.model, items, flag="--set", cast=parse_value)
  return config


def apply_loss_overrides(config, items):
  """``term=weight`` strings -> config.loss weights (e.g. cycle=0); errors
  as ``_set_fields``."""
  _set_fields(config.loss, items, flag="--loss", cast=float)
  return config


def to_ml(d) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(d)


def inference_without_f(config):
  """A jitted ``apply(variables, images) -> MaCoSNetOutput`` for evaluation.

  The same network without the perceptual network F (evaluation never uses
  F, and skipping it saves its forward pass); the variables of the training
  model are accepted as they are, F's entries dropped.
  """
  evaluator = macosnet.build_model(
      to_ml(dict(config.model.to_dict(), perceptual=None)), "joint")

  def strip(v):
    return {c: {k: p for k, p in v[c].items() if k != "perceptual_net"}
            for c in ("params", "batch_stats")}

  return jax.jit(lambda v, x: evaluator.apply(strip(v), x, train=False))
