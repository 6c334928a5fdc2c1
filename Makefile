# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv from scratch first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-no-shared wheel-check evaluate-test benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip -q
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

# Fetch the bundled demo slide (CMU-1-Small-Region.svs) and detect every nucleus in it: with the default model
# into out/demo, and with the typed model (a type per nucleus) into out/demo_types.
demo: setup
	$(BIN)/wsinuclei demo --out out/demo
	$(BIN)/wsinuclei demo --model star_types --out out/demo_types

test: setup
	$(BIN)/python -m pytest

# As in a clone without ../shared: the test files that read it, with the shared folder pointed at nothing.
test-no-shared: setup
	WSINUCLEI_SHARED=$(CURDIR)/.no-shared $(BIN)/python -m pytest -q $$(grep -l "SHARED\|MONUSEG\|REFERENCE" tests/test_*.py)

# The package as a user installs it: sdist and wheel built, the wheel installed and run in a new venv.
wheel-check: setup
	bash .ci/wheel_check.sh

# Reported figures: the shipped model on the 14 MoNuSeg test images (never used for training or selection).
evaluate-test: setup
	bash scripts/evaluate_monuseg_test.sh

clean:
	rm -rf out .pytest_cache
