"""Figures of a trained model on held-out groups (the demo's picture).

:func:`write_figures` co-segments ``num_groups`` evaluation groups of
``config.eval.split`` (round-robin over the classes, ``config.eval``'s
strategy and group size) and writes, at the model's input resolution, for
member k of group i:

* ``group<i>_<k>_mask.png`` (0/255) and ``group<i>_<k>_overlay.png``;
* whatever the method's figure hook adds (CycleSegNet:
  ``group<i>_<k>_steps.png``, the foreground probability after every
  refinement step);

and a ``contact_sheet.png`` of every image next to its overlay. Method hooks
live here, outside the model files: ``FIGURE_HOOKS[method](config, model,
variables, images [K, H, W, 3]) -> {suffix: [K] uint8 images}``.

:func:`composite_figure` draws what the partner decides: one evaluation
composite (two objects of different classes), co-segmented once with a
partner of each class (``coseg_jax.runtime.evaluators.composite``).
"""

import os
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np
from PIL import Image

from coseg_jax import models
from coseg_jax.runtime import checkpoint as ckpt_lib
from coseg_jax.runtime import steps
from coseg_jax.runtime import viz
from coseg_jax.runtime.evaluators import common
from coseg_jax.runtime.evaluators import composite
from coseg_jax.runtime.evaluators import coseg
from data_pipelines import augment
from data_pipelines import pipeline

FigureHook = Callable[..., Dict[str, List[np.ndarray]]]


def cyclesegnet_steps(config, model, variables, images: np.ndarray
                      ) -> Dict[str, List[np.ndarray]]:
  """CycleSegNet: the probability after every refinement step, as strips."""
  del config
  per_step = model.clone(decode_all_steps=True)
  logits = jax.jit(lambda v, x: per_step.apply(v, x, train=False).step_logits)(
      variables, images[None])
  steps_k = np.asarray(logits)[:, 0]  # [T, K, H, W, 1]
  return {"steps": [viz.step_strip(steps_k[:, k], image=images[k])
                    for k in range(images.shape[0])]}


FIGURE_HOOKS: Dict[str, FigureHook] = {"cyclesegnet": cyclesegnet_steps}


def _variables(result, workdir: str):
  if hasattr(result, "variables"):
    return jax.device_get(result.variables())
  variables, _ = ckpt_lib.load_apply_variables(workdir)
  return variables


def write_figures(*, config, workdir: str, out_dir: str, num_groups: int = 4,
                  result: Any = None, split: Optional[str] = None
                  ) -> List[str]:
  """Writes the figures (module docstring); returns the written paths.

  Args:
    config: the run's config.
    workdir: the run directory (its latest checkpoint is used when
      ``result`` carries no variables).
    out_dir: output folder (created).
    num_groups: groups to draw.
    result: the trainer's result (a train state) or None.
    split: default ``config.eval.split``.
  """
  if num_groups < 1:
    raise ValueError(f"write_figures: num_groups must be >= 1, got "
                     f"{num_groups}")
  split = split or config.eval.split
  data = common.eval_data_config(config)
  model = models.get_method(config.method).build_model(config.model)
  variables = _variables(result, workdir)
  tuples = pipeline.eval_groups(data, split=split,
                                strategy=config.eval.strategy,
                                k=int(config.eval.group_size), seed=0)
  groups, _, _, _ = coseg.select_groups(tuples, num_groups)
  source = pipeline.load_source(data, split)
  # Through make_predict_batch, so the figures show what eval and predict
  # score (with eval.common_selection when the config enables it).
  predict_batch = steps.make_predict_batch(config=config, model=model,
                                           variables=variables)
  hook = FIGURE_HOOKS.get(config.method)
  binarize = common.binarizer(config.eval)
  os.makedirs(out_dir, exist_ok=True)
  written, sheet = [], []
  for gi, group in enumerate(groups):
    images = np.stack([augment.preprocess_image(
        source[i]["image"], image_size=data.image_size,
        resize=data.get("resize", "stretch"))[0] for i in group])
    probs = predict_batch(images[None])[0, ..., 0]
    extra = hook(config, model, variables, images) if hook else {}
    for k in range(len(group)):
      mask = np.asarray(binarize(images[k], probs[k]), bool)
      base = os.path.join(out_dir, f"group{gi}_{k}")
      over = viz.overlay(images[k], mask)
      panels = {"mask": (mask * 255).astype(np.uint8), "overlay": over}
      panels.update({name: tiles[k] for name, tiles in extra.items()})
      for suffix, arr in panels.items():
        Image.fromarray(arr).save(f"{base}_{suffix}.png")
        written.append(f"{base}_{suffix}.png")
      sheet += [viz.to_uint8_image(images[k]), over]
  path = os.path.join(out_dir, "contact_sheet.png")
  Image.fromarray(viz.contact_sheet(sheet, columns=2 * len(groups[0]))).save(
      path)
  written.append(path)
  return written


def composite_figure(*, config, model, variables, out_path: str,
                     index: int = 0, count: int = 8) -> str:
  """One row: the composite, then for each of its two classes the partner
  and the mask predicted with it (overlaid on the composite).

  Args:
    config, model, variables: the trained run.
    out_path: PNG to write.
    index: which of the first ``count`` evaluation composites to draw.
    count: composites drawn (seeded, ``config.eval.seed``).

  Returns:
    ``out_path``.
  """
  cases, scenes, data = composite.composite_cases(config, count=count)
  items = composite.predictions(config=config, model=model,
                                variables=variables, cases=[cases[index]],
                                scenes=scenes, data=data)
  binarize = common.binarizer(config.eval)
  tiles, labels = [items[0]["canvas"]], ["composite"]
  for it in items:
    cls = scenes.class_names[it["spec"].classes[it["target"]]]
    mask = binarize(it["canvas"], it["prob"])
    tiles += [viz.to_uint8_image(it["partner"]),
              viz.overlay(it["canvas"], mask)]
    labels += [f"partner: {cls}", f"mask given {cls}"]
  sheet = viz.contact_sheet(tiles, columns=len(tiles), labels=labels)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  Image.fromarray(sheet).save(out_path)
  return out_path
