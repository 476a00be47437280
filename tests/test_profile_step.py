"""``benchmarks.profile_step``: where a train step or inference spends its
time, for coseg_jax (``jax.profiler``) and the PyTorch port
(``torch.profiler``).

* ``hlo_metadata`` reads the opcode and ``op_name`` of every instruction of
  a real compiled module's text.
* ``summarise`` / ``summarise_torch`` add up known event times into the
  right rows, shares and per-call figures.
* End to end at the tiny size: both frameworks profile DCC's inference and
  the summaries name the convolutions that dominate it.
"""

import collections
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import optional_import

from benchmarks import profile_step


def test_hlo_metadata_of_a_compiled_module():
  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO",
                                                        "NHWC"))
    return jnp.tanh(y).sum()

  x = jnp.ones((1, 8, 8, 3))
  w = jnp.ones((3, 3, 3, 4))
  text = jax.jit(f).lower(x, w).compile().as_text()
  meta = profile_step.hlo_metadata(text)
  ops = collections.Counter(op for op, _ in meta.values())
  conv = [name for name, (op, op_name) in meta.items()
          if "conv_general_dilated" in op_name]
  assert conv, meta
  assert ops["parameter"] >= 2
  assert all(isinstance(op_name, str) for _, op_name in meta.values())


def test_summarise_adds_up_instructions_and_primitives():
  meta = {"conv.1": ("convolution", "jit(f)/conv_general_dilated"),
          "fusion.2": ("fusion", "jit(f)/mul"),
          "fusion.3": ("fusion", "jit(f)/mul[foo]")}
  ns = collections.Counter({"conv.1": 6e6, "fusion.2": 3e6, "fusion.3": 1e6})
  calls = collections.Counter({"conv.1": 2, "fusion.2": 2, "fusion.3": 2})
  text = profile_step.summarise(ns, calls, meta, steps=2,
                                step_ms=[4.0, 6.0, 5.0], top=5, title="T")
  assert "median 5.0 ms" in text and "5.0 ms per call" in text
  assert "| conv.1 | convolution | 3.00 | 60.0 | 1 |" in text
  # both mul fusions under one primitive (the bracketed part dropped)
  assert "| mul | 2.00 | 40.0 |" in text


def test_summarise_torch_sorts_by_self_time():
  rows = [("aten::add", 1000.0, 4), ("aten::mkldnn_convolution", 9000.0, 8)]
  text = profile_step.summarise_torch(rows, steps=2, step_ms=[7.0, 9.0],
                                      top=1, title="T")
  assert "median 8.0 ms" in text and "5.0 ms per call" in text
  assert "| aten::mkldnn_convolution | 4.50 | 90.0 | 4 |" in text
  assert "aten::add" not in text  # top=1


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_profile_tiny_inference(framework, tmp_path):
  if framework == "torch":
    optional_import("torch")
  report = profile_step.main([
      "--method", "dcc", "--size", "tiny", "--phase", "infer", "--framework",
      framework, "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
  assert "Wall time per call" in report
  if framework == "jax":
    assert "conv_general_dilated" in report
    assert os.path.exists(tmp_path / "infer.hlo.txt")
    assert os.path.exists(tmp_path / "infer_top_ops.md")
  else:
    assert "convolution" in report
    assert os.path.exists(tmp_path / "infer_torch_top_ops.md")


def test_profile_torch_train_without_port_is_an_error(tmp_path):
  optional_import("torch")
  with pytest.raises(SystemExit, match="no PyTorch port"):
    profile_step.main([
        "--method", "macosnet", "--size", "tiny", "--phase", "train",
        "--framework", "torch", "--steps", "1", "--out", str(tmp_path)])


def test_async_spans_pair_launches_with_their_end_events():
  # Two calls of an asynchronous convolution (launch events of 0.1 ms, an
  # 'end:' event 80 and 60 ms later) and one synchronous fusion.
  ms = 1_000_000
  events = [("conv.1", 0, ms // 10), ("end: conv.1", 80 * ms, 80 * ms),
            ("fusion.2", 81 * ms, 85 * ms),
            ("conv.1", 100 * ms, 100 * ms + ms // 10),
            ("end: conv.1", 160 * ms, 160 * ms + 1000),
            ("end: unknown.9", 5 * ms, 6 * ms)]
  names = {"conv.1", "fusion.2"}
  ns, calls = profile_step.thunk_times(events, names)
  assert ns == {"conv.1": 2 * ms // 10, "fusion.2": 4 * ms}
  spans, span_calls = profile_step.async_spans(events, names)
  assert spans == {"conv.1": 80 * ms + 60 * ms + 1000}
  assert span_calls == {"conv.1": 2}
  text = profile_step.summarise(
      ns, calls, {"conv.1": ("convolution", "jit(f)/conv_general_dilated"),
                  "fusion.2": ("fusion", "jit(f)/add")},
      steps=2, step_ms=[100.0, 100.0], top=5, title="T", spans=spans,
      span_calls=span_calls)
  assert "Launch-to-end wall time: 70.0 ms per call (70 %" in text
  assert "| conv.1 | convolution | 70.00 | 70.0 | 1 |" in text
