# vlmjax: `make demo` trains a tiny CoCa on the synthetic shapes set; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/demo
DATA ?= data/shapes
BIN := $(VENV)/bin

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The versions in uv.lock (`uv lock` after editing pyproject.toml's dependencies, which keep lower
	# bounds for library users), the project editable, into this venv and its Python. --inexact: keep
	# what is not in the lock (pip, uv, wandb or torch installed by hand). pip, from the lower bounds,
	# stays the fallback. Copies, not uv's default hard links into its cache: two checkouts' editable
	# installs once shared one file there, and one venv ran the other checkout's code. Bytecode
	# compiled once at install: where PYTHONDONTWRITEBYTECODE is set, every process (each test's
	# `vlmjax` run) would compile jax anew.
	((test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv) && UV_PROJECT_ENVIRONMENT=$(VENV) \
	  $(BIN)/uv sync -q --frozen --inexact --extra test --link-mode=copy --compile-bytecode \
	  --python $(BIN)/python --no-python-downloads) \
	  || (echo "uv sync failed: installing with pip instead, from pyproject.toml" \
	      && $(BIN)/python -m pip install -q -e '.[test]')
	touch $@

$(DATA)/.done: $(VENV)/.installed
	$(BIN)/vlmjax data synth --out $(DATA) --num-shards 4 --samples-per-shard 2500 --image-size 32 --seed 0
	touch $@

demo: $(VENV)/.installed $(DATA)/.done
	$(BIN)/vlmjax train --config configs/coca_tiny.py --workdir $(WORKDIR) \
	  --config.data.train.source='tar:$(DATA)/{00000..00003}.tar'

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --durations=25 tests

clean:
	rm -rf $(VENV) runs data
