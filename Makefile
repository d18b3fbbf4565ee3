# accel_lib — the two front-door commands are `make tutorial` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= build/tutorial
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))

.PHONY: venv tutorial test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (accel_lib)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

## Run the tutorial notebooks in order with papermill on their embedded defaults.
tutorial: $(STAMP)
	rm -rf $(OUT) && mkdir -p $(OUT)/notebooks
	@for nb in $(NOTEBOOKS); do \
	  echo "== papermill $$nb"; \
	  ACCEL_LIB_PROGRESS=0 $(VENV)/bin/papermill --no-progress-bar --kernel python3 --cwd $(OUT) \
	    $$nb $(OUT)/notebooks/$$(basename $$nb) || { $(PY) -c "import accel_lib.webservice as w; w.stop_all('$(OUT)/workspace')"; exit 1; }; \
	done
	@$(PY) -m accel_lib.tutorial $(OUT)
	@echo "Executed notebooks: $(OUT)/notebooks/   Workspace: $(OUT)/workspace/"

## The whole test suite (unit tests, notebook runs), offline.
test: $(STAMP)
	ACCEL_LIB_OFFLINE=1 ACCEL_LIB_PROGRESS=0 $(PY) -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	ACCEL_LIB_OFFLINE=1 $(PY) benchmarks/run.py

clean:
	rm -rf build .venv
