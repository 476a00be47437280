"""The machine description recorded beside measured figures."""

import platform

from coseg_jax.runtime import machine


def test_cpu_model_is_the_cpuinfo_model_name(tmp_path, monkeypatch):
  fake = tmp_path / "cpuinfo"
  fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000 @ 1GHz\n"
                  "model name\t: second core\n")
  real_open = open
  monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
      fake if path == "/proc/cpuinfo" else path, *a, **k))
  assert machine.cpu_model() == "Test CPU 9000 @ 1GHz"


def test_cpu_model_without_cpuinfo_falls_back_to_platform(monkeypatch):
  def no_file(path, *a, **k):
    raise OSError(path)
  monkeypatch.setattr("builtins.open", no_file)
  monkeypatch.setattr(platform, "processor", lambda: "")
  monkeypatch.setattr(platform, "machine", lambda: "riscv64")
  assert machine.cpu_model() == "riscv64"
