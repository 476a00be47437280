"""Tests of data_pipelines.samplers: relations, determinism, enumerations."""

import itertools
import math

import numpy as np
import pytest

from data_pipelines import samplers


def _single_label(n_per_class=(5, 4, 6, 2)):
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
  return samplers.membership_from_labels(labels, len(n_per_class)), labels


def _multi_label(n=40, c=6, seed=0):
  rng = np.random.default_rng(seed)
  m = rng.random((n, c)) < 0.25
  m[np.arange(n), rng.integers(0, c, n)] = True  # every image has a class
  return m


def test_membership_from_labels_and_sets():
  m = samplers.membership_from_labels([2, 0, 2], 3)
  np.testing.assert_array_equal(
      m, [[False, False, True], [True, False, False], [False, False, True]])
  ms = samplers.membership_from_label_sets([[0, 2], [], [1]], 3)
  np.testing.assert_array_equal(
      ms, [[True, False, True], [False, False, False], [False, True, False]])
  with pytest.raises(ValueError, match="outside"):
    samplers.membership_from_label_sets([[3]], 3)
  with pytest.raises(ValueError, match="labels must lie"):
    samplers.membership_from_labels([0, 3], 3)


@pytest.mark.parametrize("multi", [False, True])
def test_positive_pairs_share_a_class_and_target_the_shared_union(multi):
  m = _multi_label() if multi else _single_label()[0]
  g = samplers.positive_pairs(m, num_pairs=300, seed=1)
  a, b = g.indices[:, 0], g.indices[:, 1]
  assert np.all(a != b)
  shared = m[a] & m[b]
  assert shared.any(1).all()
  np.testing.assert_array_equal(g.targets[:, 0], shared)
  np.testing.assert_array_equal(g.targets[:, 1], shared)
  assert np.all(g.has_common == 1)


def test_positive_pairs_cover_every_eligible_anchor():
  m, _ = _single_label()
  g = samplers.positive_pairs(m, num_pairs=2000, seed=0)
  # Every record belongs to a class with >= 2 images, so each is an anchor;
  # uniform anchors over 17 records: each expected ~118 times.
  counts = np.bincount(g.indices[:, 0], minlength=m.shape[0])
  assert counts.min() > 60 and counts.max() < 190


@pytest.mark.parametrize("multi", [False, True])
def test_negative_pairs_share_no_class(multi):
  m = _multi_label() if multi else _single_label()[0]
  g = samplers.negative_pairs(m, num_pairs=300, seed=2)
  a, b = g.indices[:, 0], g.indices[:, 1]
  assert np.all(a != b)
  assert not (m[a] & m[b]).any()
  assert not g.targets.any()
  assert np.all(g.has_common == 0)


def test_negatives_never_use_records_without_a_class():
  # Rows 0-9 hold only filtered-out classes (all False), as the unseen
  # classes of a class-disjoint run do; they must never be drawn.
  m, _ = _single_label((10, 5, 4, 6))
  m[:10] = False
  g = samplers.negative_pairs(m, num_pairs=300, seed=4)
  assert g.indices.min() >= 10
  g = samplers.triplets(m, num_triplets=300, seed=5)
  assert g.indices.min() >= 10
  g = samplers.epoch_groups(m, sampler="pairs", num_groups=300, seed=6,
                            negative_fraction=0.5, epoch=0)
  assert g.indices.min() >= 10 and (g.has_common == 0).any()
  with pytest.raises(ValueError, match="no record has a class"):
    samplers.negative_pairs(np.zeros((4, 2), bool), num_pairs=1, seed=0)


@pytest.mark.parametrize("multi", [False, True])
def test_triplets_are_valid(multi):
  m = _multi_label() if multi else _single_label()[0]
  g = samplers.triplets(m, num_triplets=200, seed=3)
  a, p, n = g.indices.T
  assert np.all((a != p) & (a != n) & (p != n))
  assert (m[a] & m[p]).any(1).all()
  assert not (m[a] & m[n]).any() and not (m[p] & m[n]).any()
  np.testing.assert_array_equal(g.targets[:, 0], m[a] & m[p])
  np.testing.assert_array_equal(g.targets[:, 1], m[a] & m[p])
  assert not g.targets[:, 2].any()


@pytest.mark.parametrize("k", [2, 4, 5])
def test_class_groups_have_k_distinct_images_of_one_class(k):
  m, labels = _single_label()
  g = samplers.class_groups(m, group_size=k, num_groups=100, seed=4)
  assert g.indices.shape == (100, k)
  for row in g.indices:
    assert len(set(row.tolist())) == k
    assert len(set(labels[row].tolist())) == 1
  # Class 3 (2 images) can never be in a group of 4 or more.
  if k >= 4:
    assert not np.isin(g.indices, np.flatnonzero(labels == 3)).any()
  np.testing.assert_array_equal(
      g.targets[:, 0], np.logical_and.reduce(m[g.indices], axis=1))


