"""`vlmjax report` on any folder of runs: compact naturally sorted tables, runs named by their
differing config keys, states of runs trained outside a sweep, strict-JSON metrics, group plots."""

import json
import math

import pytest

from vlmjax import cli
from vlmjax.config import ConfigError
from vlmjax.sweeps import report, status as run_status

BOOKKEEPING = ("train/lr", "train/grad_norm", "data/skipped", "train/samples_per_sec", "train/step_time",
               "train/data_time", "train/mfu", "train/logit_scale")


def _run(workdir, dirname, cfg, rows):
  """A training workdir made by hand: config.json (when `cfg` is not None) and metrics.jsonl (dicts or raw lines)."""
  rundir = workdir / dirname
  rundir.mkdir(parents=True)
  if cfg is not None:
    (rundir / "config.json").write_text(json.dumps(cfg))
  (rundir / "metrics.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return rundir


def _cfg(lr=0.001, cw=0.5, seed=0, total=30, name="x"):
  return {"optim": {"lr": lr, "b1": 0.9}, "loss": {"caption_weight": cw}, "seed": seed, "total_steps": total,
          "name": name, "wandb": {"name": name, "project": ""}}


def _train_rows(losses, every=10):
  rows = []
  for i, loss in enumerate(losses):
    rows.append({"step": every * (i + 1), "train/loss": loss, "train/contrastive_loss": loss / 2,
                 "train/caption_loss": loss / 2, **{k: 1.0 for k in BOOKKEEPING}})
  return rows


def _eval_row(step, value=0.5):
  return {"step": step, "eval/ret/i2t_r10": value, "eval/ret/i2t_r1": value, "eval/ret/i2t_r5": value,
          "eval/ret/seconds": 3.0}


def _header(text, section="## Groups"):
  return [c.strip() for c in text.split(section)[1].strip().splitlines()[0].strip("|").split("|")]


def test_natural_order_and_compact_default_columns(tmp_path):
  assert sorted(["i2t_r10", "i2t_r5", "i2t_r1", "t2i_r2"], key=report.natural_key) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r2"]
  for d, lr in (("a", 0.001), ("b", 0.01)):
    _run(tmp_path, d, _cfg(lr=lr, name=d), _train_rows([3.0, 2.0, 1.0]) + [_eval_row(30)])
  text = report.write_report(str(tmp_path))
  metrics = ["loss", "contrastive_loss", "caption_loss", "eval/ret/i2t_r1", "eval/ret/i2t_r5", "eval/ret/i2t_r10"]
  best = {m: "best (min)" if "loss" in m else "best (max)" for m in metrics}
  assert _header(text) == ["group", "runs", "status"] + [f"{m} {c}" for m in metrics for c in ("final", best[m])]
  assert _header(text, "## Runs") == ["run", "status", "steps", "time"] + [f"{m} final / best" for m in metrics]
  for noise in ("lr final", "grad_norm", "data/skipped", "samples_per_sec", "step_time", "data_time", "mfu", "seconds"):
    assert noise not in text.split("## Plots")[0], noise
  assert (tmp_path / "eval_ret_i2t_r10.png").is_file() and not (tmp_path / "train_lr.png").exists()
  # --metric still picks any logged metric, in the order given
  text = report.write_report(str(tmp_path), ["train/lr", "eval/ret/i2t_r10:min"])
  assert _header(text) == ["group", "runs", "status", "lr final", "lr best (max)", "eval/ret/i2t_r10 final",
                           "eval/ret/i2t_r10 best (min)"]


def test_runs_outside_a_sweep_are_named_by_their_differing_config_keys(tmp_path):
  for lr, cw in ((0.001, 0.5), (0.0003, 1.0)):
    for seed in (0, 1):
      d = f"run{lr}_{cw}_{seed}"
      _run(tmp_path, d, _cfg(lr=lr, cw=cw, seed=seed, name=d), _train_rows([2.0 + seed, 1.0 + seed, lr + seed]))
  runs = report.collect(str(tmp_path))
  names = {r.dir: (r.name, r.group) for r in runs}
  assert names["run0.001_0.5_1"] == ("optim.lr=0.001,loss.caption_weight=0.5,seed=1",
                                     "optim.lr=0.001,loss.caption_weight=0.5")
  assert names["run0.0003_1.0_0"] == ("optim.lr=0.0003,loss.caption_weight=1.0,seed=0",
                                      "optim.lr=0.0003,loss.caption_weight=1.0")
  text = report.write_report(str(tmp_path), ["train/loss"])
  assert "| optim.lr=0.001,loss.caption_weight=0.5 | 2 | 2 done | 0.5010 ± 0.7071 (n=2) |" in text
  assert "| optim.lr=0.001,loss.caption_weight=0.5,seed=1 | done | 30/30 | - | 1.0010 / 1.0010 |" in text
  assert "`optim.lr=0.001,loss.caption_weight=0.5,seed=1` in `run0.001_0.5_1/`" in text
  assert "4 runs in 2 groups" in text


@pytest.mark.parametrize("configs, expected", [
    # nothing differs but noise (name, wandb.name): directory names, one group
    ({"a": _cfg(name="a"), "b": _cfg(name="b")}, {"a": ("a", ""), "b": ("b", "")}),
    # only the seed differs: directory names, one group (named by the directory without seed= when they agree)
    ({"lr=1,seed=0": _cfg(seed=0), "lr=1,seed=1": _cfg(seed=1)},
     {"lr=1,seed=0": ("lr=1,seed=0", "lr=1"), "lr=1,seed=1": ("lr=1,seed=1", "lr=1")}),
    # an older config.json lacking a key is not compared on it; a run without a config.json keeps its name
    ({"old": {"seed": 0, "total_steps": 30}, "new": {"seed": 0, "total_steps": 30, "model": {"kind": "vit"}},
      "bare": {}}, {"old": ("old", ""), "new": ("new", ""), "bare": ("bare", "bare")}),
    # one key differs
    ({"a": _cfg(lr=0.1), "b": _cfg(lr=0.2)},
     {"a": ("optim.lr=0.1", "optim.lr=0.1"), "b": ("optim.lr=0.2", "optim.lr=0.2")}),
])
def test_name_runs(configs, expected):
  assert run_status.name_runs(configs) == expected


def test_state_of_runs_outside_a_sweep(tmp_path):
  _run(tmp_path, "full", _cfg(lr=0.1, total=30), _train_rows([3.0, 2.0, 1.0]))
  _run(tmp_path, "killed", _cfg(lr=0.2, total=30), _train_rows([3.0]))
  _run(tmp_path, "noconfig", None, _train_rows([3.0]))
  states = {r.dir: r.state for r in report.collect(str(tmp_path))}
  assert states == {"full": "done", "killed": "stopped", "noconfig": "unknown"}
  assert [run_status.state_without_sweep(s, t) for s, t in ((30, 30), (40, 30), (10, 30), (None, 30), (5, None))] == \
      ["done", "done", "stopped", "stopped", "unknown"]
  text = report.write_report(str(tmp_path), ["train/loss"])
  assert "| optim.lr=0.2 | stopped | 10/30 | - | 3.0000 / 3.0000 |" in text
  assert "`optim.lr=0.2` (stopped, step 10/30)" in text and "| optim.lr=0.1 | 1 | 1 done | 1.0000 (n=1) |" in text


def test_null_listed_in_nonfinite_reads_as_nan_and_old_bare_nan_still_reads(tmp_path):
  strict = ['{"step": 10, "train/loss": 2.0, "train/grad_norm": 1.0}',
            '{"step": 20, "train/loss": null, "train/grad_norm": null, "nonfinite": ["train/loss", "train/grad_norm"]}',
            '{"step": 30, "train/loss": null, "train/other": null, "nonfinite": ["train/loss"]}']
  rundir = _run(tmp_path, "strict", _cfg(lr=0.1), strict)
  rows, unreadable = report.read_metrics(str(rundir))
  assert unreadable == 0 and [r["step"] for r in rows] == [10, 20, 30]
  assert all(math.isnan(v) for v in (rows[1]["train/loss"], rows[1]["train/grad_norm"], rows[2]["train/loss"]))
  assert rows[2]["train/other"] is None  # null not named in `nonfinite`: no value
  assert not any("nonfinite" in r for r in rows)
  _run(tmp_path, "old", _cfg(lr=0.2), ['{"step": 10, "train/loss": 3.0}', '{"step": 30, "train/loss": NaN}'])
  text = report.write_report(str(tmp_path), ["train/loss"])
  assert "| optim.lr=0.1 | done | 30/30 | - | nan / 2.0000 |" in text
  assert "| optim.lr=0.2 | done | 30/30 | - | nan / 3.0000 |" in text
  assert "nonfinite" not in report.write_report(str(tmp_path)).split("# Report")[1].split("\n", 1)[1]
  with pytest.raises(ConfigError, match=r"logged metrics: train/grad_norm, train/loss, train/other$"):
    report.write_report(str(tmp_path), ["eval/x"])


@pytest.fixture
def groups_dir(tmp_path):
  """Two groups of two seeds (loss every 10 steps, one eval at the last step, the same for all), and a
  third group of one unfinished run."""
  for lr in (0.1, 0.2):
    for seed in (0, 1):
      _run(tmp_path, f"lr{lr}s{seed}", _cfg(lr=lr, seed=seed), _train_rows([3.0, 2.0 + seed, 1.0]) + [_eval_row(30)])
  _run(tmp_path, "lr0.3s0", _cfg(lr=0.3), _train_rows([3.0]) + [_eval_row(10)])
  return tmp_path


def test_plot_has_integer_steps_and_one_legend_entry_per_group(groups_dir):
  from matplotlib.ticker import MaxNLocator
  runs = report.collect(str(groups_dir))
  fig = report.figure(str(groups_dir), runs, "train/loss")
  ax = fig.axes[0]
  assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator) and ax.xaxis.get_major_locator()._integer
  assert all(float(t).is_integer() for t in ax.get_xticks())
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert labels == ["optim.lr=0.1 (mean ± std of 2)", "optim.lr=0.2 (mean ± std of 2)",
                    "optim.lr=0.3 (1 unfinished, none finished)"]
  assert report.figure(str(groups_dir), runs, "eval/nope") is None


