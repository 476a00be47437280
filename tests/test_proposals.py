"""Object proposals (selective-search grouping of Felzenszwalb segments) and
the proposal selection / multi-object merge of Hsu et al. Sec. 3.3, on
constructed maps and proposals whose right answer is known."""

import numpy as np
import pytest

from coseg_jax import proposals as P

H = W = 24


def box(r0, r1, c0, c1):
  m = np.zeros((H, W), bool)
  m[r0:r1, c0:c1] = True
  return m


# Two objects: A (10 x 10 = 100 px) and B (6 x 6 = 36 px), apart.
A = box(2, 12, 2, 12)
B = box(15, 21, 15, 21)


def test_proposal_errors_match_brute_force():
  rng = np.random.RandomState(0)
  s = rng.rand(H, W)
  props = rng.rand(5, H, W) > 0.5
  want = [np.sum((s - p) ** 2) for p in props]
  np.testing.assert_allclose(P.proposal_errors(s, props), want, rtol=1e-12)


def test_single_object_argmin():
  s = np.where(A, 0.8, 0.1)
  props = np.stack([box(0, 24, 0, 24), box(2, 12, 2, 7), A, box(0, 14, 0, 14),
                    B])
  mask, chosen = P.select_object_mask(s, props, multi_object=False)
  assert chosen == [2]
  np.testing.assert_array_equal(mask, A)


def test_multi_object_merge_takes_both_objects():
  # A at 0.9, B at 0.95: A explains more first; B survives the "below the
  # mean of the chosen proposal" zeroing (0.95 > 0.9) and is merged next.
  s = np.where(A, 0.9, 0.0) + np.where(B, 0.95, 0.0)
  both_box = box(2, 21, 2, 21)
  props = np.stack([both_box, B, A, box(2, 12, 2, 6)])
  errors = P.proposal_errors(s, props)
  assert np.argmin(errors) == 2  # A first (checks the construction)
  mask, chosen = P.select_object_mask(s, props)
  assert chosen == [2, 1]
  np.testing.assert_array_equal(mask, A | B)
  # Single-object mode stops after A.
  mask1, chosen1 = P.select_object_mask(s, props, multi_object=False)
  assert chosen1 == [2]
  np.testing.assert_array_equal(mask1, A)


def test_weaker_second_object_is_zeroed_below_the_mean():
  # B at 0.6 < mean of S in A (0.9): zeroed, so only A is selected.
  s = np.where(A, 0.9, 0.0) + np.where(B, 0.6, 0.0)
  props = np.stack([A, B])
  mask, chosen = P.select_object_mask(s, props)
  assert chosen == [0]
  np.testing.assert_array_equal(mask, A)


def test_overlapping_proposals_are_removed():
  # No exact B proposal. C = B + 4 px of A (overlaps the chosen A), D = B +
  # 8 px of background. Without removal C would win (fewer extra pixels);
  # with removal (any overlap) D is merged.
  s = np.where(A, 0.9, 0.0) + np.where(B, 0.95, 0.0)
  strip_a = box(8, 12, 11, 12)  # 4 px inside A
  strip_bg = box(15, 23, 22, 23)  # 8 px of background
  c = B | strip_a
  d = B | strip_bg
  props = np.stack([A, c, d])
  residual = np.where(B, 0.95, 0.0)  # what is left after A
  e = P.proposal_errors(residual, props[1:])
  assert e[0] < e[1]  # C would be preferred without the removal
  mask, chosen = P.select_object_mask(s, props)
  assert chosen == [0, 2]
  np.testing.assert_array_equal(mask, A | d)
  # C has 4 of its 40 px in A (10%): with a 15% tolerance it stays a
  # candidate and wins.
  mask2, chosen2 = P.select_object_mask(s, props, overlap=0.15)
  assert chosen2 == [0, 1]


def test_stops_when_no_proposal_beats_the_empty_mask():
  # After A, a faint-but-above-mean speck remains that no proposal explains
  # better than the empty mask: nothing else is added.
  s = np.where(A, 0.9, 0.0)
  s[20, 20] = 0.95
  props = np.stack([A, box(16, 24, 16, 24)])  # 64 px for a 1 px speck
  mask, chosen = P.select_object_mask(s, props)
  assert chosen == [0]
  np.testing.assert_array_equal(mask, A)


def test_max_objects_and_bad_inputs():
  s = np.where(A, 0.9, 0.0) + np.where(B, 0.95, 0.0)
  _, chosen = P.select_object_mask(s, np.stack([A, B]), max_objects=1)
  assert chosen == [0]
  with pytest.raises(ValueError, match="proposals must be"):
    P.select_object_mask(s, np.zeros((2, 5, 5), bool))
  with pytest.raises(ValueError, match="no proposals"):
    P.select_object_mask(s, np.zeros((0, H, W), bool))
  out = P.select_collection(np.stack([s, s]), [np.stack([A, B])] * 2)
  assert out.shape == (2, H, W)


