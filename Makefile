# vizattn: `make test` and `make demo` install what is missing into a virtual environment, then run.
# VENV may point anywhere (CI keeps one outside the clone so a warm machine reuses it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per checkout: an editable install points at the checkout it was made from.
STAMP := $(VENV)/.vizattn-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
PYTEST_ARGS ?= -n 2

.PHONY: install test demo zoo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: zoo

zoo: install
	$(PY) tools/zoo.py

lint: install
	$(PY) -m ruff check vizattn tools tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
