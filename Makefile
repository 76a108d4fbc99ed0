# The README's two commands: `make reproduce` and `make test`.
# Both create .venv (if missing) and install the package with its extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: reproduce test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,notebooks,onnx,faiss]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Main job: the notebook sequence on the synthetic benchmark (papermill,
# quick=False) into runs/<date>/, figures/ refreshed, results table printed.
reproduce: $(STAMP)
	$(PY) -m hacnn reproduce

# Full test suite: unit/property tests, then nbval over the committed
# notebooks. pytest's exit code 5 ("no tests collected") is a failure here.
# Last, the whole sequence once more as the main job runs it (papermill,
# quick=True; the run cache makes the trainings that nbval did free).
# The notebooks' figures go to a scratch folder so that figures/ keeps the
# full-run versions that `make reproduce` draws.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc
	if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  HACNN_FIGURES_DIR=$(CURDIR)/runs/nbval-figures $(PY) -m pytest -q -p no:randomly --nbval notebooks --nbval-sanitize-with tests/nbval_sanitize.cfg; \
	fi
	HACNN_FIGURES_DIR=$(CURDIR)/runs/nbval-figures $(PY) -m hacnn reproduce --quick --force --out runs/test-quick-reproduce

clean-venv:
	rm -rf $(VENV)
