"""scripts/bench_step.py's helpers: the memory estimate, the largest-batch search, the peak table."""

import os
import sys
import types

import jax
import jax.numpy as jnp
import pytest
from conftest import MICRO, ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bench_step  # noqa: E402


def test_compiled_bytes_counts_the_temporaries():
  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: jnp.tanh(a @ a) @ a + 1).lower(x).compile()
  m = compiled.memory_analysis()
  assert m.temp_size_in_bytes > 0  # the intermediate product lives in the temporaries
  assert bench_step.compiled_bytes(compiled) >= (m.argument_size_in_bytes + m.output_size_in_bytes
                                                 - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _fake_compiler(monkeypatch, bytes_for_batch):
  """compile_abstract replaced by an 'executable' whose memory is bytes_for_batch(batch)."""
  calls = []

  def compile_abstract(cfg):
    calls.append(cfg.batch_size)
    stats = types.SimpleNamespace(argument_size_in_bytes=bytes_for_batch(cfg.batch_size), output_size_in_bytes=0,
                                  alias_size_in_bytes=0, temp_size_in_bytes=0, peak_memory_in_bytes=0)
    return types.SimpleNamespace(memory_analysis=lambda: stats, batch=cfg.batch_size), 0.0
  monkeypatch.setattr(bench_step, "compile_abstract", compile_abstract)
  return calls


SPEC, OVERRIDES = os.path.join(ROOT, "configs/coca_tiny.py:evals=0"), list(MICRO)


def test_largest_batch_on_an_affine_memory_line(monkeypatch):
  calls = _fake_compiler(monkeypatch, lambda b: 1000 + 10 * b)
  b, found, compiled = bench_step.largest_batch(SPEC, OVERRIDES, 1000 + 10 * 500, 32, log=lambda _: None)
  assert b == 480 and compiled.batch == 480 and found["bytes_per_example"] == 10
  assert calls == [256, 128, 480]  # two probes give the line, the third confirms; none repeated


def test_largest_batch_steps_down_when_memory_grows_faster_than_the_line(monkeypatch):
  calls = _fake_compiler(monkeypatch, lambda b: 10 * b + (4000 if b > 300 else 0))
  b, _, compiled = bench_step.largest_batch(SPEC, OVERRIDES, 10 * 500, 32, log=lambda _: None)
  assert b <= 300 and compiled.batch == b and 10 * b <= 5000 and len(calls) == len(set(calls))


def test_largest_batch_fails_when_nothing_fits(monkeypatch):
  _fake_compiler(monkeypatch, lambda b: 10**9 + b)
  with pytest.raises(SystemExit, match="no batch fits"):
    bench_step.largest_batch(SPEC, OVERRIDES, 10**6, 32, log=lambda _: None)


def test_peak_flops_table():
  assert bench_step.peak_flops("NVIDIA H200") == 790e12
  assert bench_step.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert bench_step.peak_flops("NVIDIA H200 NVL") == 790e12  # a variant's name holds a known one
  assert bench_step.peak_flops("cpu") is None
