# The README's two commands: `make demo` (the main job on the embedded default) and `make test`.
# Each creates .venv and installs the project on first use (torch from TORCH, CPU wheel here).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= notebooks,deepspeed,dev,cluster,benchmarks
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tnpo-installed

.PHONY: demo test test-fast lint install clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]" "$(TORCH)"
	@# optional comparison scorer (tests skip without it); --no-deps: its metadata lists torchvision,
	@# which it never imports and which would replace the pinned torch
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "kronfluence>=1.0.1" einconv opt-einsum einops \
	  || echo "make: kronfluence not installed; its comparison test will skip" >&2
	@touch $(STAMP)

## main job on the embedded default (`npo run params/demo.yaml`): prepare -> influence ->
## forget (NPO+GD, INFLUENCE+GD) -> evaluation -> token heatmaps, executed notebooks under
## runs/demo/notebooks/, then the report table and the heatmap page
demo: $(STAMP)
	$(BIN)/npo run params/demo.yaml

## install what the tests need, lint (ruff, the import layers), run the whole suite (slow end-to-end tests included)
test: lint
	$(BIN)/python -m pytest -q --durations=15

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
