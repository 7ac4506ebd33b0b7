"""`vlmjax sweep --launcher slurm`: the sweep as a Slurm array job, one task per run."""

from __future__ import annotations

import os
import shlex
import sys

from vlmjax.sweeps.spec import Sweep


def slurm_script(sweep: Sweep, workdir: str, *, parallel: int | None, extra: tuple[tuple[str, str], ...] = (),
                 sbatch: tuple[str, ...] = ()) -> str:
  """An array job: task i runs `vlmjax sweep FILE --only <run i>`, so skip/resume/status are shared."""
  names = " ".join(shlex.quote(r.name) for r in sweep.runs)
  cmd = [sys.executable, "-m", "vlmjax.cli", "sweep", os.path.abspath(sweep.path), "--workdir",
         os.path.abspath(workdir), *(f"--config.{k}={v}" for k, v in extra)]
  throttle = f"%{parallel}" if parallel else ""  # Slurm's array throttle: at most N tasks at once
  job = os.path.splitext(os.path.basename(sweep.path))[0]
  lines = [
      "#!/bin/bash",
      f"# Sweep {sweep.path}: {len(sweep.runs)} runs of {sweep.base}, one array task each.",
      f"# Written by `vlmjax sweep {sweep.path} --workdir {workdir} --launcher slurm`; submit with",
      f"#   sbatch {os.path.join(workdir, 'sweep.sbatch')}",
      "# Add #SBATCH lines for partition, GPUs and time with --sbatch=... (or edit this file).",
      f"#SBATCH --job-name={job}",
      f"#SBATCH --array=0-{len(sweep.runs) - 1}{throttle}",
      f"#SBATCH --output={os.path.abspath(workdir)}/slurm-%A_%a.out",
      *(f"#SBATCH {s}" for s in sbatch),
      "set -euo pipefail",
      f"RUNS=({names})",
      f"cd {shlex.quote(os.getcwd())}",
      f'exec {shlex.join(cmd)} --only "${{RUNS[$SLURM_ARRAY_TASK_ID]}}"',
  ]
  return "\n".join(lines) + "\n"
