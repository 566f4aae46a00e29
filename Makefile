# Two commands do everything (each creates the environment on first use):
#   make run    execute every notebook in order on the full data, regenerating figures/ and
#               each notebook's static page in docs/notebooks/
#   make test   pytest over prlib + nbval (lax) over every notebook in smoke mode
PYTHON ?= python3
VENV ?= .venv
#: pytest-xdist workers of `make test` (each test module / notebook runs whole in one)
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: env run smoke test test-all notebook lab gpu-check clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

run: env  ## every notebook, full size, into figures/ (+ its HTML page in docs/notebooks/)
	$(PY) -m prlib.runner all

smoke: env  ## every notebook, smoke size, executed copies and pages under build/
	$(PY) -m prlib.runner all --smoke

notebook: env  ## one notebook: make notebook NB=00 [SMOKE=1]
	$(PY) -m prlib.runner $(NB) $(if $(SMOKE),--smoke,)

test: env  ## ruff, then pytest + nbval (lax) over the notebooks in smoke mode, TEST_WORKERS at once
	$(PY) -m ruff check .
	PRLIB_SMOKE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=15 \
		-m "not local_llm and not static_encoder and not outside_ci"

test-all: env  ## make test, plus the tests that build real models (SmolLM2, the static encoder)
	$(PY) -m ruff check .
	PRLIB_SMOKE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=15

gpu-check: env  ## the CUDA path on one GPU in <= 8 min -> figures/gpu_check_cuda.json (SMOKE=1: small)
	$(PY) benchmarks/gpu_check.py $(if $(SMOKE),--smoke,) $(GPU_CHECK_ARGS)

lab: env  ## JupyterLab on the notebooks (as root it needs --allow-root)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf build
