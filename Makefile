# octasim: `make demo` runs the whole pipeline on the embedded default; `make test` runs the tests.
# Both create the virtual environment .venv on first use. TORCH is the PyTorch requirement installed
# first: the CPU build by default; on a GPU machine use e.g. `make demo TORCH=torch` (CUDA build from
# PyPI) or install your own CUDA torch into .venv beforehand (an installed torch is kept).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.octasim-installed
DEMO_DIR ?= demo_out

.PHONY: install test demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m octasim.cli.demo --out $(DEMO_DIR)

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