def test_eval_points_at_the_same_step_stay_visible(groups_dir):
  runs = [r for r in report.collect(str(groups_dir)) if r.finished]  # all evaluated at step 30 only
  fig = report.figure(str(groups_dir), runs, "eval/ret/i2t_r1")
  ax = fig.axes[0]
  handles, labels = ax.get_legend_handles_labels()
  assert len(labels) == 2
  points = [h.lines[0] for h in handles]  # the group means (errorbar containers)
  assert len({p.get_marker() for p in points}) == 2 and len({p.get_markersize() for p in points}) == 2
  assert all(p.get_markerfacecolor() == "none" for p in points)
  xs = [p.get_xdata()[0] for p in points]
  assert len(set(xs)) == 2 and all(abs(x - 30) < 0.5 for x in xs)  # nudged apart, around step 30
  assert [float(t) for t in ax.get_xticks() if 29 <= t <= 31] == [29.0, 30.0, 31.0]


def test_report_command_on_a_folder_of_runs(groups_dir, capsys):
  assert cli.main(["report", str(groups_dir)]) == 0
  text = capsys.readouterr().out
  assert "| optim.lr=0.3 | 1 | 1 stopped |" in text and "unknown" not in text
  assert "![eval_ret_i2t_r10.png](eval_ret_i2t_r10.png)" in text
  assert (groups_dir / "train_loss.png").read_bytes()[:4] == b"\x89PNG"
