# dmri-anomaly: `make book` (main job) and `make test`. Both set themselves up.
SHELL := /bin/bash
PROFILE ?= quick
# A profile is a shipped name (configs/<name>.yaml) or a YAML file; a file
# reaches the workflow and the book as an absolute path (jobs and book pages
# run in other folders).
PROFILE_ARG = $(if $(filter %.yaml %.yml,$(PROFILE)),$(abspath $(PROFILE)),$(PROFILE))
CORES ?= 2
# Threads (and worker processes) per job; more on a many-core GPU machine.
JOB_THREADS ?= $(CORES)
VENV := .venv
PY := $(VENV)/bin/python
SNAKEMAKE_PROFILE ?= workflow/profiles/local
# BIDS=<root>: run the study on your own BIDS dataset instead of the simulated
# cohort (dmrilib.study; `dmri info <root>` shows what it will use). Its
# results and book go to results/bids-<dataset folder>/ unless RESULTS is set.
BIDS ?=
BIDS_NAME = $(notdir $(patsubst %/,%,$(BIDS)))
RESULTS ?= $(if $(BIDS),results/bids-$(BIDS_NAME),results)
BOOK_OUT ?= $(if $(BIDS),$(RESULTS)/book,book)
BOOK_TOC = $(if $(BIDS),--toc $(abspath book/_toc_bids.yml),)
export PYTHONHASHSEED := 0
# Workflow jobs call papermill, snakemake etc. from the project environment.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

SNAKEMAKE = $(VENV)/bin/snakemake --snakefile workflow/Snakefile --profile $(SNAKEMAKE_PROFILE) \
    --config profile=$(PROFILE_ARG) results=$(abspath $(RESULTS)) job_threads=$(JOB_THREADS) \
    $(if $(BIDS),bids=$(abspath $(BIDS)))

.PHONY: setup book results book-only ablation unlock test test-fast clean-book help
.PHONY: sweep

help:
	@echo "make book [PROFILE=quick|smoke|gpu|paper]  run the pipeline and build the book"
	@echo "make book BIDS=<root> [PROFILE=bids|quick]  the same on your own BIDS dataset (dmri info <root> first)"
	@echo "make test                                  run the test suite"
	@echo "make book-only PROFILE=...                 rebuild the book from existing results"
	@echo "make ablation [PROFILE=quick] [ROWS='1 8'] flip each paper-vs-code difference, measure, rebuild the book"
	@echo "make sweep [PROFILE=quick]                 difficulty sweep over realism levels L0-L4, rebuild the book"
	@echo "make setup                                 create .venv and install pinned packages"
	@echo "make unlock PROFILE=...                    clear the lock a killed workflow left"

setup:
	@bash tools/setup.sh

results: setup
	$(SNAKEMAKE) --cores $(CORES)

# A killed Snakemake (kill -9, a closed terminal) leaves .snakemake/locks;
# the next run then refuses to start until the lock is cleared.
unlock: setup
	$(SNAKEMAKE) --unlock

book: results
	@$(MAKE) --no-print-directory book-only PROFILE=$(PROFILE)

# --all: Sphinx rebuilds only pages whose source changed, so without it a page
# would keep the numbers of the results it was first built from.
book-only: setup
	DMRI_PROFILE=$(PROFILE_ARG) DMRI_RESULTS=$(abspath $(RESULTS)) $(VENV)/bin/jupyter-book build book --all \
	    --path-output $(abspath $(BOOK_OUT)) --quiet $(BOOK_TOC)
	@echo "Book ($(PROFILE) profile): file://$(abspath $(BOOK_OUT))/_build/html/index.html"

# Not part of `make book`: each measured row of dmrilib.fidelity flipped on the
# profile's best DAE and RecDiscNet (~10 training runs on quick), compared
# with the profile's own runs; then the book again, whose page
# "Paper, authors' code and this package" shows the table. Resumable.
ablation: results
	$(PY) -m dmrilib.ablation --profile $(PROFILE_ARG) --results $(abspath $(RESULTS)) \
	    --threads $(JOB_THREADS) $(if $(ROWS),--rows $(ROWS))
	@$(MAKE) --no-print-directory book-only PROFILE=$(PROFILE)

# Not part of `make book`: the fixed best DAE and RecDiscNet, the normative
# baseline and raw MD on cohorts of rising realism (dmrilib.sweep: 8
# conditions x 3 cohort seeds, under 60 min on quick on 2 cores). Resumable;
# needs no other results. Then the book again (whose page "Difficulty sweep"
# shows it) when the profile's own results exist, as every other page needs
# them. CONDITIONS='L0 L4' / SEEDS='0' run a part.
sweep: setup
	$(PY) -m dmrilib.sweep --profile $(PROFILE_ARG) --results $(abspath $(RESULTS)) \
	    --threads $(JOB_THREADS) $(if $(CONDITIONS),--conditions $(CONDITIONS)) $(if $(SEEDS),--seeds $(SEEDS))
	@if $(PY) -c "import sys; from pathlib import Path; from dmrilib.config import load_profile; \
	    sys.exit(not Path('$(abspath $(RESULTS))', load_profile('$(PROFILE_ARG)').name, 'figures', 'figures.json').is_file())"; \
	then $(MAKE) --no-print-directory book-only PROFILE=$(PROFILE); \
	else echo "Sweep done; run \`make book PROFILE=$(PROFILE)\` to see it in the book (page Difficulty sweep)."; fi

test:
	@bash tools/setup.sh --browser --slurm
	$(PY) -m pytest -n 2 --dist loadgroup tests

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" tests

clean-book:
	rm -rf book/_build
