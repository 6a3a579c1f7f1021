# vizattn: `make test` and `make demo` install what is missing into a virtual environment, then run.
# VENV may point anywhere (CI keeps one outside the clone so a warm machine reuses it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per checkout: an editable install points at the checkout it was made from.
STAMP := $(VENV)/.vizattn-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
PYTEST_ARGS ?= -n 2 --dist loadgroup --durations=30

.PHONY: install test demo zoo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# The suite includes tests/mm, which needs the OpenMMLab stack (see the mm target below).
test: install mm
	$(PY) -m pytest $(PYTEST_ARGS)

# The README's main command: train a small BiFormer on the built-in Shapes set on the CPU (a few minutes), then print
# the validation top-1, the checkpoint and the command that evaluates it.
demo: install
	$(PY) tools/train.py --config configs/cls/demo.yaml

zoo: install
	$(PY) tools/zoo.py

lint: install
	$(PY) -m ruff check vizattn tools tests configs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# The OpenMMLab stack for vizattn.mm and tests/mm: mmcv 2.1.0 with compiled ops (the shared wheel, the wheel cache, or a
# one-time source build) and the `mm` extra. Only reads package metadata when everything is installed already.
.PHONY: mm
mm: install
	bash tools/install_mm.sh $(PY)
