"""The offline demo: co-segmentation on the procedural synthetic set, on CPU.

PROVISIONAL: trains the Mcat baseline (the best of the models available when
this was written: a Siamese encoder-decoder that sees the other image's
pooled feature); the CycleSegNet engineer switches it to CycleSegNet.

Runs offline (the synthetic set is rendered locally, nothing is downloaded)
in a few minutes on a laptop CPU:

  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode train
  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode eval
  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode predict --images '/path/to/photos/*.jpg' --out /tmp/coseg_demo/pred

``configs/demo.py:runlocal`` is a seconds-long version for tests.
"""

from configs import baselines


def get_config(arg=None):
  """Mcat on 64 px synthetic pairs; ``runlocal`` shrinks it for tests."""
  _, runlocal = baselines.parse_arg(arg, methods=())
  config = baselines.get_config("mcat,runlocal" if runlocal else "mcat")
  if not runlocal:
    config.data.builder_config = "small64"  # 10 classes x 40/10 at 64 px
    config.data.image_size = 64
    config.predict.image_size = 64
    # ~0.36 s/step on a busy 2-core CPU (benchmarks/RESULTS.md): minutes.
    config.train.num_steps = 800
    config.train.global_batch_size = 8
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
  return config
