"""`vlmjax data convert`: tar shards converted in parallel worker processes, resumably, with progress."""

import io
import json
import os

import pytest

from vlmjax import cli
from vlmjax.data import convert, sources, synthetic
from vlmjax.errors import ConfigError


@pytest.fixture
def tars(tmp_path):
  """The spec of 4 synthetic tar shards x 5 samples."""
  synthetic.write_tar_shards(str(tmp_path / "tars"), 4, 5, image_size=16, seed=3)
  return f"tar:{tmp_path}/tars/*.tar"


def examples(spec: str) -> list[tuple]:
  """(key, caption, image bytes) of every record of `spec`, in its order."""
  src = sources.open_source(spec, mode="scan", image_size=16)
  return [(r["key"], r["caption"], r["image"]) for r in sources.records_of(src) if r.get("image") is not None]


def run(spec: str, out, *flags: str) -> int:
  return cli.main(["data", "convert", spec, "--out", str(out), *flags])


def files_of(out) -> list[str]:
  return sorted(f for f in os.listdir(out) if f.endswith(".array_record"))


def test_two_workers_write_what_one_does_and_the_source_holds(tars, tmp_path, capsys):
  assert run(tars, tmp_path / "two", "--workers", "2", "--per-file", "3") == 0
  printed = capsys.readouterr().out
  assert "converting 4 tar shard(s) with 2 worker process(es)" in printed
  assert "wrote 20 examples in 8 ArrayRecord file(s)" in printed and "(skipped 0)" in printed
  assert run(tars, tmp_path / "one", "--workers", "1", "--per-file", "3") == 0
  # Names come from the shards, each shard's examples in order: the same files whatever the timing.
  names = [f"{s:05d}-{i:05d}-of-00002.array_record" for s in range(4) for i in range(2)]
  assert files_of(tmp_path / "two") == files_of(tmp_path / "one") == names
  source = examples(tars)
  for out in ("two", "one"):
    assert examples(f"arrayrecord:{tmp_path}/{out}/*.array_record") == source
  state = json.loads((tmp_path / "two" / convert.STATE).read_text())
  assert state["spec"] == tars and {e["written"] for e in state["done"].values()} == {5}


def test_a_rerun_redoes_only_the_unfinished_shards(tars, tmp_path, monkeypatch, capsys):
  out = tmp_path / "ar"
  assert run(tars, out, "--workers", "1") == 0
  before = examples(f"arrayrecord:{out}/*.array_record")
  # An interrupted run: shard 2 left a temporary file and is missing from the state; shard 3's file is gone.
  state = json.loads((out / convert.STATE).read_text())
  shard2, shard3 = sorted(state["done"])[2:]
  del state["done"][shard2]
  (out / convert.STATE).write_text(json.dumps(state))
  os.replace(out / "00002-00000-of-00001.array_record", out / ".00002-00000.tmp")
  os.remove(out / "00003-00000-of-00001.array_record")
  done = []
  real = convert.convert_shard
  monkeypatch.setattr(convert, "convert_shard", lambda path, *a: done.append(path) or real(path, *a))
  capsys.readouterr()
  assert run(tars, out, "--workers", "1") == 0
  assert sorted(done) == [shard2, shard3] and not [f for f in os.listdir(out) if f.endswith(".tmp")]
  printed = capsys.readouterr().out
  assert "converting 2 of 4 tar shard(s) with 1 worker process(es) (2 already converted)" in printed and "wrote 20 examples in 4 ArrayRecord file(s)" in printed
  assert examples(f"arrayrecord:{out}/*.array_record") == before
  done.clear()
  assert run(tars, out) == 0 and done == []  # finished: nothing to do but the total
  assert "all 4 tar shard(s) already converted" in capsys.readouterr().out


def test_another_spec_or_foreign_files_in_out_are_refused_in_one_line(tars, tmp_path, capsys):
  out = tmp_path / "ar"
  assert run(tars, out, "--workers", "1") == 0
  other = f"tar:{tmp_path}/tars/0000[01].tar"
  assert run(other, out) == 2
  err = capsys.readouterr().err
  assert "holds a conversion of" in err and err.count("\n") == 1
  with pytest.raises(ConfigError, match="holds a conversion of"):
    convert.convert(other, str(out))
  # ArrayRecord files that no conversion recorded (an older convert, another data set).
  os.remove(out / convert.STATE)
  with pytest.raises(ConfigError, match=r"already holds 4 ArrayRecord file\(s\)"):
    convert.convert(tars, str(out))
  assert run(tars, out, "--workers", "0") == 2 and "must be positive" in capsys.readouterr().err


def test_a_non_sharded_source_is_one_unit_and_resumes(tars, tmp_path, capsys):
  assert run(tars, tmp_path / "ar", "--workers", "1") == 0
  spec = f"arrayrecord:{tmp_path}/ar/*.array_record"
  assert run(spec, tmp_path / "copy", "--per-file", "8") == 0
  assert files_of(tmp_path / "copy") == [f"data-{i:05d}-of-00003.array_record" for i in range(3)]
  assert examples(f"arrayrecord:{tmp_path}/copy/*.array_record") == examples(spec)
  assert run(spec, tmp_path / "copy", "--per-file", "8") == 0
  assert "wrote 20 examples in 3 ArrayRecord file(s)" in capsys.readouterr().out.splitlines()[-1]


def test_shard_names_are_unique_and_progress_counts_examples():
  units = convert.shard_units(["a/x.tar", "b/x.tar", "c/.y.tar"])
  assert [u.name for u in units] == ["00000-x", "00001-x", "00002-y"]
  assert [u.name for u in convert.shard_units(["s/cc3m.000.tar", "https://h/cc3m.001.tar?t=1"])] == [
      "cc3m.000", "cc3m.001"]
  stream = io.StringIO()
  bar = convert.ShardProgress("converting", total=4, unit="shards", quiet=0.0, stream=stream)
  bar.examples = 500
  bar.update(1)
  assert "converting 1/4 (" in stream.getvalue() and "ETA" in stream.getvalue()
  assert "500 examples written" in stream.getvalue()
