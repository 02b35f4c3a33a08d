# Entry points: `make demo`, `make test` and `make reproduce`. Each sets up a virtual environment
# in .venv (requirements pinned in requirements.txt), installs symvae, and fetches once the data
# it uses: MNIST for the demo; MNIST, Fashion-MNIST and the FID Inception weights otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
DEMO := --call_prefix demo --nz0 30 --nz1 100 --device cpu
DEMO_ITERATIONS ?= 300
DEMO_CHAIN_STEPS ?= 100

.PHONY: setup demo test reproduce gpu-assets

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed
	$(PY) -m symvae.data fetch mnist fmnist inception

# A short symmetric-learning run of mnist-ladder on the CPU, then its sample grids.
demo: $(VENV)/.installed
	$(PY) -m symvae.data fetch mnist
	cd mnist-ladder && $(PY) main_sym.py $(DEMO) --stepsize 1e-4 --bs 64 \
		--niterations $(DEMO_ITERATIONS) --save_period 100 --overwrite
	cd mnist-ladder && $(PY) generate.py $(DEMO) --chain_steps $(DEMO_CHAIN_STEPS)

# Lint, the import layers (pyproject.toml [tool.importlinter]), then every test (slow ones
# included), on as many pytest-xdist workers as the machine has cores. pytest's exit 5 ("no
# tests collected") fails too: an empty run means the suite is broken, not that all is well.
test: setup
	$(PY) -m ruff check .
	$(abspath $(VENV))/bin/lint-imports
	$(PY) -m pytest -q -ra -n auto

# The authors' FID tables (README "Reproduce the tables"): PRESET=readme|paper|quick|gpu|smoke,
# more flags in ARGS, e.g. `make reproduce PRESET=quick ARGS=--dry-run`. Without PRESET, the
# readme preset runs only where its estimate is a few hours (a GPU); elsewhere it asks for one.
PRESET ?=
reproduce: setup
	$(PY) -m symvae reproduce $(if $(PRESET),--preset $(PRESET)) $(ARGS)

# What scripts/gpu_check.sh needs on a GPU machine without internet, packed into .gpu/ (ignored,
# about 56 MB): MNIST gzipped, pytorch-fid's wheel, fp16 Inception weights; AUTHORS=DIR adds
# the authors' mnist-ladder scripts from their checkout, to be timed beside ours.
gpu-assets: setup
	$(PY) -m symvae gpu-assets pack --out .gpu $(if $(AUTHORS),--ref $(AUTHORS))
