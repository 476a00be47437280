"""Per-collection, two-stage training of the co-attention CNN (Hsu et al. 2018).

The method is unsupervised and transductive: a fresh generator is trained on
each collection (the images of one class) and its co-attention maps on those
same images are the result. ``train_collections(config, workdir)`` (what
``python -m coseg_jax.main --mode train`` calls for ``method='coattention'``)
runs, for one collection or for every class of a dataset in turn:

1. the collection's images at the model input size (``config.data.
   image_size``, ``config.data.resize``), as uint8 for the proposals;
2. unsupervised object proposals (``coseg_jax.proposals``), computed once and
   cached in ``<workdir>/proposals/<class>.npz``;
3. stage 1: ``config.coattention.stage1_epochs`` epochs with the co-attention
   loss only (paper: 20); stage 2: ``stage2_epochs`` epochs (paper: 40) with
   the mask loss of eq. 7 weighted by ``mask_weight`` (paper lambda = 9).
   With ``config.coattention.target = 'paper'`` (Sec. 3.3): at the end of
   stage 1 the proposal closest to each stage-1 map S~, M~ = argmin_O
   ||S~ - O||^2 (a single proposal, ``fixed_multi_object=False``), is picked
   once and kept for all of stage 2; at the start of every stage-2 epoch M is
   re-selected from the current maps (iterative multi-object merge by
   default); the target beta M~ + (1 - beta) M carries no gradient. With
   ``'self_bootstrap'`` (the earlier form) there is no M~: the target is
   beta M + (1 - beta) S;
4. the final maps S, restored to each image's original size, binarised by
   every method of ``config.coattention.postprocess_eval`` (threshold / Otsu /
   dense CRF / GrabCut, ``coseg_jax.postprocess``) and scored against the
   ground truth when the records have masks (P and J per image, Avg. over the
   class); the initial maps and the stage-1 maps (co-attention loss only,
   ``stage1_epochs``) are scored too (0.5 threshold), and so is the
   all-foreground map (``reference/all_foreground``: J = the foreground
   share, the floor any useful map must beat); with
   ``config.coattention.also_without_mask_loss`` a second model is trained
   on the collection with the mask weight 0 for the whole schedule (the
   "w/o l_m" ablation of Table 1 and Sec. 4.2, scored as
   ``nomask/<method>``); the selections M (last epoch) and M~ are scored as
   ``object_masks/selected`` and ``fixed_masks/selected``;
5. masks of the primary ``config.coattention.postprocess`` method written to
   ``<workdir>/masks/<class>/<image_id>.png`` (0/255, original size) and the
   figures to ``<workdir>/results/<class>.json``; a class whose results file
   exists is skipped, so an interrupted run resumes per collection. All
   classes are summarised in ``<workdir>/results.json``.

Mini-batches: an epoch visits the collection in a random order in
mini-batches of ``batch_size`` images (every ordered pair inside a
mini-batch enters the co-attention loss); the last mini-batch is topped up
with images from the start of the epoch's order so that every step has the
same shape (one compilation). With N <= batch_size, every step is the whole
collection (exactly the paper's "all pairs").

Stage 2 epochs may pass ``config.coattention.stage2_passes_per_epoch`` times
over the collection between two selections: the paper's epoch is many
updates, ours as few as one, and a selection re-made after every update
chases the drifting map instead of pulling it (on the synthetic collection,
re-selecting every update collapses S to 0; every 20 updates reaches J 0.79).

Optimiser: Adam (``config.optimizer``, via
``coseg_jax.runtime.optimizer.make_optimizer``; f's rate, when it is learned,
through ``optimizer.lr_multipliers['extractor_net']``). Initial weights come
from ``config.init.pretrained`` (``'generator/backbone'`` and
``'extractor_net'``), applied by ``coseg_jax.runtime.state``.
The paper (Sec. 3.5) trains with a fixed rate of 1e-6, weight decay 5e-4 and
momentum 0.9 (Adam's beta1), batch 5; the paper config uses these. Adam
normalises the gradient by its running RMS, so a constant rescaling of the
whole loss leaves its steps unchanged (up to eps): what the reductions change
is the balance of the two terms (``reduction``, ``mask_pixel_reduction``).
Our measured runs use larger rates (3e-4 in the 'cpu' variant, 1e-3 on the
synthetic collection) because they take far fewer updates; with them the
stage-1 length is a number of updates, not the paper's 20 epochs: on the
synthetic collection J peaks after about 4 stage-1 updates at 1e-3 and S
then drifts to the trivial S = 0.
"""

