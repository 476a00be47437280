"""Tabulates a co-attention run on PASCAL-VOC next to Hsu et al. (Tables 3, 4).

Run the training first (it writes ``<workdir>/results.json``), e.g. the
reduced CPU setting of benchmarks/RESULTS.md:

  nice -n 10 python -m coseg_jax.main --mode train \\
      --config configs/coattention_voc.py:cpu \\
      --config.data.manual_dir ../shared/data/pascal_voc_coseg \\
      --workdir /tmp/coatt_bench/full

then print the Markdown tables:

  python benchmarks/coattention_voc.py /tmp/coatt_bench/full \\
      [--ablation /tmp/coatt_bench/nomask]

Per class: J of the final maps under each post-processing (0.5 threshold,
Otsu, dense CRF, GrabCut), J of the stage-1 maps (co-attention loss only,
thresholded) and of the untrained initial maps, and the wall time of the
collection (proposals + training + scoring), plus the time scaled to 100
images (the paper: about 1,560 s per 100 images on a Titan X). Averages over
classes ("Avg. J", "Avg. P") as in the paper (Avg. P 91.0, Avg. J 0.60 with
its best post-processing).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))

PAPER = {"avg_P": 91.0, "avg_J": 0.60}
METHODS = ("threshold", "otsu", "crf", "grabcut")


def load(workdir):
  """results.json, or (a run cut short) the finished classes' files."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  import glob  # pylint: disable=g-import-not-at-top
  from coseg_jax import coattention_train  # pylint: disable=g-import-not-at-top
  per_class = []
  for p in sorted(glob.glob(os.path.join(workdir, "results", "*.json"))):
    with open(p) as f:
      per_class.append(json.load(f))
  if not per_class:
    raise FileNotFoundError(f"no results in {workdir}")
  print(f"(no results.json: {len(per_class)} finished classes from "
        f"{workdir}/results/)")
  return {"per_class": per_class,
          "summary": coattention_train.summarise(per_class)}


def table(results, ablation=None) -> str:
  per_class = results["per_class"]
  abl = {c["class"]: c for c in (ablation or {}).get("per_class", [])}
  head = (["class", "images"] + [f"J {m}" for m in METHODS] +
          ["J stage 1", "J initial"] + (["J w/o mask loss (crf)"] if abl
                                        else []) +
          ["seconds", "s / 100 images"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for c in per_class:
    s = c.get("scores", {})
    row = [c["class"], str(c["images"])]
    row += [f"{s[f'final/{m}']['J']:.3f}" if f"final/{m}" in s else "-"
            for m in METHODS]
    row += [f"{s['stage1/threshold']['J']:.3f}",
            f"{s['initial/threshold']['J']:.3f}"]
    if abl:
      a = abl.get(c["class"], {}).get("scores", {}).get("final/crf")
      row.append(f"{a['J']:.3f}" if a else "-")
    row += [f"{c['total_seconds']:.0f}",
            f"{100 * c['total_seconds'] / c['images']:.0f}"]
    lines.append("| " + " | ".join(row) + " |")
  summ = results["summary"]
  avg = ["**Avg. J**", ""]
  avg += [f"{summ[f'final/{m}']['avg_J']:.3f}" if f"final/{m}" in summ
          else "-" for m in METHODS]
  avg += [f"{summ['stage1/threshold']['avg_J']:.3f}",
          f"{summ['initial/threshold']['avg_J']:.3f}"]
  if abl:
    a = ablation["summary"].get("final/crf")
    avg.append(f"{a['avg_J']:.3f}" if a else "-")
  total = sum(c["total_seconds"] for c in per_class)
  images = sum(c["images"] for c in per_class)
  avg += [f"{total:.0f}", f"{100 * total / images:.0f}"]
  lines.append("| " + " | ".join(avg) + " |")
  avp = ["**Avg. P**", ""]
  avp += [f"{100 * summ[f'final/{m}']['avg_P']:.1f}" if f"final/{m}" in summ
          else "-" for m in METHODS]
  avp += [f"{100 * summ['stage1/threshold']['avg_P']:.1f}",
          f"{100 * summ['initial/threshold']['avg_P']:.1f}"]
  if abl:
    a = ablation["summary"].get("final/crf")
    avp.append(f"{100 * a['avg_P']:.1f}" if a else "-")
  avp += ["", ""]
  lines.append("| " + " | ".join(avp) + " |")
  lines.append(f"\nPaper (Table 3, best post-processing): Avg. P "
               f"{PAPER['avg_P']}, Avg. J {PAPER['avg_J']}; about 1,560 s "
               "per collection of 100 images on a Titan X.")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--ablation", default=None,
                      help="workdir of the nomask run")
  args = parser.parse_args()
  ablation = load(args.ablation) if args.ablation else None
  print(table(load(args.workdir), ablation))


if __name__ == "__main__":
  main()
