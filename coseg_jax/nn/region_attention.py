"""Region Correspondence Module (RCM), CycleSegNet eq. 9-14.

The RCM lets every pixel of image A look at a few *regions* of image B and
collect what it finds there. With C_A [H, W, C] and C_B [H', W', C]
(Zhang et al., TIP 2021, Sec. 3.2):

1. Regions of B (eq. 9): C'_B = ROI(C_B), ROI average pooling and ROI max
   pooling of C_B to an Ĥ x Ŵ grid (2x2 in the paper; torch bin edges, see
   ``roi_pool``) "fused by convolutions": here concatenated on channels and
   fused by one convolution into C'_B [Ĥ, Ŵ, C], i.e. N = ĤŴ region vectors.
2. Affinity (eq. 10): S = W_A(C_A) W_B(C'_B)^T [HW, N], W "the linear
   transformation function followed by ReLU, implemented as 1 x 1
   convolutions": Q = ReLU(conv1x1(C_A)) [HW, d], K = ReLU(conv1x1(C'_B))
   [N, d].
3. Attention (eq. 11): X = softmax(S) C'_B, the softmax over the regions
   (every row of A = softmax(S) sums to 1) and the values the fused regions
   C'_B themselves, reshaped to [H, W, C]. They carry the sign of the cell
   state they were pooled from (the CRM feeds the ConvLSTM cell states C_t).
4. Global term (eq. 12): the global average of C_B, [C], upsampled
   (broadcast) to [H, W, C]. The output is the average of the two terms,
   RCM(C_A, C_B) = (X + Up(AvgPool(C_B))) / 2, [H, W, C].

Group form (eq. 13-14): for K images, image k attends to the regions of all
other K-1 images concatenated ((K-1)N regions) and its global term averages the
other images' global averages. We compute it for all k in one pass: the
regions of all K images are concatenated once ([K N] keys and values) and an
attention mask removes image k's own regions from its softmax, so there is no
loop over images and K is free at apply time. For K = 2 it equals the pair form
with the same parameters.

Choices the paper leaves open, and what we do (all attributes):

* ``fuse_kernel``: kernel of the region fusion conv (default 1: the 2x2 region
  grid is so small that a 3x3 conv would mix regions through its padding). No
  activation after the fusion conv.
* ``key_features`` d: width of Q and K (default: C, the input width).
* ``scale``: multiply Q K^T by 1/sqrt(d) (default False; the paper's softmax
  is unscaled).
* ``regions='raw'``: no pooling, every pixel of the other image is a region
  (N = H'W'); the same fusion conv is applied to concat[C_B, C_B] so the
  parameters are identical to the pooled variant (the avg and max of one pixel
  are the pixel itself). Table 3's "Raw" row.
* The attention softmax is computed in float32 whatever ``dtype`` is.

Not in the paper:

* ``project_value``: values V = ReLU(conv1x1(C'_B)) with C output channels
  instead of C'_B (the module's default True, our earlier reading; the ReLU
  drops the sign of the exchanged cell-state cues). False is eq. 11, the
  paper configuration's setting (``config.model.value_projection``).
* ``match_score`` (off by default): append one channel to the output, each
  pixel's best cosine similarity between its query and the keys of the other
  image's regions (in [0, 1]: queries and keys are ReLU outputs; in group form
  the best over the other K-1 images). The softmax of eq. 11 normalises away
  how well a pixel matches *anything* in the other image: a pixel of an object
  the other image does not contain still receives a convex combination of that
  image's regions, and the ConvLSTM can only tell it from a matched pixel by
  comparing two feature vectors through its gates. The score gives that
  comparison directly, and reading it off a trained model shows whether the
  attention has learnt to match at all (docs/notes/lab_notebook.md: on the offline
  demo it had not, and adding the channel did not change the J).
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.nn import roi_pool


class RegionCorrespondence(nn.Module):
  """CycleSegNet's RCM; group form ``__call__`` and pair form ``pair``.

  Both forms use the same parameters (fusion, query, key, value convs).

  Attributes:
    features: C, channels of the input features; the output has C channels.
    key_features: d, width of queries and keys (None: C).
    region_size: (Ĥ, Ŵ) grid of pooled regions (paper: 2x2).
    regions: 'pooled' (eq. 9) or 'raw' (every pixel of the other image).
    fuse_kernel: kernel of the conv fusing avg- and max-pooled regions.
    project_value: project values with a 1x1 conv + ReLU (ours; False: the
      fused regions C'_B, eq. 11).
    scale: scale the attention logits by 1/sqrt(d).
    match_score: append the best query-key cosine similarity as one more
      output channel (not in the paper; see the module docstring).
    dtype: computation dtype (params float32; softmax in float32).
  """
  features: int
  key_features: Optional[int] = None
  region_size: Tuple[int, int] = (2, 2)
  regions: str = "pooled"
  fuse_kernel: int = 1
  project_value: bool = True
  scale: bool = False
  match_score: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.regions not in ("pooled", "raw"):
      raise ValueError(
          f"RegionCorrespondence.regions must be 'pooled' or 'raw', got "
          f"{self.regions!r}")
    d = self.key_features or self.features
    k = (self.fuse_kernel, self.fuse_kernel)
    self.fuse = nn.Conv(self.features, k, padding="SAME", dtype=self.dtype)
    self.query = nn.Conv(d, (1, 1), dtype=self.dtype)
    self.key = nn.Conv(d, (1, 1), dtype=self.dtype)
    if self.project_value:
      self.value = nn.Conv(self.features, (1, 1), dtype=self.dtype)

  def _check(self, x, name):
    if x.shape[-1] != self.features:
      raise ValueError(
          f"RegionCorrespondence(features={self.features}): {name} has "
          f"{x.shape[-1]} channels (shape {x.shape})")

  def _regions(self, x):
    """x [B, H, W, C] -> fused region features [B, N, C]."""
    if self.regions == "raw":
      pooled = jnp.concatenate([x, x], axis=-1)
    else:
      pooled = jnp.concatenate([roi_pool.adaptive_avg_pool(x, self.region_size),
                                roi_pool.adaptive_max_pool(x, self.region_size)],
                               axis=-1)
    r = self.fuse(pooled)
    return r.reshape(r.shape[0], -1, r.shape[-1])

  def _keys_values(self, r):
    """Regions [..., N, C] -> keys [..., N, d], values [..., N, C]."""
    keys = nn.relu(self.key(r[..., None, :, :]))[..., 0, :, :]
    if not self.project_value:
      return keys, r
    return keys, nn.relu(self.value(r[..., None, :, :]))[..., 0, :, :]

  def _logits(self, q, keys, equation):
    logits = jnp.einsum(equation, q, keys).astype(jnp.float32)
    if self.scale:
      logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    return logits

  def _best_match(self, q, keys, equation, own=None):
    """Best cosine similarity of each query over the keys, [..., 1] float32.

    ``own`` (broadcastable to the similarities) marks keys a query may not
    match (its own image's regions in group form).
    """
    def unit(v):
      v = v.astype(jnp.float32)
      # rsqrt(|v|^2 + eps): finite gradient at v = 0 (a ReLU can zero a
      # whole query or key), unlike v / |v|.
      return v * jax.lax.rsqrt(jnp.sum(v * v, -1, keepdims=True) + 1e-12)
    sims = jnp.einsum(equation, unit(q), unit(keys))
    if own is not None:
      sims = jnp.where(own, -1.0, sims)
    return jnp.max(sims, axis=-1, keepdims=True)

  def _with_match(self, out, q, keys, equation, own=None):
    if not self.match_score:
      return out
    best = self._best_match(q, keys, equation, own)
    return jnp.concatenate([out, best.astype(out.dtype)], axis=-1)

  def pair(self, c_a: jnp.ndarray, c_b: jnp.ndarray, *,
           return_attention: bool = False):
    """RCM(C_A, C_B): image A attends to the regions of image B.

    Args:
      c_a: this image's features [B, H, W, C].
      c_b: the other image's features [B, H', W', C].
      return_attention: also return the attention maps.

    Returns:
      [B, H, W, C] ([B, H, W, C + 1] with ``match_score``), and with
      ``return_attention`` the maps [B, H, W, N]
      (N = ĤŴ, or H'W' for raw regions; each pixel's row sums to 1).
    """
    self._check(c_a, "c_a")
    self._check(c_b, "c_b")
    keys, values = self._keys_values(self._regions(c_b))
    q = nn.relu(self.query(c_a))
    attn = jax.nn.softmax(self._logits(q, keys, "bhwd,bnd->bhwn"), axis=-1)
    local = jnp.einsum("bhwn,bnc->bhwc", attn.astype(values.dtype), values)
    glob = jnp.mean(c_b, axis=(1, 2))[:, None, None, :]
    out = 0.5 * (local + glob.astype(local.dtype))
    out = self._with_match(out, q, keys, "bhwd,bnd->bhwn")
    return (out, attn) if return_attention else out

  def __call__(self, features: jnp.ndarray, *, return_attention: bool = False):
    """Group form: each of K images attends to the other K-1 images' regions.

    Args:
      features: [B, K, H, W, C], K >= 2 (free at apply time).
      return_attention: also return the attention maps.

    Returns:
      [B, K, H, W, C] ([B, K, H, W, C + 1] with ``match_score``), and with
      ``return_attention`` the maps
      [B, K, H, W, K * N]; columns j*N .. (j+1)*N - 1 are the regions of
      image j, and an image's own columns are exactly 0.
    """
    if features.ndim != 5:
      raise ValueError(
          f"RegionCorrespondence group form expects [B, K, H, W, C], got "
          f"shape {features.shape}; use .pair(c_a, c_b) for two maps")
    self._check(features, "features")
    b, k, h, w, c = features.shape
    if k < 2:
      raise ValueError(f"group form needs K >= 2 images, got K={k}")
    r = self._regions(features.reshape(b * k, h, w, c))  # [B*K, N, C]
    n = r.shape[1]
    keys, values = self._keys_values(r.reshape(b, k * n, c))
    q = nn.relu(self.query(features))  # [B, K, H, W, d]
    logits = self._logits(q, keys, "bkhwd,bmd->bkhwm")
    # own[k, m]: region m belongs to image k; those never enter k's softmax.
    own = (jnp.arange(k * n) // n)[None, :] == jnp.arange(k)[:, None]
    logits = jnp.where(own[None, :, None, None, :], -jnp.inf, logits)
    attn = jax.nn.softmax(logits, axis=-1)
    local = jnp.einsum("bkhwm,bmc->bkhwc", attn.astype(values.dtype), values)
    gap = jnp.mean(features, axis=(2, 3))  # [B, K, C]
    others = (jnp.sum(gap, axis=1, keepdims=True) - gap) / (k - 1)
    out = 0.5 * (local + others[:, :, None, None, :].astype(local.dtype))
    out = self._with_match(out, q, keys, "bkhwd,bmd->bkhwm",
                           own[None, :, None, None, :])
    return (out, attn) if return_attention else out


def rcm_pair(module: RegionCorrespondence, variables, c_a, c_b, **kwargs):
  """Functional pair form: ``module.apply(variables, c_a, c_b, method=pair)``."""
  return module.apply(variables, c_a, c_b, method=RegionCorrespondence.pair,
                      **kwargs)
