"""`--help` of every command (examples that parse, help for every option, defaults shown), the
dashed flag spellings and their hidden underscore aliases, one-line `convert --reverse` errors, and
shipped sweeps that evaluate each run once. In-process and fast: nothing trains or compiles."""

import argparse
import os
import re
import shlex

import pytest

from conftest import ROOT
from vlmjax import cli, config
from vlmjax.sweeps import commands as sweep_commands, spec as sweep_spec


def all_parsers(parser, path=("vlmjax",)):
  yield " ".join(path), parser
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        yield from all_parsers(sub, path + (name,))


PARSERS = dict(all_parsers(cli.build_parser()))


def examples(text: str) -> list[list[str]]:
  """The argv of each `vlmjax ...` example of a help text (continued lines joined, comments dropped)."""
  lines = text.replace("\\\n", " ").splitlines()
  return [shlex.split(line, comments=True) for line in lines if line.strip().startswith("vlmjax ")]


def test_every_command_is_listed():
  assert {"vlmjax train", "vlmjax info", "vlmjax data synth", "vlmjax data inspect", "vlmjax data convert",
          "vlmjax eval", "vlmjax caption", "vlmjax sweep", "vlmjax report", "vlmjax convert",
          "vlmjax launch local"} <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_has_examples_that_parse_and_help_for_every_argument(name):
  parser = PARSERS[name]
  text = parser.format_help()
  assert "\nexamples:\n" in text, f"{name} --help has no examples"
  found = examples(parser.epilog)
  assert found, name
  for argv in found:
    args, extra = cli.build_parser().parse_known_args(argv[1:])  # a usage error would exit 2
    if extra:
      assert getattr(args, "takes_overrides", False), (argv, extra)
      cli.split_overrides(extra)
    for path in (a for a in argv if re.fullmatch(r"(configs|experiments)/\w+\.py(:\S*)?", a)):
      assert os.path.isfile(os.path.join(ROOT, path.partition(":")[0])), (argv, path)
  undocumented = [a.dest for a in parser._actions
                  if not isinstance(a, argparse._SubParsersAction) and not a.help]
  assert not undocumented, f"{name}: no help for {undocumented}"
  for noise in ("(default: None)", "(default: False)", "(default: [])"):
    assert noise not in text, f"{name} --help says {noise}"


def test_defaults_are_shown_and_epilogs_keep_their_lines():
  synth = PARSERS["vlmjax data synth"].format_help()
  assert "(default: 4)" in synth and "(default: 1000)" in synth and "(default: tar)" in synth
  top = PARSERS["vlmjax"].format_help()
  assert "\n  vlmjax data synth --out data/shapes" in top  # RawDescription: one example per line


@pytest.mark.parametrize("name", ["vlmjax train", "vlmjax info"])
def test_train_and_info_help_explain_config_overrides(name):
  text = PARSERS[name].format_help()
  assert "[--config.KEY=VALUE ...]" in text.split("\n\n")[0]  # in the usage
  assert "config overrides" in text and "--config.batch_size=64" in text and "FILE:k=v,..." in text
  if name == "vlmjax train":
    assert "WORKDIR/config.json to relaunch that run as it was" in " ".join(text.split())


def test_report_help_says_any_folder_of_runs_works():
  text = " ".join(PARSERS["vlmjax report"].format_help().split())
  assert "any directory with one subdirectory per run" in text
  assert "named by the config keys that differ" in text


def test_caption_max_len_defaults_to_the_models_context():
  text = " ".join(PARSERS["vlmjax caption"].format_help().split())
  assert "--max-len N most tokens per caption (default: the model's model.text.context_length)" in text
  args, _ = cli.build_parser().parse_known_args(["caption", "--workdir", "w", "a.png"])
  assert args.max_len is None


