# Override for another CUDA/CPU build: make install TORCH_VERSION=2.14.1
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
# pytest workers for make test (each takes a whole test file, longest first: tests/conftest.py)
TEST_WORKERS ?= 2
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp

.PHONY: install demo test lint docs check bench-smoke compat bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[all,dev]" "torch==$(TORCH_VERSION)"
	touch $(STAMP)

demo: install
	$(PY) examples/quickstart.py

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check tracelet tests benchmarks examples noxfile.py
	$(VENV)/bin/ruff format --check tracelet tests benchmarks examples noxfile.py

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

# every benchmark script end to end with a few steps (they measure nothing at this size)
bench-smoke: install
	$(PY) -m pytest -q -m benchmark_smoke tests/test_benchmark_smoke.py

# what CI runs first: lint, the docs build, the whole suite, the benchmarks' smoke runs
check: lint docs test bench-smoke

# the support matrix (noxfile.py): a fresh venv per combination of the oldest and newest releases
compat: install
	TORCH_VERSION=$(TORCH_VERSION) $(VENV)/bin/nox -s compat

bench: install
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_paired.py
	$(PY) benchmarks/bench_interleaved.py
	$(PY) benchmarks/bench_twins.py --swap --pairs 4 --rounds 18
	$(PY) benchmarks/bench_ddp.py
	$(PY) benchmarks/bench_load.py
	$(PY) benchmarks/bench_writer.py
	$(PY) benchmarks/bench_instructions.py

clean:
	rm -rf $(VENV) mlflow.db mlflow.db.lock example-output mlruns mlartifacts lightning_logs tracelet-runs build