import functools
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from coseg_jax import losses as losses_lib
from coseg_jax import metrics
from coseg_jax import models
from coseg_jax import postprocess
from coseg_jax import proposals as proposals_lib
from coseg_jax.models import coattention as model_lib
from coseg_jax.runtime import console
from coseg_jax.runtime import optimizer as optimizer_lib
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import steps as steps_lib
from data_pipelines import augment
from data_pipelines import pipeline

# ---------------------------------------------------------------------------
# Collections.


class Collection:
  """The images of one class.

  Attributes:
    name: class name.
    images: list of uint8 [H_i, W_i, 3] original images.
    masks: list of uint8 [H_i, W_i] ground truth (0/1, 255 ignore) or None.
    image_ids: list of str.
  """

  def __init__(self, name: str, images: List[np.ndarray],
               masks: Optional[List[np.ndarray]], image_ids: List[str]):
    if len(images) < 2:
      raise ValueError(f"collection {name!r} needs at least 2 images, got "
                       f"{len(images)}")
    self.name, self.images, self.masks, self.image_ids = (name, images, masks,
                                                          image_ids)

  def __len__(self):
    return len(self.images)


def load_collections(config) -> List[Collection]:
  """Collections (one per class) of ``config.data``'s training split.

  ``config.data.classes`` / ``exclude_classes`` select classes and
  ``config.coattention.max_images`` (> 0) caps the images per collection
  (first ones by record order).
  """
  split = config.data.get("train_split", "train")
  source = pipeline.load_source(config.data, split)
  index = pipeline.record_index_of(source, config.data)
  cap = int(config.coattention.get("max_images", -1) or -1)
  out = []
  for c, name in enumerate(index.class_names):
    members = np.flatnonzero(index.membership[:, c])
    if cap > 0:
      members = members[:cap]
    if members.size < 2:
      continue
    images, masks, ids = [], [], []
    for r in members:
      rec = source[int(r)]
      images.append(np.asarray(rec["image"]))
      if "mask" in rec:
        m = np.asarray(rec["mask"])
        masks.append(m[..., 0] if m.ndim == 3 else m)
      raw_id = rec.get("image_id", str(int(r)))
      ids.append(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id))
    out.append(Collection(name, images, masks if masks else None, ids))
  if not out:
    raise ValueError(f"no class of {config.data.name!r} has 2 or more images "
                     "after data.classes / exclude_classes")
  return out


# ---------------------------------------------------------------------------
# Training.


