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


def _cell(scores, key, field="J", scale=1.0, fmt="{:.3f}"):
  return fmt.format(scale * scores[key][field]) if key in scores else "-"


def table(results, ablation=None) -> str:
  """Markdown table: per class, then Avg. J and Avg. P over classes.

  Columns: J of the final maps under each post-processing; J of the same
  run without the mask loss (the Table 4 ablation, when the run trained it:
  ``nomask/<method>`` scores, or the CRF figure of a separate ``ablation``
  run); J of the stage-1 and initial maps (0.5 threshold); J of the
  all-foreground map (the foreground share); seconds per collection and
  scaled to 100 images.
  """
  per_class = results["per_class"]
  summ = results["summary"]
  abl = {c["class"]: c for c in (ablation or {}).get("per_class", [])}
  nomask = any(f"nomask/{m}" in c.get("scores", {}) for c in per_class
               for m in METHODS)
  reference = any("reference/all_foreground" in c.get("scores", {})
                  for c in per_class)
  head = ["class", "images"] + [f"J {m}" for m in METHODS]
  if nomask:
    head.append("J w/o mask loss (" + " / ".join(METHODS) + ")")
  if abl:
    head.append("J w/o mask loss (crf, separate run)")
  head += ["J stage 1", "J initial"]
  if reference:
    head.append("J all foreground")
  head += ["seconds", "s / 100 images"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def columns(scores, field, scale, fmt, ablation_scores):
    row = [_cell(scores, f"final/{m}", field, scale, fmt) for m in METHODS]
    if nomask:
      row.append(" / ".join(_cell(scores, f"nomask/{m}", field, scale, fmt)
                            for m in METHODS))
    if abl:
      row.append(_cell(ablation_scores, "final/crf", field, scale, fmt))
    row += [_cell(scores, "stage1/threshold", field, scale, fmt),
            _cell(scores, "initial/threshold", field, scale, fmt)]
    if reference:
      row.append(_cell(scores, "reference/all_foreground", field, scale, fmt))
    return row

  for c in per_class:
    row = [c["class"], str(c["images"])]
    row += columns(c.get("scores", {}), "J", 1.0, "{:.3f}",
                   abl.get(c["class"], {}).get("scores", {}))
    row += [f"{c['total_seconds']:.0f}",
            f"{100 * c['total_seconds'] / c['images']:.0f}"]
    lines.append("| " + " | ".join(row) + " |")
  # summarise() keys its averages 'avg_J' / 'avg_P'; reuse the cell helper.
  avg_j = {k: {"J": v["avg_J"]} for k, v in summ.items()}
  avg_p = {k: {"P": v["avg_P"]} for k, v in summ.items()}
  abl_j = {k: {"J": v["avg_J"]} for k, v in (ablation or {}).get(
      "summary", {}).items()}
  abl_p = {k: {"P": v["avg_P"]} for k, v in (ablation or {}).get(
      "summary", {}).items()}
  total = sum(c["total_seconds"] for c in per_class)
  images = sum(c["images"] for c in per_class)
  lines.append("| " + " | ".join(
      ["**Avg. J**", ""] + columns(avg_j, "J", 1.0, "{:.3f}", abl_j) +
      [f"{total:.0f}", f"{100 * total / images:.0f}"]) + " |")
  lines.append("| " + " | ".join(
      ["**Avg. P**", ""] + columns(avg_p, "P", 100.0, "{:.1f}", abl_p) +
      ["", ""]) + " |")
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