def test_class_groups_multilabel_share_a_class():
  m = _multi_label(60, 5, seed=1)
  g = samplers.class_groups(m, group_size=3, num_groups=100, seed=0)
  assert np.logical_and.reduce(m[g.indices], axis=1).any(1).all()


def test_impossible_requests_raise():
  m = samplers.membership_from_labels([0, 1, 2], 3)
  with pytest.raises(ValueError, match="two images"):
    samplers.positive_pairs(m, num_pairs=1, seed=0)
  with pytest.raises(ValueError, match="3 images"):
    samplers.class_groups(m, group_size=3, num_groups=1, seed=0)
  with pytest.raises(ValueError, match="sampler"):
    samplers.epoch_groups(m, sampler="quads", num_groups=1, seed=0, epoch=0)
  m_all_same = samplers.membership_from_labels([0, 0, 0], 1)
  with pytest.raises(ValueError, match="without a shared class"):
    samplers.negative_pairs(m_all_same, num_pairs=1, seed=0)


def test_mixed_pairs_fraction_and_determinism():
  m, labels = _single_label()
  g = samplers.mixed_pairs(m, num_pairs=40, negative_fraction=0.25, seed=7)
  assert (g.has_common == 0).sum() == 10
  same = labels[g.indices[:, 0]] == labels[g.indices[:, 1]]
  np.testing.assert_array_equal(same, g.has_common == 1)
  g2 = samplers.mixed_pairs(m, num_pairs=40, negative_fraction=0.25, seed=7)
  np.testing.assert_array_equal(g.indices, g2.indices)
  np.testing.assert_array_equal(g.targets, g2.targets)
  g3 = samplers.mixed_pairs(m, num_pairs=40, negative_fraction=0.25, seed=8)
  assert not np.array_equal(g.indices, g3.indices)


def test_epoch_groups_depend_only_on_seed_and_epoch():
  m, _ = _single_label()
  kw = dict(sampler="groups", group_size=3, num_groups=20, seed=5)
  e0 = samplers.epoch_groups(m, epoch=0, **kw)
  e1 = samplers.epoch_groups(m, epoch=1, **kw)
  e0b = samplers.epoch_groups(m, epoch=0, **kw)
  np.testing.assert_array_equal(e0.indices, e0b.indices)
  assert not np.array_equal(e0.indices, e1.indices)


def test_all_pairs():
  group = np.array([7, 3, 9, 11])
  t = samplers.all_pairs(group)
  assert len(t) == 6 and t.score.all()
  assert {frozenset(r) for r in t.indices.tolist()} == {
      frozenset(p) for p in itertools.combinations(group.tolist(), 2)}
  # Every image is paired with every other exactly once.
  for x in group:
    partners = sorted(set(t.indices[(t.indices == x).any(1)].ravel()) - {x})
    assert partners == sorted(set(group.tolist()) - {x})


GROUP = np.array([10, 11, 12, 13, 14, 15, 16])  # N = 7


def _scored_counts(t, group=GROUP):
  return {int(x): int(((t.indices == x) & t.score).sum()) for x in group}


def _distinct_rows(t, k):
  for row in t.indices:
    assert len(set(row.tolist())) == k, row


@pytest.mark.parametrize("k", [2, 3, 7])
def test_strategy_a_all_k_subsets(k):
  """Sec. 4.3 a): every k-element tuple of the group, every member's
  prediction averaged: C(7, k) tuples, each image in C(6, k-1)."""
  t = samplers.group_strategy(GROUP, strategy="a", k=k)
  assert len(t) == math.comb(7, k)
  assert {frozenset(r) for r in t.indices.tolist()} == {
      frozenset(c) for c in itertools.combinations(GROUP.tolist(), k)}
  assert t.score.all()
  assert _scored_counts(t) == {int(x): math.comb(6, k - 1) for x in GROUP}
  # No randomness.
  np.testing.assert_array_equal(
      t.indices, samplers.group_strategy(GROUP, strategy="a", k=k,
                                         seed=9).indices)
  with pytest.raises(ValueError, match="C\\(7, 3\\) = 35"):
    samplers.group_strategy(GROUP, strategy="a", k=3, max_tuples=34)


