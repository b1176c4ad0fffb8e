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

# The frequency table and plot, then the small-scale reproduction in its quick mode: pretrain a
# tiny model on the embedded corpus, evaluate every method zero-shot, fine-tune linear/ntk/yarn,
# passkey; prints the perplexity table and writes plots/JSON under demo_out/.
demo: $(STAMP)
	$(PY) experiments/rope_frequencies.py
	rm -rf runs/small_scale_quick
	$(PY) experiments/small_scale/run.py --quick

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
