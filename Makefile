# The two commands of the README. Both create .venv and install what they need;
# the install step re-runs only when pyproject.toml changes (a stamp file in .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on this machine's disk, never a CUDA download.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Until the small-scale reproduction lands: the frequency table and plot, then a CPU-size
# continued pretraining with YaRN through the real trainer (sharding, checkpoints, evals).
demo: $(STAMP)
	$(PY) experiments/rope_frequencies.py
	rm -rf runs/demo_yarn_32k
	$(PY) -m yarn_jax.train --config configs/yarn_32k.py:runlocal --workdir runs/demo_yarn_32k

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
