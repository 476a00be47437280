"""Backbone parity figures: parameter counts and max relative errors vs torch.

For each backbone, a plain-torch reference (``benchmarks/torch_impl/backbones.py``, torchvision
/ efficientnet_pytorch key names) gets random weights and randomised BN
statistics; its state dict is converted with ``coseg_jax.backbones.weights``
and both models run on the same random images. The error of a tensor is
max |flax - torch| / max |torch|; the table gives the worst over the five
feature levels, pooled and logits, for float32 and bfloat16 compute. For each
EfficientNet-Lite whose weights package is installed it also reports the
real-weight errors (worst level and logits) and the top-3 classes of
scikit-image's chelsea / coffee / rocket at the model's native resolution
(shorter side to resolution + 32 with PIL bilinear, centre crop: 256 -> 224
for Lite0, 272 -> 240 for Lite1, 292 -> 260 for Lite2).

Usage (needs torch):
  python -m benchmarks.backbone_parity [--names resnet18,vgg16] [--size 64]
      [--time]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax import backbones
from coseg_jax.backbones import base
from coseg_jax.backbones import efficientnet_lite
from coseg_jax.backbones import weights

NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "vgg16_bn",
         "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _rel(a, b):
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _reference(torch, torch_refs, name):
  torch.manual_seed(0)
  if name.startswith("resnet"):
    return torch_refs.randomize_(torch_refs.resnet(name), 1), \
        torch_refs.imagenet_input
  if name.startswith("vgg"):
    return torch_refs.randomize_(torch_refs.VGG(name == "vgg16_bn"), 1), \
        torch_refs.imagenet_input
  return torch_refs.randomize_(torch_refs.efficientnet_lite(name), 1), \
      torch_refs.lite_input


def parity(name, size):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_impl import backbones as torch_refs  # pylint: disable=g-import-not-at-top
  model, to_input = _reference(torch, torch_refs, name)
  image = np.random.RandomState(0).rand(2, size, size, 3).astype(np.float32)
  with torch.no_grad():
    out = model(to_input(image))
  feats = {k: v.permute(0, 2, 3, 1).numpy() for k, v in out[0].items()}
  ref_logits = out[1].numpy()
  ref_pooled = (out[2].numpy() if len(out) > 2
                else feats["stride32"].mean((1, 2)))
  module = backbones.get_backbone(name, with_head=True)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = weights.convert_state_dict(
      sd, weights.abstract_variables(module))
  n_params = sum(int(np.prod(x.shape))
                 for x in jax.tree_util.tree_leaves(variables["params"]))
  row = {"params": n_params}
  for dtype in (jnp.float32, jnp.bfloat16):
    got = jax.jit(module.clone(dtype=dtype).apply)(variables, image)
    errs = [_rel(got.features[k], feats[k]) for k in base.FEATURE_LEVELS]
    errs += [_rel(got.pooled, ref_pooled), _rel(got.logits, ref_logits)]
    row[jnp.dtype(dtype).name] = max(errs)
  return row


def timing(name, size=224, repeats=5):
  module = backbones.get_backbone(name, with_head=True)
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  f = jax.jit(module.apply)
  f(variables, x).logits.block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    f(variables, x).logits.block_until_ready()
  return (time.perf_counter() - t) / repeats * 1e3


def lite_real(name):
  """Real ImageNet weights: errors vs torch and top-3 on three photos."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import imagenet  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_impl import backbones as torch_refs  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  try:
    path = weights.find_lite_weights(name)
  except weights.WeightsError as e:
    print(f"{name} real weights: skipped ({e})")
    return
  size = efficientnet_lite.LITE_VARIANTS[name][2]

  names = ("chelsea", "coffee", "rocket")
  images = np.stack([imagenet.imagenet_eval_crop(
      getattr(skimage.data, n)(), size) for n in names])
  module = backbones.get_backbone(name, with_head=True)
  variables = weights.load_pretrained(name, path, with_head=True)
  out = jax.jit(module.apply)(variables, images)
  logits = np.asarray(out.logits)
  ref = torch_refs.efficientnet_lite(name).eval()
  ref.load_state_dict(torch.load(path, map_location="cpu"))
  with torch.no_grad():
    ref_feats, ref_logits = ref(torch_refs.lite_input(images))
  level_err = max(
      _rel(out.features[k], ref_feats[k].permute(0, 2, 3, 1).numpy())
      for k in base.FEATURE_LEVELS)
  print(f"{name} real weights ({path.name}, {size} px): max relative error "
        f"features {level_err:.2e}, logits "
        f"{_rel(logits, ref_logits.numpy()):.2e}")
  for n, lg in zip(names, logits):
    p = np.exp(lg - lg.max())
    p /= p.sum()
    top = np.argsort(-lg)[:3]
    print(f"  {n}: top-3 classes {top.tolist()} probabilities "
          f"{[round(float(p[i]), 3) for i in top]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--names", default=",".join(NAMES))
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--time", action="store_true",
                      help="also time a jitted 224x224 batch-1 forward")
  args = parser.parse_args()
  print("| backbone | parameters | max rel. error float32 | max rel. error "
        "bfloat16 |" + (" forward 224 (ms) |" if args.time else ""))
  print("|---|---|---|---|" + ("---|" if args.time else ""))
  for name in args.names.split(","):
    row = parity(name, args.size)
    line = (f"| {name} | {row['params']:,} | {row['float32']:.1e} | "
            f"{row['bfloat16']:.1e} |")
    if args.time:
      line += f" {timing(name):.0f} |"
    print(line, flush=True)
  for name in args.names.split(","):
    if name.startswith("efficientnet_lite"):
      lite_real(name)


if __name__ == "__main__":
  main()
