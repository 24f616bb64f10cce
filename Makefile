# Two commands on a fresh machine:  `make demo` (set up, then the quick 3-method sweep)
# and `make test` (set up, then the test suite). Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real CIFAR-100: $NSLAB_DATA_DIR, else the shared offline copy beside this checkout, else data/
# (where torchvision downloads it on first use).
DATA_DIR ?= $(or $(NSLAB_DATA_DIR),$(wildcard ../shared/data/cifar100),data)

.PHONY: setup demo test lab clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nslab)" > /dev/null
	touch $@

demo: setup
	NSLAB_DATA_DIR=$(DATA_DIR) $(PY) -m nslab sweep grids/quick.yaml
	$(PY) -m nslab report outputs/quick

test: setup
	$(PY) -m pytest -q

lab: setup
	NSLAB_DATA_DIR=$(DATA_DIR) $(VENV)/bin/jupyter lab notebooks/02_dashboard.ipynb

clean-outputs:
	rm -rf outputs/*/