def _batches(n: int, batch: int, rng: np.random.RandomState):
  """Index arrays of one epoch: a permutation cut into equal-size batches."""
  order = rng.permutation(n)
  steps = -(-n // batch)
  padded = np.concatenate([order, order[:steps * batch - n]])
  return padded.reshape(steps, batch)


def _staged_loss(*, outputs, batch, loss_config, beta, squared, reduction,
                 mask_pixel_reduction="mean", target="paper"):
  """The method's loss with the mask weight read from the batch.

  One compiled step serves both stages: ``batch['mask_weight']`` (a float32
  scalar; 0 in stage 1, lambda in stage 2) is a traced weight, which
  ``compute_total_loss`` handles with ``jnp.where`` (the mask loss of logits
  is finite, so no NaN can leak through a zero weight).
  """
  del loss_config
  return model_lib.loss_fn(
      outputs=outputs, batch=batch, beta=beta, squared=squared,
      reduction=reduction, mask_pixel_reduction=mask_pixel_reduction,
      target=target,
      loss_config={"coattention": 1.0,
                   "coattention_mask": batch["mask_weight"]})


def staged_loss_fn(config):
  """The method's loss for :func:`steps.make_train_step`, stage-aware."""
  cfg = config.coattention
  return functools.partial(
      _staged_loss, beta=float(cfg.beta), squared=bool(cfg.squared_distance),
      reduction=str(cfg.reduction),
      mask_pixel_reduction=str(cfg.get("mask_pixel_reduction", "mean")),
      target=str(cfg.get("target", "paper")))


def _with_schedule_length(config, num_steps: int):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.train.num_steps = int(num_steps)
  return c


def build_program(config, *, mesh=None, group: Optional[int] = None,
                  size=None, num_steps: Optional[int] = None
                  ) -> steps_lib.TrainProgram:
  """The per-collection state and step (one device: a collection is small).

  Args:
    config: the full config.
    mesh: unused (the collection trainer runs on one device); accepted for
      the trainer interface.
    group: images per step (default ``config.coattention.batch_size``).
    size: (H, W) model input (default ``config.data.image_size``).
    num_steps: schedule length in updates (default ``config.train.num_steps``).

  Returns:
    A ``TrainProgram`` whose step takes ``{'images' [1, group, H, W, 3],
    'object_masks' [1, group, H, W, 1] (M), 'fixed_masks' [1, group, H, W,
    1] (M~), 'mask_weight' float32 scalar}``.
  """
  del mesh
  group = int(group or config.coattention.batch_size)
  image_size = config.data.image_size
  size = tuple(size or ((image_size, image_size) if isinstance(
      image_size, int) else image_size))
  if num_steps is not None:
    config = _with_schedule_length(config, num_steps)
  spec_model = model_lib.build_model(config.model)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer,
                                              int(config.train.num_steps))
  state, _ = state_lib.create_train_state(
      config, spec_model, tx=tx, sample_shape=(1, group, size[0], size[1], 3))
  frozen = optimizer_lib.frozen_paths(config.optimizer)
  thawed = optimizer_lib.thawed_paths(config.optimizer)
  step = steps_lib.make_train_step(
      model=spec_model, loss_fn=staged_loss_fn(config),
      loss_config={"coattention": 1.0, "coattention_mask": 0.0},
      frozen=frozen, thawed=thawed,
      ema_decay=state_lib.ema_decay_of(config))
  return steps_lib.TrainProgram(
      config=config, spec=models.get_method(config.method), model=spec_model,
      mesh=None, state=state, shardings=None, train_step=step,
      schedule=schedule, frozen=frozen, thawed=thawed,
      example_extras={"mask_weight": np.float32(
          config.coattention.mask_weight)})


class CollectionTrainer:
  """Model, optimiser and compiled functions shared by all collections.

  Compiling the step of a Lite0 generator + extractor takes minutes on a
  small CPU, so the jitted step and map predictor are built once per
  (group size, input size) and every collection starts from a copy of the
  same initial (pretrained) variables.

  Attributes:
    config: the full config.
    group: images per step.
    size: (H, W) model input size.
    steps_per_epoch: the optimiser schedule is defined over
      ``(stage1 + stage2) * steps_per_epoch`` updates.
  """

  def __init__(self, config, *, group: int, size, steps_per_epoch: int):
    self.config, self.group, self.size = config, int(group), tuple(size)
    cfg = config.coattention
    epochs = int(cfg.stage1_epochs) + int(cfg.stage2_epochs)
    program = build_program(config, group=self.group, size=self.size,
                            num_steps=max(epochs * steps_per_epoch, 1))
    self.model, self.step = program.model, program.train_step
    state = program.state
    self.tx = state.tx
    # Host copies: the step donates its state, these stay untouched.
    self._init = jax.device_get((state.params, state.batch_stats, state.rng))
    model = self.model

    @jax.jit
    def run(variables, images):
      logits = model.apply(variables, images[None], train=False,
                           method=model_lib.CoattentionNet.attention_logits)
      return jax.nn.sigmoid(logits[0])

    self._predict = run

  def fresh_state(self) -> state_lib.TrainState:
    """A new TrainState from the initial variables (new device buffers)."""
    params, batch_stats, rng = jax.tree.map(jnp.array, self._init)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=self.tx.init(params), rng=rng, tx=self.tx,
        ema_params=state_lib.initial_ema(self.config, params))

  def predict(self, variables, images: np.ndarray) -> np.ndarray:
    """Maps S float32 [N, H, W] for images [N, H, W, 3], a group at a time."""
    out = []
    chunk = self.group
    for s in range(0, len(images), chunk):
      part = images[s:s + chunk]
      pad = chunk - len(part)
      if pad:
        part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
      out.append(np.asarray(self._predict(variables,
                                          jnp.asarray(part)))[:chunk - pad])
    return np.concatenate(out)[..., 0]


_TRAINERS: Dict[Any, CollectionTrainer] = {}


