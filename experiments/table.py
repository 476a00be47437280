r"""One Markdown table of several runs' ``experiment.json`` records.

  python -m experiments.table recipe=/tmp/exp/csn_disjoint \
      blind=/tmp/exp/csn_blind

One row per ``label=workdir``: steps, the minutes of the feature-cache build
(near 0 when an existing cache was reused) and of the training loop (curve
evaluations excluded), unseen-class Avg. J and Avg. P of the
``coseg`` evaluator, the partner evaluator's mean |change in probability|
and change in J (dp, dJ) when the partner is replaced by an image of another class,
and the composite evaluator's conditional J, wrong-object and both-objects
rates and the IoU between the masks given the two partners. A column whose
evaluator did not run shows "-". The reference maps (all foreground, centre
box) of the first run close the table.
"""

import json
import os
import sys

COLUMNS = ("run", "steps", "cache min", "train min", "Avg. J", "Avg. P",
           "partner mean abs dp", "partner dJ", "composite J", "wrong", "both",
           "mask IoU (2 partners)")


def _fmt(value, spec=".3f", scale=1.0):
  return "-" if value is None else format(value * scale, spec)


def row(label: str, record: dict) -> str:
  """The table row of one record."""
  res = record.get("results", {})
  co = res.get("coseg", {})
  other = res.get("partner", {}).get("replacements", {}).get("other_class", {})
  comp = res.get("composite", {})
  train = record.get("train_minutes")
  train = None if train is None else train - sum(
      p.get("eval_minutes", 0.0) for p in record.get("curve", []))
  cells = [label, str(record.get("final_step", "-")),
           _fmt(record.get("cache_minutes"), ".1f"), _fmt(train, ".1f"),
           _fmt(co.get("avg_J")), _fmt(co.get("avg_P")),
           _fmt(other.get("mean_abs_dprob")), _fmt(other.get("delta_J"), "+.3f"),
           _fmt(comp.get("conditional_J")),
           _fmt(comp.get("wrong_object_rate"), ".0%"),
           _fmt(comp.get("both_rate"), ".0%"),
           _fmt(comp.get("mask_iou_between_partners"))]
  return "| " + " | ".join(cells) + " |"


def references(record: dict) -> str:
  """A line with the reference maps' Avg. J of the ``coseg`` evaluator."""
  co = record.get("results", {}).get("coseg", {})
  refs = [f"{k.split('/', 1)[1].replace('_', ' ')} {v['avg_J']:.3f}"
          for k, v in co.items() if k.startswith("reference/")]
  return "Reference maps, Avg. J: " + ", ".join(refs) + "." if refs else ""


def main(argv):
  lines = ["| " + " | ".join(COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  first = None
  for arg in argv:
    label, workdir = arg.split("=", 1)
    path = os.path.join(workdir, "experiment.json")
    if not os.path.isfile(path):
      raise SystemExit(f"ERROR: no experiment.json in {workdir}")
    with open(path) as f:
      record = json.load(f)
    first = first or record
    lines.append(row(label, record))
  if first:
    lines += ["", references(first)]
  print("\n".join(lines))


if __name__ == "__main__":
  main(sys.argv[1:])
