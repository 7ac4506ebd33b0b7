"""Sweeps: expansion, the local runner (with a fake train command), Slurm scripts, reports."""

import dataclasses
import glob
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from vlmjax import cli
from vlmjax.sweeps import commands, report, runner, spec as sweep_spec
from vlmjax.config import ConfigError

from conftest import ROOT

# Stands in for `vlmjax train`: logs `step`/`train/loss` rows to metrics.jsonl, resumes from
# `progress`, and fails half-way when override x equals $FAKE_FAIL (so a rerun has something to resume).
FAKE_TRAIN = r"""
import json, os, sys
args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1]
ov = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
total, x, seed = int(ov.get("total_steps", "4")), float(ov["x"]), int(ov["seed"])
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "calls"), "a") as f:
  f.write("call\n")
progress = os.path.join(workdir, "progress")
start = int(open(progress).read()) if os.path.exists(progress) else 0
if start >= total:
  print("already finished"); sys.exit(0)
if start:
  print(f"resuming from step {start}")
json.dump({"total_steps": total, "seed": seed}, open(os.path.join(workdir, "config.json"), "w"))
for step in range(start + 1, total + 1):
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": step, "train/loss": x + seed / 10 + 1 / step}) + "\n")
  open(progress, "w").write(str(step))
  if os.environ.get("FAKE_FAIL") == ov["x"] and step == total // 2:
    print("Traceback (most recent call last):\nValueError: boom at step", step); sys.exit(1)
print("done")
"""


# Stands in for `vlmjax eval`: writes eval/<step>.json from the run's progress; fails while
# $FAKE_EVAL_FAIL is set.
FAKE_EVAL = r"""
import json, os, sys
args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1]
if os.environ.get("FAKE_EVAL_FAIL"):
  print("vlmjax: error: evals.zs: no such data"); sys.exit(2)
step = int(open(os.path.join(workdir, "progress")).read())
os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
json.dump({"step": step, "eval/zs/top1": 0.5, "eval/zs/seconds": 3.0, "argv": args},
          open(os.path.join(workdir, "eval", f"{step}.json"), "w"))
"""


@pytest.fixture
def fake_train(tmp_path):
  path = tmp_path / "fake_train.py"
  path.write_text(FAKE_TRAIN)
  return (sys.executable, str(path))


def _names(sweep):
  return [r.name for r in sweep.runs]


def test_expand_grid_zip_seeds_and_names():
  sweep = sweep_spec.expand(dict(
      base="configs/coca_tiny.py:steps=8", seeds=[0, 1],
      grid={"loss.caption_weight": [0.0, 1.0], "model.pooler.mode": ["parallel", "cascade"]},
      zip={"loss.contrastive": ["softmax", "sigmoid"], "model.init_logit_bias": [0.0, -10.0]},
      fixed={"log_every": 2, "model.remat": "none"},
      labels={"loss.caption_weight": "lambda_cap", "model.init_logit_bias": None}))
  assert len(sweep.runs) == 2 * 2 * 2 * 2
  assert _names(sweep)[:3] == [
      "lambda_cap=0.0,mode=parallel,contrastive=softmax,seed=0",
      "lambda_cap=0.0,mode=parallel,contrastive=softmax,seed=1",
      "lambda_cap=0.0,mode=parallel,contrastive=sigmoid,seed=0"]
  run = sweep.runs[2]
  assert run.group == "lambda_cap=0.0,mode=parallel,contrastive=sigmoid" and run.seed == 0 and run.index == 2
  assert run.params == {"lambda_cap": 0.0, "mode": "parallel", "contrastive": "sigmoid"}
  assert run.overrides == (("log_every", "2"), ("model.remat", "none"), ("loss.caption_weight", "0.0"),
                           ("model.pooler.mode", "parallel"), ("loss.contrastive", "sigmoid"),
                           ("model.init_logit_bias", "-10.0"), ("seed", "0"))
  paths = sweep_spec.expand(dict(base="c.py", seeds=[0], grid={"data.train.source": ["tar:/d/{0..3}.tar"]},
                             zip={"mesh.rules.batch": [("data", "fsdp")]}))
  assert _names(paths) == ["source=tar:_d_{0..3}.tar,batch=('data','fsdp'),seed=0"]
  assert paths.runs[0].overrides[:2] == (("data.train.source", "tar:/d/{0..3}.tar"),
                                         ("mesh.rules.batch", "('data', 'fsdp')"))
  only_seeds = sweep_spec.expand(dict(base="configs/coca_tiny.py", seeds=[3, 4]))
  assert _names(only_seeds) == ["seed=3", "seed=4"] and only_seeds.runs[0].group == ""


