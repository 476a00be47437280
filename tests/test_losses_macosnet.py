"""MaCoSNet losses vs NumPy float64 references, under jit and vmap."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from coseg_jax import losses
from coseg_jax.losses import contrastive
from coseg_jax.losses import matching
from coseg_jax.nn import geometry
from test_geometry import _np_affine, _np_base_grid, _np_bilinear, _np_tps

RTOL = 1e-5


def _np_transform(theta, points, kind):
  if kind == "affine":
    return _np_affine(theta, points)
  if kind == "tps":
    return _np_tps(theta, points)
  return _np_affine(theta[:, :6], _np_tps(theta[:, 6:], points))


def _np_grid(theta, h, w, kind):
  """Sampling grid; 'affine_tps' samples the affine grid at the TPS grid."""
  base = np.broadcast_to(_np_base_grid(h, w), (theta.shape[0], h, w, 2))
  if kind != "affine_tps":
    return _np_transform(theta, base, kind)
  return _np_bilinear(_np_affine(theta[:, :6], base),
                      _np_tps(theta[:, 6:], base), True, "border")


def _theta(rng, kind, batch, scale):
  ident = np.asarray(geometry.identity_theta(kind, batch), np.float64)
  return ident + scale * rng.normal(size=ident.shape)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------- matching


def _np_matching(corr, theta, kind, mask_a, mask_b, h_a, w_a, phi, distance,
                 normalize="none"):
  """One direction: sum over B's grid q of M_B(q) sum_k m(q, k) S(q, k)
  (times M_A(k) when ``mask_a`` is given), normalised as asked."""
  b, h_b, w_b, _ = corr.shape
  pts = _np_grid(theta, h_b, w_b, kind)
  scores = np.zeros(b)
  inliers = np.zeros(b)
  for n in range(b):
    for i in range(h_b):
      for j in range(w_b):
        ux = (pts[n, i, j, 0] + 1) / 2 * (w_a - 1)
        uy = (pts[n, i, j, 1] + 1) / 2 * (h_a - 1)
        x0, y0 = int(np.floor(ux)), int(np.floor(uy))
        for xa in range(w_a):
          for ya in range(h_a):
            m = 0.0
            for zy in (y0, y0 + 1):
              for zx in (x0, x0 + 1):
                if not (0 <= zx < w_a and 0 <= zy < h_a):
                  continue
                if distance == "chebyshev":
                  dist = max(abs(zx - xa), abs(zy - ya))
                else:
                  dist = np.hypot(zx - xa, zy - ya)
                if dist <= phi:
                  m += (1 - abs(ux - zx)) * (1 - abs(uy - zy))
            k = xa * h_a + ya
            weight = 1.0 if mask_b is None else mask_b[n, i, j, 0]
            if mask_a is not None:
              weight *= mask_a[n, ya, xa, 0]
            scores[n] += weight * m * corr[n, i, j, k]
            inliers[n] += m + 1e-5
  if normalize == "grid":
    scores = scores / (h_b * w_b)
  elif normalize == "inliers":
    scores = scores / inliers
  return -np.mean(scores)


@pytest.mark.parametrize("kind,distance,phi,normalize", [
    ("affine", "chebyshev", 1.0, "grid"), ("tps", "euclidean", 1.5, "grid"),
    ("affine_tps", "chebyshev", 1.0, "grid")])
def test_product_form_matches_numpy(kind, distance, phi, normalize):
  """Our earlier form: both masks (M_B(q) M_A(k)), per-position mean."""
  rng = np.random.default_rng(0)
  b, h_a, w_a, h_b, w_b = 2, 4, 5, 3, 4
  corr = rng.uniform(size=(b, h_b, w_b, h_a * w_a))
  theta = _theta(rng, kind, b, 0.15)
  mask_a = rng.uniform(size=(b, h_a, w_a, 1))
  mask_b = rng.uniform(size=(b, h_b, w_b, 1))
  ref = _np_matching(corr, theta, kind, mask_a, mask_b, h_a, w_a, phi,
                     distance, normalize)
  f = jax.jit(lambda c, t, ma, mb: matching.matching_loss(
      correlation=c, theta=t, kind=kind, mask_a=ma, mask_b=mb, phi=phi,
      distance=distance, normalize=normalize))
  out = f(_f32(corr), _f32(theta), _f32(mask_a), _f32(mask_b))
  np.testing.assert_allclose(float(out), ref, rtol=RTOL)
  # vmap over groups of batches: each group is its own loss.
  args = [_f32(np.stack([x, x[::-1]])) for x in (corr, theta, mask_a, mask_b)]
  mapped = jax.vmap(f)(*args)
  ref_rev = _np_matching(corr[::-1], theta[::-1], kind, mask_a[::-1],
                         mask_b[::-1], h_a, w_a, phi, distance, normalize)
  np.testing.assert_allclose(np.asarray(mapped), [ref, ref_rev], rtol=RTOL)


@pytest.mark.parametrize("kind,normalize", [
    ("affine", "none"), ("affine_tps", "none"), ("tps", "inliers"),
    ("affine", "grid")])
def test_eq4_one_mask_per_direction_matches_numpy(kind, normalize):
  """Eq. 4 for a pair (A, B): each direction sums the inlier scores over the
  points its map is evaluated at, weighted by that image's mask only, and
  the two directions add up."""
  rng = np.random.default_rng(3)
  b, h_a, w_a, h_b, w_b = 2, 4, 5, 3, 4
  s_ab = rng.uniform(size=(b, h_b, w_b, h_a * w_a))  # B's grid, A's cells
  s_ba = rng.uniform(size=(b, h_a, w_a, h_b * w_b))  # A's grid, B's cells
  t_ab = _theta(rng, kind, b, 0.15)
  t_ba = _theta(rng, kind, b, 0.15)
  m_a = rng.uniform(size=(b, h_a, w_a, 1))
  m_b = rng.uniform(size=(b, h_b, w_b, 1))
  ref = (_np_matching(s_ab, t_ab, kind, None, m_b, h_a, w_a, 1.0,
                      "chebyshev", normalize) +
         _np_matching(s_ba, t_ba, kind, None, m_a, h_b, w_b, 1.0,
                      "chebyshev", normalize))

  @jax.jit
  def pair_loss(s_ab, s_ba, t_ab, t_ba, m_a, m_b):
    one = lambda s, t, m, size: matching.matching_loss(
        correlation=s, theta=t, kind=kind, mask_b=m, source_size=size,
        normalize=normalize)
    return (one(s_ab, t_ab, m_b, (h_a, w_a)) +
            one(s_ba, t_ba, m_a, (h_b, w_b)))

  out = pair_loss(*map(_f32, (s_ab, s_ba, t_ab, t_ba, m_a, m_b)))
  np.testing.assert_allclose(float(out), ref, rtol=RTOL)
  # Only the grid image's mask enters a direction: A's mask does not change
  # the A -> B term.
  one_ab = lambda ma: _np_matching(s_ab, t_ab, kind, None, m_b, h_a, w_a, 1.0,
                                   "chebyshev", normalize)
  assert one_ab(m_a) == one_ab(1 - m_a)
  if normalize == "none":
    # Eq. 4 is a plain sum: all-ones masks give the total inlier score.
    ones = matching.matching_loss(
        correlation=_f32(s_ab), theta=_f32(t_ab), kind=kind,
        mask_b=jnp.ones((b, h_b, w_b, 1)), source_size=(h_a, w_a))
    bare = matching.matching_loss(
        correlation=_f32(s_ab), theta=_f32(t_ab), kind=kind,
        source_size=(h_a, w_a))
    np.testing.assert_allclose(float(ones), float(bare), rtol=RTOL)


def test_matching_identity_with_phi_zero_scores_the_diagonal():
  rng = np.random.default_rng(1)
  h = w = 3
  corr = rng.uniform(size=(1, h, w, h * w))
  mask = rng.uniform(size=(1, h, w, 1))
  out = jax.jit(lambda c, m: matching.matching_loss(
      correlation=c, theta=geometry.identity_theta("affine"),
      kind="affine", mask_b=m, phi=0.0))(_f32(corr), _f32(mask))
  # Known value: only q == k pairs count, k = x * h + y; eq. 4's plain sum.
  diag = sum(mask[0, y, x, 0] * corr[0, y, x, x * h + y]
             for y in range(h) for x in range(w))
  np.testing.assert_allclose(float(out), -diag, rtol=RTOL)
  grid = matching.matching_loss(
      correlation=_f32(corr), theta=geometry.identity_theta("affine"),
      kind="affine", mask_b=_f32(mask), phi=0.0, normalize="grid")
  np.testing.assert_allclose(float(grid), -diag / (h * w), rtol=RTOL)


def test_correspondence_mask_is_hard_threshold_for_whole_cell_shift():
  """Eq. 2 exactly: a one-cell shift in x maps q to q + (1, 0)."""
  h = w = 5
  shift = 2.0 / (w - 1)  # one grid cell in normalised units
  theta = jnp.array([[1.0, 0.0, shift, 0.0, 1.0, 0.0]])
  m = np.asarray(matching.correspondence_mask(
      theta=theta, kind="affine", target_size=(h, w), source_size=(h, w),
      phi=1.0, distance="euclidean"))
  ref = np.zeros((h, w, h * w))
  for y in range(h):
    for x in range(w):
      for xa in range(w):
        for ya in range(h):
          inside = x + 1 < w
          close = np.hypot(x + 1 - xa, y - ya) <= 1.0
          ref[y, x, xa * h + ya] = float(inside and close)
  np.testing.assert_allclose(m[0], ref, atol=1e-6)


def test_matching_gradient_vs_finite_differences():
  rng = np.random.default_rng(2)
  corr = rng.uniform(size=(2, 3, 3, 9))
  theta = _theta(rng, "affine", 2, 0.13)
  mask = rng.uniform(size=(2, 3, 3, 1))
  with jax.enable_x64(True):
    f = jax.jit(lambda t: matching.matching_loss(
        correlation=jnp.asarray(corr), theta=t, kind="affine",
        mask_a=jnp.asarray(mask), mask_b=jnp.asarray(mask)))
    t64 = jnp.asarray(theta)
    g = np.asarray(jax.jit(jax.grad(f))(t64))
    assert np.any(np.abs(g) > 1e-4)
    for idx in [(0, 0), (0, 2), (1, 4), (1, 5)]:
      e = np.zeros(theta.shape)
      e[idx] = 1e-6
      fd = (float(f(t64 + e)) - float(f(t64 - e))) / 2e-6
      np.testing.assert_allclose(g[idx], fd, rtol=1e-4, atol=1e-8)


def test_matching_rejects_non_square_without_mask():
  with pytest.raises(ValueError, match="h_a\\*w_a"):
    matching.matching_loss(correlation=jnp.zeros((1, 2, 2, 6)),
                           theta=geometry.identity_theta("affine"),
                           kind="affine")
  with pytest.raises(ValueError, match="mask_b"):
    matching.matching_loss(correlation=jnp.zeros((1, 2, 2, 6)),
                           theta=geometry.identity_theta("affine"),
                           kind="affine", source_size=(2, 3),
                           mask_b=jnp.ones((1, 3, 3, 1)))
  with pytest.raises(ValueError, match="distance"):
    matching.matching_loss(correlation=jnp.zeros((1, 2, 2, 4)),
                           theta=geometry.identity_theta("affine"),
                           kind="affine", distance="manhattan")
  with pytest.raises(ValueError, match="normalize"):
    matching.matching_loss(correlation=jnp.zeros((1, 2, 2, 4)),
                           theta=geometry.identity_theta("affine"),
                           kind="affine", normalize="area")


# ------------------------------------------------------ cycle / transitivity


def test_sample_points_shape_range_and_key():
  key = jax.random.PRNGKey(0)
  p = matching.sample_points(key, batch=3)
  assert p.shape == (3, 100, 2)
  assert float(jnp.min(p)) >= -1 and float(jnp.max(p)) <= 1
  np.testing.assert_array_equal(np.asarray(p), np.asarray(
      matching.sample_points(key, batch=3)))
  assert not np.allclose(np.asarray(p), np.asarray(matching.sample_points(
      jax.random.PRNGKey(1), batch=3)))


@pytest.mark.parametrize("kind", ["affine", "tps", "affine_tps"])
def test_cycle_loss_matches_numpy(kind):
  rng = np.random.default_rng(3)
  pts = rng.uniform(-1, 1, size=(2, 7, 2))
  t_ab, t_ba = _theta(rng, kind, 2, 0.1), _theta(rng, kind, 2, 0.1)
  back = _np_transform(t_ba, _np_transform(t_ab, pts, kind), kind)
  ref = np.mean(np.sum((back - pts) ** 2, -1))
  f = jax.jit(lambda p, a, b: matching.cycle_consistency_loss(
      points=p, theta_ab=a, theta_ba=b, kind=kind))
  np.testing.assert_allclose(float(f(_f32(pts), _f32(t_ab), _f32(t_ba))), ref,
                             rtol=RTOL)
  mapped = jax.vmap(f)(_f32(pts[None]), _f32(t_ab[None]), _f32(t_ba[None]))
  np.testing.assert_allclose(np.asarray(mapped), [ref], rtol=RTOL)


def test_cycle_loss_zero_for_inverse_pair_and_gradient():
  rng = np.random.default_rng(4)
  t_ab = _f32(_theta(rng, "affine", 2, 0.2))
  pts = matching.sample_points(jax.random.PRNGKey(3), batch=2)
  zero = jax.jit(lambda p, t: matching.cycle_consistency_loss(
      points=p, theta_ab=t, theta_ba=geometry.invert_affine(t),
      kind="affine"))(pts, t_ab)
  assert float(zero) < 1e-10
  with jax.enable_x64(True):
    p64 = jnp.asarray(rng.uniform(-1, 1, (2, 5, 2)))
    b64 = jnp.asarray(_theta(rng, "affine_tps", 2, 0.1))
    a64 = jnp.asarray(_theta(rng, "affine_tps", 2, 0.1))
    f = jax.jit(lambda a: matching.cycle_consistency_loss(
        points=p64, theta_ab=a, theta_ba=b64, kind="affine_tps"))
    g = np.asarray(jax.jit(jax.grad(f))(a64))
    for idx in [(0, 0), (1, 3), (0, 10), (1, 23)]:
      e = np.zeros(a64.shape)
      e[idx] = 1e-6
      fd = (float(f(a64 + e)) - float(f(a64 - e))) / 2e-6
      np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["affine", "affine_tps"])
def test_transitivity_loss_matches_numpy(kind):
  rng = np.random.default_rng(5)
  pts = rng.uniform(-1, 1, size=(3, 6, 2))
  ts = [_theta(rng, kind, 3, 0.1) for _ in range(3)]
  out_pts = pts
  for t in ts:  # order: T_AB first, then T_BC, then T_CA
    out_pts = _np_transform(t, out_pts, kind)
  ref = np.mean(np.sum((out_pts - pts) ** 2, -1))
  f = jax.jit(lambda p, a, b, c: matching.transitivity_loss(
      points=p, theta_ab=a, theta_bc=b, theta_ca=c, kind=kind))
  out = f(_f32(pts), *[_f32(t) for t in ts])
  np.testing.assert_allclose(float(out), ref, rtol=RTOL)
  mapped = jax.vmap(f)(_f32(pts[None]), *[_f32(t[None]) for t in ts])
  np.testing.assert_allclose(np.asarray(mapped), [ref], rtol=RTOL)
  # The order matters (affine maps do not commute in general).
  swapped = f(_f32(pts), _f32(ts[1]), _f32(ts[0]), _f32(ts[2]))
  assert abs(float(swapped) - ref) > 1e-6


# ------------------------------------------------------------ contrastive


def _np_contrastive(oa, ob, ba, bb, margin, reduction="mean"):
  c = oa.shape[-1]
  dp = np.sum((oa - ob) ** 2, -1) / c
  dn = (np.sum((oa - ba) ** 2, -1) + np.sum((ob - bb) ** 2, -1)) / c
  if reduction == "mean":
    dn = dn / 2  # eq. 10: 1 / (2c)
  return np.mean(dp + np.maximum(0.0, margin - dn))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_contrastive_matches_numpy_jit_vmap(reduction):
  rng = np.random.default_rng(6)
  # Scales chosen so some pairs are inside the margin and some outside.
  feats = [rng.normal(size=(4, 8)) * s for s in (1.0, 1.0, 0.5, 1.5)]
  ref = _np_contrastive(*feats, margin=2.0, reduction=reduction)
  f = jax.jit(lambda a, b, c, d: contrastive.perceptual_contrastive_loss(
      object_a=a, object_b=b, background_a=c, background_b=d,
      reduction=reduction))
  np.testing.assert_allclose(float(f(*map(_f32, feats))), ref, rtol=RTOL)
  groups = [np.stack([x[:2], x[2:]]) for x in feats]
  mapped = jax.vmap(f)(*map(_f32, groups))
  np.testing.assert_allclose(
      np.asarray(mapped),
      [_np_contrastive(*[x[:2] for x in feats], 2.0, reduction),
       _np_contrastive(*[x[2:] for x in feats], 2.0, reduction)], rtol=RTOL)
  # Known value: identical objects, background far beyond the margin -> 0.
  o = np.ones((1, 4))
  assert float(contrastive.perceptual_contrastive_loss(
      object_a=_f32(o), object_b=_f32(o), background_a=_f32(o + 3),
      background_b=_f32(o - 3), reduction=reduction)) == 0.0
  # Known value: everything equal -> d+ = 0, d- = 0, loss = margin.
  assert float(contrastive.perceptual_contrastive_loss(
      object_a=_f32(o), object_b=_f32(o), background_a=_f32(o),
      background_b=_f32(o), margin=2.0, reduction=reduction)) == 2.0


def test_contrastive_eq10_halves_the_figure_ground_distance():
  """Eq. 10 divides the sum of the two distances by 2c: at a traced margin
  the hinge switches off exactly at the mean of the two per-image
  distances."""
  o = np.zeros((1, 4))
  b1, b2 = np.full((1, 4), 1.0), np.full((1, 4), 2.0)  # distances 1 and 4
  loss = lambda m, r: float(contrastive.perceptual_contrastive_loss(
      object_a=_f32(o), object_b=_f32(o), background_a=_f32(b1),
      background_b=_f32(b2), margin=jnp.float32(m), reduction=r))
  np.testing.assert_allclose(loss(3.0, "mean"), 0.5)  # 3 - (1 + 4) / 2
  assert loss(2.5, "mean") == 0.0
  np.testing.assert_allclose(loss(6.0, "sum"), 1.0)  # 6 - (1 + 4)
  with pytest.raises(ValueError, match="reduction"):
    loss(1.0, "max")


def test_contrastive_gradient_vs_finite_differences():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    feats = [jnp.asarray(rng.normal(size=(3, 5)) * 0.3) for _ in range(4)]
    f = jax.jit(lambda a: contrastive.perceptual_contrastive_loss(
        object_a=a, object_b=feats[1], background_a=feats[2],
        background_b=feats[3]))
    d_neg = (np.sum((np.asarray(feats[0]) - np.asarray(feats[2])) ** 2, -1) +
             np.sum((np.asarray(feats[1]) - np.asarray(feats[3])) ** 2, -1)
             ) / (2 * 5)
    assert np.all(np.abs(d_neg - 2.0) > 1e-3)  # away from the hinge kink
    g = np.asarray(jax.jit(jax.grad(f))(feats[0]))
    for idx in [(0, 0), (1, 3), (2, 4)]:
      e = np.zeros((3, 5))
      e[idx] = 1e-6
      fd = (float(f(feats[0] + e)) - float(f(feats[0] - e))) / 2e-6
      np.testing.assert_allclose(g[idx], fd, rtol=1e-6, atol=1e-10)


def test_object_background_images():
  img = np.full((1, 2, 2, 3), 0.5)
  mask = np.array([[[[1.0], [0.0]], [[0.25], [1.0]]]])
  obj, bg = contrastive.object_background_images(images=img, masks=mask)
  np.testing.assert_allclose(obj + bg, img)
  np.testing.assert_allclose(obj[0, 1, 0], [0.125] * 3)


def test_object_background_images_fill_the_mean_colour():
  """Eq. 7 on normalised images: removed pixels become the fill colour, kept
  pixels stay, and after normalisation (x - fill) / s the pair is exactly
  M * x_n and (1 - M) * x_n."""
  rng = np.random.default_rng(8)
  img = rng.uniform(size=(2, 3, 4, 3))
  mask = rng.uniform(size=(2, 3, 4, 1))
  mask[0, 0, 0] = 0.0
  mask[0, 0, 1] = 1.0
  fill = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  obj, bg = map(np.asarray, contrastive.object_background_images(
      images=_f32(img), masks=_f32(mask), fill=tuple(fill)))
  np.testing.assert_allclose(obj[0, 0, 0], fill, rtol=1e-6)
  np.testing.assert_allclose(bg[0, 0, 1], fill, rtol=1e-6)
  np.testing.assert_allclose(obj[0, 0, 1], img[0, 0, 1], rtol=1e-6)
  norm = lambda x: (x - fill) / std
  np.testing.assert_allclose(norm(obj), mask * norm(img), atol=1e-5)
  np.testing.assert_allclose(norm(bg), (1 - mask) * norm(img), atol=1e-5)


def test_image_distance_reference_matches_numpy():
  rng = np.random.default_rng(9)
  f = rng.normal(size=(5, 7))
  ref = np.mean([np.sum((f[i] - f[j]) ** 2) / 7
                 for i in range(5) for j in range(5) if i != j])
  out = jax.jit(contrastive.image_distance_reference)(_f32(f))
  np.testing.assert_allclose(float(out), ref, rtol=1e-5)
  assert float(contrastive.image_distance_reference(_f32(f[:1].repeat(3, 0)))
               ) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="N >= 2"):
    contrastive.image_distance_reference(_f32(f[:1]))


# ------------------------------------------------------ cross consistency


def _np_cross(la, lb, t_ab, t_ba, kind, ignore_outside):
  sig = lambda x: 1 / (1 + np.exp(-x))
  b, h, w, _ = la.shape
  g_ab = _np_grid(t_ab, h, w, kind)
  g_ba = _np_grid(t_ba, h, w, kind)
  a_in_b = _np_bilinear(sig(la), g_ab, True, "zeros")
  b_in_a = _np_bilinear(sig(lb), g_ba, True, "zeros")
  bce = lambda l, t: -(t * np.log(sig(l)) + (1 - t) * np.log(1 - sig(l)))
  if ignore_outside:
    w_b = _np_bilinear(np.ones_like(la), g_ab, True, "zeros")
    w_a = _np_bilinear(np.ones_like(la), g_ba, True, "zeros")
    return 0.5 * (np.sum(bce(la, b_in_a) * w_a) / np.sum(w_a) +
                  np.sum(bce(lb, a_in_b) * w_b) / np.sum(w_b))
  return 0.5 * (np.mean(bce(la, b_in_a)) + np.mean(bce(lb, a_in_b)))


@pytest.mark.parametrize("kind,ignore", [("affine", False), ("tps", True),
                                         ("affine_tps", False)])
def test_cross_consistency_matches_numpy(kind, ignore):
  rng = np.random.default_rng(8)
  la = rng.normal(size=(2, 5, 6, 1)) * 2
  lb = rng.normal(size=(2, 5, 6, 1)) * 2
  t_ab, t_ba = _theta(rng, kind, 2, 0.15), _theta(rng, kind, 2, 0.15)
  ref = _np_cross(la, lb, t_ab, t_ba, kind, ignore)
  f = jax.jit(lambda a, b, s, t: contrastive.cross_consistency_loss(
      mask_logits_a=a, mask_logits_b=b, theta_ab=s, theta_ba=t, kind=kind,
      ignore_outside=ignore))
  out = f(_f32(la), _f32(lb), _f32(t_ab), _f32(t_ba))
  np.testing.assert_allclose(float(out), ref, rtol=RTOL)
  mapped = jax.vmap(f)(*[_f32(x[None]) for x in (la, lb, t_ab, t_ba)])
  np.testing.assert_allclose(np.asarray(mapped), [ref], rtol=RTOL)


def test_cross_consistency_gradient_and_stop_gradient():
  rng = np.random.default_rng(9)
  with jax.enable_x64(True):
    la = jnp.asarray(rng.normal(size=(1, 4, 4, 1)))
    lb = jnp.asarray(rng.normal(size=(1, 4, 4, 1)))
    t = jnp.asarray(_theta(rng, "affine", 1, 0.1))
    f = jax.jit(lambda a: contrastive.cross_consistency_loss(
        mask_logits_a=a, mask_logits_b=lb, theta_ab=t, theta_ba=t,
        kind="affine"))
    g = np.asarray(jax.jit(jax.grad(f))(la))
    for idx in [(0, 0, 0, 0), (0, 2, 1, 0), (0, 3, 3, 0)]:
      e = np.zeros(la.shape)
      e[idx] = 1e-6
      fd = (float(f(la + e)) - float(f(la - e))) / 2e-6
      np.testing.assert_allclose(g[idx], fd, rtol=1e-6, atol=1e-10)
    # With stop_gradient_targets, A's logits only get the BCE(l_A, .) part.
    fs = lambda a: contrastive.cross_consistency_loss(
        mask_logits_a=a, mask_logits_b=lb, theta_ab=t, theta_ba=t,
        kind="affine", stop_gradient_targets=True)
    gs = np.asarray(jax.jit(jax.grad(fs))(la))
    b_in_a = jax.jit(lambda m: geometry.warp(
        image=jax.nn.sigmoid(m), theta=t, kind="affine"))(lb)
    expected = 0.5 * (jax.nn.sigmoid(la) - b_in_a) / la.size
    np.testing.assert_allclose(gs, np.asarray(expected), rtol=1e-9, atol=1e-12)


def test_cross_consistency_identity_equal_masks_is_entropy():
  """Known value: identity warps, same logits -> mean binary entropy."""
  logits = np.array([[[[0.0], [2.0]], [[-1.0], [3.0]]]])
  p = 1 / (1 + np.exp(-logits))
  # Identity on a 2x2 grid samples pixel centres exactly.
  ent = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
  ident = geometry.identity_theta("affine")
  out = jax.jit(lambda l: contrastive.cross_consistency_loss(
      mask_logits_a=l, mask_logits_b=l, theta_ab=ident, theta_ba=ident,
      kind="affine"))(_f32(logits))
  np.testing.assert_allclose(float(out), ent, rtol=RTOL)


def test_registered_names():
  assert losses.get_loss("macos_matching") is matching.matching_loss
  assert losses.get_loss("macos_cycle") is matching.cycle_consistency_loss
  assert losses.get_loss("macos_transitivity") is matching.transitivity_loss
  assert (losses.get_loss("macos_contrastive")
          is contrastive.perceptual_contrastive_loss)
  assert (losses.get_loss("macos_cross_consistency")
          is contrastive.cross_consistency_loss)
