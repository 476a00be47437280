"""Unsupervised object proposals and the mask-selection step of Hsu et al.

The co-attention CNN (Hsu, Lin and Chuang, IJCAI 2018, Sec. 3.3) refines its
co-attention maps S with a mask loss against an object mask O built, at every
epoch, from a fixed pool of unsupervised object proposals of each image. The
paper uses GOP (geodesic object proposals, Krähenbühl & Koltun 2014), which has
no maintained implementation today. This module provides:

* :func:`selective_search`: segment proposals by hierarchical grouping of
  Felzenszwalb-Huttenlocher graph-based segments (scikit-image's maintained
  ``felzenszwalb``), in the manner of Selective Search (Uijlings et al., IJCV
  2013): adjacent regions are merged greedily by a sum of colour, texture,
  size and fill similarities, and every region of every hierarchy is a
  proposal; several strategies (colour spaces x segmentation scales x
  similarity sets) are pooled and de-duplicated. Why this and not OpenCV's
  ``ximgproc`` selective search: that one needs ``opencv-contrib``, which
  replaces the ``cv2`` package the project already depends on, and it returns
  boxes, not the segment masks the mask loss needs. GOP, like this, yields
  segment masks; ~a few hundred to ~1,000 per image at the default settings.
* :func:`collection_proposals`: proposals of every image of a collection,
  computed once and cached in an ``.npz`` (bit-packed masks) keyed by a hash
  of the images and the settings.
* :func:`select_object_mask`: the paper's selection (O = argmin_O ||S - O||^2
  over the proposals) with its iterative multi-object merge.

Choices the papers leave open (config fields of ``ProposalConfig`` and of
:func:`select_object_mask`):

* Similarities follow Uijlings et al.: colour = histogram intersection of
  25-bin per-channel histograms; texture = histogram intersection of 10-bin
  histograms of Gaussian-derivative (sigma 1) responses in 8 orientations per
  channel; size = 1 - (|r_i| + |r_j|) / |image|; fill = 1 - (|bbox_ij| -
  |r_i| - |r_j|) / |image|. All histograms are L1-normalised; a merged
  region's histograms are the size-weighted mean.
* When more unique proposals than ``max_proposals`` remain, they are ranked as
  in Selective Search (position in its hierarchy, counted from the final
  whole-image region, times a uniform random number; seeded) and the best
  kept. Proposals smaller than ``min_area`` or larger than ``max_area`` of
  the image are dropped.
* Multi-object merge (paper Sec. 3.3: "merge the best proposal, remove the
  overlapping ones, zero S below the mean of the chosen proposal, repeat until
  S is empty or no proposal remains"): the residual map R starts as S. Each
  round picks argmin_k ||R - P_k||^2 over the remaining proposals, ORs it into
  O, removes every remaining proposal that overlaps O by more than
  ``overlap`` of its own area (default 0: any shared pixel), sets R to 0
  inside the chosen proposal (it is explained now) and wherever R is below the
  mean of S inside the chosen proposal. It stops when R is empty (max R <=
  ``empty_level``), no proposal remains, ``max_objects`` were taken or, after
  the first object, the best proposal no longer beats the empty mask
  (||R - P||^2 >= ||R||^2, i.e. its mean residual is at most 1/2): without
  this last rule any leftover speck of R would add an arbitrary region. The
  first object is always taken (the paper always selects one).
* ``target`` ('raw' by default = the paper; 'otsu' in the configs): what the
  proposals are compared with. ||S - O||^2 = sum S^2 - 2 sum_O S + |O| only
  prefers a proposal to a smaller one where the mean of S inside it exceeds
  1/2, so a soft map (values around 0.3-0.6, which is what the co-attention
  loss alone produced in our runs) selects the *smallest* proposal whatever
  the map's shape, and the mask loss then shrinks S further. With a frozen
  extractor, the co-attention loss even has a trivial minimum at S = 0
  (every object image is the same blank image, d+ = 0). 'otsu' compares the
  proposals with S binarised at its Otsu threshold (the selection then
  minimises the symmetric difference |B xor O|); 'minmax' rescales S to
  [0, 1] first. Both keep the selection driven by where the attention is
  relatively high, which is what it is meant to read.
"""

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from skimage import color as skcolor
from skimage import segmentation

from coseg_jax import postprocess

