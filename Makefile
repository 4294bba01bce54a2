# One-command setup: `make test` and `make bench` create .venv if missing, install the
# pinned set (requirements.txt, plus requirements-test.txt), then run. `make bench-gpu` is the prepared GPU run for
# the device machines, which have their own torch/triton/jax and no network.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= benchmarks/results
# make bench-gpu's seconds per stage (one device call of at most 10 minutes in all): GPU tests
# (pytest -m gpu, interrupted with a summary when the time is up), the canary (every
# non-default autotuning candidate of the goal rows launched once; one that kills or hangs its
# process is excluded from the rest of the run: benchmarks/canary.py; its compiles are the
# benchmark's, found later in Triton's cache), the benchmark's deadline (rows not started by
# then are reported skipped), the model profile, Nsight Compute over the kernels furthest
# from their goals (benchmarks/ncu_targets.py; where ncu exists), the block-size sweep. At
# most 8 files come back from a device call: this writes 8. The stages' timeouts sum to
# about 595 s (under a device call's 600 s limit): tests 75 (+20 to stop), canary 85 in all
# tries (41 candidates now: attention 23, int4 14, decode 4; the Gluon ones among them; its compiles are the bench's, found
# in Triton's cache later), bench 170 (+60 for the entry running at the deadline), profile 60
# (the triton preset: sm_90's defaults are the tiles triton-autotune picked on the H200; the
# 2026-11-27 call's 40 s for triton-autotune wrote no profile),
# ncu 40, sweep 60 (+25);
# then the issues' goals read from the results file (benchmarks/goals.py), printed last, with
# the GPU tests run against those collected (the stage runs each test function's first case
# before any second: tests/conftest.py breadth_first)
GPU_TEST_S ?= 75
CANARY_S ?= 85
BENCH_DEADLINE_S ?= 170
PROFILE_S ?= 60
PROFILE_IMPLS ?= triton
NCU_S ?= 40
SWEEP_S ?= 60
BENCH_ARGS ?=

.PHONY: setup test bench bench-gpu test-gpu gpu-wheels clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

# two pytest-xdist workers, each test file on one (its module fixtures, e.g. the AOT compiles,
# run once): 6:53 where one process took 9:04 on the 2-core machine
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

PROFILE_STRATEGIES := [dp,fsdp,tp,sp,fsdp_tp]
comma := ,
# sharding.profile's output stem: the strategy names joined by '+'
PROFILE_STEM := benchmarks/results/sharding/profile-nano2-$(subst $(comma),+,$(patsubst [%],%,$(PROFILE_STRATEGIES)))

# the report: per device the newest results file and each older one with issue-goal rows the
# newer ones lack (benchmarks.report.latest_results), the compile report and the two profiles
bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.compile_report
	$(PY) -m sharding.profile model=nano2 strategy=$(PROFILE_STRATEGIES) hardware=h100_sxm
	$(PY) -m sharding.profile model=nano2 strategy=$(PROFILE_STRATEGIES) hardware=tpu_v5p
	$(PY) -m benchmarks.report --latest benchmarks/results --out benchmarks/report \
	  --include benchmarks/report/compile_report.md $(PROFILE_STEM)-h100_sxm.png $(PROFILE_STEM)-tpu_v5p.png

