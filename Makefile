# Two entry points for a fresh clone: `make demo` and `make test`, each with its own venv
# (idempotent: reinstalled only when a requirements file is newer than the stamp file).
# `make demo`: .venv-demo from requirements.txt alone (the plain user install: no torch,
# libtpu, tensorflow-datasets or gcsfs). `make test`: .venv from requirements-dev.txt
# (= requirements.txt + what the tests need).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_VENV ?= .venv-demo
DEMO_BIN := $(DEMO_VENV)/bin
DEMO_STAMP := $(DEMO_VENV)/.installed
DEMO_DIR ?= workdirs/demo
# pytest-xdist workers (one per core of the 2-core CI machine); each test file stays on one
# worker (--dist loadfile) so that its module fixtures run once.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast test-durations bench venv demo-venv clean

venv: $(STAMP)
demo-venv: $(DEMO_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

$(DEMO_STAMP): requirements.txt pyproject.toml
	test -x $(DEMO_BIN)/python || $(PY) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/pip install -q -r requirements.txt
	$(DEMO_BIN)/pip install -q --no-deps -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_BIN)/python -m jaxsr.main --config configs/edsr.py:demo --workdir $(DEMO_DIR) --mode train
	$(DEMO_BIN)/python -m jaxsr.main --config configs/edsr.py:demo --workdir $(DEMO_DIR) --mode evaluate

test: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# About a minute on 2 cores: no test that starts processes or took over 0.5 s in the last
# `make test-durations` run (tests/durations.json).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not subprocess" -n $(TEST_WORKERS) --dist loadfile

test-durations: $(STAMP)
	JAXSR_RECORD_DURATIONS=tests/durations.json $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python experiments/benchmark.py --preset cpu

clean:
	rm -rf $(VENV) $(DEMO_VENV) workdirs
