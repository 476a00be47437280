"""coseg_jax.xla_defaults: XLA:CPU flags added on import, never over the
user's own choice, and accepted by the installed XLA."""

import os
import subprocess
import sys

from coseg_jax import xla_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_appends_to_existing_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_defaults.apply(env)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  empty = {}
  assert xla_defaults.apply(empty)
  assert empty["XLA_FLAGS"] == FLAG


def test_user_setting_and_opt_out_win():
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  assert not xla_defaults.apply(mine)
  assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
  off = {"COSEG_XLA_DEFAULTS": "0"}
  assert not xla_defaults.apply(off)
  assert "XLA_FLAGS" not in off


def _run(code, **extra_env):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "COSEG_XLA_DEFAULTS")}
  env.update(extra_env)
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True)
  return out.stdout.strip()


def test_import_sets_the_flag_and_xla_accepts_it():
  # XLA aborts at start-up on an unknown option or value, so the
  # convolution running proves the installed XLA takes the flag.
  code = ("import os, coseg_jax, jax, jax.numpy as jnp\n"
          "y = jax.lax.conv_general_dilated(jnp.ones((1, 8, 8, 2)), "
          "jnp.ones((3, 3, 2, 1)), (1, 1), 'SAME', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "print(float(y[0, 4, 4, 0]), os.environ['XLA_FLAGS'])")
  assert _run(code) == f"18.0 {FLAG}"
  assert _run("import os, coseg_jax; print(os.environ.get('XLA_FLAGS'))",
              COSEG_XLA_DEFAULTS="0") == "None"


def test_import_after_jax_started_leaves_flags_alone():
  code = ("import os, jax.numpy as jnp; jnp.ones(1).block_until_ready()\n"
          "import coseg_jax; print(os.environ.get('XLA_FLAGS'))")
  assert _run(code) == "None"
