"""A damaged latest checkpoint (issue 17): the run moves it aside, says so in one line, and resumes from
the newest step that reads, bit for bit as an uninterrupted run; library noise goes to log.txt only."""

import json
import os
import shutil

import pytest

SPEC = "configs/coca_tiny.py:steps=8,evals=0"
COMMON = (("ckpt_every", "2"), ("log_every", "1"))


def _losses(workdir) -> list:
  return [json.loads(line)["train/loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted 8-step run (checkpoints 4, 6, 8 kept): its workdir and losses."""
  import conftest
  from vlmjax import config, train
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  cfg = config.load(os.path.join(conftest.ROOT, SPEC), conftest.MICRO + COMMON)
  train.train(cfg, workdir)
  return workdir, _losses(workdir)


def _stopped_at(reference, tmp_path, step: int, keep=(4, 6)) -> str:
  """A copy of the reference run as if it had stopped after `step`, with checkpoints `keep` only."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    if int(name) not in keep:
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  path = os.path.join(workdir, "metrics.jsonl")
  rows = open(path).readlines()[:step]
  with open(path, "w") as f:
    f.writelines(rows)
  return workdir


def _truncate_an_array_file(step_dir: str) -> None:
  """The arrays' data file (`state/d/`: OCDBT's merged data, the one a restore reads), cut to a third."""
  folder = os.path.join(step_dir, "state", "d")
  biggest = max((os.path.join(folder, name) for name in os.listdir(folder)), key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 3)


def _remove_the_manifest(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


@pytest.mark.parametrize("damage", [_truncate_an_array_file, _remove_the_manifest],
                         ids=["truncated-array-file", "missing-manifest"])
def test_a_damaged_latest_step_is_moved_aside_and_the_run_resumes_from_the_one_before(
    micro_cfg, tmp_path, capsys, reference, damage):
  from vlmjax import train
  workdir = _stopped_at(reference, tmp_path, 6)
  damage(os.path.join(workdir, "checkpoints", "6"))
  capsys.readouterr()
  summary = train.train(micro_cfg(*COMMON, spec=SPEC), workdir)
  out, err = capsys.readouterr()
  assert summary["finished"] and summary["steps"] == (4, 8), summary
  moved = os.listdir(os.path.join(workdir, "checkpoints.corrupt"))
  assert len(moved) == 1 and moved[0].startswith("6-"), moved
  aside = os.path.join(workdir, "checkpoints.corrupt", moved[0])
  assert os.path.isdir(os.path.join(aside, "state"))  # kept whole, as it was
  lines = err.strip().splitlines()  # one line: no orbax or tensorstore tracebacks or log records
  assert len(lines) == 1, err[-3000:]
  assert lines[0].startswith("checkpoint step 6 is unreadable (") and lines[0].endswith(
      f"; moved to {aside}; resuming from step 4"), lines[0]
  assert "resuming from step 4 in" in out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["4", "6", "8"]
  assert _losses(workdir) == reference[1]  # steps 5-8 redone, bit for bit
  assert lines[0] in open(os.path.join(workdir, "log.txt")).read()


def test_when_no_step_is_readable_the_run_starts_afresh(micro_cfg, tmp_path, capsys, reference):
  from vlmjax import train
  workdir = _stopped_at(reference, tmp_path, 4, keep=(4,))
  os.remove(os.path.join(workdir, "checkpoints", "4", "state", "_METADATA"))
  capsys.readouterr()
  assert train.train(micro_cfg(*COMMON, spec=SPEC), workdir)["finished"]
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("checkpoint step 4 is unreadable (") and err[0].endswith(
      "; starting afresh"), err
  assert [name.split("-")[0] for name in os.listdir(os.path.join(workdir, "checkpoints.corrupt"))] == ["4"]
  assert _losses(workdir) == reference[1]


def test_checkpoints_of_another_setup_are_an_error_and_nothing_is_moved(micro_cfg, tmp_path, reference):
  """Without config.json the resume checks cannot compare settings; the restore's shape error must
  not be taken for damage (which would move every checkpoint aside and start afresh)."""
  from vlmjax import errors, train
  workdir = _stopped_at(reference, tmp_path, 6)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(errors.CheckpointError, match=r"cannot resume from .*6: ValueError: .*shape.*; no step \(6, 4\) fits"):
    train.train(micro_cfg(*COMMON, ("model.pooler.width", "48"), spec=SPEC), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["4", "6"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints.corrupt"))


def test_library_log_records_go_to_log_txt_only_while_a_checkpointer_is_open(micro_cfg, tmp_path, capsys):
  import logging
  from vlmjax import checkpoint, console
  with console.Tee() as tee:
    tee.attach(str(tmp_path / "log.txt"))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), micro_cfg())
    logging.getLogger("absl").error("orbax says: a background save failed")
    ckpt.close()
  assert checkpoint._Quiet.handler not in logging.getLogger("absl").handlers  # as before once closed
  assert logging.getLogger("absl").propagate
  assert "orbax says" not in capsys.readouterr().err
  assert "ERROR:absl:orbax says: a background save failed" in open(tmp_path / "log.txt").read()
