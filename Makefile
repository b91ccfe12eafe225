# The README's two commands: `make sweep` (set up + demo sweep) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= demo
TRIALS ?= 8
EXPORT ?= demo-config.json

.PHONY: sweep verify test test-fast install lock clean-study tools docs tables cli-docs

# Exact versions from requirements.lock (pip constraints); `make lock` refreshes it. llama-cpp-python
# is built for this CPU less Intel AMX: sweep.models.tools.NO_AMX says why (and builds llama-server the same).
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing (the first install builds llama-cpp-python from source: about 5 minutes on 2 cores)"
	@# First and without pip's cache: a wheel cached from a build with other flags would be reused.
	CMAKE_ARGS="$(if $(NO_AMX),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')" \
		$(BIN)/python -m pip install --quiet --no-cache-dir -c requirements.lock llama-cpp-python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
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

# llama-server and llama-bench from the llama.cpp the installed llama-cpp-python vendors (cached per
# version under the sweep cache; about 7 minutes on 2 cores the first time). The server backend needs them.
tools: $(VENV)/.installed
	$(BIN)/sweep tools build

test: $(VENV)/.installed
	@command -v chromium >/dev/null 2>&1 || echo "*** chromium is not installed: the report test will be SKIPPED (apt-get install chromium; .ci/run installs it) ***"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo "*** postgresql is not installed: the fleet tests will be SKIPPED (apt-get install postgresql; .ci/run installs it) ***"
	@$(BIN)/sweep tools list 2>/dev/null | grep -q "^llama-server" || echo "*** llama-server is not built: the server-backend tests will be SKIPPED (make tools; .ci/run builds it) ***"
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=30
	@echo "== the end-to-end, fault and CLI tests again, on the portable measurement path (psutil, portalocker)"
	SWEEP_PLATFORM=portable $(BIN)/python -m pytest -q --durations=10 -m "portable and not linux_path"

# The inner loop: everything but the tests that run a real model, server or calibrated load.
test-fast: $(VENV)/.installed
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"

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