@pytest.mark.parametrize("command", [["train", "--config", "c.py", "--workdir", "w"], ["eval", "--workdir", "w"]])
def test_multi_process_flags_use_dashes_and_keep_the_old_spellings_hidden(command):
  parser = cli.build_parser()
  for flags in (["--num-processes", "2", "--process-id", "1"], ["--num_processes", "2", "--process_id", "1"]):
    args, extra = parser.parse_known_args([*command, "--coordinator", "h:1", *flags])
    assert not extra and (args.coordinator, args.num_processes, args.process_id) == ("h:1", 2, 1)
  text = PARSERS[f"vlmjax {command[0]}"].format_help()
  assert "--num-processes N" in text and "--process-id I" in text
  assert "--num_processes" not in text and "--process_id" not in text


def test_launch_passes_the_dashed_flags():
  from vlmjax import launch
  argv = launch._child_argv(["train", "--config", "c.py"], "127.0.0.1:5", 2, 1)
  assert argv[-6:] == ["--coordinator", "127.0.0.1:5", "--num-processes", "2", "--process-id", "1"]


def _one_line_error(capsys, argv, *needles):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  for needle in needles:
    assert needle in err, err
  return err


def test_convert_reverse_of_a_training_run_or_an_unmapped_layout_is_one_line(tmp_path, capsys):
  run = tmp_path / "run"
  (run / "checkpoints" / "8" / "state").mkdir(parents=True)
  (run / "config.json").write_text("{}")
  reverse = ["convert", "--from", "open_clip", "--reverse", "--config", f"{ROOT}/configs/coca_tiny.py:evals=0",
             "--out", str(tmp_path / "back.safetensors"), "--checkpoint"]
  _one_line_error(capsys, [*reverse, str(run)], "has no place in open_clip checkpoints", "cannot be exported")
  _one_line_error(capsys, [*reverse, str(run / "checkpoints" / "8")], "pass the workdir itself and --step N")
  _one_line_error(capsys, [*reverse, str(tmp_path)], "is not a `vlmjax convert` output")
  _one_line_error(capsys, [*reverse, str(tmp_path / "missing")], "does not exist")
  assert not (tmp_path / "back.safetensors").exists()
  converted = tmp_path / "converted"
  (converted / "params").mkdir(parents=True)
  reverse[2] = "hf"  # HF has no CoCa
  _one_line_error(capsys, [*reverse, str(converted)], "no map from hf_clip checkpoints to model.name='coca'")
  _one_line_error(capsys, ["convert", "--from", "hf", "--checkpoint", f"{ROOT}/tests/fixtures/convert/hf_clip",
                           "--config", f"{ROOT}/configs/coca_tiny.py:evals=0", "--out", str(tmp_path / "o")],
                  "no map from hf_clip checkpoints to model.name='coca'")


@pytest.mark.parametrize("path", sorted(os.path.join(ROOT, "experiments", f) for f in os.listdir(
    os.path.join(ROOT, "experiments")) if f.endswith(".py")))
def test_shipped_sweeps_evaluate_each_run_once(path):
  sweep = sweep_spec.load_sweep(path)
  cfg = config.load(os.path.join(ROOT, sweep.base), sweep.runs[0].overrides)
  assert not (sweep.evals and cfg.evals), f"{path}: the config's evaluators run in training and again in vlmjax eval"


def test_a_sweep_that_would_evaluate_twice_says_so(tmp_path, capsys):
  base = f"{ROOT}/configs/coca_tiny.py:steps=4,batch=16"
  path = tmp_path / "twice.py"
  path.write_text(f"def get_sweep():\n  return dict(base={base!r}, seeds=[0], "
                  "evals={'zs': 'zero_shot:synthetic:shapes:validation', 'zs.num_examples': 32})\n")
  assert set(sweep_commands.check_configs(sweep_spec.load_sweep(str(path)))) == {"zero_shot", "retrieval", "captioning"}
  assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "w"), "--dry-run"]) == 0
  assert "runs those again besides the sweep's `evals`" in capsys.readouterr().err


def test_the_readme_shows_train_help_as_it_is(monkeypatch, capsys):
  """README's `vlmjax train --help` excerpt is the real output (at 80 columns)."""
  import pathlib
  from vlmjax import cli
  readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
  excerpt = readme.split("`vlmjax train --help` begins:\n\n```\n", 1)[1].split("```", 1)[0]
  monkeypatch.setenv("COLUMNS", "80")
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  assert capsys.readouterr().out.startswith(excerpt)