def get_trainer(config, *, group: int, size, steps_per_epoch: int
                ) -> CollectionTrainer:
  """A cached :class:`CollectionTrainer` for this config and shape."""
  # A constant learning rate (the paper's) does not depend on the schedule
  # length, so collections of any size share the compiled step; other
  # schedules get one trainer per length.
  constant = config.optimizer.get("schedule", "constant") == "constant"
  key = (config.to_json(), int(group), tuple(size),
         0 if constant else int(steps_per_epoch))
  if key not in _TRAINERS:
    _TRAINERS.clear()  # one at a time: each holds compiled executables
    _TRAINERS[key] = CollectionTrainer(config, group=group, size=size,
                                       steps_per_epoch=steps_per_epoch)
  return _TRAINERS[key]


def train_on_images(config, images: np.ndarray,
                    proposals: Optional[Sequence[np.ndarray]] = None, *,
                    log=None, mask_weight: Optional[float] = None
                    ) -> Dict[str, Any]:
  """Trains a fresh model on one collection of preprocessed images.

  Args:
    config: the full config (``model``, ``optimizer``, ``train.seed``,
      ``coattention``).
    images: float32 [N, H, W, 3] in [0, 1] at the model input size.
    proposals: N bool arrays [P_i, H, W] (needed when stage 2 has epochs
      and a non-zero mask weight).
    log: optional callable(str).
    mask_weight: overrides ``config.coattention.mask_weight`` (0: the
      w/o-mask-loss ablation) while reusing the same compiled step.

  Returns:
    dict with 'initial', 'stage1', 'final' maps (float32 [N, H, W]), 'losses'
    (list of per-step metric dicts), 'object_masks' (M of the last stage-2
    epoch, bool [N, H, W], or None), 'fixed_masks' (M~, picked once from the
    stage-1 maps with ``target='paper'``, or None), 'state' (the final
    TrainState) and timings.
  """
  cfg = config.coattention
  n, h, w, _ = images.shape
  group = min(int(cfg.batch_size), n)
  stage1, stage2 = int(cfg.stage1_epochs), int(cfg.stage2_epochs)
  mask_weight = float(cfg.mask_weight if mask_weight is None
                      else mask_weight)
  target = str(cfg.get("target", "paper"))
  if target not in losses_lib.coattention.MASK_TARGETS:
    raise ValueError(f"config.coattention.target must be one of "
                     f"{losses_lib.coattention.MASK_TARGETS}, got {target!r}")
  use_masks = stage2 > 0 and mask_weight > 0
  if use_masks and proposals is None:
    raise ValueError("stage 2 with a mask loss needs proposals")
  # The schedule length is set by the configured batch size, so collections
  # of different sizes share one compiled step when N >= batch_size.
  stage2_passes = max(int(cfg.get("stage2_passes_per_epoch", 1) or 1), 1)
  # Schedule length in updates (per "epoch" of the whole run).
  trainer = get_trainer(
      config, group=group, size=(h, w),
      steps_per_epoch=-(-n // group) * -(-(stage1 + stage2 * stage2_passes)
                                         // max(stage1 + stage2, 1)))
  state = trainer.fresh_state()
  rng = np.random.RandomState(int(config.train.seed))
  select_kw = dict(multi_object=bool(cfg.multi_object),
                   max_objects=int(cfg.max_objects),
                   overlap=float(cfg.overlap),
                   target=str(cfg.get("selection_target", "raw")))
  # M~ = argmin_O ||S~ - O||^2 (Sec. 3.3): one proposal, the refinement is
  # described for M only.
  fixed_kw = dict(select_kw,
                  multi_object=bool(cfg.get("fixed_multi_object", False)))
  out = {"losses": [], "object_masks": None, "fixed_masks": None}
  out["initial"] = trainer.predict(state.variables(), images)
  out["stage1"] = out["initial"]
  t0 = time.time()
  select_time = 0.0
  no_masks = np.zeros((n, h, w), bool)
  for epoch in range(stage1 + stage2):
    in_stage2 = epoch >= stage1
    masks, fixed, weight = no_masks, no_masks, 0.0
    if in_stage2 and use_masks:
      ts = time.time()
      current = trainer.predict(state.variables(), images)
      if target == "paper":
        if out["fixed_masks"] is None:
          # The first stage-2 epoch starts from the stage-1 maps S~: M~ is
          # picked here, once, and kept for the rest of stage 2.
          out["fixed_masks"] = proposals_lib.select_collection(
              current, proposals, **fixed_kw)
        fixed = out["fixed_masks"]
      masks = proposals_lib.select_collection(current, proposals, **select_kw)
      out["object_masks"] = masks
      weight = mask_weight
      select_time += time.time() - ts
    passes = stage2_passes if in_stage2 else 1
    for idx in np.concatenate([_batches(n, group, rng)
                               for _ in range(passes)]):
      batch = {"images": jnp.asarray(images[idx][None]),
               "object_masks": jnp.asarray(
                   masks[idx][None, ..., None].astype(np.float32)),
               "fixed_masks": jnp.asarray(
                   fixed[idx][None, ..., None].astype(np.float32)),
               "mask_weight": jnp.float32(weight)}
      state, metrics = trainer.step(state, batch)
      out["losses"].append({k: float(v) for k, v in
                            jax.device_get(metrics).items()})
    last = out["losses"][-1]
    if not last["finite"]:
      raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}")
    if log is not None:
      log(f"epoch {epoch + 1}/{stage1 + stage2} "
          f"{'stage2' if in_stage2 else 'stage1'} loss {last['loss']:.4f} "
          + " ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in last.items()
                     if k.startswith("loss_terms/")))
    if epoch + 1 == stage1:
      out["stage1"] = trainer.predict(state.variables(), images)
  out["final"] = trainer.predict(state.variables(), images)
  out["state"] = state
  out["train_seconds"] = time.time() - t0
  out["select_seconds"] = select_time
  return out


