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
# Then nbval once more on another kernel path -- oneDNN and ATen limited to
# AVX2, what an AVX2-only x86-64 CPU runs -- so that no committed output
# depends on the machine that wrote it: the trainings are redone there (the
# run cache is keyed by the kernel path), their numbers are asserted within a
# band (hacnn.bands) instead of compared, and every other output must come
# out the same. Notebook 09 is left out of that pass (its 22 quick runs are
# noise, only sanity-checked; ~3 min); tests/test_bands.py also trains the
# quick preset on 1 thread, another kernel path, against the same band.
# Last, the whole sequence once more as the main job runs it (papermill,
# quick=True; the run cache makes the trainings that nbval did free).
# The notebooks' figures go to a scratch folder so that figures/ keeps the
# full-run versions that `make reproduce` draws.
NBVAL       := $(PY) -m pytest -q -p no:randomly --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval notebooks
OTHER_ISA   := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadscope -q $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc
	if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  HACNN_FIGURES_DIR=$(CURDIR)/runs/nbval-figures $(NBVAL) && \
	  echo "make test: nbval again under $(OTHER_ISA)" && \
	  $(OTHER_ISA) HACNN_FIGURES_DIR=$(CURDIR)/runs/nbval-figures-avx2 $(NBVAL)/0[0-8]_*.ipynb; \
	fi
	HACNN_FIGURES_DIR=$(CURDIR)/runs/nbval-figures $(PY) -m hacnn reproduce --quick --force --out runs/test-quick-reproduce

clean-venv:
	rm -rf $(VENV)
