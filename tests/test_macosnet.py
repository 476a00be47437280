"""Tests for MaCoSNet (coseg_jax/models/macosnet.py) and its configs.

Small sizes: the tiny backbone at 176 px (the stride-16 grid is 11 x 11, the
smallest G's VALID convs accept). ResNet-101 sizes are checked with
``jax.eval_shape`` only (no compute).
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import macosnet_base
from configs import macosnet_tss
from coseg_jax import backbones
from coseg_jax import metrics
from coseg_jax import models
from coseg_jax.losses import contrastive
from coseg_jax.losses import matching
from coseg_jax.models import macosnet
from coseg_jax.nn import geometry
from coseg_jax.runtime import checkpoint as ckpt_lib
from coseg_jax.runtime import optimizer
from coseg_jax.runtime import stages
from coseg_jax.runtime import steps
import runtime_helpers as rh

SIZE = 176
WEIGHTS = {"matching": 1.0, "cycle": 5.0, "transitivity": 5.0,
           "contrastive": 10.0, "cross_consistency": 10.0}
TERMS = tuple(sorted(WEIGHTS))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _tiny_model(**kw):
  cfg = dict(backbone="tiny",
             backbone_kwargs={"widths": (4, 8, 8, 16, 16)},
             perceptual="tiny", stage2_input="features", num_points=10,
             decoder_final_width=4)
  cfg.update(kw)
  return macosnet.build_model(ml_collections.ConfigDict(cfg), "joint")


def _images(b=2, k=2, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, k, SIZE, SIZE, 3))


# ---------------------------------------------------------------------------
# Sizes.


def test_resnet101_shapes_and_exact_param_counts():
  model = macosnet.build_model(ml_collections.ConfigDict(
      dict(backbone="resnet101", perceptual=None)), "joint")
  x = jax.ShapeDtypeStruct((1, 2, 240, 240, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda a: model.init({"params": jax.random.PRNGKey(0),
                            "dropout": jax.random.PRNGKey(1)}, a), x)
  p = variables["params"]
  # torchvision ResNet-101 (44,549,160) minus layer4 (14,964,736) and fc
  # (2,049,000): conv1..layer3 = 27,535,424.
  assert _count(p["encoder"]) == 27_535_424
  conv_bn = (225 * 128 * 49 + 128) + 2 * 128 + (128 * 64 * 25 + 64) + 2 * 64
  assert _count(p["affine_regressor"]) == conv_bn + 1600 * 6 + 6
  assert _count(p["tps_regressor"]) == conv_bn + 1600 * 18 + 18
  assert conv_bn + 1600 * 6 + 6 == 1_626_182
  # Sec. 3.4: four blocks, each a bias-free transposed conv (1249->512->256
  # ->64->32) and two bias-free 3x3 convs at the block's width, every layer
  # with BN (scale, bias), and the 1x1 head.
  widths = (512, 256, 64, 32)
  deconv = (1249 * 512 + 512 * 256 + 256 * 64 + 64 * 32) * 9
  convs = 2 * sum(9 * w * w for w in widths)
  bn = 2 * 3 * sum(widths)
  assert _count(p["decoder"]) == deconv + convs + bn + 33 == 13_096_545
  assert sorted(k for k in p["decoder"] if k.startswith("conv")) == [
      f"conv{i}_{j}" for i in range(1, 5) for j in (1, 2)]
  out = jax.eval_shape(lambda v, a: model.apply(v, a), variables, x)
  assert out.mask_logits.shape == (1, 2, 240, 240, 1)
  assert out.correlation.shape == (1, 6, 15, 15, 225)  # 3 images (rolled)
  assert out.theta.shape == (1, 6, 24)
  assert out.theta_affine.shape == (1, 6, 6)
  assert out.feature_masks.shape == (1, 3, 15, 15, 1)
  assert out.points.shape == (1, 100, 2)


def test_small_grid_is_refused():
  model = _tiny_model()
  with pytest.raises(ValueError, match="11 x 11"):
    jax.eval_shape(lambda a: model.init(jax.random.PRNGKey(0), a),
                   jax.ShapeDtypeStruct((1, 2, 160, 160, 3), jnp.float32))


def test_lighter_decoder_option_has_the_deconvolutions_only():
  x = jax.ShapeDtypeStruct((1, 2, 240, 240, 3), jnp.float32)
  count = {}
  for convs in (0, 1, 2):
    model = macosnet.build_model(ml_collections.ConfigDict(
        dict(backbone="resnet101", perceptual=None, decoder_convs=convs)),
        "joint")
    p = jax.eval_shape(lambda a, m=model: m.init(
        {"params": jax.random.PRNGKey(0)}, a), x)["params"]
    count[convs] = _count(p["decoder"])
  deconv = (1249 * 512 + 512 * 256 + 256 * 64 + 64 * 32) * 9
  assert count[0] == deconv + 2 * (512 + 256 + 64 + 32) + 33
  per_conv = sum(9 * w * w + 2 * w for w in (512, 256, 64, 32))
  assert count[1] - count[0] == count[2] - count[1] == per_conv


@pytest.mark.parametrize("name", ["tiny", "resnet50", "efficientnet_lite0",
                                  "vgg16"])
def test_input_mean_is_what_the_backbone_maps_to_zero(name):
  mean = np.asarray(backbones.input_mean(name))
  x = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (1, 2, 2, 3))
  z = backbones.input_normalizer(name)(x, jnp.float32)
  np.testing.assert_allclose(z, 0.0, atol=1e-6)
  assert mean.min() > 0.3 and mean.max() < 0.6


def test_masked_image_is_the_mean_colour_where_the_mask_is_0():
  """Eq. 7 on normalised images: where M = 0 the object image is the colour
  F's normalisation maps to 0, so F sees exactly M * normalise(I); 'raw'
  keeps our earlier black."""
  images = _images(1, 2).reshape(2, SIZE, SIZE, 3)
  masks = jnp.zeros((2, SIZE, SIZE, 1)).at[:, 40:120, 30:100].set(1.0)
  masks = masks.at[:, 0, 0].set(0.3)
  for f_name in ("tiny", "efficientnet_lite0"):
    model = _tiny_model(perceptual=f_name)
    assert model.apply({}, method=macosnet.MaCoSNet.perceptual_fill) == (
        backbones.input_mean(f_name))
    fill = jnp.asarray(backbones.input_mean(f_name))
    obj, bg = contrastive.object_background_images(
        images=images, masks=masks,
        fill=model.apply({}, method=macosnet.MaCoSNet.perceptual_fill))
    np.testing.assert_allclose(obj[:, 0, 1], np.broadcast_to(fill, (2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(bg[:, 50, 50], np.broadcast_to(fill, (2, 3)),
                               rtol=1e-6)
    norm = backbones.input_normalizer(f_name)
    np.testing.assert_allclose(norm(obj, jnp.float32),
                               masks * norm(images, jnp.float32), atol=2e-5)
    np.testing.assert_allclose(norm(bg, jnp.float32),
                               (1 - masks) * norm(images, jnp.float32),
                               atol=2e-5)
  raw = _tiny_model(perceptual_masking="raw")
  assert raw.apply({}, method=macosnet.MaCoSNet.perceptual_fill) == (0, 0, 0)
  # F inside the model receives those images: F(object image at M = 0)
  # equals F of a blank mean-colour image.
  model = _tiny_model()
  x = images[None]
  v = model.init({"params": jax.random.PRNGKey(1)}, x)
  obj0, _ = model.apply(v, images, jnp.zeros_like(masks),
                        method=macosnet.MaCoSNet.perceptual_features)
  blank = jnp.broadcast_to(jnp.asarray(backbones.input_mean("tiny")),
                           images.shape)
  ref = model.apply(v, blank, method=macosnet.MaCoSNet._perceptual_net)
  np.testing.assert_allclose(obj0, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # about 30 s of compilation on 2 cores
def test_matching_mask_gradient_reaches_the_decoder_only_when_on():
  """Eq. 4 trains D (its signature lists D): with matching_mask_grad the
  matching term has a non-zero gradient w.r.t. the decoder's parameters;
  stopped, exactly zero (it still trains G)."""
  _, state, batch = _setup()
  grads = {}
  for on in (True, False):
    model = _tiny_model(matching_mask_grad=on)

    def term(params, model=model):
      out = _outputs(model, state, batch, params)
      return macosnet.compute_terms(out, ("matching",))["matching"]

    grads[on] = jax.jit(jax.grad(term))(state.params)
  top = lambda t: max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(t))
  assert top(grads[True]["decoder"]) > 1e-6
  assert top(grads[False]["decoder"]) == 0.0
  for on in (True, False):
    assert top(grads[on]["affine_regressor"]) > 0
  # The regressors' gradient does not depend on the masks' gradient.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               grads[True]["tps_regressor"], grads[False]["tps_regressor"])


def test_matching_term_is_eq4_per_pair():
  """The matching term: for every ordered pair (i, j) one direction
  weighted by M_j on j's grid, the two directions of a pair added (eq. 4),
  averaged over the pairs and the two stages; the earlier form is the
  per-position mean with M_i M_j."""
  model, state, batch = _setup()
  out = jax.jit(functools.partial(_outputs, model))(state, batch)
  fm = out.feature_masks
  vals_src, vals_prod = [], []
  for n, (i, j) in enumerate(out.pairs):
    for theta, kind in ((out.theta_affine[:, n], "affine"),
                        (out.theta[:, n], "affine_tps")):
      vals_src.append(matching.matching_loss(
          correlation=out.correlation[:, n], theta=theta, kind=kind,
          mask_b=fm[:, j], source_size=fm.shape[2:4]))
      vals_prod.append(matching.matching_loss(
          correlation=out.correlation[:, n], theta=theta, kind=kind,
          mask_a=fm[:, i], mask_b=fm[:, j], normalize="grid"))
  got = macosnet.compute_terms(out, ("matching",))["matching"]
  np.testing.assert_allclose(float(got), 2 * np.mean(vals_src), rtol=1e-5)
  old = out.replace(options=macosnet.LossOptions(
      matching_masks="product", matching_normalize="grid"))
  np.testing.assert_allclose(
      float(macosnet.compute_terms(old, ("matching",))["matching"]),
      np.mean(vals_prod), rtol=1e-5)


def test_auto_margin_is_calibrated_on_the_first_batches():
  """margin='auto': m = ratio x the mean over the first margin_batches
  training batches of the mean squared F distance between different images
  (per dimension); fixed afterwards, kept in batch_stats, 0 before any
  batch; doubled for the 'sum' reduction."""
  model = _tiny_model(margin="auto", margin_batches=2, margin_ratio=1.5)
  assert model.margin_auto and model.options.margin is None
  x0 = _images(2, 2, seed=4)
  v = model.init({"params": jax.random.PRNGKey(0)}, x0)
  assert float(model.apply(v, x0).margin) == 0.0
  step = jax.jit(lambda v, x: model.apply(
      v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
      mutable=["batch_stats"]))
  whole = jax.jit(lambda v, x: model.apply(
      v, x.reshape(-1, SIZE, SIZE, 3),
      method=macosnet.MaCoSNet._perceptual_net))
  refs, margins = [], []
  for t in range(3):
    x = _images(2, 2, seed=10 + t)
    f = np.asarray(whole(v, x), np.float64)
    n, c = f.shape
    refs.append(np.mean([np.sum((f[a] - f[b]) ** 2) / c for a in range(n)
                         for b in range(n) if a != b]))
    out, upd = step(v, x)
    v = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    margins.append(float(out.margin))
  np.testing.assert_allclose(margins[0], 1.5 * refs[0], rtol=1e-4)
  np.testing.assert_allclose(margins[1], 1.5 * np.mean(refs[:2]), rtol=1e-4)
  assert margins[2] == margins[1]  # calibrated on 2 batches, then fixed
  assert float(v["batch_stats"]["margin_ref_count"]) == 2.0
  # The contrastive term uses it.
  ob, bg = out.object_features, out.background_features
  ref = contrastive.perceptual_contrastive_loss(
      object_a=ob[:, 0], object_b=ob[:, 1], background_a=bg[:, 0],
      background_b=bg[:, 1], margin=margins[1])
  np.testing.assert_allclose(
      float(macosnet.compute_terms(out, ("contrastive",))["contrastive"]),
      float(ref), rtol=1e-5)
  summed = _tiny_model(margin="auto", margin_batches=2, margin_ratio=1.5,
                       contrastive_reduction="sum")
  out_sum = summed.apply(v, x)
  np.testing.assert_allclose(float(out_sum.margin), 2 * margins[1],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="margin"):
    _tiny_model(margin="large")
  with pytest.raises(ValueError, match="matching_masks"):
    _tiny_model(matching_masks="target")


def test_untrained_predictor_is_identity_and_pairs_routed():
  model = _tiny_model(triplets="group", perceptual=None)
  x = _images(1, 3)
  v = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, x)
  out = jax.jit(model.apply)(v, x)
  assert out.pairs == macosnet.ordered_pairs(3)
  assert out.triplet == (0, 1, 2)  # K = 3: the group is the triplet
  np.testing.assert_allclose(
      out.theta, np.broadcast_to(geometry.AFFINE_TPS_IDENTITY, (1, 6, 24)),
      atol=1e-6)
  # The stage-1 correlation of pair (i, j) is corr(features_a=f_i, f_j).
  feats = jax.jit(lambda v, a: model.apply(
      v, a, False, method=lambda m, a, t: m.encode(a, t)))(
          v, x.reshape(3, SIZE, SIZE, 3))["stride16"]
  for n, (i, j) in enumerate(out.pairs):
    ref = macosnet.corr_lib.feature_correlation(features_a=feats[i:i + 1],
                                                features_b=feats[j:j + 1])
    np.testing.assert_allclose(out.correlation[0, n], ref[0], atol=1e-6)


# ---------------------------------------------------------------------------
# Geometry routing of the consistency losses (no network).


def _affine(a, t):
  return np.concatenate([np.asarray(a, np.float64),
                         np.asarray(t, np.float64)[:, None]], 1)


def test_cycle_and_transitivity_vanish_for_consistent_maps():
  # Three frames related by known affine maps; theta[i, j] must send j's
  # frame to i's frame (pull). Build them from "frame -> world" maps.
  rng = np.random.default_rng(0)
  to_world = [_affine(np.eye(2) + 0.2 * rng.standard_normal((2, 2)),
                      0.1 * rng.standard_normal(2)) for _ in range(3)]
  hom = lambda m: np.vstack([m, [0, 0, 1]])
  pairs = macosnet.ordered_pairs(3)
  thetas = []
  for i, j in pairs:
    m = np.linalg.inv(hom(to_world[i])) @ hom(to_world[j])  # j -> i
    aff = m[:2].reshape(6)
    thetas.append(np.concatenate([aff, geometry.TPS_IDENTITY]))
  theta = jnp.asarray(np.stack(thetas)[None], jnp.float32)
  points = jax.random.uniform(jax.random.PRNGKey(0), (1, 50, 2), minval=-1,
                              maxval=1)
  out = macosnet.MaCoSNetOutput(
      mask_logits=jnp.zeros((1, 2, 8, 8, 1)), theta=theta,
      theta_affine=theta[..., :6], points=points, pairs=pairs,
      triplet=(0, 1, 2), num_images=2)
  terms = macosnet.compute_terms(out, ("cycle", "transitivity"))
  assert float(terms["cycle"]) < 1e-9
  assert float(terms["transitivity"]) < 1e-9
  # A wrongly routed chain (the maps in A->B->C order as pull maps) does not.
  bad = matching.transitivity_loss(points=points, theta_ab=theta[:, 0],
                                   theta_bc=theta[:, 3], theta_ca=theta[:, 4],
                                   kind=macosnet.KIND)
  assert float(bad) > 1e-3


# ---------------------------------------------------------------------------
# Losses inside the training step.


@functools.lru_cache(maxsize=None)
def _setup():
  model = _tiny_model()
  tx, _ = optimizer.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3)), 10)
  state = rh.make_state(model, tx, sample_shape=(1, 2, SIZE, SIZE, 3),
                        seed=3)
  # Move G off the identity: at theta = identity every sampling point of the
  # warps lies exactly on a pixel, where bilinear sampling is not
  # differentiable and differently compiled graphs may pick either slope.
  params = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  for reg in ("affine_regressor", "tps_regressor"):
    lin = dict(params[reg]["linear"])
    lin["bias"] = lin["bias"] + 0.03 * rng.standard_normal(lin["bias"].shape)
    lin["kernel"] = lin["kernel"] + 1e-3 * rng.standard_normal(
        lin["kernel"].shape)
    params[reg] = dict(params[reg], linear=jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32), lin))
  state = state.replace(params=params)
  batch = {"images": _images(2, 2, seed=1)}
  return model, state, batch


def _outputs(model, state, batch, params=None):
  rng = jax.random.fold_in(state.rng, state.step)
  out, _ = model.apply({"params": state.params if params is None else params,
                        "batch_stats": state.batch_stats}, batch["images"],
                       train=True, rngs={"dropout": rng},
                       mutable=["batch_stats"])
  return out


def _reference_terms(out):
  """Each term straight from the core loss functions, pair by pair."""
  pairs = out.pairs
  th = {p: out.theta[:, n] for n, p in enumerate(pairs)}
  fm = out.feature_masks
  ref = {}
  vals = []
  for n, (_, j) in enumerate(pairs):
    # Eq. 4: the grid image's mask only, plain sums, directions added.
    vals.append(matching.matching_loss(
        correlation=out.correlation[:, n], theta=out.theta_affine[:, n],
        kind="affine", mask_b=fm[:, j], source_size=fm.shape[2:4]))
    vals.append(matching.matching_loss(
        correlation=out.correlation[:, n], theta=out.theta[:, n],
        kind="affine_tps", mask_b=fm[:, j], source_size=fm.shape[2:4]))
  ref["matching"] = 2 * np.mean(vals)
  ref["cycle"] = np.mean([matching.cycle_consistency_loss(
      points=out.points, theta_ab=th[(i, j)], theta_ba=th[(j, i)],
      kind="affine_tps") for i, j in pairs])
  # Triangle 1 -> 0 -> 2 -> 1 and 2 -> 0 -> 1 -> 2 (pull maps).
  ref["transitivity"] = 0.5 * (
      matching.transitivity_loss(points=out.points, theta_ab=th[(0, 1)],
                                 theta_bc=th[(2, 0)], theta_ca=th[(1, 2)],
                                 kind="affine_tps") +
      matching.transitivity_loss(points=out.points, theta_ab=th[(0, 2)],
                                 theta_bc=th[(1, 0)], theta_ca=th[(2, 1)],
                                 kind="affine_tps"))
  ref["contrastive"] = contrastive.perceptual_contrastive_loss(
      object_a=out.object_features[:, 0], object_b=out.object_features[:, 1],
      background_a=out.background_features[:, 0],
      background_b=out.background_features[:, 1])
  ref["cross_consistency"] = contrastive.cross_consistency_loss(
      mask_logits_a=out.mask_logits[:, 0], mask_logits_b=out.mask_logits[:, 1],
      theta_ab=th[(0, 1)], theta_ba=th[(1, 0)], kind="affine_tps")
  return {k: float(v) for k, v in ref.items()}


@pytest.mark.slow
@pytest.mark.compile_bound
def test_each_loss_in_train_step_equals_core_reference():
  model, state, batch = _setup()
  step = steps.make_train_step(model=model, loss_fn=macosnet.loss_fn,
                                loss_config=WEIGHTS, donate=False)
  _, metrics = step(state, batch)
  out = jax.jit(functools.partial(_outputs, model))(state, batch)
  # The third image of group b is image 0 of group b + 1 (batch roll).
  np.testing.assert_array_equal(out.feature_masks[:, 2],
                                np.roll(out.feature_masks[:, 0], -1, axis=0))
  ref = _reference_terms(out)
  for name in TERMS:
    got = float(metrics[f"loss_terms/{name}"])
    np.testing.assert_allclose(got, WEIGHTS[name] * ref[name], rtol=2e-5,
                               atol=1e-6, err_msg=name)
    assert np.isfinite(got)
  np.testing.assert_allclose(float(metrics["loss"]),
                             sum(WEIGHTS[k] * ref[k] for k in TERMS),
                             rtol=2e-5, atol=1e-6)
  assert ref["contrastive"] > 0 and ref["cross_consistency"] > 0


def _assert_trees_close(got, expected, *, scale_of, rel=1e-3):
  """Leafwise equality up to float32 rounding of the largest gradients.

  The tolerance is ``rel`` times the largest |entry| over the trees in
  ``scale_of``: per-term gradients are sums over ~10^5 pixels with
  cancellation (seen: 3.6e-4 relative on the logit bias between two
  compilations), and leaves whose exact gradient is 0 (conv biases before
  BatchNorm) hold rounding noise of that size. The caller checks that the
  difference being tested is far above this tolerance.
  """
  scale = max(float(jnp.max(jnp.abs(x))) for t in scale_of
              for x in jax.tree.leaves(t))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


@pytest.mark.slow
def test_zero_weight_removes_exactly_its_gradient():
  model, state, batch = _setup()

  def total(params, weights):
    out = _outputs(model, state, batch, params)
    return macosnet.loss_fn(outputs=out, batch=batch, loss_config=weights)[0]

  # Per-term gradients (unweighted): one compile of grad(w . terms) with a
  # traced one-hot w, run five times. Not jax.jacrev: under jit on CPU,
  # jaxlib 0.10.2's YNNPACK reduce fusion mixes the rows of the vmapped
  # backward pass (the contrastive row leaks into every other row; the same
  # jaxpr evaluated op by op is exact, and
  # XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= removes it).
  def weighted(params, w):
    out = _outputs(model, state, batch, params)
    t = macosnet.compute_terms(out, TERMS)
    return jnp.dot(w, jnp.stack([t[k] for k in TERMS]))

  grad_w = jax.jit(jax.grad(weighted))
  per_term = {k: grad_w(state.params, jnp.eye(len(TERMS))[n])
              for n, k in enumerate(TERMS)}
  g_all = jax.jit(jax.grad(total), static_argnums=1)(state.params,
                                                     _frozen(WEIGHTS))
  # (Terms with large gradients: with a random tiny F the contrastive
  # gradient is ~3e-4 of the largest entry, below the float32 tolerance.)
  for name in ("transitivity", "cross_consistency"):
    w = dict(WEIGHTS, **{name: 0.0})
    g0 = jax.jit(jax.grad(total), static_argnums=1)(state.params,
                                                    _frozen(w))
    # The removed contribution is large compared with the tolerance.
    removed = max(float(jnp.max(jnp.abs(WEIGHTS[name] * t)))
                  for t in jax.tree.leaves(per_term[name]))
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_all))
    assert removed > 10 * 1e-3 * scale, (name, removed, scale)
    expected = jax.tree.map(lambda a, t: a - WEIGHTS[name] * t, g_all,
                            per_term[name])
    _assert_trees_close(g0, expected, scale_of=(g_all, per_term[name]))
    # The term is not even computed: the sum of the other weighted terms.
    others = jax.tree.map(
        lambda *g: sum(WEIGHTS[k] * gk for k, gk in
                       zip([k for k in TERMS if k != name], g)),
        *[per_term[k] for k in TERMS if k != name])
    _assert_trees_close(g0, others, scale_of=(g_all, per_term[name]))
  # The five weighted term gradients add up to the total gradient.
  summed = jax.tree.map(lambda *g: sum(WEIGHTS[k] * gk for k, gk in
                                       zip(TERMS, g)),
                        *[per_term[k] for k in TERMS])
  _assert_trees_close(g_all, summed, scale_of=(g_all,))
  # Every term reaches G or D; frozen E and F get exactly zero gradient.
  for k in TERMS:
    assert _count(per_term[k]) > 0
  for k in ("encoder", "perceptual_net"):
    for name in TERMS:
      assert all(float(jnp.max(jnp.abs(g))) == 0.0
                 for g in jax.tree.leaves(per_term[name][k])), (k, name)
  # Which parts each term trains.
  nonzero = lambda t: any(float(jnp.max(jnp.abs(g))) > 0
                          for g in jax.tree.leaves(t))
  assert nonzero(per_term["matching"]["affine_regressor"])
  assert not nonzero(per_term["cycle"]["decoder"])
  assert nonzero(per_term["contrastive"]["decoder"])
  assert not nonzero(per_term["contrastive"]["tps_regressor"])
  assert nonzero(per_term["cross_consistency"]["decoder"])
  assert nonzero(per_term["cross_consistency"]["tps_regressor"])
  # Eq. 4 trains D too: the masks' gradient is not stopped by default.
  assert nonzero(per_term["matching"]["decoder"])


class _frozen(dict):
  """A hashable dict (static jit argument)."""

  def __hash__(self):
    return hash(tuple(sorted(self.items())))


def test_loss_fn_rejects_unknown_terms_and_missing_triplets():
  out = macosnet.MaCoSNetOutput(
      mask_logits=jnp.zeros((1, 2, 8, 8, 1)), theta=jnp.zeros((1, 2, 24)),
      theta_affine=jnp.zeros((1, 2, 6)), points=jnp.zeros((1, 4, 2)),
      correlation=jnp.zeros((1, 2, 11, 11, 121)), pairs=((0, 1), (1, 0)))
  with pytest.raises(ValueError, match="unknown term"):
    macosnet.loss_fn(outputs=out, batch={}, loss_config={"lovasz": 1.0})
  with pytest.raises(ValueError, match="triplets"):
    macosnet.loss_fn(outputs=out, batch={}, loss_config={"transitivity": 1.0})


# ---------------------------------------------------------------------------
# Synthetic pre-training.


def test_synthetic_theta_ranges():
  theta = macosnet.random_synthetic_theta(
      jax.random.PRNGKey(0), 2000, rotation=0.0, shear=0.0, scale=0.25,
      translation=0.25, tps=0.4, kind="affine_tps")
  aff = np.asarray(theta[:, :6]).reshape(-1, 2, 3)
  # No rotation/shear: A = diag(1 + U(+-0.25)), t = U(+-0.25).
  np.testing.assert_allclose(aff[:, 0, 1], 0, atol=1e-6)
  assert 0.75 <= aff[:, 0, 0].min() and aff[:, 0, 0].max() <= 1.25
  assert np.abs(aff[:, :, 2]).max() <= 0.25
  d = np.asarray(theta[:, 6:]) - geometry.TPS_IDENTITY
  assert np.abs(d).max() <= 0.4 and np.abs(d).max() > 0.35


@pytest.mark.slow
def test_pretraining_recovers_a_known_affine_warp():
  """G pre-trained on synthetic warps recovers a held-out warp.

  A trainable tiny encoder on smooth random images, affine warps only
  (rotation +-0.15 rad, scale +-0.15, translation +-0.15, no shear/TPS).
  Bound: after 150 steps the mean squared grid error on held-out warps must
  fall below half of the identity's error (observed: 0.39 of it), and the
  known warp fed through the *joint* model (decoder added, G from the
  pre-training) must be recovered with less than 0.8 of the identity's grid
  error (observed: 0.63 of it). A longer run recovers warps more closely; 150 steps keep the test
  within minutes on a loaded CPU.
  """
  syn = dict(rotation=0.15, shear=0.0, scale=0.15, translation=0.15, tps=0.0,
             kind="affine")
  cfg = ml_collections.ConfigDict(dict(
      backbone="tiny", backbone_kwargs={"widths": (8, 16, 16, 32, 32)},
      freeze_encoder=False, perceptual=None, stage2_input="features",
      synthetic=syn))
  pre = macosnet.build_model(cfg, "pretrain")
  # Smooth random images: blurred noise has structure at every scale.
  base = jax.random.uniform(jax.random.PRNGKey(0), (64, 22, 22, 3))
  images = jax.image.resize(base, (64, SIZE, SIZE, 3), "bicubic").clip(0, 1)
  tx, _ = optimizer.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3)), 300)
  state = rh.make_state(pre, tx, sample_shape=(1, 2, SIZE, SIZE, 3), seed=1)
  step = steps.make_train_step(model=pre, loss_fn=macosnet.loss_fn,
                                loss_config={"grid": 1.0})
  for i in range(150):
    idx = np.random.default_rng(i).choice(56, 8, replace=False)
    state, metrics = step(state, {"images": images[idx].reshape(
        4, 2, SIZE, SIZE, 3)})
  assert float(metrics["finite"]) == 1.0
  # Held-out images 56..63 with fresh warps.
  held = images[56:].reshape(4, 2, SIZE, SIZE, 3)
  out = pre.apply(state.variables(), held, train=False,
                  rngs={"dropout": jax.random.PRNGKey(99)})
  gt = out.synthetic_theta.reshape(8, -1)
  err = float(macosnet.grid_loss(theta=out.theta.reshape(8, -1),
                                 theta_gt=gt, kind=macosnet.KIND))
  ident = float(macosnet.grid_loss(
      theta=jnp.tile(jnp.asarray(geometry.AFFINE_TPS_IDENTITY), (8, 1)),
      theta_gt=gt, kind=macosnet.KIND))
  assert err < 0.5 * ident, (err, ident)

  # The joint model fed (I, warp(I, theta)) recovers theta for pair (0, 1).
  joint = macosnet.build_model(cfg, "joint")
  theta = jnp.asarray([[1.1, -0.1, 0.08, 0.12, 0.95, -0.1]], jnp.float32)
  a = images[60:61]
  b = geometry.warp(image=a, theta=theta, kind="affine", padding="border")
  x = jnp.stack([a, b], axis=1)
  jv = joint.init({"params": jax.random.PRNGKey(0)}, x)
  jv = {"params": ckpt_lib.merge_params(jax.device_get(jv["params"]),
                                        jax.device_get(state.params)),
        "batch_stats": ckpt_lib.merge_params(
            jax.device_get(jv["batch_stats"]),
            jax.device_get(state.batch_stats))}
  jout = joint.apply(jv, x)
  n = jout.pairs.index((0, 1))
  rec = float(macosnet.grid_loss(theta=jout.theta[:, n], theta_gt=theta,
                                 kind=macosnet.KIND, kind_gt="affine"))
  ident1 = float(macosnet.grid_loss(
      theta=jnp.asarray(geometry.AFFINE_IDENTITY)[None], theta_gt=theta,
      kind="affine", kind_gt="affine"))
  assert rec < 0.8 * ident1, (rec, ident1)


# ---------------------------------------------------------------------------
# Registry and configs.


def test_registered_methods():
  spec = models.get_method("macosnet")
  assert spec.loss_fn is macosnet.loss_fn
  assert set(spec.default_loss) == set(macosnet.LOSS_TERMS)
  m = spec.build_model(ml_collections.ConfigDict(dict(backbone="tiny")))
  assert m.mode == "joint" and m.backbone == "tiny"
  pre = models.get_method("macosnet_pretrain")
  assert pre.build_model(ml_collections.ConfigDict({})).mode == "pretrain"
  assert dict(pre.default_loss) == {"grid": 1.0}


PAPER_WEIGHTS = {"macosnet_tss": (5, 5, 10, 10),
                 "macosnet_internet": (5, 5, 20, 10),
                 "macosnet_pf_pascal": (20, 10, 2.5, 2.5)}


@pytest.mark.parametrize("name", sorted(PAPER_WEIGHTS))
def test_configs(name):
  mod = importlib.import_module(f"configs.{name}")
  c = mod.get_config(None)
  assert c.data.image_size == 240 and c.optimizer.name == "adam"
  assert c.method == "macosnet"
  got = tuple(c.loss[k] for k in ("cycle", "transitivity", "contrastive",
                                  "cross_consistency"))
  assert got == PAPER_WEIGHTS[name] and c.loss.matching == 1.0
  assert c.model.backbone == "resnet101" and c.model.num_points == 100
  assert c.model.margin == "auto" and c.model.phi == 1.0
  # The paper's forms (eq. 4, 7, 10, Sec. 3.4) are the defaults.
  assert (c.model.matching_masks, c.model.matching_normalize,
          c.model.matching_mask_grad) == ("source", "none", True)
  assert c.model.perceptual_masking == "normalized"
  assert c.model.contrastive_reduction == "mean"
  assert c.model.decoder_convs == 2
  m = models.get_method(c.method).build_model(c.model)
  assert m.margin_auto and m.options.margin is None
  assert m.options == macosnet.LossOptions(margin=None)
  # The encoder's ImageNet weights are required; runlocal trains without.
  assert c.init.require_pretrained and c.init.backbone_subtree == "encoder"
  # G starts from the synthetic-warp pre-training stage.
  assert tuple(c.stages) == ("matcher_pretrain", "main")
  assert stages.stage_names(c) == ("matcher_pretrain", "main")
  assert c.matcher_pretrain.learning_rate == 1e-3  # CNNGeo: Adam 1e-3
  assert set(c.init.pretrained) == {"perceptual_net"}
  abl = mod.get_config("no_cycle,lite0")
  assert abl.loss.cycle == 0.0 and abl.model.backbone == "efficientnet_lite0"
  assert abl.loss.transitivity == PAPER_WEIGHTS[name][1]
  assert abl.init.pretrained.encoder.backbone == "efficientnet_lite0"
  r = mod.get_config("runlocal")
  assert r.model.backbone == "tiny" and r.data.image_size == SIZE
  assert not r.init.require_pretrained
  assert r.matcher_pretrain.data.name == "synthetic"
  with pytest.raises(ValueError, match=rf"configs/{name}\.py.*'bogus'"):
    mod.get_config("bogus")


def test_base_takes_the_settings_weights_and_data_set():
  c = macosnet_base.base("no_matching", weights=(1.0, 2.0, 3.0, 4.0),
                         dataset="internet", config_name="macosnet_x")
  assert dict(c.loss) == {"matching": 0.0, "cycle": 1.0, "transitivity": 2.0,
                          "contrastive": 3.0, "cross_consistency": 4.0}
  assert c.data.name == "internet"
  assert tuple(c.eval.evaluators) == ("coseg",)
  tss = macosnet_base.base(None, weights=(1.0, 2.0, 3.0, 4.0), dataset="tss",
                           config_name="macosnet_x")
  assert tuple(tss.eval.evaluators) == ("matching",)
  with pytest.raises(ValueError, match=r"configs/macosnet_x\.py.*'no_grid'"):
    macosnet_base.base("no_grid", weights=(1.0, 2.0, 3.0, 4.0),
                       dataset="tss", config_name="macosnet_x")


@pytest.mark.parametrize("arg", [None, "lite0", "runlocal"])
def test_matcher_pretrain_stage_config(arg):
  """The 'matcher_pretrain' stage: G alone on synthetic warps (CNNGeo's
  grid loss), the stage's data and schedule, every shared name handed on."""
  config = macosnet_tss.get_config(arg)
  before = config.to_json()
  section = config.matcher_pretrain
  c, hand_on = stages.matcher_pretrain(config, section)
  assert config.to_json() == before  # the main config is left alone
  assert hand_on == ()  # () = every name the two models share
  assert c.method == "macosnet_pretrain" and c.trainer == "supervised"
  assert dict(c.loss) == {"grid": 1}
  assert c.model.perceptual is None
  # Everything else of the model is the main run's: the shared parameters
  # must have the same shapes.
  want_model = config.model.to_dict()
  want_model["perceptual"] = None
  assert c.model.to_dict() == want_model
  assert "perceptual_net" not in c.init.pretrained
  assert ("encoder" in c.init.pretrained) == (arg == "lite0")
  assert ("encoder" in config.init.pretrained) == (arg == "lite0")
  for key, value in section.data.items():
    assert c.data[key] == value, key
  assert c.data.name == ("synthetic" if arg == "runlocal"
                         else "pascal_voc_coseg")
  assert c.data.augment.enabled
  assert c.data.image_size == config.data.image_size
  assert c.optimizer.learning_rate == section.learning_rate
  assert c.train.num_steps == section.num_steps
  assert c.train.global_batch_size == section.global_batch_size
  assert tuple(c.stages) == ("main",)
  assert not c.init.from_checkpoint
  # The derived config builds the pre-training model.
  model = models.get_method(c.method).build_model(c.model)
  assert model.mode == "pretrain" and model.perceptual is None