# ---------------------------------------------------------------------------
# Scoring and writing.


def binarize_maps(maps: np.ndarray, infos, collection: Collection,
                  method: str, at_input_size: bool, inputs_u8,
                  postprocess_kwargs=None) -> List[np.ndarray]:
  """bool masks at each image's original size from maps [N, h, w].

  ``at_input_size``: binarise at the model input (with the resized image)
  and resize the mask, else resize the map and binarise at original size
  (with the original image).
  """
  kw = dict(postprocess_kwargs or {}).get(method, {})
  out = []
  for i, prob in enumerate(maps):
    if at_input_size:
      small = postprocess.binarize(method, inputs_u8[i], prob, **kw)
      out.append(augment.restore_prediction(small.astype(np.float32),
                                            infos[i]) >= 0.5)
    else:
      full = np.clip(augment.restore_prediction(prob, infos[i]), 0.0, 1.0)
      out.append(postprocess.binarize(method, collection.images[i], full,
                                      **kw))
  return out


def _scores(masks: Sequence[np.ndarray], collection: Collection
            ) -> List[Dict[str, float]]:
  return [metrics.score_mask(pred=m, gt=gt)
          for m, gt in zip(masks, collection.masks)]


def run_collection(config, collection: Collection, workdir: str,
                   log=None) -> Dict[str, Any]:
  """Proposals, training, scoring and mask writing for one collection.

  Returns:
    A JSON-able summary: timings, step count, the final loss and, when the
    collection has ground truth, ``image_scores``: {variant: per-image
    ``metrics.score_mask`` dicts} for the initial, stage-1 and final maps
    under each post-processing, the selected proposals, the all-foreground
    reference and (with ``also_without_mask_loss``) the ablation.
  """
  cfg = config.coattention
  t_start = time.time()
  size = config.data.image_size
  prepped = [augment.preprocess_image(im, image_size=size,
                                      resize=config.data.resize)
             for im in collection.images]
  images = np.stack([p[0] for p in prepped]).astype(np.float32)
  infos = [p[1] for p in prepped]
  images_u8 = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  t0 = time.time()
  props = None
  if int(cfg.stage2_epochs) > 0 and float(cfg.mask_weight) > 0:
    pcfg = proposals_lib.config_from_dict(cfg.proposals.to_dict())
    props = proposals_lib.collection_proposals(
        images_u8, pcfg,
        cache_path=os.path.join(workdir, "proposals",
                                f"{collection.name}.npz"))
  proposal_seconds = time.time() - t0
  result = train_on_images(config, images, props, log=log)
  at_input = bool(cfg.postprocess_at_input_size)
  pp_kwargs = cfg.get("postprocess_kwargs", None)
  pp_kwargs = pp_kwargs.to_dict() if pp_kwargs is not None else {}
  binarize = functools.partial(binarize_maps, infos=infos,
                               collection=collection,
                               at_input_size=at_input, inputs_u8=images_u8,
                               postprocess_kwargs=pp_kwargs)
  summary: Dict[str, Any] = {
      "class": collection.name, "images": len(collection),
      "image_size": size,
      "proposals_per_image": (float(np.mean([len(p) for p in props]))
                              if props is not None else 0.0),
      "proposal_seconds": proposal_seconds,
      "train_seconds": result["train_seconds"],
      "select_seconds": result["select_seconds"],
      "steps": len(result["losses"]),
      "final_loss": result["losses"][-1] if result["losses"] else None,
  }
  t0 = time.time()
  if collection.masks is not None:
    scores = {}
    for tag in ("initial", "stage1"):
      scores[f"{tag}/threshold"] = _scores(
          binarize(result[tag], method="threshold"), collection)
    for method in cfg.postprocess_eval:
      scores[f"final/{method}"] = _scores(
          binarize(result["final"], method=method), collection)
    for key in ("object_masks", "fixed_masks"):
      if result[key] is not None:  # M (last epoch) and M~ (after stage 1)
        scores[f"{key}/selected"] = _scores(binarize(
            result[key].astype(np.float32), method="threshold",
            at_input_size=True), collection)
    # The trivial map that marks every pixel: its J is the foreground share.
    # An unsupervised method that scores below it has found nothing.
    scores["reference/all_foreground"] = _scores(
        [np.ones(m.shape[:2], bool) for m in collection.masks], collection)
    if bool(cfg.get("also_without_mask_loss", False)):
      # The Table 1 "w/o l_m" ablation on the same collection and compiled
      # step: the same schedule with the mask weight 0.
      ablation = train_on_images(config, images, None, log=log,
                                 mask_weight=0.0)
      summary["ablation_train_seconds"] = ablation["train_seconds"]
      for method in cfg.postprocess_eval:
        scores[f"nomask/{method}"] = _scores(
            binarize(ablation["final"], method=method), collection)
    summary["image_scores"] = scores
  summary["score_seconds"] = time.time() - t0
  masks = binarize(result["final"], method=str(cfg.postprocess))
  out_dir = os.path.join(workdir, "masks", collection.name)
  os.makedirs(out_dir, exist_ok=True)
  for image_id, m in zip(collection.image_ids, masks):
    stem = os.path.splitext(os.path.basename(image_id))[0]
    Image.fromarray((m * 255).astype(np.uint8)).save(
        os.path.join(out_dir, f"{stem}.png"))
  summary["total_seconds"] = time.time() - t_start
  return summary


