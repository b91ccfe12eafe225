# The README's two commands: `make sweep` (set up + demo sweep) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= demo
TRIALS ?= 8
EXPORT ?= demo-config.json

.PHONY: sweep verify test test-fast soak install lock clean-study tools docs tables cli-docs

# Exact versions from requirements.lock (pip constraints); `make lock` refreshes it. llama.cpp is
# compiled once: llama-cpp-python is installed as Python only (LLAMA_BUILD=OFF; without pip's cache,
# where a wheel with its own libraries could be reused), then `sweep tools build` compiles the shared
# libraries, llama-server and llama-bench from the llama.cpp it vendors and puts the libraries in the
# bindings (sweep.models.tools), so a python trial, a server trial and an export run one build.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(BIN)/python -m pip install --quiet --no-cache-dir -c requirements.lock llama-cpp-python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@echo "compiling llama.cpp once, for the bindings and llama-server alike (about 6 minutes on 2 cores)"
	$(BIN)/sweep tools build
	touch $@

# Resolve the newest versions pyproject.toml allows, into requirements.lock (run make test after).
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet pip-tools
	.lock-venv/bin/pip-compile --quiet --extra dev --strip-extras --no-header --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml
	rm -rf .lock-venv

install: $(VENV)/.installed

sweep: $(VENV)/.installed
	$(BIN)/sweep models quantize smollm2-135m --to Q8_0
	$(BIN)/sweep models quantize qwen2.5-coder-1.5b --to Q4_0
	$(BIN)/sweep run search_spaces/demo.yaml --study $(STUDY) --trials $(TRIALS)
	$(BIN)/sweep export --study $(STUDY) -o $(EXPORT) --allow-infeasible

# Re-run the demo's front on the whole task set, 2 runs each; export then prefers the verified figures.
verify: $(VENV)/.installed
	$(BIN)/sweep verify --study $(STUDY)
	$(BIN)/sweep export --study $(STUDY) -o $(EXPORT) --allow-infeasible

# The one compile of llama.cpp (the bindings' libraries, llama-server, llama-bench), cached per
# llama-cpp-python version under the sweep cache; `make install` runs it, so this only checks.
tools: $(VENV)/.installed
	$(BIN)/sweep tools build

test: $(VENV)/.installed
	@command -v chromium >/dev/null 2>&1 || echo "*** chromium is not installed: the report test will be SKIPPED (apt-get install chromium; .ci/run installs it) ***"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo "*** postgresql is not installed: the fleet tests will be SKIPPED (apt-get install postgresql; .ci/run installs it) ***"
	@$(BIN)/sweep tools list 2>/dev/null | grep -q "^llama-server" || echo "*** llama-server is not built: the server-backend tests will be SKIPPED (make tools; .ci/run builds it) ***"
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	@echo "== the tests that start no model, server or calibrated load, two at a time (pytest-xdist)"
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not soak"
	@echo "== the tests that measure or run a real model, one at a time"
	$(BIN)/python -m pytest -q --durations=30 -m "slow and not soak"
	@echo "== the end-to-end and fault tests again, on the portable measurement path (psutil, portalocker)"
	SWEEP_PLATFORM=portable $(BIN)/python -m pytest -q --durations=10 -m "portable and not linux_path"

# Three minutes of real faults (bench/chaos.py on a real PostgreSQL server): its own CI step.
soak: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m soak

# The inner loop: everything but the tests that run a real model, server or calibrated load.
test-fast: $(VENV)/.installed
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# The docs site (mkdocs.yml, docs/): --strict fails on a broken link. Never with -q: mkdocs 1.6.1's
# -q hides the warnings that strict mode turns into a failure.
docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict -d site

# The benchmark tables in docs/ and the README, rendered again from bench/data/*.json (bench/tables.py;
# the standard library is enough, so no virtualenv). tests/test_bench.py fails while one is out of date.
tables:
	$(PYTHON) bench/tables.py

# The command reference, docs/cli.md, rendered again from sweep/cli.py's click commands
# (bench/cli_reference.py; it measures nothing). tests/test_bench.py fails while it is out of date.
cli-docs: $(VENV)/.installed
	$(BIN)/python bench/cli_reference.py

clean-study:
	rm -f studies.db
