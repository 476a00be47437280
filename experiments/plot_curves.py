r"""Plot Avg. J against training minutes from ``experiment.json`` records.

  python -m experiments.plot_curves --out docs/figures/curve.png \
      --title "CycleSegNet, class-disjoint PASCAL-VOC (unseen classes)" \
      cached=/tmp/exp/csn_cached live=/tmp/exp/csn_live

Each ``label=workdir`` argument is one line. The x axis is the run's wall
time spent training (feature-cache build included, the learning curve's own
evaluations excluded); the first point of a cached run sits after its cache
build.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def training_minutes(curve):
  """x of each curve point: minutes since the start minus the minutes of
  the earlier curve evaluations."""
  out, spent = [], 0.0
  for point in curve:
    out.append(point["minutes"] - spent)
    spent += point.get("eval_minutes", 0.0)
  return out


def main(argv):
  out, title, runs = None, "", []
  for arg in argv:
    if arg.startswith("--out="):
      out = arg.split("=", 1)[1]
    elif arg.startswith("--title="):
      title = arg.split("=", 1)[1]
    elif "=" in arg:
      label, workdir = arg.split("=", 1)
      runs.append((label, workdir))
    else:
      raise SystemExit(f"unknown argument {arg!r}: expected --out=PATH, "
                       f"--title=TEXT or label=workdir")
  if not out or not runs:
    raise SystemExit("usage: plot_curves --out=PATH label=workdir ...")
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, workdir in runs:
    with open(os.path.join(workdir, "experiment.json")) as f:
      record = json.load(f)
    curve = [p for p in record["curve"] if "avg_J" in p]
    if not curve:
      raise SystemExit(f"{workdir}: no learning curve (run with "
                       f"--curve_every)")
    ax.plot(training_minutes(curve), [p["avg_J"] for p in curve], "o-",
            label=label)
  ax.set_xlabel("training wall time (minutes)")
  ax.set_ylabel("Avg. J")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  print(f"written {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
