# One-command setup: `make test` and `make bench` create .venv if missing, install the
# pinned set (requirements.txt, plus requirements-test.txt), then run. `make bench-gpu` is the prepared GPU run for
# the device machines, which have their own torch/triton/jax and no network.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= benchmarks/results

.PHONY: setup test bench bench-gpu gpu-wheels clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

PROFILE_STRATEGIES := [dp,fsdp,tp,sp,fsdp_tp]

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.compile_report
	$(PY) -m sharding.profile model=nano2 strategy=$(PROFILE_STRATEGIES) hardware=h100_sxm
	$(PY) -m sharding.profile model=nano2 strategy=$(PROFILE_STRATEGIES) hardware=tpu_v5p
	$(PY) -m benchmarks.report --latest benchmarks/results --out benchmarks/report \
	  --include benchmarks/report/compile_report.md benchmarks/results/sharding/profile-nano2-*.png

# On a GPU machine: system python (torch 2.11 / triton 3.6 / jax 0.11 there); hydra-core
# travels as wheels in .whl/ (made here by `make gpu-wheels`). Results go to $$OUT.
bench-gpu:
	if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile \
	  --target /tmp/site .whl/*.whl; fi; \
	export PYTHONPATH=/tmp/site:$$PYTHONPATH; mkdir -p $(OUT); \
	nvidia-smi > $(OUT)/nvidia-smi.txt 2>&1; \
	timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ \
	  --junitxml=$(OUT)/gpu-tests.xml 2>&1 | tee $(OUT)/gpu-tests.log | tail -40; \
	timeout 360 python3 -m benchmarks.run bench=gpu out_dir=$(OUT)

gpu-wheels: $(STAMP)
	mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
	  hydra-core==1.3.8 omegaconf==2.3.0
	$(PY) -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only on PyPI

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
