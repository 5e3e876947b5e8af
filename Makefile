# The README's commands: `make demo`, `make test` and `make test-fast`. Each sets up
# .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/cpu.lock
STAMP  := $(VENV)/.recdistill-installed

# Several processes share 2 cores here: one intra-op thread each.
export OMP_NUM_THREADS ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast results clean

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$$(grep '^pip==' $(LOCK))"
	# --no-deps: the lock is complete; DS_BUILD_OPS=0: DeepSpeed builds its ops lazily.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# DeepSpeed compiles one small C++ op on first use (~1 min); build it now, into
	# .venv/torch_extensions, so no job or test stalls on it later.
	$(BIN)/python -m teacher.engine
	@touch $@

demo: setup
	$(BIN)/recdistill distill --report runs/demo/report.json \
		--teacher-checkpoint runs/demo/teacher

# The results tables of docs/results.md: every dataset, 3 student seeds each (~20 min
# here). Prints the tables; paste them into docs/results.md.
results: setup
	PYTHON=$(BIN)/python bash jobs/results.sh

# Three tiers: tests/unit (no Ray: seconds to a minute), tests/cluster (one real Ray
# cluster: kills, chaos, exactly-once), tests/e2e (the jobs run as processes).
test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf runs .pytest_cache
