# accel_lib — the two front-door commands are `make tutorial` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := accel_lib/fpga/device/kernel/_build/libaccel_bfp.so
OUT    ?= build/tutorial
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: venv kernel tutorial lab book test kube-play bench binder-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (accel_lib)" >/dev/null
	touch $(STAMP)

# The fused device quantizer (a compiled ONNX Runtime operator; needs g++, and npm once for ONNX Runtime's headers).
# Optional: without it the device stage uses the pure-ONNX quantizer (the same numbers, slower).
$(KERNEL): accel_lib/fpga/device/kernel/bfp_quantize.cc | $(STAMP)
	$(PY) -m accel_lib.fpga.device.kernel build --optional

kernel: $(STAMP)
	$(PY) -m accel_lib.fpga.device.kernel build

venv: $(STAMP) $(KERNEL)

## Run the tutorial notebooks in order with papermill on their embedded defaults (every cell under a time limit;
## a cell that reaches it fails the run, see accel_lib/tutorial.py).
tutorial: $(STAMP) $(KERNEL)
	rm -rf $(OUT) && mkdir -p $(OUT)/notebooks
	$(PY) -m accel_lib.tutorial series --out $(OUT) $(NOTEBOOKS)
	@$(PY) -m accel_lib.tutorial summary $(OUT)
	@echo "Executed notebooks: $(OUT)/notebooks/   Workspace: $(OUT)/workspace/"

## JupyterLab on notebooks/ with the venv's kernel, offline; prints its address. Ctrl-C stops it and what it started.
lab: $(STAMP) $(KERNEL)
	$(PY) -m accel_lib.lab

## A static HTML book of the executed series (make tutorial's notebooks, not executed again) with the README as its
## landing page: build/book/html/index.html. Builds offline and loads nothing from the network when read.
BOOK ?= build/book
book: $(STAMP)
	$(PY) -m accel_lib.book --notebooks $(OUT)/notebooks --out $(BOOK)

## The whole test suite (unit tests, notebook runs), offline, with a cache and a podman image store of its own under
## build/test (so a clean clone takes a new machine's path: the Debian base is made from Debian's packages).
TEST_STORE := $(abspath build/test/containers)
TEST_ENV = ACCEL_LIB_OFFLINE=1 ACCEL_LIB_PROGRESS=0 ACCEL_LIB_CACHE=$(abspath build/test/cache) \
	  ACCEL_LIB_RUN_STORE=$(TEST_STORE) CONTAINERS_STORAGE_CONF=$$($(PY) accel_lib/fpga/cluster/containers.py store $(TEST_STORE))
test: $(STAMP) $(KERNEL)
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider tests

## The generated Kubernetes manifests on real containers with podman's Kubernetes runner (podman kube play), in the
## tests' own store: built, played, scored by stock clients, a container killed and brought back, taken down; the
## runner's gaps are reported as skips with their reasons.
kube-play: $(STAMP) $(KERNEL)
	$(TEST_ENV) $(PY) -m pytest -q -rs -p no:cacheprovider tests/test_kube_play.py

bench: $(STAMP) $(KERNEL)
	ACCEL_LIB_OFFLINE=1 $(PY) benchmarks/run.py

## The series inside Binder's limits (a cgroup of 2 GiB and one CPU); skipped, with the reason, where no cgroup
## can be made. BINDER_ARGS="--time-goal 1500" for a slower machine.
binder-check: $(STAMP) $(KERNEL)
	@ACCEL_LIB_OFFLINE=1 $(PY) benchmarks/binder_check.py $(BINDER_ARGS); rc=$$?; [ $$rc -eq 3 ] && exit 0; exit $$rc

clean:
	$(PYTHON) accel_lib/fpga/cluster/containers.py store --remove $(TEST_STORE)
	rm -rf build .venv