def test_strategy_b_random_division_every_image_once():
  """Sec. 4.3 b): a random division into N/k tuples of k. N = 6, k = 3:
  two disjoint tuples covering the group, everyone scored once."""
  group = GROUP[:6]
  t = samplers.group_strategy(group, strategy="b", k=3, seed=1)
  assert t.indices.shape == (2, 3) and t.score.all()
  assert sorted(t.indices.ravel().tolist()) == sorted(group.tolist())
  draws = {tuple(map(frozenset, samplers.group_strategy(
      group, strategy="b", k=3, seed=s).indices.tolist())) for s in range(8)}
  assert len(draws) > 1  # random, and deterministic in the seed
  np.testing.assert_array_equal(
      t.indices, samplers.group_strategy(group, strategy="b", k=3,
                                         seed=1).indices)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_strategy_b_n_not_a_multiple_of_k(k):
  """N = 7: ceil(7 / k) tuples of k; the last holds the 7 mod k remaining
  images and fillers drawn from the others, which are not scored: every
  image is still predicted exactly once."""
  t = samplers.group_strategy(GROUP, strategy="b", k=k, seed=3)
  assert t.indices.shape == (math.ceil(7 / k), k)
  _distinct_rows(t, k)
  assert _scored_counts(t) == {int(x): 1 for x in GROUP}
  assert t.score[:-1].all()
  r = 7 % k
  assert t.score[-1].sum() == r and t.score[-1, :r].all()
  # The scored members of the tuples partition the group.
  scored = t.indices[t.score]
  assert sorted(scored.tolist()) == sorted(GROUP.tolist())


@pytest.mark.parametrize("k", [2, 3])
def test_strategy_c_five_random_tuples_per_image(k):
  """Sec. 4.3 c): for each image, 5 groups of k-1 images drawn from the
  other N-1; the image joins each, its 5 predictions are averaged."""
  t = samplers.group_strategy(GROUP, strategy="c", k=k, seed=0)
  assert t.indices.shape == (7 * 5, k)
  np.testing.assert_array_equal(t.indices[:, 0], np.repeat(GROUP, 5))
  assert t.score[:, 0].all() and not t.score[:, 1:].any()
  assert _scored_counts(t) == {int(x): 5 for x in GROUP}
  _distinct_rows(t, k)
  assert np.isin(t.indices, GROUP).all()
  # The 5 draws are not one draw repeated.
  for x in GROUP:
    rows = t.indices[t.indices[:, 0] == x][:, 1:]
    assert len({frozenset(r) for r in rows.tolist()}) > 1
  other = samplers.group_strategy(GROUP, strategy="c", k=k, seed=1)
  assert not np.array_equal(t.indices, other.indices)
  assert len(samplers.group_strategy(GROUP, strategy="c", k=k,
                                     num_draws=2)) == 14


@pytest.mark.parametrize("k,tuples_per_image", [(2, 6), (3, 3), (4, 2),
                                                (7, 1)])
def test_strategy_d_the_others_split_into_companion_groups(k,
                                                           tuples_per_image):
  """Sec. 4.3 d): for each image the other N-1 = 6 images split into
  T = 6 / (k-1) groups of k-1; each companion exactly once."""
  t = samplers.group_strategy(GROUP, strategy="d", k=k, seed=2)
  assert t.indices.shape == (7 * tuples_per_image, k)
  assert t.score[:, 0].all() and not t.score[:, 1:].any()
  assert _scored_counts(t) == {int(x): tuples_per_image for x in GROUP}
  for x in GROUP:
    rows = t.indices[t.indices[:, 0] == x]
    companions = sorted(rows[:, 1:].ravel().tolist())
    assert companions == sorted(set(GROUP.tolist()) - {int(x)})


def test_strategy_d_n_minus_1_not_a_multiple_of_k_minus_1():
  """N = 8, k = 3: the 7 others make ceil(7 / 2) = 4 companion groups, the
  last completed by one of the other companions: every other image is a
  companion, one of them twice, never the image itself."""
  group = np.arange(20, 28)
  t = samplers.group_strategy(group, strategy="d", k=3, seed=4)
  assert t.indices.shape == (8 * 4, 3)
  _distinct_rows(t, 3)
  for x in group:
    rows = t.indices[t.indices[:, 0] == x]
    companions = rows[:, 1:].ravel().tolist()
    assert len(companions) == 8 and x not in companions
    assert set(companions) == set(group.tolist()) - {int(x)}
    assert len(set(companions)) == 7


def test_strategy_errors():
  with pytest.raises(ValueError, match="strategy"):
    samplers.group_strategy(GROUP, strategy="e", k=2)
  with pytest.raises(ValueError, match="tuple size"):
    samplers.group_strategy(GROUP, strategy="a", k=8)
  with pytest.raises(ValueError, match="tuple size"):
    samplers.group_strategy(GROUP, strategy="b", k=1)
  with pytest.raises(ValueError, match="num_draws"):
    samplers.group_strategy(GROUP, strategy="c", k=2, num_draws=0)
