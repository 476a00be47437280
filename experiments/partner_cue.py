r"""How well can a frozen encoder's features tell which object the partner holds?

On the evaluation composites of a config (``coseg_jax.runtime.evaluators.
composite``: two objects of different classes, each case paired once with a
partner of either class), this measures, with no training, how often a
similarity cue computed from the frozen backbone gives the partner's object
a higher mean score than the other object: the share of correct choices,
and the mean score margin (target minus other). Cues, per backbone level:

* ``max``: ``coseg_jax.nn.partner_similarity`` (best centred cosine of each
  composite position over all partner positions), what a model can compute;
* ``oracle``: cosine of each composite position to the mean feature of the
  partner's ground-truth object (the partner's mask is not known at test
  time: an upper reference for a cue that first finds the partner's object).

A model can pick the right object only as often as some cue in its features
does, so these shares bound what partner-conditional training on a frozen
encoder can reach (the composite evaluator's wrong-object rate).

With ``--cutout`` it also scores the cue of ``coseg_jax.common_selection``
(row level ``cut-out``): each ground-truth object and the partner's
ground-truth object cut out on their own (``common_selection.cut_out``),
described by the encoder's ImageNet probabilities, and compared by
``same_class_probability``; the margin is then in probability, not cosine.
``--cutout_backbones`` names the classifiers that describe the cut-outs
(several: their probabilities are averaged) and ``--cutout_pad`` the
bounding-box growth, to find how far any frozen ImageNet classifier
installed here can take this cue.

  python -m experiments.partner_cue \
      --config configs/cyclesegnet_pascal_voc_coseg.py:disjoint \
      --levels stride8,stride16,stride32 --out /tmp/exp/partner_cue.json
"""

import json

from absl import app
from absl import flags
import cv2
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from coseg_jax import backbones
from coseg_jax import common_selection
from coseg_jax.nn import partner_similarity
from coseg_jax.runtime import console
from coseg_jax.runtime.evaluators import composite
from data_pipelines import augment
from data_pipelines import composites as composites_lib

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a script, so that
  importing the scoring helpers defines no absl flag)."""
  config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                  lock_config=True)
  flags.DEFINE_string("levels", "stride8,stride16,stride32",
                      "Backbone levels.")
  flags.DEFINE_integer("count", 100, "Composites (each with two partners).")
  flags.DEFINE_integer("batch_size", 20, "Images per encoder call.")
  flags.DEFINE_string("out", None, "Optional JSON output path.")
  flags.DEFINE_bool("cutout", False, "Also score the common-selection cue "
                    "on ground-truth cut-outs.")
  flags.DEFINE_list("cutout_backbones", [], "Classifiers describing the "
                    "cut-outs, probabilities averaged (default: the "
                    "config's backbone with its pretrained weights).")
  flags.DEFINE_float("cutout_pad", 0.1, "Bounding-box growth of the "
                     "cut-outs, a share of the box on each side.")
  flags.mark_flag_as_required("config")


def encoder(config):
  """(jitted images -> {level: features}) of the config's frozen encoder."""
  name = config.model.backbone
  kwargs = dict(config.model.get("backbone_kwargs", None) or {})
  module = backbones.get_backbone(name, **kwargs)
  path = config.init.pretrained.backbone.get("path", None) or None
  variables = backbones.load_pretrained(name, path,
                                        allow_removed_layers=True, **kwargs)
  return jax.jit(lambda x: module.apply(variables, x, train=False).features)


def object_mask(class_map):
  """Foreground of a record's class map (0 background, 255 ignore)."""
  return ((class_map > 0) & (class_map != composites_lib.IGNORE)).astype(
      np.float32)


def cue_scores(composite_feats, partner_feats, partner_mask):
  """{cue: [h, w] score} for one composite level map [h, w, C] and its
  partner's [h', w', C] with the partner's object mask [h', w']."""
  pair = np.stack([composite_feats, partner_feats])[None]
  s_max = np.asarray(partner_similarity.partner_similarity(
      jnp.asarray(pair)))[0, 0, ..., 0]
  c = composite_feats.shape[-1]
  f = partner_feats.reshape(-1, c)
  m = partner_mask.reshape(-1)
  proto = (f * m[:, None]).sum(0) / max(m.sum(), 1e-6)
  unit = composite_feats / (np.linalg.norm(composite_feats, axis=-1,
                                           keepdims=True) + 1e-6)
  s_oracle = unit @ (proto / (np.linalg.norm(proto) + 1e-6))
  return {"max": s_max, "oracle": s_oracle}


