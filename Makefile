# raydd: `make demo` runs the main job on the embedded default; `make test` runs the tests.
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

.PHONY: fashion-mnist

demo: setup
	$(BIN)/raydd pipeline

test: $(BIN)/raydd fashion-mnist
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/raydd fashion-mnist
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs outputs multirun