SIMILARITIES = ("colour", "texture", "size", "fill")
COLOUR_SPACES = ("rgb", "hsv", "lab")


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
  """Settings of :func:`selective_search`.

  Attributes:
    colour_spaces: colour spaces to segment and describe regions in.
    scales: Felzenszwalb ``scale`` values (larger: fewer, bigger segments);
      ``min_size`` of a segment is the same number of pixels, scaled by
      ``min_size_factor``.
    sigma: Gaussian pre-smoothing of the Felzenszwalb segmentation.
    similarity_sets: each a tuple of names from ``SIMILARITIES``, summed.
    min_size_factor: segment ``min_size`` = factor * scale.
    min_area: drop proposals covering less than this fraction of the image.
    max_area: drop proposals covering more than this fraction (the top of
      every hierarchy is the whole image, which is no object proposal; with
      it in the pool the selection / mask-loss loop can lock onto S = 1).
    max_proposals: keep at most this many per image (Selective Search ranking).
    seed: seed of the ranking's random numbers.
  """
  colour_spaces: Tuple[str, ...] = ("rgb", "hsv", "lab")
  scales: Tuple[float, ...] = (50.0, 100.0, 200.0)
  sigma: float = 0.8
  similarity_sets: Tuple[Tuple[str, ...], ...] = (
      ("colour", "texture", "size", "fill"), ("texture", "size", "fill"))
  min_size_factor: float = 0.5
  min_area: float = 0.005
  max_area: float = 0.8
  max_proposals: int = 1000
  seed: int = 0

  def __post_init__(self):
    for cs in self.colour_spaces:
      if cs not in COLOUR_SPACES:
        raise ValueError(f"unknown colour space {cs!r}; expected one of "
                         f"{COLOUR_SPACES}")
    for sims in self.similarity_sets:
      bad = [s for s in sims if s not in SIMILARITIES]
      if bad or not sims:
        raise ValueError(f"bad similarity set {sims!r}; names must come from "
                         f"{SIMILARITIES}")


def config_from_dict(d: Optional[Dict]) -> ProposalConfig:
  """ProposalConfig from a (ConfigDict-like) mapping; tuples are restored."""
  d = dict(d or {})
  if "similarity_sets" in d:
    d["similarity_sets"] = tuple(tuple(s) for s in d["similarity_sets"])
  for k in ("colour_spaces", "scales"):
    if k in d:
      d[k] = tuple(d[k])
  return ProposalConfig(**d)


# ---------------------------------------------------------------------------
# Region descriptors.


