# Set-up and entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this machine's disk; installing it first keeps pip from
# pulling a multi-GB CUDA build when it resolves the project's `torch` requirement.
TORCH  ?= torch==2.13.0
# The RLHF frameworks the integration tests run, at the versions the README names. Their wheels
# pin CUDA stacks (deepspeed, flash-attn, vllm), so they go in without dependencies, after the
# project's `test-integrations` extra has installed the few modules their calling code imports.
FRAMEWORKS ?= openrlhf==0.11.2 verl==0.9.1

.PHONY: install demo test clean

$(BIN)/micro-rm: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(FRAMEWORKS)
	touch $@

install: $(BIN)/micro-rm

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/micro-rm demo
	@echo "micro-rm is installed in $(BIN); to run it by name: source $(BIN)/activate"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info
