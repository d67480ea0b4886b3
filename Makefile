# `make run` and `make test` each bootstrap .venv themselves (pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-oldest bench docs install clean

# a .venv that no longer runs (its Python moved or was upgraded away), was made by a Python
# older than dalib's 3.10, or has no pip (an interrupted `venv`) is made again, whatever its stamp
USABLE := import sys, pip; sys.exit(sys.version_info < (3, 10))
ifneq ($(shell $(BIN)/python -c '$(USABLE)' >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP))
endif

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "dalib needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1): give another, e.g. make PYTHON=python3.11" >&2; exit 1; }
	$(BIN)/python -c '$(USABLE)' >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	@# quiet, unless it fails: then once more aloud, for pip's reason (which pin could not be met)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]" || $(BIN)/python -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dalib run dann --src mnist --tgt usps

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The oldest torch dalib supports (pyproject.toml: torch>=2.4), in its own .venv-oldest; not
# part of `make test`: its CUDA wheels come from the registry (several GB).
OLDEST := .venv-oldest
test-oldest:
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -m pip install -q torch==2.4.1 torchvision==0.19.1
	grep -v '^torch' constraints.txt > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install -q -c $(OLDEST)/constraints.txt -e ".[test]"
	$(OLDEST)/bin/python -m pytest -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info
