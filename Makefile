# Set-up and entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this machine's disk; installing it first keeps pip from
# pulling a multi-GB CUDA build when it resolves the project's `torch` requirement.
TORCH  ?= torch==2.13.0

.PHONY: install demo test clean

$(BIN)/micro-rm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/micro-rm

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/micro-rm demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info
