"""The package's shape, as docs/ARCHITECTURE.md states it: layers, no import cycles, small files.

Imports are read from the source (top level, inside functions, and module names handed to
`importlib.import_module`), so a cycle hidden in a function body counts as much as one at the top.
"""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlmjax"

# Bottom up; a module may import its own layer (without a cycle) and the layers below, never above.
LAYERS = (
    ("errors", ("vlmjax", "vlmjax.errors", "vlmjax.registry", "vlmjax.progress", "vlmjax.console")),
    ("config", ("vlmjax.config", "vlmjax.presets")),
    ("parts", ("vlmjax.models", "vlmjax.losses", "vlmjax.data", "vlmjax.optim", "vlmjax.sharding",
               "vlmjax.distributed", "vlmjax.checkpoint", "vlmjax.preemption", "vlmjax.metrics",
               "vlmjax.xla_options", "vlmjax.convert", "vlmjax.hardware")),
    ("state", ("vlmjax.train_state", "vlmjax.workdir", "vlmjax.info")),
    ("loop", ("vlmjax.train", "vlmjax.compiled", "vlmjax.microbatch", "vlmjax.distill", "vlmjax.evals")),
    ("commands", ("vlmjax.cli", "vlmjax.sweeps", "vlmjax.launch", "vlmjax.data.commands",
                  "vlmjax.evals.commands", "vlmjax.convert.commands",
                  "vlmjax.convert.export")),
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def imports_of(path: pathlib.Path, known: set[str]) -> set[str]:
  """The vlmjax modules `path` imports. `from pkg import sub` is an import of pkg.sub only (pkg's
  __init__ runs before any of its submodules in every case); `from pkg import name` one of pkg."""
  tree = ast.parse(path.read_text())
  out = set()
  uses_importlib = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in known)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
      subs = [f"{node.module}.{a.name}" for a in node.names]
      out.update(s for s in subs if s in known)
      if any(s not in known for s in subs):
        out.add(node.module)
    elif uses_importlib and isinstance(node, ast.Constant) and node.value in known:
      out.add(node.value)
  return out


def layer_of(module: str) -> int:
  best, layer = "", None
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > len(best):
        best, layer = p, i
  assert layer is not None, f"{module} belongs to no layer: add it to LAYERS and docs/ARCHITECTURE.md"
  return layer


@pytest.fixture(scope="module")
def graph():
  mods = modules()
  return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def test_no_import_cycles(graph):
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_a_lower_layer_never_imports_a_higher_one(graph):
  bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
         for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
  assert not bad, "\n".join(bad)


def test_files_and_functions_stay_small():
  too_big = []
  for path in sorted(PACKAGE.rglob("*.py")):
    src = path.read_text()
    name = os.path.relpath(path, ROOT)
    if src.count("\n") > MAX_FILE_LINES:
      too_big.append(f"{name}: {src.count(chr(10))} lines")
    for node in ast.walk(ast.parse(src)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          too_big.append(f"{name}:{node.lineno} {node.name}(): {n} lines")
  assert not too_big, "\n".join(too_big)


def test_the_architecture_doc_names_every_layer():
  doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
  missing = [p for _, prefixes in LAYERS for p in prefixes if p != "vlmjax" and f"`{p.removeprefix('vlmjax.')}" not in doc]
  assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"
