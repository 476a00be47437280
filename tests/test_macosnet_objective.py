"""What MaCoSNet's weakly supervised objective asks of the masks.

The properties behind the diagnosis of the weak objective on synthetic pairs
(docs/notes/lab_notebook.md, "Does the weak objective train the masks?"): the
perceptual contrastive loss (eq. 8-10) is exactly free of its d+ term at the
all-background mask and cannot tell object from background through d-. (A
slow test asserting that joint training raises J on synthetic pairs is not
here: with tiny random networks, 60 joint steps lowered the held-out Otsu J;
same notebook section.)
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coseg_jax.losses import contrastive
from coseg_jax.models import macosnet

SIZE = 176


def _tiny(**kw):
  cfg = dict(backbone="tiny", backbone_kwargs={"widths": (4, 8, 8, 16, 16)},
             perceptual="tiny", stage2_input="features", num_points=10,
             decoder_final_width=4)
  cfg.update(kw)
  return macosnet.build_model(ml_collections.ConfigDict(cfg), "joint")


def _distances(obj, bg):
  c = obj.shape[-1]
  d_pos = jnp.sum((obj[0] - obj[1]) ** 2) / c
  d_neg = (jnp.sum((obj[0] - bg[0]) ** 2) + jnp.sum((obj[1] - bg[1]) ** 2)) / c
  return float(d_pos), float(d_neg)


def test_contrastive_has_d_plus_zero_at_empty_masks_and_symmetric_d_minus():
  """M = 0 makes both object images blank (d+ = 0 exactly, whatever F), and
  d- is the same for M and 1 - M: only d+ separates object from background,
  and the empty mask minimises it (the degenerate solution)."""
  model = _tiny()
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, SIZE, SIZE, 3))
  x = images[None]
  variables = model.init({"params": jax.random.PRNGKey(1)}, x)

  def feats(masks):
    return model.apply(variables, images, masks,
                       method=macosnet.MaCoSNet.perceptual_features)

  masks = jax.random.uniform(jax.random.PRNGKey(2), (2, SIZE, SIZE, 1))
  obj, bg = feats(masks)
  _, d_neg = _distances(obj, bg)
  obj_i, bg_i = feats(1.0 - masks)
  _, d_neg_i = _distances(obj_i, bg_i)
  np.testing.assert_allclose(d_neg_i, d_neg, rtol=1e-5)
  obj0, bg0 = feats(jnp.zeros_like(masks))
  assert _distances(obj0, bg0)[0] == 0.0
  loss0 = contrastive.perceptual_contrastive_loss(
      object_a=obj0[:1], object_b=obj0[1:], background_a=bg0[:1],
      background_b=bg0[1:])
  # Eq. 10: the two figure-ground distances / 2c.
  np.testing.assert_allclose(float(loss0),
                             max(0.0, 2.0 - 0.5 * _distances(obj0, bg0)[1]),
                             rtol=1e-6)

