# The set-up commands (see README.md): `make demo` and `make test`; `make bench` for the benchmarks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: demo test install clean constraints bench gpu-bench gpu-busy

# Made only when missing: `python -m venv` on an existing venv would turn off the
# --system-site-packages that README tells GPU users to create it with (hiding the host's CUDA torch).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/i2vd: pyproject.toml constraints.txt | $(BIN)/python
	@# Only where no torch is importable: 2.13.0 (a CPU wheel here; CUDA wheels on a GPU machine).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==$(TORCH_VERSION)"
	@# The versions the tests last passed with (torch excepted: whatever the host has). Runtime only:
	@# the test tools come with `make test`.
	$(BIN)/pip install -c constraints.txt -e .
	touch $@

# The test tools (pytest, a PostgreSQL driver, requests, Playwright for the system chromium, mypy).
$(VENV)/.test-tools: pyproject.toml constraints.txt $(BIN)/i2vd
	$(BIN)/pip install -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/i2vd

demo: $(BIN)/i2vd
	mkdir -p inbox outputs
	cp examples/lighthouse.png examples/lighthouse.json inbox/
	I2VD_MODEL=tiny I2VD_SETTLE_SECONDS=1 $(BIN)/i2vd run

test: $(VENV)/.test-tools
	$(BIN)/mypy
	$(BIN)/python -m pytest

# On a machine with a CUDA GPU (about 10 minutes on one H100): every backend's default job at full size with
# random weights, appended to bench/RESULTS.md. No install step: a lent GPU machine has no network, so
# BENCH_PYTHON may name any interpreter that imports diffusers (see bench/RESULTS.md).
BENCH_PYTHON ?= $(BIN)/python
gpu-bench:
	$(BENCH_PYTHON) -m bench.gpu --all --record bench/RESULTS.md

# On a CUDA GPU, a few minutes: the share of time the GPU is busy over 10 back-to-back default jobs of the
# fastest backend through `i2vd run` (issue 21: >= 95 %), appended to bench/RESULTS.md. Apart from
# gpu-bench: each fits one 10-minute command on a lent machine.
gpu-busy:
	$(BENCH_PYTHON) -m bench.gpu_busy --record bench/RESULTS.md

# The CPU benchmarks (README's "Performance"), one after another; each prints its figure last.
# throughput.py needs the PostgreSQL server; bench.gpu and bench.gpu_busy need CUDA and are left out.
bench: $(BIN)/i2vd
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.back_to_back
	$(BIN)/python -m bench.intake_rate
	$(BIN)/python -m bench.idle
	$(BIN)/python -m bench.pickup
	$(BIN)/python -m bench.tiny_models
	$(BIN)/python -m bench.soak
	$(BIN)/python bench/throughput.py

# After the tests pass with new versions: record them. torch and what only torch needs stay the host's.
constraints: $(VENV)/.test-tools
	{ echo "# pip freeze of a venv the tests passed in, minus torch and its own dependencies (\`make constraints\`)."; \
	  $(BIN)/pip freeze --local --exclude-editable | grep -vE '^#|^-e ' \
	  | grep -viE '^(torch|triton|sympy|mpmath|networkx|nvidia-[a-z0-9-]+|i2vd)=='; } > constraints.txt

clean:
	rm -rf $(VENV) state
