"""Time to build the real datasets with their TFDS builders (array_record).

Usage:
  python benchmarks/builders_build.py [--data ../shared/data] [--repeats 1]

Builds pascal_voc_coseg (1,037 images) and tss (the 6-pair sample) from
../shared/data into a fresh temporary data_dir each repeat and prints the
wall time, records/s and the on-disk size of the written dataset.
"""

import argparse
import os
import pathlib
import shutil
import tempfile
import time

from data_pipelines import registry

REPO = pathlib.Path(__file__).resolve().parents[1]


def _size_mb(path):
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*")
             if f.is_file()) / 2**20


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  for name, folder in (("pascal_voc_coseg", "pascal_voc_coseg"),
                       ("tss", "tss_sample")):
    for _ in range(args.repeats):
      tmp = tempfile.mkdtemp()
      t0 = time.perf_counter()
      path = registry.prepare(name, data_dir=tmp,
                              manual_dir=os.path.join(args.data, folder),
                              verbose=False)
      dt = time.perf_counter() - t0
      n = sum(c["_total"] for c in registry.read_counts(path).values())
      print(f"{name}: {n} records in {dt:.1f} s ({n / dt:.1f} records/s), "
            f"{_size_mb(path):.1f} MiB written")
      shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
