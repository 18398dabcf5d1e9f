# raydd: `make demo` runs the main job on the embedded default (ending with the HTML report); `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PINNED := torch==2.14.1 torchvision==0.29.1
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test test-slow bench clean

$(BIN)/raydd: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip
	$(BIN)/pip install -q --no-cache-dir $(PINNED)
	$(BIN)/pip install -q --no-cache-dir -e ".[dev]"
	@touch $@

setup: $(BIN)/raydd fashion-mnist

fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else echo "Fashion-MNIST not found: 'sudo apt-get install dataset-fashion-mnist', or set dataset.root=<torchvision root> (torchvision downloads it where the network allows)"; fi

# Headless Chromium renders the HTML report in tests/test_report.py (skipped without it).
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then echo "Chromium: $$(command -v chromium || command -v chromium-browser || command -v google-chrome)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium); \
	else echo "Chromium not found: 'sudo apt-get install chromium' (the report's browser test is skipped without it)"; fi

.PHONY: fashion-mnist chromium

demo: setup
	$(BIN)/raydd pipeline

test: $(BIN)/raydd fashion-mnist chromium
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/raydd fashion-mnist chromium
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs outputs multirun