# ---------------------------------------------------------------------------
# PCK.


def test_keypoint_pck_follows_the_pull_map():
  rng = np.random.default_rng(0)
  size_a, size_b = (300, 400), (240, 200)
  aff = np.array([[0.9, 0.1, 0.05, -0.05, 1.1, 0.1]], np.float32)
  theta = jnp.asarray(np.concatenate([aff, geometry.TPS_IDENTITY[None]], 1))
  pts_b = rng.uniform([0, 0], [199, 239], (1, 10, 2)).astype(np.float32)
  # Ground truth in A: B's points pushed through x_a = A x_b + t in
  # normalised coordinates, by hand.
  nb = np.stack([pts_b[..., 0] / 199 * 2 - 1, pts_b[..., 1] / 239 * 2 - 1],
                -1)
  m = aff.reshape(2, 3)
  na = nb @ m[:, :2].T + m[:, 2]
  pts_a = np.stack([(na[..., 0] + 1) / 2 * 399, (na[..., 1] + 1) / 2 * 299],
                   -1).astype(np.float32)
  # Box of A's keypoints -> L; move 3 points by 0.08 L (fail 0.05, pass 0.1)
  # and mark one missing.
  L = max(np.ptp(pts_a[0, :, 0]), np.ptp(pts_a[0, :, 1]))
  shifted = pts_a.copy()
  shifted[0, :3, 0] += 0.08 * L
  # Shifting changes the keypoint box; give it explicitly.
  box = jnp.asarray([[pts_a[0, :, 0].min(), pts_a[0, :, 1].min(),
                      pts_a[0, :, 0].max(), pts_a[0, :, 1].max()]])
  pts_b_missing = pts_b.copy()
  pts_b_missing[0, 9] = np.nan
  res = metrics.keypoint_pck(theta=theta, points_a=jnp.asarray(shifted),
                              points_b=jnp.asarray(pts_b_missing),
                              size_a=size_a, size_b=size_b, bbox_a=box)
  np.testing.assert_allclose(float(res[0.05][0]), 6 / 9, atol=1e-6)
  np.testing.assert_allclose(float(res[0.1][0]), 1.0, atol=1e-6)
  exact = metrics.keypoint_pck(theta=theta, points_a=jnp.asarray(pts_a),
                                points_b=jnp.asarray(pts_b), size_a=size_a,
                                size_b=size_b)
  assert float(exact[0.05][0]) == 1.0
  # The identity does not explain the pair.
  ident = metrics.keypoint_pck(
      theta=jnp.asarray(geometry.AFFINE_TPS_IDENTITY)[None],
      points_a=jnp.asarray(pts_a), points_b=jnp.asarray(pts_b),
      size_a=size_a, size_b=size_b)
  assert float(ident[0.05][0]) < 0.5
