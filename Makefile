# etc_nb: `make test` and `make demo` set up the pinned environment (.venv) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= results/demo
DEMO_ARGS ?=

.PHONY: install test check-export pytest nbtest readme check-readme demo lab clean
.PHONY: docs docs-check outputs

$(STAMP): setup.py settings.ini constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,teachers]'
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

# README.md is rendered from nbs/index.ipynb (nbdev's readme notebook; nbdev_readme needs Quarto, which cannot be
# installed here, so nbconvert renders it). Links are written relative to nbs/ in the notebook and rebased here.
README_RENDER = $(BIN)/jupyter nbconvert --to markdown --log-level WARN --stdout nbs/index.ipynb \
	| sed -E -e 's|\]\(([A-Za-z0-9_][^):]*)\)|](nbs/\1)|g' -e 's|\]\(\.\./|](|g'

readme: $(STAMP)
	@$(README_RENDER) > README.md.tmp && mv README.md.tmp README.md && echo "README.md rendered from nbs/index.ipynb"

check-readme: $(STAMP)
	@$(README_RENDER) | diff -u README.md - > /dev/null && echo "README.md matches nbs/index.ipynb" \
	|| { echo "README.md is out of step with nbs/index.ipynb: edit the notebook, run make readme, commit both"; exit 1; }

# backend="auto" caches its measured choices; the tests keep theirs apart from the user's (~/.cache/etc_nb)
TEST_ENV := ETC_NB_CACHE_DIR=$(CURDIR)/data/cache/test_autotune

pytest: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q tests

# Notebook cells are tests too; cells marked `#| slow` are skipped, nbs/runs/ (papermill jobs) is
# skipped here via its .notest file and executed by tests/test_runs.py with tiny parameters.
nbtest: $(STAMP)
	$(TEST_ENV) $(BIN)/nbdev_test --n_workers 2 --timing

test: check-export check-readme pytest nbtest

demo: $(STAMP)
	$(BIN)/etc-nb demo --out $(DEMO_OUT) $(DEMO_ARGS)

# The documentation site, offline: every notebook with its stored outputs (not re-run) and the API of
# what it exports, results/README.md, MkDocs-Material -> _site/ (scratch and cache in _proc/).
docs: $(STAMP)
	$(BIN)/python nbs/_mkdocs/build.py

# The site in headless Chromium (tests/test_docs.py, part of `make pytest`; skips without chromium).
docs-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_docs.py

# Refresh the outputs (figures, tables) stored in the notebooks that show them; the docs site renders these.
OUTPUT_NBS ?= nbs/01_flow.ipynb nbs/02_warp.ipynb nbs/03_losses.ipynb nbs/04_metrics.ipynb nbs/05a_config.ipynb \
	nbs/05b_objective.ipynb nbs/05c_loader.ipynb nbs/05d_checkpoint.ipynb nbs/06_evaluate.ipynb nbs/07_viz.ipynb nbs/07a_viewer.ipynb \
	nbs/05f_instance_objective.ipynb nbs/25_vis.ipynb nbs/data/10_synthetic_vis.ipynb nbs/10_teachers.ipynb nbs/10a_pseudo.ipynb nbs/11_infer.ipynb nbs/11a_autotune.ipynb nbs/11b_quantize.ipynb nbs/12_benchmark.ipynb nbs/14_tc.ipynb nbs/data/00_synthetic.ipynb nbs/models/00_registry.ipynb
outputs: $(STAMP)
	$(BIN)/python nbs/_mkdocs/store_outputs.py $(OUTPUT_NBS)

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) *.egg-info _site _proc
