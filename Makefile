# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/digits
DEMO_RUN ?= runs/demo

.PHONY: install demo test test-fast lint clean

# Installs from the package registries only; the stamp re-installs when pyproject changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Generate the built-in digits dataset, train with default settings (no flips: a mirrored digit
# is not a digit), evaluate on its test split, predict a folder.
demo: install
	@if [ ! -d $(DEMO_DATA) ]; then $(BIN)/clarivis datasets make digits $(DEMO_DATA); fi
	rm -rf $(DEMO_RUN)
	$(BIN)/clarivis train $(DEMO_DATA) --out $(DEMO_RUN) --epochs 15 --no-hflip
	$(BIN)/clarivis evaluate $(DEMO_RUN)/model $(DEMO_DATA)/test --json $(DEMO_RUN)/test_metrics.json
	$(BIN)/clarivis predict $(DEMO_RUN)/model $(DEMO_DATA)/test/7 --top-k 3 | head -n 12
	@echo
	@echo "Results: model bundle in $(DEMO_RUN)/model, test metrics in $(DEMO_RUN)/test_metrics.json,"
	@echo "confusion matrix in $(DEMO_RUN)/test_metrics_confusion.png, training log in $(DEMO_RUN)/metrics.jsonl"

test: install
	$(BIN)/python -m pytest -n 2 --durations=15

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs data .pytest_cache
