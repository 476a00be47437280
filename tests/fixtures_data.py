"""Writers of tiny datasets in each benchmark's ORIGINAL distribution layout.

Each `write_<dataset>(root)` creates a few 16x16..40x40 images under `root`
in the layout the builder `data_pipelines.<dataset>` documents, including
the quirks of the real distributions (RGB masks with identical channels,
palette masks, anti-aliased mask values, empty masks, grayscale / RGBA /
16-bit images, BMP files, 1e10 "unknown" flow, -1 keypoint padding...), and
returns what a correct builder must produce:

    {'records': {record_id: {field: value}}, 'counts': {split: {class: n}},
     'split_of': {record_id: split}}

record_id is `image_id` (image datasets) or `pair_id` (pair datasets).
Images are returned as the uint8 RGB arrays a reader must produce (for JPEG
files: PIL's decoding of the written file), masks as uint8 [H, W] in {0,1}
(255 = ignore) or VOC indices.

The pipeline engineer's tests may import these writers too.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from data_pipelines import io as dio


def _rng(seed):
  return np.random.default_rng(seed)


def random_image(rng, h, w) -> np.ndarray:
  return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def random_mask(rng, h, w, *, empty=False) -> np.ndarray:
  """A {0,1} mask holding one random rectangle (or nothing)."""
  mask = np.zeros((h, w), np.uint8)
  if not empty:
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0:y0 + h // 2, x0:x0 + w // 2] = 1
  return mask


def save_jpeg(path, array) -> np.ndarray:
  """Writes a JPEG and returns PIL's decoding of it (what a reader sees)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, format="JPEG", quality=95)
  return np.asarray(Image.open(path).convert("RGB"))