@pytest.mark.parametrize("spec, match", [
    (dict(seeds=[0]), "missing required key 'base'"),
    (dict(base="c.py", seeds=[0], grdi={}), "unknown sweep key 'grdi'; valid keys: base, seeds"),
    (dict(base="c.py", seeds=[0, 0]), "'seeds' must be distinct ints"),
    (dict(base="c.py", seeds=[0], grid={"a": 1.0}), r"grid\['a'\] must be a non-empty list"),
    (dict(base="c.py", seeds=[0], zip={"a": [1, 2], "b": [1]}), "equal lengths, got a: 2, b: 1"),
    (dict(base="c.py", seeds=[0], grid={"seed": [1, 2]}), "set seeds with the 'seeds' key"),
    (dict(base="c.py", seeds=[0], grid={"a": [1]}, fixed={"a": 2}), "'a' appears in more than one"),
    (dict(base="c.py", seeds=[0], grid={"a": [1]}, labels={"b": "B"}), "labels names 'b', which is not swept"),
    (dict(base="c.py", seeds=[0], evals=["zero_shot"]), "'evals' must be a dict of dotted config keys"),
    (dict(base="c.py", seeds=[0], zip={"a": [1, 2], "b": [3, 4]}, labels={"a": None, "b": None}),
     "two runs are both named 'seed=0'"),
])
def test_expand_errors_are_one_line(spec, match):
  with pytest.raises(ConfigError, match=match) as e:
    sweep_spec.expand(spec, where="exp.py")
  assert "\n" not in str(e.value) and str(e.value).startswith("exp.py: ")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py"))))
def test_shipped_sweeps_load_and_their_configs_validate(path):
  sweep = sweep_spec.load_sweep(path)
  commands.check_configs(sweep)
  assert len(sweep.runs) >= 4 and "vlmjax sweep experiments/" in open(path).read()


