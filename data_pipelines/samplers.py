"""Seeded samplers of co-segmentation groups over image records (pure NumPy).

All samplers work on a boolean class-membership matrix ``membership`` of shape
[N, C]: ``membership[i, c]`` is True when record ``i`` contains class ``c``.
Single-label sets (one class per image: pascal_voc_coseg, internet, icoseg,
msrc, synthetic) use :func:`membership_from_labels`; VOC 2012 records (several
classes per image) use :func:`membership_from_label_sets`. A group is a row of
record indices; alongside it the samplers return ``targets`` [G, K, C]: the
classes whose pixels are foreground in each member's target mask.

Training samplers (each deterministic in ``seed``; a new ``seed`` per epoch
gives a new draw, see :func:`epoch_groups`):
  * positive pairs: two distinct images sharing at least one class; target of
    both = the union of the classes they share (the DOCS / Chen et al. VOC
    protocol; for single-label sets simply the common class).
  * negative pairs: two images with no class in common; ``has_common = 0`` and
    empty targets.
  * triplets (anchor, positive, negative): (anchor, positive) a positive pair,
    the negative shares no class with either; anchor and positive target their
    shared classes, the negative an empty mask (``has_common`` describes the
    anchor/positive pair and is always 1).
  * groups: k distinct images that all contain one class c; target = the
    classes all k share (c at least).
  Negatives (negative pairs, the third image of a triplet) come from the
  records with at least one class only: a record whose row is empty was
  removed by a class filter or a holdout and is never trained on.
  Anchors are drawn uniformly over the records that can form the requested
  relation, and partners uniformly among the valid candidates, so every image
  is equally likely to appear as the anchor whatever its class's size.

Evaluation enumerations (deterministic; ``score`` marks the members whose
prediction counts for that image; an evaluator averages an image's
probabilities over every tuple that scores it):
  * :func:`all_pairs`: each unordered pair of a group once, both scored, so
    each image is predicted with every other image of its group.
  * :func:`group_strategy` 'a'-'d': the four ways CycleSegNet (Zhang et
    al., TIP 2021, Sec. 4.3, Table 5) segments a group of N images with a
    network that takes k at a time; each image's mask is the average of
    its scored predictions.
      a. every k-element subset of the group (C(N, k) tuples), every member
         scored: an image is averaged over the C(N-1, k-1) tuples holding it
         (the paper runs it for k = 2, 3 only: the count grows fast).
      b. the group randomly divided into N/k tuples of k, every image
         predicted once.
      c. for every image, ``num_draws`` (5 in the paper) random tuples: the
         image and k-1 distinct companions drawn from the other N-1, each
         draw independent (a tuple can repeat when the others are few); the
         image scored, its 5 predictions averaged.
      d. for every image, the other N-1 images (in a random order) split
         into T = (N-1)/(k-1) groups of k-1 companions; the image scored in
         each of its T tuples, averaged.
    The network's input is always k images, and b uses every image and d
    every companion, so when N (b) or N-1 (d) is not a multiple of k (k-1)
    the last tuple holds the remaining images and is completed with images
    drawn at random from the others: in b those fillers are not scored (each
    image's mask still comes from exactly one tuple), in d they are
    companions a second time (T = ceil((N-1)/(k-1))).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

SAMPLERS = ("pairs", "triplets", "groups")
STRATEGIES = ("a", "b", "c", "d")


def membership_from_labels(labels, num_classes: int | None = None):
  """Boolean [N, C] membership of single-label records (labels int [N])."""
  labels = np.asarray(labels, np.int64)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if labels.size else 0
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}]")
  m = np.zeros((labels.size, num_classes), bool)
  m[np.arange(labels.size), labels] = True
  return m


def membership_from_label_sets(label_sets: Sequence[Sequence[int]],
                               num_classes: int):
  """Boolean [N, C] membership of multi-label records (e.g. VOC 2012)."""
  m = np.zeros((len(label_sets), num_classes), bool)
  for i, s in enumerate(label_sets):
    s = np.asarray(s, np.int64).reshape(-1)
    if s.size and (s.min() < 0 or s.max() >= num_classes):
      raise ValueError(f"record {i}: class ids {s.tolist()} outside "
                       f"[0, {num_classes})")
    m[i, s] = True
  return m


@dataclasses.dataclass(frozen=True)
class Groups:
  """Sampled training groups.

  Attributes:
    indices: int64 [G, K] record indices.
    has_common: int32 [G], 1 when the group (for triplets: anchor/positive)
      shares a class.
    targets: bool [G, K, C], classes that are foreground in each member's
      target mask.
  """
  indices: np.ndarray
  has_common: np.ndarray
  targets: np.ndarray

  def __len__(self):
    return self.indices.shape[0]


def _rng(seed):
  return np.random.default_rng(np.random.SeedSequence(seed))


def _class_members(membership):
  return [np.flatnonzero(membership[:, c]) for c in range(membership.shape[1])]


def _positive_anchor_pool(membership, members):
  big = np.array([len(m) >= 2 for m in members], bool)
  pool = np.flatnonzero((membership & big[None]).any(1))
  if pool.size == 0:
    raise ValueError("no class has two images: cannot sample positive pairs")
  return pool, big


def _draw_positive(rng, membership, members, pool, big):
  a = int(rng.choice(pool))
  c = int(rng.choice(np.flatnonzero(membership[a] & big)))
  others = members[c][members[c] != a]
  return a, int(rng.choice(others))


def _draw_disjoint(rng, membership, selected, excluded_classes, exclude_ids):
  """A selected record (``selected``: bool [N], the records with at least
  one class) with no class in ``excluded_classes``, not in ``exclude_ids``;
  None if there is none.

  Records with no class are those a class filter or a holdout removed (the
  unseen classes of a class-disjoint protocol, the test part of a split):
  drawing one as a negative would train on an evaluation image.
  """
  n = membership.shape[0]
  for _ in range(64):  # Rejection is cheap when negatives are common.
    j = int(rng.integers(n))
    if (selected[j] and j not in exclude_ids
        and not (membership[j] & excluded_classes).any()):
      return j
  cands = np.flatnonzero(selected &
                         ~(membership & excluded_classes[None]).any(1))
  cands = np.setdiff1d(cands, np.asarray(list(exclude_ids), np.int64))
  if cands.size == 0:
    return None
  return int(rng.choice(cands))


def positive_pairs(membership, *, num_pairs: int, seed) -> Groups:
  """``num_pairs`` pairs of distinct records sharing at least one class."""
  membership = np.asarray(membership, bool)
  members = _class_members(membership)
  pool, big = _positive_anchor_pool(membership, members)
  rng = _rng(seed)
  idx = np.array([_draw_positive(rng, membership, members, pool, big)
                  for _ in range(num_pairs)], np.int64).reshape(num_pairs, 2)
  shared = membership[idx[:, 0]] & membership[idx[:, 1]]
  return Groups(idx, np.ones(num_pairs, np.int32),
                np.repeat(shared[:, None], 2, axis=1))


def negative_pairs(membership, *, num_pairs: int, seed) -> Groups:
  """``num_pairs`` pairs of records with no class in common (empty targets)."""
  membership = np.asarray(membership, bool)
  c = membership.shape[1]
  selected = membership.any(1)
  anchors = np.flatnonzero(selected)
  if anchors.size == 0:
    raise ValueError("no record has a class: cannot sample negative pairs")
  rng = _rng(seed)
  idx = np.empty((num_pairs, 2), np.int64)
  for t in range(num_pairs):
    for _ in range(64):
      a = int(rng.choice(anchors))
      b = _draw_disjoint(rng, membership, selected, membership[a], {a})
      if b is not None:
        break
    else:
      raise ValueError("could not find two records without a shared class")
    idx[t] = a, b
  return Groups(idx, np.zeros(num_pairs, np.int32),
                np.zeros((num_pairs, 2, c), bool))


def triplets(membership, *, num_triplets: int, seed) -> Groups:
  """(anchor, positive, negative) triplets; see the module docstring."""
  membership = np.asarray(membership, bool)
  members = _class_members(membership)
  pool, big = _positive_anchor_pool(membership, members)
  selected = membership.any(1)
  rng = _rng(seed)
  idx = np.empty((num_triplets, 3), np.int64)
  for t in range(num_triplets):
    for _ in range(64):
      a, p = _draw_positive(rng, membership, members, pool, big)
      neg = _draw_disjoint(rng, membership, selected,
                           membership[a] | membership[p], {a, p})
      if neg is not None:
        break
    else:
      raise ValueError("no record shares no class with a positive pair: "
                       "cannot sample triplets")
    idx[t] = a, p, neg
  targets = np.zeros((num_triplets, 3, membership.shape[1]), bool)
  shared = membership[idx[:, 0]] & membership[idx[:, 1]]
  targets[:, 0] = targets[:, 1] = shared
  return Groups(idx, np.ones(num_triplets, np.int32), targets)


def class_groups(membership, *, group_size: int, num_groups: int,
                 seed) -> Groups:
  """Groups of ``group_size`` distinct records that all contain one class."""
  membership = np.asarray(membership, bool)
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  members = _class_members(membership)
  ok = np.array([len(m) >= group_size for m in members], bool)
  pool = np.flatnonzero((membership & ok[None]).any(1))
  if pool.size == 0:
    raise ValueError(f"no class has {group_size} images: cannot form groups")
  rng = _rng(seed)
  idx = np.empty((num_groups, group_size), np.int64)
  for t in range(num_groups):
    a = int(rng.choice(pool))
    c = int(rng.choice(np.flatnonzero(membership[a] & ok)))
    others = members[c][members[c] != a]
    idx[t, 0] = a
    idx[t, 1:] = rng.choice(others, group_size - 1, replace=False)
  shared = np.logical_and.reduce(membership[idx], axis=1)
  return Groups(idx, np.ones(num_groups, np.int32),
                np.repeat(shared[:, None], group_size, axis=1))


def mixed_pairs(membership, *, num_pairs: int, negative_fraction: float,
                seed) -> Groups:
  """Positive and negative pairs, ``round(negative_fraction * num_pairs)``
  negatives, shuffled together."""
  if not 0.0 <= negative_fraction <= 1.0:
    raise ValueError(f"negative_fraction must be in [0, 1], got "
                     f"{negative_fraction}")
  n_neg = int(round(negative_fraction * num_pairs))
  rng = _rng(seed)
  s_pos, s_neg, s_perm = rng.integers(0, 2**63 - 1, 3)
  parts = []
  if num_pairs - n_neg:
    parts.append(positive_pairs(membership, num_pairs=num_pairs - n_neg,
                                seed=int(s_pos)))
  if n_neg:
    parts.append(negative_pairs(membership, num_pairs=n_neg,
                                seed=int(s_neg)))
  perm = _rng(int(s_perm)).permutation(num_pairs)
  return Groups(*(np.concatenate([getattr(p, f) for p in parts])[perm]
                  for f in ("indices", "has_common", "targets")))


def epoch_groups(membership, *, sampler: str, num_groups: int, seed: int,
                 epoch: int, group_size: int = 2,
                 negative_fraction: float = 0.0) -> Groups:
  """The training groups of one epoch: a pure function of (seed, epoch).

  Args:
    membership: bool [N, C].
    sampler: 'pairs' (positives and ``negative_fraction`` negatives),
      'triplets' or 'groups' (``group_size`` images of one class).
    num_groups: groups per epoch.
    seed: data seed.
    epoch: epoch number (a different draw for each).
    group_size: K for 'groups'.
    negative_fraction: share of negative pairs for 'pairs'.
  """
  s = (int(seed), int(epoch))
  if sampler == "pairs":
    return mixed_pairs(membership, num_pairs=num_groups,
                       negative_fraction=negative_fraction, seed=s)
  if sampler == "triplets":
    return triplets(membership, num_triplets=num_groups, seed=s)
  if sampler == "groups":
    return class_groups(membership, group_size=group_size,
                        num_groups=num_groups, seed=s)
  raise ValueError(f"data.sampler must be one of {SAMPLERS}, got {sampler!r}")


@dataclasses.dataclass(frozen=True)
class EvalTuples:
  """Tuples to run the model on for evaluation.

  Attributes:
    indices: int64 [T, k] record indices.
    score: bool [T, k], True where that member's prediction is scored
      (averaged with its other scored predictions).
  """
  indices: np.ndarray
  score: np.ndarray

  def __len__(self):
    return self.indices.shape[0]


def all_pairs(group) -> EvalTuples:
  """Every unordered pair (i < j in the given order) of a group, both scored."""
  group = np.asarray(group, np.int64).reshape(-1)
  if group.size < 2:
    raise ValueError("all_pairs needs a group of at least 2 images")
  pairs = np.array(list(itertools.combinations(group.tolist(), 2)), np.int64)
  return EvalTuples(pairs, np.ones(pairs.shape, bool))


def _chunks_completed(order, size, rng, pool):
  """``order`` cut into rows of ``size``; a short last row is completed with
  distinct entries of ``pool`` drawn at random (not already in that row).

  Returns:
    (rows int64 [T, size], filled bool [T, size]: True for the added
    entries).
  """
  order = np.asarray(order, np.int64)
  t = math.ceil(order.size / size)
  rows = np.empty((t, size), np.int64)
  filled = np.zeros((t, size), bool)
  for r in range(t):
    part = order[r * size:(r + 1) * size]
    rows[r, :part.size] = part
    if part.size < size:
      candidates = np.setdiff1d(np.asarray(pool, np.int64), part)
      rows[r, part.size:] = rng.choice(candidates, size - part.size,
                                       replace=False)
      filled[r, part.size:] = True
  return rows, filled


def group_strategy(group, *, strategy: str, k: int, seed=0,
                   num_draws: int = 5,
                   max_tuples: int | None = None) -> EvalTuples:
  """k-tuples of one test group by CycleSegNet's strategy 'a'-'d'.

  The four strategies of Sec. 4.3 (module docstring); deterministic in
  ``seed``.

  Args:
    group: int [N] record indices of one group (one class), N >= k.
    strategy: 'a' (all k-subsets), 'b' (a random division into N/k
      tuples), 'c' (``num_draws`` random tuples per image) or 'd' (the other
      N-1 split into (N-1)/(k-1) companion groups per image).
    k: tuple size, 2 <= k <= N (2 = pairs).
    seed: for the random choices of 'b', 'c' and 'd'.
    num_draws: tuples per image for 'c' (the paper's 5).
    max_tuples: for 'a', refuse (ValueError) more than this many tuples
      rather than run them (None: no limit).

  Returns:
    EvalTuples: 'a' and 'b' score every member they predict (b's fillers
    excepted); 'c' and 'd' put the image first and score it only.
  """
  group = np.asarray(group, np.int64).reshape(-1)
  n = group.size
  if not 2 <= k <= n:
    raise ValueError(f"tuple size k={k} must be in [2, group size {n}]")
  rng = _rng(seed)
  if strategy == "a":
    total = math.comb(n, k)
    if max_tuples is not None and total > max_tuples:
      raise ValueError(f"strategy 'a' needs all C({n}, {k}) = {total} tuples "
                       f"(more than max_tuples={max_tuples}); use a smaller k "
                       f"or strategy 'b', 'c' or 'd'")
    idx = np.array(list(itertools.combinations(group.tolist(), k)),
                   np.int64).reshape(total, k)
    score = np.ones(idx.shape, bool)
  elif strategy == "b":
    idx, filled = _chunks_completed(group[rng.permutation(n)], k, rng, group)
    score = ~filled
  elif strategy == "c":
    if num_draws < 1:
      raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    rows = []
    for i in range(n):
      others = np.delete(group, i)
      for _ in range(num_draws):
        rows.append(np.concatenate([group[i:i + 1], rng.choice(
            others, k - 1, replace=False)]))
    idx = np.stack(rows)
    score = np.zeros(idx.shape, bool)
    score[:, 0] = True
  elif strategy == "d":
    rows = []
    for i in range(n):
      others = np.delete(group, i)
      companions, _ = _chunks_completed(others[rng.permutation(n - 1)],
                                        k - 1, rng, others)
      rows.append(np.concatenate(
          [np.full((len(companions), 1), group[i]), companions], axis=1))
    idx = np.concatenate(rows)
    score = np.zeros(idx.shape, bool)
    score[:, 0] = True
  else:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got "
                     f"{strategy!r}")
  return EvalTuples(idx, score)