def _to_colour_space(image: np.ndarray, space: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] -> float [H, W, 3] in [0, 1] in ``space``."""
  rgb = image.astype(np.float64) / 255.0
  if space == "rgb":
    return rgb
  if space == "hsv":
    return skcolor.rgb2hsv(rgb)
  lab = skcolor.rgb2lab(rgb)
  return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0,
                   (lab[..., 2] + 128.0) / 255.0], -1).clip(0.0, 1.0)


def _histograms(values: np.ndarray, labels: np.ndarray, n: int,
                bins: int) -> np.ndarray:
  """Per-region histograms of values in [0, 1]: [n, C * bins], L1-normed.

  Args:
    values: [H, W, C] in [0, 1].
    labels: [H, W] int region labels 0..n-1.
    n: number of regions.
    bins: bins per channel.
  """
  c = values.shape[-1]
  idx = np.minimum((values * bins).astype(np.int64), bins - 1)  # [H, W, C]
  flat_labels = labels.reshape(-1)
  out = np.zeros((n, c * bins))
  for ch in range(c):
    keys = flat_labels * bins + idx[..., ch].reshape(-1)
    out[:, ch * bins:(ch + 1) * bins] = np.bincount(
        keys, minlength=n * bins).reshape(n, bins)
  return out / np.maximum(out.sum(1, keepdims=True), 1e-12)


def _texture_responses(image: np.ndarray) -> np.ndarray:
  """Gaussian-derivative responses in 8 orientations per channel, in [0, 1].

  Args:
    image: float [H, W, C].

  Returns:
    [H, W, C * 8]; each orientation's |response| scaled by its image maximum.
  """
  out = []
  angles = np.arange(8) * np.pi / 8
  for ch in range(image.shape[-1]):
    gy = ndimage.gaussian_filter(image[..., ch], 1.0, order=(1, 0))
    gx = ndimage.gaussian_filter(image[..., ch], 1.0, order=(0, 1))
    for a in angles:
      r = np.abs(np.cos(a) * gx + np.sin(a) * gy)
      out.append(r / max(r.max(), 1e-12))
  return np.stack(out, -1)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
  """Unique (i, j), i < j, of 4-connected neighbouring labels: [E, 2]."""
  a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
  b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
  keep = a != b
  pairs = np.stack([np.minimum(a[keep], b[keep]),
                    np.maximum(a[keep], b[keep])], 1)
  return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


def _hierarchical_grouping(labels: np.ndarray, colour: np.ndarray,
                           texture: np.ndarray, sims: Sequence[str]
                           ) -> List[np.ndarray]:
  """Greedy merging of adjacent regions (Selective Search, Algorithm 1).

  Args:
    labels: [H, W] initial segments 0..n-1.
    colour: [n, *] colour histograms; texture: [n, *] texture histograms.
    sims: similarity names summed.

  Returns:
    Every region of the hierarchy in creation order (n initial segments
    then the n - 1 merges, the last being everything connected), each a bool
    membership vector over the n initial segments.
  """
  n = int(labels.max()) + 1
  h, w = labels.shape
  im_size = float(h * w)
  size = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
  rows, cols = np.indices(labels.shape)
  lab = labels.ravel()
  bbox = np.stack([np.full(n, h), np.full(n, w), np.zeros(n), np.zeros(n)],
                  1).astype(np.int64)  # rmin, cmin, rmax, cmax (inclusive)
  np.minimum.at(bbox[:, 0], lab, rows.ravel())
  np.minimum.at(bbox[:, 1], lab, cols.ravel())
  np.maximum.at(bbox[:, 2], lab, rows.ravel())
  np.maximum.at(bbox[:, 3], lab, cols.ravel())

  regions = {}
  for i in range(n):
    member = np.zeros(n, bool)
    member[i] = True
    regions[i] = dict(size=size[i], colour=colour[i], texture=texture[i],
                      bbox=bbox[i].copy(), member=member)
  order = [regions[i]["member"] for i in range(n)]

  def similarity(ri, rj):
    s = 0.0
    if "colour" in sims:
      s += np.minimum(ri["colour"], rj["colour"]).sum()
    if "texture" in sims:
      s += np.minimum(ri["texture"], rj["texture"]).sum()
    if "size" in sims:
      s += 1.0 - (ri["size"] + rj["size"]) / im_size
    if "fill" in sims:
      b = np.concatenate([np.minimum(ri["bbox"][:2], rj["bbox"][:2]),
                          np.maximum(ri["bbox"][2:], rj["bbox"][2:])])
      box = float((b[2] - b[0] + 1) * (b[3] - b[1] + 1))
      s += 1.0 - (box - ri["size"] - rj["size"]) / im_size
    return s

  neighbours = {i: set() for i in range(n)}
  sim = {}
  for i, j in _adjacent_pairs(labels):
    i, j = int(i), int(j)
    neighbours[i].add(j)
    neighbours[j].add(i)
    sim[(i, j)] = similarity(regions[i], regions[j])
  next_id = n
  while sim:
    i, j = max(sim, key=sim.get)
    ri, rj = regions.pop(i), regions.pop(j)
    total = ri["size"] + rj["size"]
    new = dict(size=total,
               colour=(ri["colour"] * ri["size"] + rj["colour"] * rj["size"])
               / total,
               texture=(ri["texture"] * ri["size"] +
                        rj["texture"] * rj["size"]) / total,
               bbox=np.concatenate([np.minimum(ri["bbox"][:2], rj["bbox"][:2]),
                                    np.maximum(ri["bbox"][2:], rj["bbox"][2:])]),
               member=ri["member"] | rj["member"])
    t = next_id
    next_id += 1
    nbrs = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
    for key in [k for k in sim if i in k or j in k]:
      del sim[key]
    regions[t] = new
    neighbours[t] = nbrs
    for k in nbrs:
      neighbours[k] -= {i, j}
      neighbours[k].add(t)
      sim[(k, t)] = similarity(regions[k], new)
    order.append(new["member"])
  return order


def selective_search(image: np.ndarray,
                     config: ProposalConfig = ProposalConfig()) -> np.ndarray:
  """Segment proposals of one image (see module docstring).

  Args:
    image: uint8 RGB [H, W, 3] (float in [0, 1] is converted).
    config: the strategies and limits.

  Returns:
    bool [P, H, W] unique proposal masks, P <= ``config.max_proposals``,
    best-ranked first.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"selective_search: image must be [H, W, 3], got "
                     f"{image.shape}")
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.asarray(image, np.float64) * 255), 0,
                    255).astype(np.uint8)
  h, w = image.shape[:2]
  rng = np.random.RandomState(config.seed)
  masks, scores = [], []
  seen = set()
  for space in config.colour_spaces:
    img = _to_colour_space(image, space)
    texture_values = _texture_responses(img)
    for scale in config.scales:
      labels = segmentation.felzenszwalb(
          img, scale=float(scale), sigma=float(config.sigma),
          min_size=max(int(config.min_size_factor * scale), 1),
          channel_axis=-1)
      labels = np.unique(labels, return_inverse=True)[1].reshape(h, w)
      n = int(labels.max()) + 1
      colour_h = _histograms(img, labels, n, 25)
      texture_h = _histograms(texture_values, labels, n, 10)
      for sims in config.similarity_sets:
        hierarchy = _hierarchical_grouping(labels, colour_h, texture_h, sims)
        count = len(hierarchy)
        for pos, member in enumerate(hierarchy):
          mask = member[labels]
          area = mask.mean()
          if area < config.min_area or area > config.max_area:
            continue
          key = np.packbits(mask).tobytes()
          # Selective Search ranking: position counted from the top of the
          # hierarchy (1 = the last merge) times a random number.
          score = (count - pos) * rng.rand()
          if key in seen:
            continue
          seen.add(key)
          masks.append(mask)
          scores.append(score)
  if not masks:  # nothing in range: the whole image, so selection can run
    return np.ones((1, h, w), bool)
  order = np.argsort(np.asarray(scores), kind="stable")[:config.max_proposals]
  return np.stack([masks[i] for i in order])


