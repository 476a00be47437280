"""experiments.score_masks: predicted masks against ground-truth folders."""

import os

import cv2
import numpy as np
import pytest

from experiments import score_masks


def _write(folder, name, mask):
  os.makedirs(folder, exist_ok=True)
  assert cv2.imwrite(os.path.join(folder, name), mask)


@pytest.fixture
def folders(tmp_path):
  pred, truth = str(tmp_path / "pred"), str(tmp_path / "truth")
  a = np.zeros((4, 6), np.uint8)
  a[:, :3] = 255  # 12 predicted pixels
  _write(pred, "a.png", a)
  ta = np.zeros((4, 6), np.uint8)
  ta[:, 1:4] = 1  # a 0/1 palette-style truth: 12 pixels, 8 shared
  _write(truth, "a.png", ta)
  _write(pred, "b.png", np.zeros((3, 3), np.uint8))
  tb = np.zeros((3, 3, 3), np.uint8)
  tb[0, 0] = 255  # a colour 0/255 truth with one foreground pixel
  _write(truth, "b.bmp", tb)
  _write(truth, "c.png", np.zeros((2, 2), np.uint8))
  return pred, truth


def test_scores_known_values(folders):
  scores = score_masks.score_folders(*folders)
  by_name = {r["name"]: r for r in scores["images"]}
  assert by_name["a"]["J"] == pytest.approx(8 / 16)
  assert by_name["a"]["P"] == pytest.approx(16 / 24)
  assert by_name["b"]["J"] == 0.0
  assert by_name["b"]["P"] == pytest.approx(8 / 9)
  assert scores["mean_J"] == pytest.approx(0.25)
  assert scores["pooled_J"] == pytest.approx(8 / 17)
  assert scores["unscored_truth"] == ["c"]
  text = score_masks.format_scores(scores)
  assert "mean J 0.250" in text and "not scored): c" in text


def test_truth_is_thresholded_at_128(folders):
  pred, truth = folders
  # Intermediate truth values are thresholded at 128 (the data stack's rule).
  t = np.array([[0, 127, 128, 255]], np.uint8)
  _write(truth, "a.png", np.repeat(t, 4, 0)[:, [0, 1, 2, 3, 3, 3]])
  scores = score_masks.score_folders(pred, truth)
  # pred a: columns 0-2; truth a: columns 2-5.
  assert {r["name"]: r["J"] for r in scores["images"]}["a"] == (
      pytest.approx(4 / 24))


@pytest.mark.parametrize("side,name,mask,match", [
    # A prediction with no truth mask.
    ("pred", "d.png", np.zeros((2, 2), np.uint8), "for d"),
    # A prediction holding values other than {0, 255} / {0, 1}.
    ("pred", "a.png", np.full((4, 6), 7, np.uint8), r"pred.a\.png"),
    # Sizes differ: both files named.
    ("truth", "a.png", np.zeros((5, 6), np.uint8),
     r"pred.a\.png is \(4, 6\) \(H, W\) but mask .*truth.a\.png is "
     r"\(5, 6\)"),
    # Two truth files of one name.
    ("truth", "a.bmp", np.zeros((4, 6), np.uint8), "two files named 'a'"),
])
def test_bad_input_names_the_file(folders, side, name, mask, match):
  pred, truth = folders
  _write(pred if side == "pred" else truth, name, mask)
  with pytest.raises(ValueError, match=match):
    score_masks.score_folders(pred, truth)