def summarise(per_class: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """{variant: ``metrics.CosegAccumulator`` figures} over all collections
  (each collection is a class: ``avg_J`` is the papers' Avg. J)."""
  accumulators: Dict[str, metrics.CosegAccumulator] = {}
  for summary in per_class:
    for variant, scores in summary.get("image_scores", {}).items():
      acc = accumulators.setdefault(variant, metrics.CosegAccumulator())
      for s in scores:
        acc.update(class_names=summary["class"], scores=s)
  return {v: acc.result() for v, acc in sorted(accumulators.items())}


def train_collections(config: ml_collections.ConfigDict, workdir: str
                      ) -> Dict[str, Any]:
  """Trains on every collection of ``config.data`` (see module docstring).

  Returns:
    {'per_class': [...], 'summary': {variant: figures}} (also written to
    ``<workdir>/results.json``).
  """
  os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
  log = console.info if config.coattention.get("verbose", True) else None

  def say(msg):
    if log is not None:
      log(msg)

  collections = load_collections(config)
  per_class = []
  for collection in collections:
    path = os.path.join(workdir, "results", f"{collection.name}.json")
    if os.path.exists(path):
      with open(path) as f:
        per_class.append(json.load(f))
      say(f"{collection.name}: done before, skipped ({path})")
      continue
    say(f"{collection.name}: {len(collection)} images")
    summary = run_collection(config, collection, workdir, log=log)
    with open(path, "w") as f:
      json.dump(summary, f, indent=1)
    scores = summarise([summary])
    say(f"{collection.name}: " + ", ".join(
        f"{k} J {v['avg_J']:.3f}" for k, v in scores.items()) +
        f" ({summary['total_seconds']:.0f} s)")
    per_class.append(summary)
  results = {"per_class": per_class, "summary": summarise(per_class)}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  for k, v in results["summary"].items():
    say(f"Avg. over {v['num_classes']} classes, {k}: J {v['avg_J']:.3f} "
        f"P {100 * v['avg_P']:.1f}")
  return results