# ---------------------------------------------------------------------------
# Collections and the cache.


def _cache_key(images: np.ndarray, config: ProposalConfig) -> str:
  digest = hashlib.sha256()
  digest.update(np.ascontiguousarray(images).tobytes())
  digest.update(str(images.shape).encode())
  digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
  return digest.hexdigest()


def save_proposals(path: str, proposals: Sequence[np.ndarray],
                   key: str = "") -> None:
  """Writes per-image proposal stacks (bool [P_i, H, W]) bit-packed to npz."""
  shape = proposals[0].shape[1:]
  counts = np.array([p.shape[0] for p in proposals], np.int64)
  packed = np.packbits(np.concatenate(proposals).reshape(-1))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, packed=packed, counts=counts,
                      shape=np.array(shape, np.int64), key=np.array(key))
  os.replace(tmp, path)


def load_proposals(path: str) -> Tuple[List[np.ndarray], str]:
  """Reads :func:`save_proposals` output: (list of bool [P_i, H, W], key)."""
  with np.load(path) as z:
    counts, shape = z["counts"], tuple(int(s) for s in z["shape"])
    total = int(counts.sum()) * int(np.prod(shape))
    flat = np.unpackbits(z["packed"])[:total].astype(bool)
    key = str(z["key"])
  stacks = flat.reshape(int(counts.sum()), *shape)
  bounds = np.concatenate([[0], np.cumsum(counts)])
  return [stacks[bounds[i]:bounds[i + 1]] for i in range(len(counts))], key


def collection_proposals(images: np.ndarray, config: ProposalConfig = (
    ProposalConfig()), *, cache_path: Optional[str] = None) -> List[np.ndarray]:
  """Proposals of every image of a collection, cached when a path is given.

  Args:
    images: uint8 [N, H, W, 3] (the images at the model's input size).
    config: proposal settings.
    cache_path: ``.npz`` file; reused when its key (hash of the images and
      the settings) matches, recomputed and overwritten otherwise.

  Returns:
    List of N bool arrays [P_i, H, W].
  """
  images = np.asarray(images)
  key = _cache_key(images, config)
  if cache_path and os.path.exists(cache_path):
    proposals, stored = load_proposals(cache_path)
    if stored == key and len(proposals) == len(images):
      return proposals
  proposals = [selective_search(im, config) for im in images]
  if cache_path:
    save_proposals(cache_path, proposals, key)
  return proposals


