# dmri-anomaly: `make book` (main job) and `make test`. Both set themselves up.
SHELL := /bin/bash
PROFILE ?= quick
CORES ?= 2
# Threads (and worker processes) per job; more on a many-core GPU machine.
JOB_THREADS ?= $(CORES)
VENV := .venv
PY := $(VENV)/bin/python
SNAKEMAKE_PROFILE ?= workflow/profiles/local
RESULTS ?= results
BOOK_OUT ?= book
export PYTHONHASHSEED := 0
# Workflow jobs call papermill, snakemake etc. from the project environment.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup book results book-only test test-fast clean-book help

help:
	@echo "make book [PROFILE=quick|smoke|gpu|paper]  run the pipeline and build the book"
	@echo "make test                                  run the test suite"
	@echo "make book-only PROFILE=...                 rebuild the book from existing results"
	@echo "make setup                                 create .venv and install pinned packages"

setup:
	@bash tools/setup.sh

results: setup
	$(VENV)/bin/snakemake --snakefile workflow/Snakefile --profile $(SNAKEMAKE_PROFILE) \
	    --cores $(CORES) --config profile=$(PROFILE) results=$(abspath $(RESULTS)) job_threads=$(JOB_THREADS)

book: results
	@$(MAKE) --no-print-directory book-only PROFILE=$(PROFILE)

book-only: setup
	DMRI_PROFILE=$(PROFILE) DMRI_RESULTS=$(abspath $(RESULTS)) $(VENV)/bin/jupyter-book build book \
	    --path-output $(abspath $(BOOK_OUT)) --quiet
	@echo "Book ($(PROFILE) profile): file://$(abspath $(BOOK_OUT))/_build/html/index.html"

test:
	@bash tools/setup.sh --browser
	$(PY) -m pytest -n 2 --dist loadgroup tests

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" tests

clean-book:
	rm -rf book/_build