def _blocks_image():
  """Two flat-coloured rectangles on a flat background (uint8 48 x 48)."""
  img = np.zeros((48, 48, 3), np.uint8)
  img[:] = (30, 120, 40)
  img[5:20, 6:30] = (220, 30, 30)
  img[28:44, 20:40] = (20, 40, 230)
  return img


def test_hierarchical_grouping_builds_a_full_hierarchy():
  labels = np.zeros((8, 8), np.int64)
  labels[:, 4:] = 1
  labels[4:, :] += 2  # four quadrants 0..3
  colour = np.eye(4)
  hierarchy = P._hierarchical_grouping(labels, colour, colour,
                                       ("colour", "size", "fill"))
  # 4 initial regions + 3 merges, the last covers everything. Colours are
  # all different (similarity 0) and fills equal, so the size similarity
  # decides: the two small pairs merge before anything joins a pair.
  assert len(hierarchy) == 7
  assert hierarchy[-1].all()
  sizes = [int(m.sum()) for m in hierarchy]
  assert sizes == [1, 1, 1, 1, 2, 2, 4]


def test_selective_search_recovers_flat_objects_exactly():
  img = _blocks_image()
  gt1 = np.zeros((48, 48), bool)
  gt1[5:20, 6:30] = True
  gt2 = np.zeros((48, 48), bool)
  gt2[28:44, 20:40] = True
  config = P.ProposalConfig(colour_spaces=("rgb", "lab"), scales=(50.0,),
                            max_proposals=1000)
  props = P.selective_search(img, config)
  assert props.dtype == bool and props.shape[1:] == (48, 48)
  # Unique, neither too small nor too large (the whole image is dropped).
  flat = props.reshape(len(props), -1)
  assert len({m.tobytes() for m in flat}) == len(props)
  assert (flat.mean(1) >= config.min_area).all()
  assert (flat.mean(1) <= config.max_area).all()
  for gt in (gt1, gt2):
    iou = (props & gt).sum((1, 2)) / (props | gt).sum((1, 2))
    assert iou.max() == 1.0
  capped = P.selective_search(img, P.ProposalConfig(
      colour_spaces=("rgb", "lab"), scales=(50.0,), max_proposals=3))
  assert len(capped) == 3


def test_collection_cache_roundtrip(tmp_path, monkeypatch):
  imgs = np.stack([_blocks_image(), _blocks_image()[::-1]])
  config = P.ProposalConfig(colour_spaces=("rgb",), scales=(50.0,))
  path = str(tmp_path / "c.npz")
  first = P.collection_proposals(imgs, config, cache_path=path)
  assert len(first) == 2

  def boom(*a, **k):
    raise AssertionError("recomputed despite a valid cache")

  monkeypatch.setattr(P, "selective_search", boom)
  again = P.collection_proposals(imgs, config, cache_path=path)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  # Other settings: the key differs, so it recomputes.
  with pytest.raises(AssertionError, match="recomputed"):
    P.collection_proposals(imgs, P.ProposalConfig(colour_spaces=("lab",)),
                           cache_path=path)


def test_config_validation():
  with pytest.raises(ValueError, match="colour space"):
    P.ProposalConfig(colour_spaces=("xyz",))
  with pytest.raises(ValueError, match="similarity"):
    P.ProposalConfig(similarity_sets=(("shape",),))
  c = P.config_from_dict({"similarity_sets": [["size", "fill"]],
                          "scales": [10.0]})
  assert c.similarity_sets == (("size", "fill"),) and c.scales == (10.0,)


def test_soft_map_raw_target_picks_the_smallest_proposal_otsu_the_object():
  # Mean S inside A is 0.45 < 1/2: under the paper's raw ||S - O||^2 a tiny
  # proposal beats A; binarising S at Otsu's threshold selects A.
  s = np.where(A, 0.45, 0.3)
  tiny = box(20, 22, 2, 4)  # 4 px of background
  props = np.stack([A, tiny, box(0, 24, 0, 24)])
  _, raw = P.select_object_mask(s, props, target="raw")
  assert raw == [1]
  mask, chosen = P.select_object_mask(s, props, target="otsu")
  assert chosen == [0]
  np.testing.assert_array_equal(mask, A)
  _, mm = P.select_object_mask(s, props, target="minmax")
  assert mm == [0]
  with pytest.raises(ValueError, match="target"):
    P.select_object_mask(s, props, target="bad")
