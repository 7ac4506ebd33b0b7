"""`vlmjax launch local` with stand-in children (failures, signals, exit statuses) and the cluster scripts.

The real two-process training run is tests/test_distributed.py::test_launch_local_two_processes_equals_one_process.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from vlmjax import launch

from conftest import ROOT

# A stand-in for `vlmjax train`: `CHILD DIR I ACTION`. It writes DIR/I.pid once its SIGTERM handler
# is set; on SIGTERM it writes DIR/I.term and exits 143, as a preempted trainer does.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    d, i, action = sys.argv[1:4]
    def on_term(*_):
      open(os.path.join(d, i + ".term"), "w").close()
      sys.exit(143)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if action == "ignore-term" else on_term)
    with open(os.path.join(d, i + ".tmp"), "w") as f:
      f.write(str(os.getpid()))
    os.rename(os.path.join(d, i + ".tmp"), os.path.join(d, i + ".pid"))
    if action == "exit2":
      sys.exit(2)
    if action == "exit3-later":
      time.sleep(0.5)
      sys.exit(3)
    if action == "sigkill":
      time.sleep(0.5)
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
""")


def _fake_children(monkeypatch, tmp_path, actions):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  monkeypatch.setattr(launch, "_child_argv", lambda command, coordinator, n, i:
                      [sys.executable, str(script), str(tmp_path), str(i), actions[i]])
  return types.SimpleNamespace(command=["--", "train"], n=len(actions), devices_per_process=1,
                               logs=str(tmp_path / "logs"))


def _pid(tmp_path, i):
  return int((tmp_path / f"{i}.pid").read_text())


def _gone(pid, timeout=5.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    time.sleep(0.05)
  return False


@pytest.mark.parametrize("actions, failing, status", [
    (["run", "exit2"], 1, 2),           # process 1 fails while process 0 still runs
    (["sigkill", "run"], 0, 137),       # the OOM killer's SIGKILL: 128 + 9, not -9 or 247
    (["run", "sigkill"], 1, 137),
    (["exit3-later", "exit2"], 1, 2),   # the first failure in time is the cause, not the lowest index
])
def test_first_failure_stops_the_others_at_once(monkeypatch, tmp_path, capsys, actions, failing, status):
  args = _fake_children(monkeypatch, tmp_path, actions)
  start = time.time()
  assert launch._local(args, []) == status
  assert time.time() - start < 10  # the running process would sleep 60 s
  err = capsys.readouterr().err
  assert f"process {failing} exited with status {status}" in err, err
  assert (f"{tmp_path}/logs/1.log" if failing else "output is above") in err, err
  for i, action in enumerate(actions):
    assert _gone(_pid(tmp_path, i))
    assert (tmp_path / f"{i}.term").exists() == (i != failing and action != "sigkill")  # survivors got SIGTERM


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(monkeypatch, tmp_path):
  monkeypatch.setattr(launch, "_FAILURE_GRACE_S", 1)
  args = _fake_children(monkeypatch, tmp_path, ["ignore-term", "exit3-later"])
  start = time.time()
  assert launch._local(args, []) == 3
  assert time.time() - start < 10
  assert _gone(_pid(tmp_path, 0))


def test_exit_status_maps_signals_as_a_shell_does():
  assert [launch.exit_status(r) for r in (0, 2, 143, -9, -15, -6)] == [0, 2, 143, 137, 143, 134]


DRIVER = textwrap.dedent("""
    import signal, sys
    from vlmjax import cli, launch
    child, d = sys.argv[1:3]
    launch._child_argv = lambda command, coordinator, n, i: [sys.executable, child, d, str(i), "run"]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even if started with it ignored
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    sys.exit(cli.main(["launch", "local", "-n", "2", "--logs", d + "/logs", "--", "train"]))
""")


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 143), (signal.SIGINT, 130),
                                         (signal.SIGKILL, -9)])
def test_signal_to_the_launcher_stops_its_processes(tmp_path, sig, status):
  """SIGTERM / SIGHUP / Ctrl-C: forwarded as SIGTERM (they save and exit), launcher exits 143 / 130.
  SIGKILL cannot be caught: on Linux the processes still get SIGTERM (parent-death signal)."""
  if sig == signal.SIGKILL and not sys.platform.startswith("linux"):
    pytest.skip("parent-death signal is Linux-only")
  (tmp_path / "child.py").write_text(CHILD)
  (tmp_path / "driver.py").write_text(DRIVER)
  launcher = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "child.py"), str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 30
    while not all((tmp_path / f"{i}.pid").exists() for i in range(2)):
      assert time.time() < deadline and launcher.poll() is None, launcher.stdout.read() if launcher.poll() else ""
      time.sleep(0.05)
    launcher.send_signal(sig)
    out, _ = launcher.communicate(timeout=20)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert launcher.returncode == status, out
  for i in range(2):
    assert _gone(_pid(tmp_path, i)), f"process {i} outlived the launcher"
    assert (tmp_path / f"{i}.term").exists(), f"process {i} did not get SIGTERM"


