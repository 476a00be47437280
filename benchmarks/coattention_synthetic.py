"""Co-attention CNN on a constructed synthetic collection: initial vs learned J.

The collection: ``--images`` images at ``--size`` px, each a disc of one
fixed two-colour checker texture (the common object, radius 9-13 px) at a
random position on a background that varies in kind from image to image
(smooth noise, stripes, rectangles; ``--same_backgrounds``: smooth noise for
all); no distractors. A
randomly initialised ``tiny`` generator and the real ImageNet
EfficientNet-Lite0 extractor are trained with the two-stage schedule of
``coseg_jax.coattention_train.train_on_images``. Prints the co-attention and
mask losses at the first and last step and J (0.5 threshold and Otsu) of the
initial, stage-1 and final maps and of the last selected proposals.

  nice -n 10 python benchmarks/coattention_synthetic.py \\
      --stage1 20 --stage2 40 --batch 8 --lr 3e-3
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))

import numpy as np  # pylint: disable=g-import-not-at-top
from scipy import ndimage  # pylint: disable=g-import-not-at-top


def easy_collection(n=8, size=64, seed=0, varied=True):
  """(float32 [n, size, size, 3] images, bool [n, size, size] masks).

  ``varied``: backgrounds cycle through smooth noise (random scale), stripes
  (random orientation and period) and random rectangles, so that the
  background is not itself a common pattern of the collection (with
  identical-statistics backgrounds the co-attention loss prefers them).
  """
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[:size, :size]
  checker = ((yy // 3 + xx // 3) % 2).astype(np.float64)[..., None]
  texture = (checker * np.array([0.95, 0.8, 0.1]) +
             (1 - checker) * np.array([0.6, 0.1, 0.1]))
  images, masks = [], []
  for i in range(n):
    if varied and i % 3 == 1:  # stripes of random orientation / period
      a, period = rng.rand() * np.pi, rng.randint(4, 16)
      phase = (np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period
      bg = (0.5 + 0.5 * np.sin(phase))[..., None] * rng.rand(3) + \
          0.2 * rng.rand(3)
    elif varied and i % 3 == 2:  # random rectangles
      bg = np.ones((size, size, 3)) * rng.rand(3)
      for _ in range(rng.randint(4, 10)):
        r0, c0 = rng.randint(0, size - 8, 2)
        bg[r0:r0 + rng.randint(6, 30), c0:c0 + rng.randint(6, 30)] = rng.rand(3)
    else:  # smooth noise at a random scale
      bg = ndimage.gaussian_filter(rng.rand(size, size, 3),
                                   (rng.uniform(1, 6),) * 2 + (0,))
    bg = (bg - bg.min()) / (bg.max() - bg.min() + 1e-9) * 0.6 + 0.1
    r = rng.randint(9, 14)
    cy, cx = rng.randint(r, size - r, 2)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    images.append(np.where(m[..., None], texture, bg).astype(np.float32))
    masks.append(m)
  return np.stack(images), np.stack(masks)


def mean_j(pred, masks):
  """Mean per-image J (``coseg_jax.metrics.jaccard``) of [n, H, W] masks."""
  from coseg_jax import metrics  # pylint: disable=g-import-not-at-top
  as_mask = lambda m: np.asarray(m, np.float32)[..., None]
  return float(np.mean(metrics.jaccard(pred=as_mask(np.asarray(pred, bool)),
                                       gt=as_mask(masks))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--stage1", type=int, default=4)
  parser.add_argument("--stage2", type=int, default=3)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--selection_target", default="otsu")
  parser.add_argument("--fill_value", type=float, default=0.5)
  parser.add_argument("--passes", type=int, default=20,
                      help="passes over the collection per stage-2 epoch")
  parser.add_argument("--reduction", default="sum",
                      help="'sum' (the paper's MatConvNet sums) or 'mean'")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--same_backgrounds", action="store_true",
                      help="smooth-noise backgrounds for every image")
  args = parser.parse_args()

  from configs import coattention_voc  # pylint: disable=g-import-not-at-top
  from coseg_jax import coattention_train  # pylint: disable=g-import-not-at-top
  from coseg_jax import postprocess  # pylint: disable=g-import-not-at-top
  from coseg_jax import proposals  # pylint: disable=g-import-not-at-top

  config = coattention_voc.get_config("runlocal")
  config.model.backbone = "tiny"
  config.model.backbone_kwargs = {}
  config.model.backbone_weights = None
  config.model.decoder_widths = (32, 32, 16, 16, 16)
  config.model.extractor = "efficientnet_lite0"
  config.model.extractor_weights = "builtin"
  config.optimizer.learning_rate = args.lr
  config.model.fill_value = args.fill_value
  config.train.seed = args.seed
  c = config.coattention
  c.stage1_epochs, c.stage2_epochs, c.batch_size = (args.stage1, args.stage2,
                                                    args.batch)
  c.selection_target = args.selection_target
  c.stage2_passes_per_epoch = args.passes
  c.reduction = args.reduction
  c.mask_pixel_reduction = args.reduction
  c.verbose = False
  t0 = time.time()
  images, masks = easy_collection(args.images, args.size,
                                  varied=not args.same_backgrounds)
  pcfg = proposals.ProposalConfig(colour_spaces=("rgb", "lab"),
                                  scales=(50.0, 150.0))
  props = [proposals.selective_search(
      np.round(im * 255).astype(np.uint8), pcfg) for im in images]
  best = [float(((p & m).sum((1, 2)) / (p | m).sum((1, 2))).max())
          for p, m in zip(props, masks)]
  out = coattention_train.train_on_images(config, images, props)
  res = {"proposals_per_image": float(np.mean([len(p) for p in props])),
         "best_proposal_J": float(np.mean(best))}
  for k in ("initial", "stage1", "final"):
    maps = out[k]
    res[f"J_{k}_threshold"] = mean_j(maps >= 0.5, masks)
    res[f"J_{k}_otsu"] = mean_j(np.stack([postprocess.otsu(m)
                                          for m in maps]), masks)
    res[f"mean_S_{k}"] = float(maps.mean())
  if out["object_masks"] is not None:
    res["J_selected_proposals"] = mean_j(out["object_masks"], masks)
  first, last = out["losses"][0], out["losses"][-1]
  res["first_step"] = {k: v for k, v in first.items() if "loss" in k}
  res["last_step"] = {k: v for k, v in last.items() if "loss" in k}
  res["seconds"] = time.time() - t0
  print(json.dumps(res, indent=1))


if __name__ == "__main__":
  main()
