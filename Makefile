# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out

# What the C++ programs in export/cpp need beyond the Python environment (Debian package names).
CPP_DEBS := cmake g++ nlohmann-json3-dev libjpeg62-turbo-dev libpng-dev libstb-dev

.PHONY: demo test lint install cpp-deps perf-analyzer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall whenever the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[cpu,openvino,dev]'
	# `serve` and its tests: the tritonserver (Python backend) inside the nvidia-pytriton wheel. Without
	# its dependencies: it pins numpy<2, and only its server binary is used, never its Python API.
	$(BIN)/pip install -q --no-deps 'nvidia-pytriton==0.7.0'
	$(BIN)/python -c 'from alexnet_deploy.serve import python_backend_env as e; e()'  # its models' numpy 1.x layer
	touch $(STAMP)

install: $(STAMP)

# Installs the missing packages when it can (root with apt-get); otherwise says which command to
# run, and the C++ tests fail naming what CMake did not find.
cpp-deps:
	@missing=""; for p in $(CPP_DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the C++ programs' packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null) \
	    || { echo "apt-get install$$missing failed"; exit 1; }; \
	else \
	  echo "the C++ programs need:$$missing; run: sudo apt-get install$$missing"; \
	fi

demo: $(STAMP)
	$(BIN)/alexnet-deploy pipeline --out $(DEMO_DIR)

# One pytest-xdist worker per core, a module never split between two, in the collected order (the
# modules that need the trained model last: tests/conftest.py).
TEST_WORKERS ?= auto
test: $(STAMP) cpp-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Triton's load tool for benchmarks/serve_load.py (not needed by the tests): .venv/perf-analyzer/
perf-analyzer: $(STAMP)
	VENV=$(VENV) bash benchmarks/get_perf_analyzer.sh

lint: $(STAMP)
	$(BIN)/ruff check alexnet_deploy tests benchmarks

clean:
	rm -rf $(DEMO_DIR) build .pytest_cache