def test_real_commands_failing_fast(tmp_path):
  """The real argv path: `info` rejects the coordinator flags, so both processes exit 2 at once."""
  r = subprocess.run([sys.executable, "-m", "vlmjax.cli", "launch", "local", "-n", "2", "--logs", str(tmp_path),
                      "--", "info", "--config", "configs/coca_tiny.py"],
                     cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2, r.stderr
  assert "unrecognized argument '--coordinator'" in r.stderr + (tmp_path / "1.log").read_text()
  assert "exited with status 2" in r.stderr


# --- cluster scripts -------------------------------------------------------------------------------------

SCRIPTS = [os.path.join(ROOT, "scripts", s) for s in ("launch_slurm.sbatch", "launch_tpu_vm.sh")]


def test_scripts_parse():
  for script in SCRIPTS:
    subprocess.run(["bash", "-n", script], check=True)
  if shutil.which("shellcheck"):
    subprocess.run(["shellcheck", "-s", "bash", *SCRIPTS], check=True)


def _fake_bin(tmp_path, name, body):
  path = tmp_path / "bin" / name
  path.parent.mkdir(exist_ok=True)
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)


@pytest.mark.parametrize("srun_status, requeued", [(143, True), (1, False), (0, False)])
def test_slurm_script_requeues_a_run_stopped_with_a_checkpoint(tmp_path, srun_status, requeued):
  """Tasks that saved and exited 143 (preemption, or TERM@120 before the time limit) get the job requeued."""
  _fake_bin(tmp_path, "srun", f'echo "$@" > "$LOG.srun"; exit {srun_status}\n')
  _fake_bin(tmp_path, "scontrol", 'echo "$@" > "$LOG.scontrol"\n')
  (tmp_path / ".venv" / "bin").mkdir(parents=True)
  (tmp_path / ".venv" / "bin" / "activate").write_text("")
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", LOG=str(tmp_path / "log"),
             SLURM_JOB_ID="4242")
  r = subprocess.run(["bash", SCRIPTS[0], "configs/c.py", "/shared/run", "--config.a=1"], cwd=tmp_path, env=env,
                     capture_output=True, text=True)
  assert r.returncode == srun_status, r.stderr
  assert (tmp_path / "log.srun").read_text().split() == [
      "--kill-on-bad-exit=1", "vlmjax", "train", "--config", "configs/c.py", "--workdir", "/shared/run", "--config.a=1"]
  assert (tmp_path / "log.scontrol").exists() == requeued
  if requeued:
    assert (tmp_path / "log.scontrol").read_text().split() == ["requeue", "4242"]
  sbatch = dict(line.strip().split("=", 1) for line in open(SCRIPTS[0]) if line.startswith("#SBATCH") and "=" in line)
  assert sbatch["#SBATCH --ntasks-per-node"] == sbatch["#SBATCH --gpus-per-node"]  # jax: one process per GPU


def test_tpu_script_copies_a_clean_tree_and_mounts_the_workdir(tmp_path):
  repo = tmp_path / "repo"
  (repo / "scripts").mkdir(parents=True)
  shutil.copy(SCRIPTS[1], repo / "scripts")
  (repo / "train.py").write_text("committed\n")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "x"], check=True)
  (repo / "train.py").write_text("edited\n")  # an uncommitted edit goes along
  for junk in (".venv/lib/big", "runs/r/ckpt", "data/shard.tar"):  # untracked: stays behind
    (repo / junk).parent.mkdir(parents=True)
    (repo / junk).write_text("x")
  _fake_bin(tmp_path, "gcloud", textwrap.dedent("""\
      printf '%s\\n' "$@" >> "$LOG"
      for a; do if [[ $a == /*.tar.gz ]]; then mkdir -p "$LOG.tree" && tar -xzf "$a" -C "$LOG.tree"; fi; done
      """))
  log = tmp_path / "log"
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", LOG=str(log))
  subprocess.run(["bash", str(repo / "scripts" / "launch_tpu_vm.sh"), "tpu1", "zone1", "bucket1", "configs/c.py",
                  "runs/r", "--config.a=1"], cwd=tmp_path, env=env, check=True, capture_output=True)
  tree = tmp_path / "log.tree"
  assert sorted(os.listdir(tree)) == ["scripts", "train.py"]
  assert (tree / "train.py").read_text() == "edited\n"
  command = " ".join(log.read_text().split("--command\n")[1].split())
  assert "export VLMJAX_DISTRIBUTED=1" in command
  assert "gcsfuse --implicit-dirs" in command and "bucket1 ~/bucket" in command
  assert "vlmjax train --config configs/c.py --config.a=1 --workdir ~/bucket/runs/r" in command