def test_dry_run_lists_runs_and_applies_command_line_overrides(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  rc = cli.main(["sweep", "experiments/caption_weight.py", "--workdir", str(tmp_path), "--dry-run",
                 "--config.optim.lr=3e-4"])
  out = capsys.readouterr().out.splitlines()
  assert rc == 0 and out[0].startswith("sweep experiments/caption_weight.py: 6 runs of configs/coca_tiny.py")
  assert out[1].split()[:2] == ["lambda_cap=0.0,seed=0", "new"]
  assert "--config.optim.lr=3e-4 --config.loss.caption_weight=0.0 --config.seed=0" in out[1]
  assert not os.listdir(tmp_path)  # nothing ran
  assert cli.main(["sweep", "experiments/caption_weight.py", "--workdir", str(tmp_path), "--dry-run",
                   "--config.loss.caption_weight=3"]) == 2
  assert "which the sweep varies" in capsys.readouterr().err
  assert cli.main(["sweep", "experiments/caption_weight.py", "--workdir", str(tmp_path), "--dry-run",
                   "--config.optim.lrr=1"]) == 2
  assert "run lambda_cap=0.0,seed=0: override: unknown config key 'optim.lrr'" in capsys.readouterr().err


def _status(workdir, name):
  return json.load(open(os.path.join(workdir, name, "status.json")))


def _calls(workdir, name):
  return len(open(os.path.join(workdir, name, "calls")).read().splitlines())


def test_failed_run_is_recorded_others_finish_then_rerun_skips_and_resumes(tmp_path, fake_train, monkeypatch):
  sweep = sweep_spec.expand(dict(base="fake.py", seeds=[0], grid={"x": [1.0, 2.0, 3.0]}, fixed={"total_steps": 6}),
                        where="fake_sweep.py")
  workdir, lines = str(tmp_path / "sweep"), []
  monkeypatch.setenv("FAKE_FAIL", "2.0")
  states = runner.run_sweep(sweep, workdir, parallel=2, train_cmd=fake_train, print_fn=lines.append)
  assert states == {"x=1.0,seed=0": "done", "x=2.0,seed=0": "failed", "x=3.0,seed=0": "done"}
  failed = _status(workdir, "x=2.0,seed=0")
  assert failed["returncode"] == 1 and failed["error"] == "ValueError: boom at step 3"
  assert failed["log_tail"][-2:] == ["Traceback (most recent call last):", "ValueError: boom at step 3"]
  assert "--workdir" in failed["command"] and failed["attempts"] == 1
  assert any("x=2.0,seed=0: FAILED (exit 1): ValueError: boom" in line for line in lines)
  assert lines[-1] == "sweep fake_sweep.py: 2/3 runs done; failed: x=2.0,seed=0"
  log = open(os.path.join(workdir, "x=1.0,seed=0", "output.txt")).read()
  assert log.startswith("==> attempt 1") and log.rstrip().endswith("done")

  # A run killed while running (status still "running") is resumed too.
  interrupted = _status(workdir, "x=3.0,seed=0") | {"state": "running"}
  json.dump(interrupted, open(os.path.join(workdir, "x=3.0,seed=0", "status.json"), "w"))
  monkeypatch.delenv("FAKE_FAIL")
  lines.clear()
  states = runner.run_sweep(sweep, workdir, train_cmd=fake_train, print_fn=lines.append)
  assert set(states.values()) == {"done"}
  assert lines[0] == "[1/3] x=1.0,seed=0: done, skipped" and _calls(workdir, "x=1.0,seed=0") == 1
  assert "(was failed; resuming)" in lines[1] and "(was running; resuming)" in lines[3]
  assert "resuming from step 3" in open(os.path.join(workdir, "x=2.0,seed=0", "output.txt")).read()
  assert _status(workdir, "x=2.0,seed=0")["attempts"] == 2 and "error" not in _status(workdir, "x=2.0,seed=0")
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "x=2.0,seed=0", "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4, 5, 6]

  # Changing a setting of a finished run runs it again (train resumes or says it is finished).
  longer = sweep_spec.with_extra(sweep, (("total_steps", "8"),))
  lines.clear()
  runner.run_sweep(longer, workdir, train_cmd=fake_train, print_fn=lines.append)
  assert "(settings changed since it finished)" in lines[0] and _calls(workdir, "x=1.0,seed=0") == 2


INTERRUPTED_SWEEP = """\
import json, os, signal, sys, threading, time
from vlmjax.sweeps import runner, spec
signum, workdir, slow = int(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a shell: xdist workers ignore SIGINT (inherited)
sweep, lines = spec.expand(dict(base="fake.py", seeds=[0, 1, 2])), []

def print_fn(line):  # the signal to the process (as Ctrl-C or scancel send it) a second after the first run starts
  lines.append(line)
  if len(lines) == 1:
    threading.Timer(1.0, os.kill, (os.getpid(), signum)).start()
before, start, raised = signal.getsignal(signal.SIGTERM), time.time(), False
try:
  with runner.sigterm_as_interrupt():
    runner.run_sweep(sweep, workdir, train_cmd=(sys.executable, slow), print_fn=print_fn)
except KeyboardInterrupt:
  raised = True
print(json.dumps(dict(raised=raised, seconds=time.time() - start, lines=lines,
                      restored=signal.getsignal(signal.SIGTERM) is before)))
"""


def test_sigterm_is_an_interrupt_while_a_sweep_runs():
  """Under `sigterm_as_interrupt`, SIGTERM's handler raises KeyboardInterrupt (what Ctrl-C raises: the
  stop below), SIGTERM and SIGINT are unblocked, and both are put back after. (A real SIGTERM to the
  process, as in the test below, reached no handler in CI's test workers, even in a fresh child
  interpreter, while it works from a shell and in this test file alone: not understood yet.)"""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers are set from the main thread only")
  before = signal.getsignal(signal.SIGTERM)
  mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  try:
    with runner.sigterm_as_interrupt():
      assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
      with pytest.raises(KeyboardInterrupt):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_the_trainer_and_starts_nothing_more(tmp_path, signum):
  """Ctrl-C as `vlmjax sweep` runs: in a fresh interpreter, as the command runs, the signal sent to the
  process a second after the first run starts."""
  slow = tmp_path / "slow.py"
  # Like `vlmjax train` it saves on SIGTERM and exits; with status 0 here, which must not count as done.
  slow.write_text("import signal, sys, time\n"
                  "signal.signal(signal.SIGTERM, lambda *_: (print('preempted: saved', flush=True), sys.exit(0)))\n"
                  "print('training', flush=True)\ntime.sleep(30)\n")
  script = tmp_path / "sweep.py"
  script.write_text(INTERRUPTED_SWEEP)
  workdir = str(tmp_path / "sweep")
  sweep = sweep_spec.expand(dict(base="fake.py", seeds=[0, 1, 2]))
  proc = subprocess.run([sys.executable, str(script), str(int(signum)), workdir, str(slow)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["raised"] and got["restored"], got  # KeyboardInterrupt out of the sweep; the handler put back
  assert got["seconds"] < 20  # the trainer was stopped, not waited for
  assert sorted(os.listdir(workdir)) == ["seed=0"]
  status = _status(workdir, "seed=0")
  assert status["state"] == "interrupted" and not status["trained"], status
  assert runner.state_of(sweep, sweep.runs[0], workdir) == "interrupted"  # so the next sweep resumes it
  assert got["lines"][-1].endswith("interrupted; run the same command again to resume")


def test_evals_run_after_training_and_a_failed_eval_does_not_retrain(tmp_path, fake_train, monkeypatch):
  fake_eval = tmp_path / "fake_eval.py"
  fake_eval.write_text(FAKE_EVAL)
  sweep = sweep_spec.expand(dict(base="fake.py", seeds=[0], grid={"x": [1.0]},
                             evals={"zs": "zero_shot:synthetic:shapes:validation", "zs.num_examples": 64}))
  workdir, name, cmds = str(tmp_path / "sweep"), "x=1.0,seed=0", dict(train_cmd=fake_train,
                                                                      eval_cmd=(sys.executable, str(fake_eval)))
  monkeypatch.setenv("FAKE_EVAL_FAIL", "1")
  assert runner.run_sweep(sweep, workdir, **cmds, print_fn=lambda _: None) == {name: "failed"}
  status = _status(workdir, name)
  assert status["trained"] and status["error"] == "vlmjax: error: evals.zs: no such data"
  monkeypatch.delenv("FAKE_EVAL_FAIL")
  lines = []
  assert runner.run_sweep(sweep, workdir, **cmds, print_fn=lines.append) == {name: "done"}
  assert lines[0].startswith(f"[1/1] {name}: evaluating (was failed; resuming) -> ")
  assert _calls(workdir, name) == 1  # training was not repeated
  evaluated = json.load(open(os.path.join(workdir, name, "eval", "4.json")))
  assert evaluated["argv"][2:] == ["--config.evals.zs=zero_shot:synthetic:shapes:validation",
                                   "--config.evals.zs.num_examples=64"]
  text = report.write_report(workdir)
  assert "zs/top1 final" in text and "seconds" not in text.split("## Groups")[1].split("\n")[2]
  other = dataclasses.replace(sweep, evals=(("evals.zs", "retrieval:synthetic:shapes:validation"),))
  assert runner.state_of(other, other.runs[0], workdir) == "changed"


def test_missing_train_command_is_a_failed_run(tmp_path):
  sweep = sweep_spec.expand(dict(base="fake.py", seeds=[0, 1]))
  states = runner.run_sweep(sweep, str(tmp_path), train_cmd=(str(tmp_path / "nope"),), print_fn=lambda _: None)
  assert states == {"seed=0": "failed", "seed=1": "failed"}
  assert _status(tmp_path, "seed=0")["returncode"] == 127


def test_slurm_writes_an_array_job(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  workdir = tmp_path / "runs"
  assert cli.main(["sweep", "experiments/pooler.py", "--workdir", str(workdir), "--launcher", "slurm",
                   "--parallel", "2", "--sbatch=--gres=gpu:8", "--config.optim.lr=3e-4"]) == 0
  script = (workdir / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-3%2" in script and "#SBATCH --gres=gpu:8" in script
  assert "RUNS=(pooler=parallel,seed=0 pooler=parallel,seed=1 pooler=cascade,seed=0 pooler=cascade,seed=1)" in script
  assert '--config.optim.lr=3e-4 --only "${RUNS[$SLURM_ARRAY_TASK_ID]}"' in script
  assert subprocess.run(["bash", "-n", str(workdir / "sweep.sbatch")]).returncode == 0
  assert "submit it with: sbatch" in capsys.readouterr().out
  assert sorted(os.listdir(workdir)) == ["sweep.sbatch"]
  assert cli.main(["sweep", "experiments/pooler.py", "--workdir", str(workdir), "--dry-run",
                   "--only", "pooler=cascade,seed=1"]) == 0
  assert "1 runs of" in capsys.readouterr().out
  assert cli.main(["sweep", "experiments/pooler.py", "--workdir", str(workdir), "--only", "pooler=x"]) == 2
  assert cli.main(["sweep", "experiments/pooler.py", "--workdir", str(workdir), "--launcher", "slurm"]) == 0
  assert "#SBATCH --array=0-3\n" in (workdir / "sweep.sbatch").read_text()
  assert cli.main(["sweep", "experiments/pooler.py", "--workdir", str(workdir), "--parallel", "0"]) == 2


def _fixture_run(workdir, name, group, index, seed, state, rows, total=4, error=None):
  rundir = workdir / name
  rundir.mkdir(parents=True)
  status = dict(name=name, group=group, index=index, seed=seed, state=state, seconds=12.0)
  if error:
    status["error"] = error
  (rundir / "status.json").write_text(json.dumps(status))
  (rundir / "config.json").write_text(json.dumps({"total_steps": total, "seed": seed}))
  (rundir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_table_on_finished_runs(tmp_path, capsys):
  w = tmp_path / "sweep"
  def rows(losses, acc=None):
    out = [{"step": 2 * (i + 1), "train/loss": l} for i, l in enumerate(losses)]
    if acc is not None:
      out[-1]["eval/shapes/top1"] = acc
    return out
  _fixture_run(w, "lam=0,seed=0", "lam=0", 0, 0, "done", rows([3.0, 1.0], acc=0.5))
  _fixture_run(w, "lam=0,seed=1", "lam=0", 1, 1, "done", rows([3.0, 2.0]))
  (w / "lam=0,seed=1" / "eval").mkdir()  # written by `vlmjax eval --workdir`
  (w / "lam=0,seed=1" / "eval" / "4.json").write_text(json.dumps({"step": 4, "eval/shapes/top1": 0.7}))
  # Resumed run: steps 2 and 4 logged twice; the later values win.
  _fixture_run(w, "lam=1,seed=0", "lam=1", 2, 0, "done",
               rows([0.2, 9.0]) + [{"step": 4, "train/loss": 0.5, "eval/shapes/top1": 0.9}])
  _fixture_run(w, "lam=1,seed=1", "lam=1", 3, 1, "failed", rows([5.0]), error="ValueError: boom")
  (w / "not_a_run").mkdir()

  assert cli.main(["report", str(w)]) == 0
  printed = capsys.readouterr().out
  text = (w / "report.md").read_text()
  assert printed == text
  groups = text.split("## Groups")[1].split("## Runs")[0]
  assert "| group | runs | status | loss final | loss best (min) | eval/shapes/top1 final | eval/shapes/top1 best (max) |" in groups
  # lam=0: final losses 1 and 2 -> 1.5 ± 0.7071 (sample std); best equal to final; top1 0.6 ± 0.1414
  assert ("| lam=0 | 2 | 2 done | 1.5000 ± 0.7071 (n=2) | 1.5000 ± 0.7071 (n=2) | 0.6000 ± 0.1414 (n=2) "
          "| 0.6000 ± 0.1414 (n=2) |") in groups
  # lam=1: final 0.5 (resumed; best 0.2); the run that failed at step 2 is left out and named
  assert "| lam=1 | 2 | 1 done, 1 failed | 0.5000 (n=1) | 0.2000 (n=1) | 0.9000 (n=1) | 0.9000 (n=1) |" in groups
  assert "Not in the group values (1 of 4 runs, unfinished): `lam=1,seed=1` (failed, step 2/4)." in groups
  assert "| lam=1,seed=0 | done | 4/4 | 12s | 0.5000 / 0.2000 | 0.9000 / 0.9000 |" in text
  assert "| lam=1,seed=1 | failed | 2/4 | 12s | 5.0000 / 5.0000 | - |" in text
  assert "- `lam=1,seed=1`: ValueError: boom" in text
  assert "not_a_run" not in text
  for png in ("train_loss.png", "eval_shapes_top1.png"):
    assert f"![{png}]({png})" in text and (w / png).read_bytes()[:4] == b"\x89PNG"

  text = report.write_report(str(w), ["train/loss"], last=2)
  assert "final = mean of the last 2 logged values" in text
  assert "| lam=1,seed=0 | done | 4/4 | 12s | 0.3500 / 0.2000 |" in text
  text = report.write_report(str(w), ["eval/shapes/top1:min"])
  assert "top1 best (min)" in text and "| lam=0 | 2 | 2 done | 0.6000 ± 0.1414 (n=2) | 0.6000 ± 0.1414 (n=2) |" in text
  with pytest.raises(ConfigError, match="no run logged 'eval/x'; logged metrics: eval/shapes/top1, train/loss"):
    report.write_report(str(w), ["eval/x"])
  with pytest.raises(ConfigError, match="no runs in"):
    report.write_report(str(tmp_path / "sweep" / "not_a_run"))


def test_mean_std_and_metric_direction():
  assert report.mean_std([1.0, None, 3.0]) == f"2.0000 ± {math.sqrt(2):.4f}"
  assert report.mean_std([None]) == "-"
  assert report.mean_std([1.0, math.nan]) == "nan" and report.mean_std([1.0, math.inf]) == "inf"
  assert report.parse_metric("train/caption_loss") == ("train/caption_loss", "min")
  assert report.parse_metric("eval/retrieval/i2t_r1") == ("eval/retrieval/i2t_r1", "max")
  with pytest.raises(ConfigError, match="must be min or max"):
    report.parse_metric("eval/x:best")


def test_report_final_keeps_nan_and_groups_average_finished_runs_only(tmp_path, monkeypatch):
  w = tmp_path / "sweep"
  rows = lambda losses: [{"step": 10 * (i + 1), "train/loss": l} for i, l in enumerate(losses)]  # noqa: E731
  _fixture_run(w, "a=1,seed=0", "a=1", 0, 0, "done", rows([3.0, 2.0, 1.0]), total=30)
  _fixture_run(w, "a=1,seed=1", "a=1", 1, 1, "done", rows([3.5, 2.5, 1.5]), total=30)
  # Diverged (nan_policy=skip logs NaN), then finished: its final is nan, its best the finite 3.0.
  _fixture_run(w, "a=2,seed=0", "a=2", 2, 0, "done", rows([3.0, math.nan, math.nan]), total=30)
  _fixture_run(w, "a=2,seed=1", "a=2", 3, 1, "failed", rows([2.0]), total=30, error="ValueError: boom")
  _fixture_run(w, "a=3,seed=0", "a=3", 4, 0, "running", rows([0.1]), total=30)
  # Trained outside a sweep (no status.json): finished when it logged its last step.
  for name, losses in (("b=1,seed=0", [4.0, 3.0, 2.0]), ("b=1,seed=1", [0.5])):
    _fixture_run(w, name, "", 0, 0, "done", rows(losses), total=30)
    (w / name / "status.json").unlink()
  with open(w / "a=1,seed=0" / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "train/lo')  # cut short by a kill: skipped, and counted
  legends = {}
  import matplotlib.pyplot as plt
  monkeypatch.setattr(plt, "close", lambda fig: legends.setdefault(
      fig.axes[0].get_ylabel(), [t.get_text() for t in fig.axes[0].get_legend().get_texts()]))

  text = report.write_report(str(w), ["train/loss"])
  groups, runs = text.split("## Groups")[1].split("## Runs")
  assert "| a=1 | 2 | 2 done | 1.2500 ± 0.3536 (n=2) | 1.2500 ± 0.3536 (n=2) |" in groups
  assert "| a=2 | 2 | 1 done, 1 failed | nan (n=1) | 3.0000 (n=1) |" in groups
  assert "| a=3 | 1 | 1 running | - | - |" in groups
  assert "| b=1 | 2 | 1 done, 1 stopped | 2.0000 (n=1) | 2.0000 (n=1) |" in groups
  assert ("Not in the group values (3 of 7 runs, unfinished): `a=2,seed=1` (failed, step 10/30), "
          "`a=3,seed=0` (running, step 10/30), `b=1,seed=1` (stopped, step 10/30).") in groups
  assert "| a=2,seed=0 | done | 30/30 | 12s | nan / 3.0000 |" in runs
  assert "| a=2,seed=1 | failed | 10/30 | 12s | 2.0000 / 2.0000 |" in runs
  assert "`a=1,seed=0` 1 line(s) of metrics.jsonl / eval/*.json" in runs
  assert legends["train/loss"] == ["a=1 (mean ± std of 2)",
                                   "a=2 (1 unfinished, not in the mean; 1 final nan)",
                                   "a=3 (1 unfinished, none finished)",
                                   "b=1 (1 unfinished, not in the mean)"]
  # --last 2: a mean over a NaN is NaN; best still skips it
  text = report.write_report(str(w), ["train/loss"], last=2)
  assert "| a=2,seed=0 | done | 30/30 | 12s | nan / 3.0000 |" in text
  assert "| a=1 | 2 | 2 done | 1.7500 ± 0.3536 (n=2) |" in text


@pytest.mark.parametrize("content, match", [
    ('{"name": "seed=0", "sta', "is cut short or corrupt"),
    ("\xff\xfe", "is cut short or corrupt"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"name": "seed=0"}', r"(lacks group, index, seed, state|has no 'state')"),
])
def test_corrupt_status_json_is_a_one_line_error(tmp_path, capsys, content, match):
  sweep = sweep_spec.expand(dict(base="fake.py", seeds=[0, 1]))
  (tmp_path / "seed=0").mkdir()
  path = tmp_path / "seed=0" / "status.json"
  path.write_bytes(content.encode("latin-1"))
  for call in (lambda: runner.run_sweep(sweep, str(tmp_path), train_cmd=("false",), print_fn=lambda _: None),
               lambda: report.write_report(str(tmp_path))):
    with pytest.raises(ConfigError, match=match) as e:
      call()
    assert str(e.value).startswith(str(path)) and "delete it to run that run again" in str(e.value)
    assert "\n" not in str(e.value)
  assert not (tmp_path / "seed=1").exists()  # the sweep stopped before running anything
  assert cli.main(["report", str(tmp_path)]) == 2
  assert f"{path} " in capsys.readouterr().err


def test_corrupt_config_json_is_a_one_line_error_in_the_report(tmp_path):
  _fixture_run(tmp_path, "seed=0", "", 0, 0, "done", [{"step": 1, "train/loss": 1.0}])
  (tmp_path / "seed=0" / "config.json").write_text('{"total_st')
  with pytest.raises(ConfigError, match=r"seed=0/config.json is cut short or corrupt .*`vlmjax train` writes it"):
    report.write_report(str(tmp_path))


def test_run_names_over_255_bytes_fail_in_expand():
  ok = sweep_spec.expand(dict(base="c.py", seeds=[0], grid={"a.k": ["v" * 246]}))  # k=<246>,seed=0: 255 bytes
  assert len(ok.runs[0].name.encode()) == 255
  for grid, labels in (({"a.k": ["v" * 247]}, {}),                   # 256 bytes
                       ({"a.k": ["é" * 124]}, {}),                   # 131 characters, 256 bytes
                       ({"a.k": [1, 2]}, {"a.k": "x" * 300})):       # a long label
    with pytest.raises(ConfigError, match="over the 255-byte limit of a directory name") as e:
      sweep_spec.expand(dict(base="c.py", seeds=[0], grid=grid, labels=labels), where="exp.py")
    assert str(e.value).startswith("exp.py: run 1 (") and "shorter label" in str(e.value)
    assert "\n" not in str(e.value)


TINY = os.path.join(ROOT, "configs", "coca_tiny.py") + ":steps=4,batch=16,evals=0"
ZS = "zero_shot:synthetic:shapes:validation"


@pytest.mark.parametrize("evals, match", [
    ({"zs": "zero_shot"}, r"run seed=1: --config.evals.zs='zero_shot': a new evaluator is TYPE:SOURCE"),
    ({"zs": "zero_shoot:synthetic:shapes:validation"}, r"run seed=1: --config.evals.zs=.*TYPE one of"),
    ({"zs": ZS, "zs.num_exampels": 64},
     r"run seed=1: sweep evals: unknown config key 'evals.zs.num_exampels'; did you mean evals.zs.num_examples"),
    ({"zs": ZS, "zs.num_examples": "many"}, r"run seed=1: sweep evals: evals.zs.num_examples='many' is not a valid int"),
    ({"zs": ZS, "zs.batch_size": 0}, r"run seed=1: evals.zs.batch_size must be a positive int, got 0"),
])
def test_check_configs_applies_and_validates_the_sweeps_evals(evals, match):
  sweep = sweep_spec.expand(dict(base=TINY, seeds=[1], evals=evals))
  with pytest.raises(ConfigError, match=match) as e:
    commands.check_configs(sweep)
  assert "\n" not in str(e.value)


def test_check_configs_calls_validate_all_on_the_config_vlmjax_eval_will_see(tmp_path, monkeypatch, capsys):
  from vlmjax import evals
  seen = []
  monkeypatch.setattr(evals, "prepare_all", lambda cfg: seen.append(
      (cfg.seed, sorted(cfg.evals.keys()), cfg.evals.zs.num_examples, cfg.evals.zs.data.source)))
  sweep = sweep_spec.expand(dict(base=TINY, seeds=[0, 1], evals={"zs": ZS, "zs.num_examples": 32}))
  commands.check_configs(sweep)
  assert seen == [(0, ["zs"], 32, "synthetic:shapes:validation"), (1, ["zs"], 32, "synthetic:shapes:validation")]
  monkeypatch.undo()
  # --dry-run fails before anything runs, one line naming the run and the evaluator.
  spec = tmp_path / "bad_evals.py"
  spec.write_text(f"def get_sweep():\n  return dict(base={TINY!r}, seeds=[0], evals={{'zs': {ZS!r}, "
                  "'zs.num_exampels': 64})\n")
  assert cli.main(["sweep", str(spec), "--workdir", str(tmp_path / "w"), "--dry-run"]) == 2
  err = capsys.readouterr().err.strip()
  assert "run seed=0: sweep evals: unknown config key 'evals.zs.num_exampels'" in err and "\n" not in err
  assert not (tmp_path / "w").exists()