def save_png(path, array, mode=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img = Image.fromarray(array) if mode is None else Image.fromarray(
      array, mode=mode)
  img.save(path, format="PNG")


def save_palette_png(path, indices: np.ndarray, palette=None):
  """A mode-'P' PNG whose pixel values are `indices` (colours arbitrary)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img = Image.fromarray(indices.astype(np.uint8), mode="P")
  if palette is None:  # Distinct colours, so RGB values != indices.
    palette = [(i * 37) % 256 for i in range(768)]
  img.putpalette(palette)
  img.save(path, format="PNG")


def save_rgb_mask_png(path, mask01):
  """An RGB mask PNG with 3 identical channels and values {0,255}."""
  m = (mask01 * 255).astype(np.uint8)
  save_png(path, np.stack([m, m, m], axis=-1))


def _image_counts(records, split="train"):
  counts = {}
  for r in records.values():
    counts[r["label"]] = counts.get(r["label"], 0) + 1
  return {split: counts}


def write_pascal_voc_coseg(root, *, seed=0):
  """<Class>/images/img_NNNN.jpg + <Class>/masks/img_NNNN.png (RGB {0,255})."""
  rng, root, records = _rng(seed), pathlib.Path(root), {}
  n = 1001
  for cls, count in (("Aero", 2), ("Cat", 1), ("Table", 2)):
    for _ in range(count):
      h, w = int(rng.integers(16, 41)), int(rng.integers(16, 41))
      image = save_jpeg(root / cls / "images" / f"img_{n}.jpg",
                        random_image(rng, h, w))
      mask = random_mask(rng, h, w)
      save_rgb_mask_png(root / cls / "masks" / f"img_{n}.png", mask)
      records[f"{cls}/images/img_{n}.jpg"] = dict(image=image, mask=mask,
                                                  label=cls)
      n += 1
  return dict(records=records, counts=_image_counts(records))


def write_internet(root, *, seed=1):
  """Data/<Class>[100]/*.jpg + GroundTruth/*.png; an empty mask; a gray image.

  Quirks: one image has no object (all-zero mask), one JPEG is grayscale
  (must come back as 3 identical channels), masks are single-channel
  {0,255} or 1-bit.
  """
  rng, root = _rng(seed), pathlib.Path(root)
  out = {}
  for config, suffix, per_class in (("subset100", "100", 2), ("full", "", 1)):
    records = {}
    for ci, cls in enumerate(("Airplane", "Car", "Horse")):
      folder = root / "Data" / f"{cls}{suffix}"
      for j in range(per_class):
        h, w = 20 + 2 * ci, 24
        stem = f"{cls.lower()}_{j:04d}"
        if cls == "Car" and j == 0:  # Grayscale JPEG.
          gray = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
          path = folder / f"{stem}.jpg"
          path.parent.mkdir(parents=True, exist_ok=True)
          Image.fromarray(gray, mode="L").save(path, format="JPEG")
          image = np.asarray(Image.open(path).convert("RGB"))
        else:
          image = save_jpeg(folder / f"{stem}.jpg", random_image(rng, h, w))
        mask = random_mask(rng, h, w, empty=(cls == "Horse" and j == 0))
        if cls == "Airplane" and j == 0:  # 1-bit mask PNG.
          mpath = folder / "GroundTruth" / f"{stem}.png"
          mpath.parent.mkdir(parents=True, exist_ok=True)
          Image.fromarray(mask.astype(bool)).save(mpath)
        else:
          save_png(folder / "GroundTruth" / f"{stem}.png",
                   (mask * 255).astype(np.uint8))
        records[f"Data/{cls}{suffix}/{stem}.jpg"] = dict(
            image=image, mask=mask, label=cls)
    out[config] = dict(records=records, counts=_image_counts(records))
  return out


ICOSEG_FOLDERS = ("Bear2", "Brown Bear", "cheetah", "Elephant", "Helicopter",
                  "Hot Balloon", "panda1", "Panda2", "Stonehenge", "Kite")


def write_icoseg(root, *, seed=2):
  """dataset_public/images/<folder>/*.jpg + ground_truth/<folder>/*.png.

  Ten groups (the 8 of the subset under folder-name variants, plus two);
  one PNG image is RGBA (alpha must be dropped), one is palette.
  """
  rng, root = _rng(seed), pathlib.Path(root) / "dataset_public"
  records = {}
  for gi, folder in enumerate(ICOSEG_FOLDERS):
    h, w = 16 + gi, 18
    rgb = random_image(rng, h, w)
    stem = f"{gi:03d}"
    if folder == "Kite":  # RGBA PNG: alpha dropped, colour kept.
      alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
      save_png(root / "images" / folder / f"{stem}.png",
               np.concatenate([rgb, alpha], -1))
      image, rel = rgb, f"images/{folder}/{stem}.png"
    elif folder == "Stonehenge":  # Palette PNG: expanded through palette.
      idx = rng.integers(0, 4, size=(h, w), dtype=np.uint8)
      pal = [10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (768 - 12)
      save_palette_png(root / "images" / folder / f"{stem}.png", idx, pal)
      image = np.asarray(pal[:12], np.uint8).reshape(4, 3)[idx]
      rel = f"images/{folder}/{stem}.png"
    else:
      image = save_jpeg(root / "images" / folder / f"{stem}.jpg", rgb)
      rel = f"images/{folder}/{stem}.jpg"
    mask = random_mask(rng, h, w)
    save_png(root / "ground_truth" / folder / f"{stem}.png",
             (mask * 255).astype(np.uint8))
    records[f"dataset_public/{rel}"] = dict(image=image, mask=mask,
                                            label=folder)
  subset = {k: v for k, v in records.items()
            if v["label"] not in ("Stonehenge", "Kite")}
  return {"all": dict(records=records, counts=_image_counts(records)),
          "subset8": dict(records=subset, counts=_image_counts(subset))}


def write_msrc(root, *, seed=3, layout="a"):
  """MSRC co-seg subset: BMP images, '<stem>_GT.bmp' or '<stem>.png' masks."""
  rng, root = _rng(seed), pathlib.Path(root)
  records = {}
  for ci, cls in enumerate(("cow", "plane")):
    for j in range(2):
      h, w = 18, 20 + ci
      stem = f"{j + 1}_{ci + 1}_s"
      if layout == "a":
        image_dir, mask_dir = root / cls, root / cls / "GroundTruth"
      else:
        image_dir, mask_dir = root / "Images" / cls, root / "GroundTruth" / cls
      image = random_image(rng, h, w)
      image_dir.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(image_dir / f"{stem}.bmp", format="BMP")
      mask = random_mask(rng, h, w)
      mask_dir.mkdir(parents=True, exist_ok=True)
      if j == 0:
        Image.fromarray((mask * 255).astype(np.uint8)).save(
            mask_dir / f"{stem}_GT.bmp", format="BMP")
      else:
        save_png(mask_dir / f"{stem}.png", mask)  # {0,1} PNG
      rel = (image_dir / f"{stem}.bmp").relative_to(root).as_posix()
      records[rel] = dict(image=image, mask=mask, label=cls)
  return dict(records=records, counts=_image_counts(records))


VOC_TRAIN = ("2007_000032", "2007_000039")
VOC_VAL = ("2007_000033", "2007_000042", "2007_000061", "2007_000123",
           "2007_000129")


def write_voc2012(root, *, seed=4):
  """VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}.

  SegmentationClass files are palette PNGs (the VOC colour map) whose
  indices are the classes, with a 255 void border; one image has only
  background.
  """
  rng = _rng(seed)
  voc = pathlib.Path(root) / "VOCdevkit" / "VOC2012"
  sets = voc / "ImageSets" / "Segmentation"
  sets.mkdir(parents=True, exist_ok=True)
  (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
  (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
  palette = []
  for i in range(256):  # The VOC bit-interleaved colour map.
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette += [r, g, b]
  records = {}
  for k, image_id in enumerate(VOC_TRAIN + VOC_VAL):
    h, w = 20, 24 + k
    image = save_jpeg(voc / "JPEGImages" / f"{image_id}.jpg",
                      random_image(rng, h, w))
    cm = np.zeros((h, w), np.uint8)
    if k != 3:  # image 3 has only background
      cls_a = 1 + (k % 20)
      cm[2:10, 2:10] = cls_a
      if k % 2 == 0:
        cm[10:18, 12:20] = 15  # person
      cm[1, :] = 255  # void border piece
    save_palette_png(voc / "SegmentationClass" / f"{image_id}.png", cm,
                     palette)
    present = sorted({int(v) for v in np.unique(cm) if 0 < v < 255})
    records[image_id] = dict(image=image, class_mask=cm, labels=present)
  return dict(records=records)


TSS_PAIRS = (("FG3DCar", "001_005"), ("JODS", "car_01_02"),
             ("PASCAL", "bike_01_02"))


def write_tss(root, *, seed=5):
  """<Subset>/<pair>/{image,mask}{1,2}.png, flow{1,2}.flo, txt files.

  Quirks: the FG3DCar mask2 has anti-aliased values (threshold at 128), JODS
  masks are palette PNGs with indices {0,1}, flows contain 1e10 unknowns.
  """
  rng, root = _rng(seed), pathlib.Path(root)
  records = {}
  for subset, pair in TSS_PAIRS:
    d = root / subset / pair
    d.mkdir(parents=True, exist_ok=True)
    rec = dict(label=subset, flip=int(subset == "PASCAL"))
    sizes = ((18, 22), (20, 22))
    for i, (h, w) in zip((1, 2), sizes):
      image = random_image(rng, h, w)
      save_png(d / f"image{i}.png", image)
      mask = random_mask(rng, h, w)
      if subset == "JODS":
        save_palette_png(d / f"mask{i}.png", mask)
      elif subset == "FG3DCar" and i == 2:
        raw = (mask * 255).astype(np.uint8)
        raw[0, :4] = [16, 40, 127, 207]  # intermediate values
        mask = (raw >= 128).astype(np.uint8)
        save_png(d / f"mask{i}.png", raw)
      else:
        save_png(d / f"mask{i}.png", (mask * 255).astype(np.uint8))
      flow = rng.normal(scale=3.0, size=(h, w, 2)).astype(np.float32)
      flow[:2, :3] = np.nan  # unknown -> written as 1e10
      dio.write_flo(d / f"flow{i}.flo", flow)
      rec[f"image{i}"], rec[f"mask{i}"] = image, mask
      rec["flow12" if i == 1 else "flow21"] = flow
    (d / "pair.txt").write_text("Image1,Image2\na.jpg,b.jpg\n")
    (d / "corr.txt").write_text("0.5\t0.5\t0.5\t0.5\n")
    (d / "flip_gt.txt").write_text(f"{rec['flip']}\n")
    records[f"{subset}/{pair}"] = rec
  return dict(records=records,
              counts={"test": {s: 1 for s, _ in TSS_PAIRS}})


def write_pf_pascal(root, *, seed=6):
  """PF-dataset-PASCAL/JPEGImages/*.jpg + {trn,val,test}_pairs.csv.

  The test list has XA/YA/XB/YB columns (';'-separated, one (-1,-1) pad
  point); the training list has no keypoints and a flip column.
  """
  rng, root = _rng(seed), pathlib.Path(root)
  base = root / "PF-dataset-PASCAL"
  images = {}
  for k in range(4):
    name = f"2008_00{k:04d}.jpg"
    images[name] = save_jpeg(base / "JPEGImages" / name,
                             random_image(rng, 20 + k, 26))
  names = sorted(images)
  records, split_of = {}, {}

  def write(csv_name, rows, header):
    with open(base / csv_name, "w", newline="") as f:
      wr = csv.writer(f)
      wr.writerow(header)
      wr.writerows(rows)

  test_rows = []
  for i, (a, b, cls) in enumerate(((0, 1, 7), (2, 3, 15))):
    kp1 = rng.uniform(1, 20, size=(3, 2)).round(2).astype(np.float32)
    kp2 = rng.uniform(1, 20, size=(3, 2)).round(2).astype(np.float32)
    if i == 1:
      kp1[2] = kp2[2] = -1
    fmt = lambda v: ";".join(f"{x:g}" for x in v)
    test_rows.append([f"PF-dataset-PASCAL/JPEGImages/{names[a]}",
                      f"PF-dataset-PASCAL/JPEGImages/{names[b]}", cls,
                      fmt(kp1[:, 0]), fmt(kp1[:, 1]), fmt(kp2[:, 0]),
                      fmt(kp2[:, 1])])
    kp1[kp1[:, 0] == -1] = np.nan
    kp2[kp2[:, 0] == -1] = np.nan
    pid = f"test_pairs.csv:{i}"
    records[pid] = dict(image1=images[names[a]], image2=images[names[b]],
                        keypoints1=kp1, keypoints2=kp2, flip=0,
                        label=("aeroplane", "bicycle", "bird", "boat",
                               "bottle", "bus", "car", "cat", "chair", "cow",
                               "diningtable", "dog", "horse", "motorbike",
                               "person")[cls - 1])
    split_of[pid] = "test"
  write("test_pairs.csv", test_rows,
        ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"])
  write("trn_pairs.csv", [[names[1], names[2], 1, 1]],
        ["source_image", "target_image", "class", "flip"])
  records["trn_pairs.csv:0"] = dict(
      image1=images[names[1]], image2=images[names[2]],
      keypoints1=np.zeros((0, 2), np.float32),
      keypoints2=np.zeros((0, 2), np.float32), flip=1, label="aeroplane")
  split_of["trn_pairs.csv:0"] = "train"
  counts = {"test": {"car": 1, "person": 1}, "train": {"aeroplane": 1}}
  return dict(records=records, counts=counts, split_of=split_of)


def write_pf_willow(root, *, seed=7, n_kp=4):
  """PF-dataset/<class>/*.png + test_pairs_pf.csv (XA1.. YA.. XB.. YB..)."""
  rng, root = _rng(seed), pathlib.Path(root)
  base = root / "PF-dataset"
  records, rows = {}, []
  for i, cls in enumerate(("car(G)", "duck(S)")):
    pair = []
    for k in range(2):
      img = random_image(rng, 22, 18 + k)
      save_png(base / cls / f"{cls[:3]}_{k}.png", img)
      pair.append((f"PF-dataset/{cls}/{cls[:3]}_{k}.png", img))
    kp1 = rng.uniform(1, 17, size=(n_kp, 2)).round(3).astype(np.float32)
    kp2 = rng.uniform(1, 17, size=(n_kp, 2)).round(3).astype(np.float32)
    rows.append([pair[0][0], pair[1][0]] + [f"{v:g}" for v in np.concatenate(
        [kp1[:, 0], kp1[:, 1], kp2[:, 0], kp2[:, 1]])])
    records[str(i)] = dict(image1=pair[0][1], image2=pair[1][1],
                           keypoints1=kp1, keypoints2=kp2, label=cls)
  header = (["imageA", "imageB"] + [f"XA{j + 1}" for j in range(n_kp)]
            + [f"YA{j + 1}" for j in range(n_kp)]
            + [f"XB{j + 1}" for j in range(n_kp)]
            + [f"YB{j + 1}" for j in range(n_kp)])
  with open(base / "test_pairs_pf.csv", "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(header)
    wr.writerows(rows)
  return dict(records=records,
              counts={"test": {"car(G)": 1, "duck(S)": 1}})