def cutout_choice(describe, canvas, class_map, target, other, partner,
                  partner_mask, *, pad: float = 0.1, size: int = 224):
  """(right choice?, margin) of the common-selection cue on one case:
  the target and the other object (class map labels ``target``/``other``)
  cut out of ``canvas``, the partner's object (``partner_mask``) out of
  ``partner``, scored by ``same_class_probability``."""
  crops = np.stack([
      common_selection.cut_out(canvas, class_map == target, pad=pad,
                               size=size),
      common_selection.cut_out(canvas, class_map == other, pad=pad,
                               size=size),
      common_selection.cut_out(partner, partner_mask > 0.5, pad=pad,
                               size=size)])
  q = describe(crops)
  on_t = float(common_selection.same_class_probability(q[0], q[2]))
  on_o = float(common_selection.same_class_probability(q[1], q[2]))
  return on_t > on_o, on_t - on_o


def cutout_describer(config, backbones_: list):
  """Cut-outs [N, S, S, 3] -> [N, 1000]: the mean ImageNet probabilities of
  ``backbones_`` (the installed packages' weights), or of the config's
  backbone and checkpoint when the list is empty."""
  # One call per case holds exactly its three cut-outs: a batch of 3
  # compiles once and pads nothing (the default 16 would pad 13).
  if not backbones_:
    return common_selection.make_describer(
        config.model.backbone,
        config.init.pretrained.backbone.get("path", None) or None,
        batch_size=3)
  describers = [common_selection.make_describer(name, batch_size=3)
                for name in backbones_]
  return lambda crops: np.mean([d(crops) for d in describers], axis=0)


def main(argv):
  del argv
  console.setup(None)
  config = FLAGS.config
  levels = FLAGS.levels.split(",")
  cases, scenes, data = composite.composite_cases(config, count=FLAGS.count)
  s = data.image_size
  size = (s, s) if isinstance(s, int) else tuple(s)
  resize = data.get("resize", "stretch")
  # One canvas per composite (encoded once), two partners each: case i
  # pairs canvas i // 2 with partner i.
  canvases, class_maps, partners, partner_masks, targets = [], [], [], [], []
  for spec, pa, pb in cases:
    canvas, class_map = composites_lib.render(spec, scenes.record, size=size)
    canvases.append(canvas.astype(np.float32) / 255.0)
    class_maps.append(class_map)
    for t, p in ((0, pa), (1, pb)):
      image, class_p = scenes.record(p)
      partner, _ = augment.preprocess_image(image, image_size=size,
                                            resize=resize)
      partners.append(partner)
      partner_masks.append(cv2.resize(object_mask(class_p), size[::-1],
                                      interpolation=cv2.INTER_AREA))
      targets.append((spec.classes[t] + 1, spec.classes[1 - t] + 1))
  encode = encoder(config)

  def features(images):
    out = {}
    for i in range(0, len(images), FLAGS.batch_size):
      f = encode(jnp.asarray(np.stack(images[i:i + FLAGS.batch_size])))
      for level in levels:
        out.setdefault(level, []).append(np.asarray(f[level], np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}

  fc, fp = features(canvases), features(partners)
  rows = []
  for level in levels:
    correct, margins = {}, {}
    for i, (target, other) in enumerate(targets):
      h, w = fp[level].shape[1:3]
      mask = cv2.resize(partner_masks[i], (w, h),
                        interpolation=cv2.INTER_AREA)
      class_map = class_maps[i // 2]
      for cue, score in cue_scores(fc[level][i // 2], fp[level][i],
                                   mask).items():
        score = cv2.resize(score.astype(np.float32), size[::-1],
                           interpolation=cv2.INTER_LINEAR)
        on_t = score[class_map == target].mean()
        on_o = score[class_map == other].mean()
        correct.setdefault(cue, []).append(bool(on_t > on_o))
        margins.setdefault(cue, []).append(float(on_t - on_o))
    for cue in correct:
      rows.append({"level": level, "cue": cue,
                   "correct": float(np.mean(correct[cue])),
                   "margin": float(np.mean(margins[cue])),
                   "cases": len(correct[cue])})
  if FLAGS.cutout:
    describe = cutout_describer(config, FLAGS.cutout_backbones)
    choices = [cutout_choice(describe, canvases[i // 2], class_maps[i // 2],
                             target, other, partners[i], partner_masks[i],
                             pad=FLAGS.cutout_pad)
               for i, (target, other) in enumerate(targets)]
    names = "+".join(FLAGS.cutout_backbones or [config.model.backbone])
    rows.append({"level": f"cut-out ({names}, pad {FLAGS.cutout_pad:g})",
                 "cue": "same class",
                 "correct": float(np.mean([c for c, _ in choices])),
                 "margin": float(np.mean([m for _, m in choices])),
                 "cases": len(choices)})
  lines = ["| level | cue | partner's object scores higher | mean margin |",
           "|---|---|---|---|"]
  lines += [f"| {r['level']} | {r['cue']} | {100 * r['correct']:.0f}% | "
            f"{r['margin']:.3f} |" for r in rows]
  console.info(f"{len(targets)} composite x partner cases\n" +
               "\n".join(lines))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"rows": rows, "composites": len(cases)}, f, indent=1)
    console.info(f"written {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
