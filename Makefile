# The two set-up commands (see README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: demo test install clean

$(BIN)/i2vd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Only where no torch is importable: 2.13.0 (a CPU wheel here; CUDA wheels on a GPU machine).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(BIN)/i2vd

demo: $(BIN)/i2vd
	mkdir -p inbox outputs
	cp examples/lighthouse.png examples/lighthouse.json inbox/
	I2VD_MODEL=tiny I2VD_SETTLE_SECONDS=1 $(BIN)/i2vd run

test: $(BIN)/i2vd
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) state
