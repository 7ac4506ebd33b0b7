import os
import subprocess
import sys

import pytest

from vlmjax import config

from conftest import ROOT

TINY = os.path.join(ROOT, "configs/coca_tiny.py")


def test_load_applies_typed_overrides():
  cfg = config.load(TINY + ":steps=7,batch=16", [("optim.lr", "3e-4"), ("model.vision.posemb", "sincos2d"),
                                                ("mesh.rules.batch", "('data',)")])
  assert cfg.total_steps == 7 and cfg.batch_size == 16
  assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
  assert cfg.model.vision.posemb == "sincos2d"
  assert cfg.mesh.rules.batch == ("data",)


def test_unknown_key_names_closest():
  with pytest.raises(config.ConfigError, match=r"unknown config key 'optim\.lrr'.*optim\.lr"):
    config.load(TINY, [("optim.lrr", "1")])


def test_wrong_type_and_missing_file_and_bad_arg():
  with pytest.raises(config.ConfigError, match="not a valid int"):
    config.load(TINY, [("total_steps", "many")])
  with pytest.raises(config.ConfigError, match="does not exist"):
    config.load("configs/nope.py")
  with pytest.raises(config.ConfigError, match="unknown config key 'stepz'"):
    config.load(TINY + ":stepz=3")
  with pytest.raises(config.ConfigError, match="is a group"):
    config.load(TINY, [("model.vision", "3")])


def test_a_config_file_whose_code_fails_is_one_line_naming_file_and_line(tmp_path):
  """Issue 17: an import of a missing module, or an exception inside get_config, is a ConfigError
  naming the file, its line and the exception (exit 2 at the command line), not a traceback."""
  (tmp_path / "imports.py").write_text("import ml_collections\nimport not_installed_pkg\n")
  (tmp_path / "raises.py").write_text("def get_config(arg):\n  d = {}\n  return d['missing']\n")
  with pytest.raises(config.ConfigError) as e:
    config.load(str(tmp_path / "imports.py"))
  assert str(e.value) == (f"config file {str(tmp_path / 'imports.py')!r} failed at line 2: "
                          "ModuleNotFoundError: No module named 'not_installed_pkg'")
  with pytest.raises(config.ConfigError) as e:
    config.load(str(tmp_path / "raises.py"))
  assert str(e.value) == f"config file {str(tmp_path / 'raises.py')!r} get_config() failed at line 3: KeyError: 'missing'"


def test_validation():
  with pytest.raises(config.ConfigError, match="positive int"):
    config.load(TINY, [("batch_size", "0")])


@pytest.mark.parametrize("args, needle", [
    (["--config.optim.lrr=1"], "optim.lr"),
    (["--config.total_steps=abc"], "not a valid int"),
    (["--bogus"], "unrecognized argument"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, args, needle):
  proc = subprocess.run(
      [sys.executable, "-m", "vlmjax.cli", "train", "--config", TINY, "--workdir", str(tmp_path)] + args,
      capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_missing_config_file_exits_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "vlmjax.cli", "train", "--config", "nope.py",
                         "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2 and "does not exist" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_xla_options_parse_and_reject_unknown():
  from vlmjax import xla_options
  cfg = config.load(TINY, [("xla_options.cpu", "xla_cpu_enable_fast_math=false, --xla_gpu_enable_command_buffer=")])
  assert xla_options.parse(cfg, "cpu") == {"xla_cpu_enable_fast_math": False, "xla_gpu_enable_command_buffer": ""}
  assert xla_options.parse(cfg, "gpu") == {}
  assert xla_options.for_backend(cfg) == xla_options.parse(cfg, "cpu")  # XLA accepts them
  # A list value keeps its commas; numbers and strings are typed as XLA expects them.
  cfg = config.load(TINY, [("xla_options.cpu", "xla_gpu_enable_command_buffer=FUSION,CUBLAS,"
                                               "xla_cpu_enable_fast_math=true, xla_gpu_memory_limit_slop_factor=95")])
  assert xla_options.parse(cfg, "cpu") == {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS",
                                                 "xla_cpu_enable_fast_math": True,
                                                 "xla_gpu_memory_limit_slop_factor": 95}
  assert xla_options.for_backend(cfg) == xla_options.parse(cfg, "cpu")
  with pytest.raises(config.ConfigError, match="xla_cpu_enable_fast_math is given twice"):
    xla_options.parse(config.load(TINY, [("xla_options.cpu", "xla_cpu_enable_fast_math=true,"
                                                                   "xla_cpu_enable_fast_math=false")]), "cpu")
  with pytest.raises(config.ConfigError, match="not of the form"):
    xla_options.parse(config.load(TINY, [("xla_options.cpu", "fast")]), "cpu")
  with pytest.raises(config.ConfigError, match=r"xla_options\.cpu: XLA rejected .*xla_nope"):
    xla_options.for_backend(config.load(TINY, [("xla_options.cpu", "xla_nope=1")]))


def test_warmup_must_leave_decay_steps_and_ckpt_keep_at_least_one():
  with pytest.raises(config.ConfigError, match="must be less than total_steps"):
    config.load(TINY, [("total_steps", "2"), ("optim.warmup_steps", "2")])
  with pytest.raises(config.ConfigError, match=r"ckpt_keep=0 must be an int >= 1"):
    config.load(TINY, [("ckpt_keep", "0")])


def test_mesh_rules_take_an_axis_a_tuple_or_none_from_the_command_line():
  from vlmjax import sharding, train_state
  cfg = config.load(TINY, [("mesh.rules.embed", "None"), ("mesh.rules.mlp", "tensor,fsdp"),
                           ("mesh.rules.batch", "data"), ("mesh.rules.vocab", "(fsdp, tensor)"), ("mesh.fsdp", "2")])
  assert cfg.mesh.rules.embed is None and cfg.mesh.rules.mlp == ("tensor", "fsdp") and cfg.mesh.rules.batch == "data"
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  fc1 = s.state_shardings.params["vision"]["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
  assert fc1.spec[-1] == ("tensor", "fsdp")
  for bad in ("tensr", "data,data"):
    with pytest.raises(config.ConfigError, match="is not a mesh axis"):
      config.load(TINY, [("mesh.rules.embed", bad)])


@pytest.mark.parametrize("key, value, message", [
    ("loss.contrastive", "foo", "loss.contrastive='foo' is unknown; valid: softmax"),
    ("loss.label_smoothing", "1.5", "loss.label_smoothing=1.5 must lie in [0, 1)"),
    ("loss.caption_weight", "-1", "loss.caption_weight=-1.0 must be a number >= 0"),
])
def test_a_bad_loss_is_one_line_before_the_workdir_is_made(key, value, message, tmp_path):
  from vlmjax import train
  with pytest.raises(config.ConfigError) as e:
    train.train(config.load(TINY + ":evals=0", [(key, value)]), str(tmp_path / "run"))
  assert message in str(e.value) and not (tmp_path / "run").exists()
