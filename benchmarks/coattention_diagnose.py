"""Why the co-attention CNN finds nothing on real collections (RESULTS.md).

Two diagnostics on the collections of a co-attention config (by default
``configs/coattention_voc.py``: Lite0 generator encoder and Lite0 extractor f
with their ImageNet weights), each class's first ``--images`` images by
record order, as the training runs take them, at ``--size`` px:

* ``landscape``: the co-attention loss (eq. 3-6, mean over the ordered
  pairs) with the config's fixed f at hand-made maps: the ground truth,
  S = 0, S = 1, S = 1/2, a centre box, the inverted and the shuffled ground
  truth, the ground truth at 0.3 and a 4x4 blob in the centre. Also the mean
  d+ (object-object, over pairs) and d- (object-background, over images).
  At S = 0 every object image is the same blank image, so d+ = 0 whatever
  f is; the map with the lowest loss is what the loss asks for.
* ``trajectory``: stage 1 alone (co-attention loss, no mask loss) from the
  run's initial generator, with the library's compiled step: J at the 0.5
  threshold and at Otsu's threshold, the mean of S and the loss after
  chosen updates (one update = the whole collection, all ordered pairs).

  nice -n 10 python benchmarks/coattention_diagnose.py landscape \\
      --sizes 64,128,224 --classes Aero,Bird,Car,Cat,Dog \\
      --set data.manual_dir=../shared/data/pascal_voc_coseg
  nice -n 10 python benchmarks/coattention_diagnose.py trajectory \\
      --sizes 128 --classes Cat,Aero --lr 1e-5 --steps 30 \\
      --set data.manual_dir=../shared/data/pascal_voc_coseg \\
      [--set model.train_extractor=True]

``--set field=value`` overrides any config field (as ``--config.x=y`` of
the main command). Prints one JSON line per class and size.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))

import numpy as np  # pylint: disable=g-import-not-at-top

RECORD_AT = (1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200)


def candidate_maps(masks: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
  """Hand-made maps float32 [N, H, W] from ground truth masks bool [N, H, W]."""
  gt = np.asarray(masks, np.float32)
  n, h, w = gt.shape
  yy, xx = np.mgrid[:h, :w]
  box = ((np.abs(yy - h / 2) < h / 4) & (np.abs(xx - w / 2) < w / 4))
  blob = np.zeros((h, w), np.float32)
  blob[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = 1.0
  order = np.random.RandomState(seed).permutation(n)
  return {"gt": gt, "zeros": np.zeros_like(gt), "ones": np.ones_like(gt),
          "half": np.full_like(gt, 0.5),
          "centre_box": np.broadcast_to(box, gt.shape).astype(np.float32),
          "inverted_gt": 1.0 - gt, "shuffled_gt": gt[order],
          "gt_x0.3": 0.3 * gt,
          "small_blob": np.broadcast_to(blob, gt.shape).copy()}


def landscape(*, model, variables, images: np.ndarray,
              maps: Dict[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
  """Loss of eq. 3-6 and mean d+, d- at each map, with the model's f.

  Args:
    model: a ``CoattentionNet`` (its fill value and extractor are used).
    variables: its variables (f's weights; the generator is not used).
    images: float32 [N, H, W, 3] in [0, 1], N >= 2.
    maps: name -> float32 [N, H, W] maps S in [0, 1].

  Returns:
    name -> {'loss': mean over ordered pairs, 'd_pos': mean d+ over ordered
    pairs, 'd_neg': mean intra-image d- over images}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from coseg_jax.losses import coattention as losses  # pylint: disable=g-import-not-at-top
  from coseg_jax.models import coattention as model_lib  # pylint: disable=g-import-not-at-top

  features = jax.jit(lambda v, x, s: model.apply(
      v, x, s, method=model_lib.CoattentionNet.features))
  n = images.shape[0]
  off = ~np.eye(n, dtype=bool)
  out = {}
  for name, s in maps.items():
    fo, fb = features(variables, jnp.asarray(images),
                      jnp.asarray(s[..., None], jnp.float32))
    fo, fb = np.asarray(fo, np.float64), np.asarray(fb, np.float64)
    c = fo.shape[1]
    pair = np.asarray(losses.coattention_pair_losses(
        object_features=fo.astype(np.float32),
        background_features=fb.astype(np.float32)))
    d_pos = np.sum((fo[:, None] - fo[None]) ** 2, -1) / c
    out[name] = {"loss": float(pair[off].mean()),
                 "d_pos": float(d_pos[off].mean()),
                 "d_neg": float(np.mean(np.sum((fo - fb) ** 2, -1) / c))}
  return out


def _jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
  union = np.sum(pred | gt)
  return float(np.sum(pred & gt) / union) if union else 1.0


def map_scores(maps: np.ndarray, masks: np.ndarray) -> Dict[str, float]:
  """Mean J at 0.5 and at Otsu's threshold, and the mean of S."""
  from coseg_jax import postprocess  # pylint: disable=g-import-not-at-top
  return {"J": float(np.mean([_jaccard(s >= 0.5, g)
                              for s, g in zip(maps, masks)])),
          "J_otsu": float(np.mean([_jaccard(postprocess.otsu(s), g)
                                   for s, g in zip(maps, masks)])),
          "mean_S": float(np.mean(maps))}


def trajectory(config, images: np.ndarray, masks: np.ndarray, *, steps: int,
               record_at: Sequence[int] = RECORD_AT) -> List[Dict[str, float]]:
  """Stage 1 alone: scores of S at step 0 and after the updates in
  ``record_at`` (and the last one), the whole collection per update.

  Args:
    config: a co-attention config (``model``, ``optimizer``, ``train.seed``,
      ``coattention``); its schedule fields are replaced by ``steps``
      stage-1 epochs of one update.
    images: float32 [N, H, W, 3] in [0, 1] at the model input size.
    masks: bool [N, H, W] ground truth at the same size (scoring only).
    steps: number of updates.
    record_at: updates after which S is scored.

  Returns:
    list of {'step', 'J', 'J_otsu', 'mean_S', 'loss'} ('loss' of the update
    that produced the maps; None at step 0).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from coseg_jax import coattention_train  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  n, h, w, _ = images.shape
  cfg.coattention.stage1_epochs, cfg.coattention.stage2_epochs = steps, 0
  cfg.coattention.batch_size = n
  trainer = coattention_train.get_trainer(cfg, group=n, size=(h, w),
                                          steps_per_epoch=1)
  state = trainer.fresh_state()
  rows = [dict(step=0, loss=None,
               **map_scores(trainer.predict(state.variables(), images),
                            masks))]
  batch = {"images": jnp.asarray(images[None]),
           "object_masks": jnp.zeros((1, n, h, w, 1), jnp.float32),
           "mask_weight": jnp.float32(0.0)}
  for step in range(1, steps + 1):
    state, metrics = trainer.step(state, batch)
    if step in record_at or step == steps:
      rows.append(dict(step=step, loss=float(metrics["loss"]),
                       **map_scores(trainer.predict(state.variables(),
                                                    images), masks)))
  return rows


def collection_arrays(config, collection, size: int):
  """(images float32 [N, s, s, 3], masks bool [N, s, s]) of a collection,
  preprocessed as the training runs do (masks resized by nearest
  neighbour; ignore pixels count as background here)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from coseg_jax import evaluate  # pylint: disable=g-import-not-at-top
  images = np.stack([evaluate.preprocess_image(
      im, image_size=size, resize=config.data.resize)[0]
                     for im in collection.images]).astype(np.float32)
  masks = np.stack([np.asarray(Image.fromarray(
      (m == 1).astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
                    for m in collection.masks])
  return images, masks


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("mode", choices=("landscape", "trajectory"))
  p.add_argument("--config", default="", help="coattention_voc.py argument")
  p.add_argument("--sizes", default="128")
  p.add_argument("--classes", default="Cat")
  p.add_argument("--images", type=int, default=8)
  p.add_argument("--lr", type=float, default=1e-5)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
  args = p.parse_args()
  from benchmarks import cosegnet_dcc  # pylint: disable=g-import-not-at-top
  from configs import coattention_voc  # pylint: disable=g-import-not-at-top
  from coseg_jax import coattention_train  # pylint: disable=g-import-not-at-top
  config = coattention_voc.get_config(args.config or None)
  cosegnet_dcc.apply_overrides(config,
                               cosegnet_dcc.parse_overrides(args.set))
  config.data.classes = tuple(args.classes.split(","))
  config.coattention.max_images = args.images
  config.optimizer.learning_rate = args.lr
  collections = coattention_train.load_collections(config)
  for size in [int(s) for s in args.sizes.split(",")]:
    config.data.image_size = size
    for collection in collections:
      images, masks = collection_arrays(config, collection, size)
      t0 = time.time()
      row = {"mode": args.mode, "class": collection.name, "size": size,
             "images": len(collection)}
      if args.mode == "landscape":
        model = coattention_train.model_lib.build_model(config.model)
        state = coattention_train.init_state(
            config, model, num_steps=1, group=len(images), size=(size, size))
        row["maps"] = landscape(model=model, variables=state.variables(),
                                images=images,
                                maps=candidate_maps(masks))
      else:
        row.update(lr=args.lr, train_extractor=bool(
            config.model.train_extractor))
        row["trajectory"] = trajectory(config, images, masks,
                                       steps=args.steps)
      row["seconds"] = round(time.time() - t0, 1)
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
