r"""Loader throughput: augmented pairs per second at 512x512 by worker count.

Measures ``data_pipelines.pipeline.make_dataset`` (positive pairs, random
scale/crop/flip/rotation, stretch resize to 512x512, float32 batches) on the
synthetic set rendered at 512 px ('bench512') or on the real PASCAL-VOC
co-segmentation set when its layout is given. Timing starts after a warm-up
(worker start-up and the first batches are excluded) and covers
``--num_batches`` batches.

Usage:
  python benchmarks/loader_throughput.py --dataset synthetic \
      --workers 0,1,2 --batch_size 8 --num_batches 12
  python benchmarks/loader_throughput.py --dataset pascal_voc_coseg \
      --manual_dir ../shared/data/pascal_voc_coseg --workers 0,1,2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from data_pipelines import config as config_lib
from data_pipelines import pipeline


def measure(cfg, *, batch_size: int, num_batches: int, warmup: int):
  it = iter(pipeline.make_dataset(cfg, split=cfg.train_split,
                                  batch_size=batch_size, train=True, seed=0))
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    b = next(it)
  dt = time.perf_counter() - t0
  assert b["images"].shape[2:4] == (cfg.image_size, cfg.image_size)
  return num_batches * batch_size / dt


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="synthetic",
                 choices=("synthetic", "pascal_voc_coseg"))
  p.add_argument("--manual_dir", default=None)
  p.add_argument("--data_dir", default=None,
                 help="TFDS data dir (default: a temporary directory)")
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--num_batches", type=int, default=12)
  p.add_argument("--warmup", type=int, default=2)
  args = p.parse_args()

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="loader_bench_")
  cfg = config_lib.default_data_config()
  cfg.name = args.dataset
  cfg.data_dir = data_dir
  cfg.image_size = args.image_size
  if args.dataset == "synthetic":
    cfg.builder_config = "bench512"
  else:
    cfg.manual_dir = os.path.abspath(args.manual_dir)
  # Build once outside the timed region.
  src = pipeline.load_source(cfg, cfg.train_split)
  print(f"dataset={args.dataset} records={len(src)} "
        f"input={args.image_size}x{args.image_size} batch={args.batch_size} "
        f"batches={args.num_batches} (after {args.warmup} warm-up) "
        f"cpus={os.cpu_count()}")
  print("| workers | pairs/s |")
  print("|---|---|")
  for w in [int(x) for x in args.workers.split(",")]:
    cfg.num_workers = w
    rate = measure(cfg, batch_size=args.batch_size,
                   num_batches=args.num_batches, warmup=args.warmup)
    print(f"| {w} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
  main()