# ---------------------------------------------------------------------------
# Selection (paper Sec. 3.3).


def proposal_errors(attention: np.ndarray, proposals: np.ndarray) -> np.ndarray:
  """||S - P_k||^2 for every proposal: float64 [P].

  Args:
    attention: [H, W] map S in [0, 1].
    proposals: bool [P, H, W].
  """
  s = np.asarray(attention, np.float64).reshape(-1)
  p = np.asarray(proposals, bool).reshape(len(proposals), -1)
  # ||s - p||^2 = ||s||^2 - 2 <s, p> + |p| for binary p.
  return s @ s - 2.0 * (p @ s) + p.sum(1)


def select_object_mask(attention: np.ndarray, proposals: np.ndarray, *,
                       multi_object: bool = True, max_objects: int = 10,
                       overlap: float = 0.0, empty_level: float = 1e-3,
                       target: str = "raw"
                       ) -> Tuple[np.ndarray, List[int]]:
  """Object mask O for a co-attention map (paper Sec. 3.3).

  Args:
    attention: [H, W] (or [H, W, 1]) co-attention map S in [0, 1].
    proposals: bool [P, H, W] proposals of the image.
    multi_object: the iterative merge; False: the single argmin proposal.
    max_objects: at most this many proposals are merged.
    overlap: a remaining proposal is removed once more than this fraction of
      its area lies in O (0: any overlap removes it).
    empty_level: the residual map counts as empty when its max is <= this.
    target: what the proposals are compared with: 'raw' (S itself, the
      paper), 'minmax' (S rescaled to [0, 1] by its min and max) or 'otsu'
      (S binarised at its Otsu threshold); see the module docstring.

  Returns:
    (bool [H, W] mask O, indices of the chosen proposals in order).
  """
  s = np.asarray(attention, np.float64)
  if s.ndim == 3 and s.shape[-1] == 1:
    s = s[..., 0]
  if target == "minmax":
    lo, hi = s.min(), s.max()
    s = (s - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(s)
  elif target == "otsu":
    s = postprocess.otsu(s.astype(np.float32)).astype(np.float64)
  elif target != "raw":
    raise ValueError(f"select_object_mask: target must be 'raw', 'minmax' "
                     f"or 'otsu', got {target!r}")
  proposals = np.asarray(proposals, bool)
  if proposals.ndim != 3 or proposals.shape[1:] != s.shape:
    raise ValueError(f"select_object_mask: proposals must be [P, {s.shape[0]},"
                     f" {s.shape[1]}], got {proposals.shape}")
  if len(proposals) == 0:
    raise ValueError("select_object_mask: no proposals")
  flat = proposals.reshape(len(proposals), -1)
  area = flat.sum(1).astype(np.float64)
  remaining = np.ones(len(proposals), bool)
  residual = s.reshape(-1).copy()
  chosen = []
  out = np.zeros(flat.shape[1], bool)
  while remaining.any() and len(chosen) < max_objects:
    if chosen and residual.max() <= empty_level:
      break
    errors = residual @ residual - 2.0 * (flat @ residual) + area
    errors[~remaining] = np.inf
    k = int(np.argmin(errors))
    if chosen and errors[k] >= residual @ residual:
      break  # the best proposal explains less than the empty mask
    chosen.append(k)
    out |= flat[k]
    if not multi_object:
      break
    mean_inside = s.reshape(-1)[flat[k]].mean() if area[k] else 0.0
    residual[flat[k]] = 0.0
    residual[residual < mean_inside] = 0.0
    inside = (flat & out).sum(1)
    remaining &= ~(inside > overlap * area)
    remaining[k] = False
  return out.reshape(s.shape), chosen


def select_collection(attention: np.ndarray, proposals: Sequence[np.ndarray],
                      **kwargs) -> np.ndarray:
  """:func:`select_object_mask` for every image: bool [N, H, W].

  Args:
    attention: [N, H, W] (or [N, H, W, 1]) maps.
    proposals: N bool arrays [P_i, H, W].
    **kwargs: options of :func:`select_object_mask`.
  """
  if len(attention) != len(proposals):
    raise ValueError(f"select_collection: {len(attention)} maps but "
                     f"{len(proposals)} proposal sets")
  return np.stack([select_object_mask(a, p, **kwargs)[0]
                   for a, p in zip(attention, proposals)])
