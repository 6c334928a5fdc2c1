# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv from scratch first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test evaluate-test benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip -q
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

# Fetch the bundled demo slide (CMU-1-Small-Region.svs) and detect every nucleus in it.
demo: setup
	$(BIN)/wsinuclei demo --out out/demo

test: setup
	$(BIN)/python -m pytest

# Reported figures: the shipped model on the 14 MoNuSeg test images (never used for training or selection).
evaluate-test: setup
	bash scripts/evaluate_monuseg_test.sh

clean:
	rm -rf out .pytest_cache
