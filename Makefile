# The README's two commands: `make sweep` (set up + demo sweep) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= demo
TRIALS ?= 8
EXPORT ?= demo-config.json

.PHONY: sweep verify test install clean-study

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing (the first install builds llama-cpp-python from source: about 5 minutes on 2 cores)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

sweep: $(VENV)/.installed
	$(BIN)/sweep models quantize smollm2-135m --to Q8_0
	$(BIN)/sweep run search_spaces/demo.yaml --study $(STUDY) --trials $(TRIALS)
	$(BIN)/sweep export --study $(STUDY) -o $(EXPORT) --allow-infeasible

# Re-run the demo's front on the whole task set, 2 runs each; export then prefers the verified figures.
verify: $(VENV)/.installed
	$(BIN)/sweep verify --study $(STUDY)
	$(BIN)/sweep export --study $(STUDY) -o $(EXPORT) --allow-infeasible

test: $(VENV)/.installed
	@command -v chromium >/dev/null 2>&1 || echo "*** chromium is not installed: the report test will be SKIPPED (apt-get install chromium; .ci/run installs it) ***"
	$(BIN)/python -m pytest -q

clean-study:
	rm -f studies.db
