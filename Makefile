# Paper-reproduction monorepo. `make help` lists the targets.
# Every target runs through uv; nothing here downloads datasets or weights.

SHELL := /bin/bash
UV ?= uv
PACKAGES := $(sort $(notdir $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml))))

.PHONY: help setup lock readme test test-contracts bench reproduce smoke $(addprefix test-,$(PACKAGES)) \
        $(addprefix smoke-,$(PACKAGES)) $(addprefix reproduce-,$(PACKAGES)) $(addprefix bench-,$(PACKAGES))

help: ## list the targets
	@echo "Packages: $(PACKAGES)"
	@echo
	@grep -E '^[a-zA-Z_%()$$ ,-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^\$$\(addprefix ([a-z]+)-.*\): [a-z]+-%:/\1-<pkg>:/' | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-20s %s\n", $$1, $$2}'

setup: ## install every package and the dev tools from the lock (uv sync --all-packages --locked)
	$(UV) sync --all-packages --locked

lock: ## refresh uv.lock after editing a pyproject.toml
	$(UV) lock

readme: ## refresh the generated tables in README.md and packages/*/README.md from results/ and benchmarks/
	$(UV) run --frozen python -m shared.report

test: ## run every suite: each paper package in its own exact env, then shared + cross-package contracts
	@set -e; for p in $(PACKAGES); do $(MAKE) --no-print-directory test-$$p; done
	$(MAKE) --no-print-directory test-contracts

test-contracts: ## shared's tests and the cross-package contracts (tests/), all packages installed
	$(UV) sync --all-packages --locked --quiet
	$(UV) run --frozen pytest tests

$(addprefix test-,$(PACKAGES)): test-%: ## one package's suite, in an env holding only what it declares (undeclared deps fail)
	$(UV) run --locked --exact --package $* pytest packages/$*

$(addprefix smoke-,$(PACKAGES)): smoke-%: ## run a package's embedded default job (no downloads, a few CPU minutes)
	$(UV) run --locked --package $* $*-train

$(addprefix reproduce-,$(PACKAGES)): reproduce-%: ## a package's small-scale claim checks; writes results/<pkg>/
	$(UV) run --locked --package $* $*-reproduce

reproduce: ## every package's claim checks
	@set -e; for p in $(PACKAGES); do $(MAKE) --no-print-directory reproduce-$$p; done

$(addprefix bench-,$(PACKAGES)): bench-%: ## a package's benchmarks; writes benchmarks/<pkg>/results.md
	$(UV) run --locked --package $* python benchmarks/$*/run.py

bench: ## every package's benchmarks
	@set -e; for p in $(PACKAGES); do if [ -f benchmarks/$$p/run.py ]; then $(MAKE) --no-print-directory bench-$$p; fi; done
