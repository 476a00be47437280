r"""The results page's figures of a trained run: contact sheet and composites.

Draws, from the latest checkpoint of ``--workdir``, the evaluation groups'
contact sheet (image and overlaid mask, ``runtime.figures.write_figures``)
and, when the config has the ``composite`` evaluator, the composite figure
(one composite of two unseen-class objects, each partner, the mask predicted
with each; ``runtime.figures.composite_figure``) for ``--composites`` of
the seeded evaluation composites.

  python -m experiments.figures \
      --config configs/cyclesegnet_pascal_voc_coseg.py:disjoint \
      --workdir /tmp/exp/csn_disjoint --out docs/figures/cyclesegnet \
      --groups 4 --composites 0,1
"""

import os
import shutil
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import console
from coseg_jax.runtime import figures

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory with a checkpoint.")
flags.DEFINE_string("out", None, "Output prefix: <out>_groups.png and "
                    "<out>_composite<i>.png.")
flags.DEFINE_integer("groups", 4, "Evaluation groups on the contact sheet "
                     "(0: no contact sheet).")
flags.DEFINE_string("composites", "0", "Indices of the evaluation composites "
                    "to draw ('' for none).")


def main(argv):
  del argv
  console.setup()
  config = FLAGS.config
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  if FLAGS.groups > 0:
    with tempfile.TemporaryDirectory() as tmp:
      written = figures.write_figures(config=config, workdir=FLAGS.workdir,
                                      out_dir=tmp, num_groups=FLAGS.groups)
      sheet = FLAGS.out + "_groups.png"
      shutil.copy(next(p for p in written
                       if p.endswith("contact_sheet.png")), sheet)
    console.info(f"wrote {sheet}")
  indices = [int(s) for s in FLAGS.composites.split(",") if s]
  if indices and "composite" in tuple(config.eval.evaluators):
    model = models.get_method(config.method).build_model(config.model)
    variables, _ = checkpoint.load_apply_variables(FLAGS.workdir)
    for i in indices:
      path = figures.composite_figure(
          config=config, model=model, variables=variables,
          out_path=f"{FLAGS.out}_composite{i}.png", index=i,
          count=max(indices) + 1)
      console.info(f"wrote {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir", "out"])
  app.run(main)