# On a GPU machine: system python (torch 2.11 / triton 3.6 / jax 0.11 there); hydra-core
# travels as wheels in .whl/ (made here by `make gpu-wheels`). Results go to $$OUT.
GPU_ENV = if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile \
	  --target /tmp/site .whl/*.whl; fi; \
	export PYTHONPATH=/tmp/site:$$PYTHONPATH PYTHONUNBUFFERED=1; mkdir -p $(OUT); \
	nvidia-smi > $(OUT)/nvidia-smi.txt 2>&1
# the GPU tests (pytest -m gpu, 8 workers), interrupted with a summary after $(1) seconds
gpu_tests = XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELS_GPU_TESTS_COLLECTED=/tmp/gpu-collected.txt \
	  timeout -s INT -k 20 $(1) python3 -m pytest -q -m gpu \
	  -p no:cacheprovider $$(python3 -c 'import xdist' 2>/dev/null && echo '-n 8') -rfE --tb=short \
	  tests/ --junitxml=$(OUT)/gpu-tests.xml 2>&1 | tee $(OUT)/gpu-tests.log | tail -40

bench-gpu:
	$(GPU_ENV); \
	$(call gpu_tests,$(GPU_TEST_S)); \
	end=$$(( $$(date +%s) + $(CANARY_S) )); for try in 1 2 3 4 5; do left=$$(( end - $$(date +%s) )); \
	  [ $$left -gt 5 ] || break; timeout $$left python3 -m benchmarks.canary --state $(OUT)/canary.json \
	  > /tmp/canary.log 2>&1; rc=$$?; tail -3 /tmp/canary.log; [ $$rc -eq 0 ] || [ $$rc -eq 124 ] && break; done; \
	export KERNELS_EXCLUDED_BLOCKS_FILE=$(OUT)/canary.json; \
	timeout $$(( $(BENCH_DEADLINE_S) + 60 )) python3 -m benchmarks.run bench=gpu out_dir=$(OUT) \
	  bench.deadline_s=$(BENCH_DEADLINE_S) $(BENCH_ARGS) 2>&1 | tail -60; \
	if [ $(PROFILE_S) -gt 0 ]; then timeout $(PROFILE_S) python3 -m benchmarks.profile_model \
	  --out-dir $(OUT) --impls $(PROFILE_IMPLS) > /tmp/profile.log 2>&1; echo "profile stage rc=$$?"; \
	  tail -45 /tmp/profile.log; fi; \
	NCU=$$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1); \
	if [ $(NCU_S) -gt 0 ] && [ -n "$$NCU" ]; then timeout $(NCU_S) $$NCU --clock-control none \
	  -k 'regex:_patch_embed_fwd|_patchify|_attn_bwd_dkdv|_attn_bwd_dq|_int4_matmul|_decode_|_norm_|_gluon_attn_fwd' \
	  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
	  --section WarpStateStats --csv --page details python3 -m benchmarks.ncu_targets \
	  > $(OUT)/ncu.txt 2>&1; tail -3 $(OUT)/ncu.txt; else echo "ncu stage skipped (NCU_S=$(NCU_S), ncu '$$NCU')"; fi; \
	if [ $(SWEEP_S) -gt 0 ]; then timeout $$(( $(SWEEP_S) + 25 )) python3 -m benchmarks.sweep \
	  --out-dir $(OUT) --ops int4,decode,patch_embed,attention --deadline-s $(SWEEP_S) 2>&1 | tail -5; fi; \
	R=$$(ls -t $(OUT)/*.json 2>/dev/null | grep -v -e '/sweep-' -e '/profile-' -e '/canary' | head -1); \
	if [ -n "$$R" ]; then timeout 20 python3 -m benchmarks.goals $$R --tests $(OUT)/gpu-tests.xml \
	  --collected /tmp/gpu-collected.txt; fi

# The GPU tests alone, for a second device call: make bench-gpu's 75 s stage reached 27 to
# 35 of the ~150 (compiles dominate: 10-25 s a test in 8 workers); each test function's
# first case runs before any second (tests/conftest.py), so a longer stage widens coverage
TEST_GPU_S ?= 420
test-gpu:
	$(GPU_ENV); \
	$(call gpu_tests,$(TEST_GPU_S))

gpu-wheels: $(STAMP)
	mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
	  hydra-core==1.3.8 omegaconf==2.3.0 pytest-xdist==3.8.0 execnet==2.1.2  # xdist: the GPU tests in 8 workers
	$(PY) -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only on PyPI

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
