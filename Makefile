# Each target sets up .venv on a fresh machine: torch's CPU wheel first (a bare `torch`
# requirement would pull a multi-GB CUDA build), then the project with its test extra.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean realcorpus

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demo

# the packages of `--corpus styles` (apt-get, npm, cairosvg): see demo/realcorpus.py
realcorpus: $(STAMP)
	$(PY) -m demo.realcorpus install

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf demo_out .pytest_cache
