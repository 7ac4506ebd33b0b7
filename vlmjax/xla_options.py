"""XLA compiler options for the train step, per platform, from `cfg.xla_options.<platform>`.

`parse` reads "name=value,..." into the dict `jax.jit(compiler_options=...)` takes; `for_backend`
gives this backend's options after XLA has accepted them on a trivial program, so that a bad
name or value is a one-line config error, not a failure deep inside the first step. An option
earns a place in a config only through a measurement (`scripts/bench_step.py --ab`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlmjax.errors import ConfigError, one_line


def parse(cfg: ml_collections.ConfigDict, platform: str) -> dict[str, Any]:
  """`cfg.xla_options.<platform>` ("name=value,...") as a dict for `jax.jit(compiler_options=...)`.
  A value may hold commas (`xla_gpu_enable_command_buffer=FUSION,CUBLAS`): items split only where
  the next `xla_...=` starts. true/false become booleans, integers and decimals numbers, the rest
  stays a string."""
  where = f"xla_options.{platform}"
  text = cfg.xla_options[platform] if platform in cfg.xla_options else ""
  out: dict[str, Any] = {}
  for item in filter(None, (i.strip() for i in re.split(r",(?=\s*(?:--)?xla_\w+\s*=)", text))):
    name, eq, raw = item.partition("=")
    name = name.strip().removeprefix("--")
    if not eq or not re.fullmatch(r"xla_\w+", name):
      raise ConfigError(f"{where}: {item!r} is not of the form xla_option=value "
                        f"(e.g. xla_gpu_enable_latency_hiding_scheduler=true)")
    if name in out:
      raise ConfigError(f"{where}: {name} is given twice")
    raw = raw.strip()
    if raw.lower() in ("true", "false"):
      out[name] = raw.lower() == "true"
    elif re.fullmatch(r"[+-]?\d+", raw):
      out[name] = int(raw)
    elif re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)", raw):
      out[name] = float(raw)
    else:
      out[name] = raw
  return out


def for_backend(cfg: ml_collections.ConfigDict) -> dict:
  """`cfg.xla_options` for this backend, checked up front on a trivial program so that a bad
  name or value is a config error rather than a failure deep inside the first step."""
  for other in cfg.xla_options.keys():  # every platform's options are well formed, not only this one's
    parse(cfg, other)
  platform = jax.default_backend()
  opts = parse(cfg, platform)
  if opts:
    try:
      jax.jit(lambda x: x + 1, compiler_options=opts).lower(jnp.zeros(())).compile()
    except Exception as e:  # noqa: BLE001 -- XLA raises a runtime error naming the bad option
      raise ConfigError(f"xla_options.{platform}: XLA rejected {opts}: {one_line(e)}") from None
  return opts
