# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/digits
DEMO_RUN ?= runs/demo

.PHONY: install browser postgres demo test test-fast lint clean

# Installs from the package registries only; the stamp re-installs when pyproject changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

# Generate the built-in digits dataset, train with default settings (no flips: a mirrored digit
# is not a digit), evaluate on its test split, predict a folder, audit it, write the report and
# rank the test images as a labeling queue (what to label next if they had no labels).
demo: install
	@if [ ! -d $(DEMO_DATA) ]; then $(BIN)/clarivis datasets make digits $(DEMO_DATA); fi
	rm -rf $(DEMO_RUN)
	$(BIN)/clarivis train $(DEMO_DATA) --out $(DEMO_RUN) --epochs 15 --no-hflip
	$(BIN)/clarivis evaluate $(DEMO_RUN)/model $(DEMO_DATA)/test --json $(DEMO_RUN)/test_metrics.json
	$(BIN)/clarivis predict $(DEMO_RUN)/model $(DEMO_DATA)/test/7 --top-k 3 | head -n 12
	$(BIN)/clarivis audit $(DEMO_RUN)/model $(DEMO_DATA)/test
	$(BIN)/clarivis report $(DEMO_RUN)
	$(BIN)/clarivis suggest $(DEMO_DATA)/test --model $(DEMO_RUN)/model --budget 24 --top 5 --out $(DEMO_RUN)/queue
	@echo
	@echo "Results: model bundle in $(DEMO_RUN)/model, test metrics in $(DEMO_RUN)/test_metrics.json,"
	@echo "confusion matrix in $(DEMO_RUN)/test_metrics_confusion.png, training log in $(DEMO_RUN)/metrics.jsonl,"
	@echo "audit in $(DEMO_RUN)/audit.json, the report in $(DEMO_RUN)/report.html (open it in a browser),"
	@echo "a labeling queue in $(DEMO_RUN)/queue/queue.html"

# The report and web-page tests drive Debian's Chromium through Playwright (never its own
# browser download). Installed here when this machine lets us (root + apt); else they skip.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed: the browser tests will skip"

# The prediction log's PostgreSQL tests start a throwaway server (initdb, pg_ctl in a temporary
# folder) from the machine's binaries: on PATH, or Debian's /usr/lib/postgresql/VERSION/bin.
# Installed here when this machine lets us (root + apt); else those tests skip and say why.
postgres:
	@{ command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q postgresql >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; }; }; } || \
	  echo "postgresql not installed: the prediction log's PostgreSQL tests will skip"

test: install browser postgres
	$(BIN)/lint-imports  # the layers of docs/DESIGN.md (pyproject.toml, [tool.importlinter])
	$(BIN)/python -m pytest -n 2 --durations=15

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs data .pytest_cache
