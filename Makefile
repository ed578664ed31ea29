# etc_nb: `make test` and `make demo` set up the pinned environment (.venv) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= results/demo
DEMO_ARGS ?=

.PHONY: install test check-export pytest nbtest demo lab clean

$(STAMP): setup.py settings.ini constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# etc_nb/ must be exactly what the notebooks export: export a scratch copy and compare.
check-export: $(STAMP)
	@tmp=$$(mktemp -d); \
	git ls-files -co --exclude-standard -- nbs settings.ini setup.py README.md etc_nb/__init__.py \
	  | tar -cf - -T - | tar -xf - -C $$tmp; \
	(cd $$tmp && $(CURDIR)/$(BIN)/nbdev_export) || { rm -rf $$tmp; exit 1; }; \
	if diff -r -x __pycache__ $$tmp/etc_nb etc_nb; then echo "etc_nb/ matches the notebooks"; rm -rf $$tmp; \
	else echo "etc_nb/ is out of step with nbs/: edit the notebook, run nbdev_export, commit both"; rm -rf $$tmp; exit 1; fi

pytest: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Notebook cells are tests too; cells marked `#| slow` are skipped, nbs/runs/ (papermill jobs) is
# skipped here via its .notest file and executed by tests/test_runs.py with tiny parameters.
nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

test: check-export pytest nbtest

demo: $(STAMP)
	$(BIN)/etc-nb demo --out $(DEMO_OUT) $(DEMO_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) *.egg-info
