r"""Group evaluation of a trained model: strategies a-d x tuple sizes k.

CycleSegNet's Table 5 on another data set: the checkpoint of ``--workdir``
is evaluated with every strategy of ``--strategies`` (Sec. 4.3, see
``data_pipelines.samplers.group_strategy``) and tuple size of ``--sizes``,
all on the same ``--images_per_class`` images of each evaluation class, plus
the pairs evaluation of those images for reference. Writes
``<workdir>/group_strategies.json`` and prints a Markdown table (Avg. J over
classes per strategy and k).

  python -m experiments.group_strategies \
      --config configs/cyclesegnet_pascal_voc_coseg.py:disjoint \
      --workdir /tmp/exp/csn_disjoint --images_per_class 12 \
      --strategies a,b,c,d --sizes 2,3,4,5
"""

import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import console
from coseg_jax.runtime.evaluators import coseg

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory with a checkpoint.")
flags.DEFINE_string("strategies", "a,b,c,d", "Group strategies.")
flags.DEFINE_string("sizes", "2,3,4,5", "Tuple sizes k.")
flags.DEFINE_integer("images_per_class", 12, "Images per class (seeded).")


def main(argv):
  del argv
  console.setup(None)
  config = FLAGS.config
  model = models.get_method(config.method).build_model(config.model)
  variables, step = checkpoint.load_apply_variables(FLAGS.workdir)
  rows = []
  cells = [("pairs", 2)] + [(s, int(k)) for s in FLAGS.strategies.split(",")
                            for k in FLAGS.sizes.split(",")]
  for strategy, k in cells:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.eval.strategy = strategy
      c.eval.group_size = k
      c.eval.images_per_class = int(FLAGS.images_per_class)
      c.eval.max_groups = -1
    t = time.time()
    res = coseg.evaluate(config=c, model=model, variables=variables)
    rows.append({"strategy": strategy, "k": k, "avg_J": res["avg_J"],
                 "avg_P": res["avg_P"], "num_groups": res["num_groups"],
                 "minutes": (time.time() - t) / 60})
    console.info(f"{strategy} k={k}: Avg. J {res['avg_J']:.3f} "
                 f"({res['num_groups']} tuples, {rows[-1]['minutes']:.1f} "
                 f"min)")
  out = {"step": step, "images_per_class": int(FLAGS.images_per_class),
         "rows": rows}
  path = os.path.join(FLAGS.workdir, "group_strategies.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  sizes = [int(k) for k in FLAGS.sizes.split(",")]
  lines = ["| strategy | " + " | ".join(f"k = {k}" for k in sizes) + " |",
           "|---" * (len(sizes) + 1) + "|"]
  for s in FLAGS.strategies.split(","):
    cells = {r["k"]: r for r in rows if r["strategy"] == s}
    lines.append(f"| {s} | " + " | ".join(
        f"{cells[k]['avg_J']:.3f}" for k in sizes) + " |")
  pairs = rows[0]
  lines.append(f"\npairs (every pair of the same images): Avg. J "
               f"{pairs['avg_J']:.3f}")
  console.info("\n".join(lines))
  console.info(f"written {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
