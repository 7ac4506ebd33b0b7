"""Ablation sweeps: `experiments/` sweep files expanded into runs, run, recorded, and reported.

  spec.py      sweep files -> `Sweep` of named `Run`s (the file format is documented there)
  status.py    the per-run status.json: the one owner of its format (runner and report read it)
  runner.py    train (and evaluate) each run in a subprocess, skip finished ones, resume the rest
  slurm.py     the sweep as a Slurm array job
  report.py    tables (final / best, mean ± std over seeds) and plots of a sweep's runs
  commands.py  `vlmjax sweep` and `vlmjax report`
"""
