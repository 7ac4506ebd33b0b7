"""Several processes: `jax.distributed` set-up and the command-line flags that configure it.

One process per host (or per GPU under SLURM) runs the same command; `initialize` joins them
before any other jax call. This module imports jax only inside `initialize`, so command
modules can add the flags without slowing `vlmjax --help`.
"""

from __future__ import annotations

import argparse
import os

from vlmjax.errors import ConfigError, one_line


def add_flags(p: argparse.ArgumentParser) -> None:
  """Flags for `jax.distributed.initialize`; not needed under SLURM, Open MPI or on TPU VMs."""
  g = p.add_argument_group(
      "multi-process (also JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)",
      "The three go together. Not needed under SLURM (srun), Open MPI or GKE, which jax detects,\n"
      "nor with `vlmjax launch local`, which passes them; on Cloud TPU VMs set VLMJAX_DISTRIBUTED=1.")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help="address of process 0's coordination service (every process passes the same)")
  g.add_argument("--num-processes", type=int, metavar="N", help="how many processes run this command")
  g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")
  # The spellings before dashes became the style, hidden from --help: scripts that use them keep working.
  g.add_argument("--num_processes", type=int, dest="num_processes", help=argparse.SUPPRESS)
  g.add_argument("--process_id", type=int, dest="process_id", help=argparse.SUPPRESS)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_processes() -> int:
  """How many processes the scheduler started (SLURM, Open MPI, TPU VM); 1 when none says."""
  if "SLURM_PROCID" in os.environ:
    return _env_int("SLURM_NTASKS") or 1
  if "OMPI_COMM_WORLD_SIZE" in os.environ:
    return _env_int("OMPI_COMM_WORLD_SIZE") or 1
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) or 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when this is one of several processes; True if it did.

  Explicit arguments (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) win;
  otherwise SLURM, Open MPI and GKE TPU environments are detected by jax itself. Cloud TPU VMs
  name their workers only through the metadata server: set VLMJAX_DISTRIBUTED=1 there
  (scripts/launch_tpu_vm.sh does), and jax finds them. One process with none of these set:
  nothing to do.
  """
  import jax  # noqa: PLC0415 (slow; `vlmjax --help` imports this module)
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  explicit = (coordinator, num_processes, process_id)
  if any(x is not None for x in explicit):
    if any(x is None for x in explicit):
      raise ConfigError("--coordinator, --num-processes and --process-id go together (or JAX_COORDINATOR_ADDRESS, "
                        f"JAX_NUM_PROCESSES, JAX_PROCESS_ID); got {explicit}")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process-id {process_id} is not in [0, {num_processes})")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
  processes = _cluster_processes()
  if processes > 1 or os.environ.get("VLMJAX_DISTRIBUTED") == "1":
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # e.g. SLURM variables from salloc, but not started by srun
      why = f"the environment says {processes} processes" if processes > 1 else "VLMJAX_DISTRIBUTED=1"
      raise ConfigError(f"{why}, but jax.distributed found no cluster to join ({one_line(e)}); start each "
                        "process with srun / mpirun, or pass --coordinator, --num-processes and --process-id") from None
    return True
  return False
