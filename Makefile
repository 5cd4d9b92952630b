# shadowbox-rig: the two entry points of the README, plus helpers.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= --durations=25

.PHONY: deps demo test lint lab-down bench clean

deps:
	@bash tools/bootstrap.sh

## Run the rig on the virtual lab and write reports.
demo: deps
	$(BIN)/rig demo

## Install what the tests need and run them (the lab tests boot real QEMU guests): lab tests in one
## process, the others in parallel beside it (tools/run-tests.sh says why).
test: deps
	@bash tools/run-tests.sh $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check rig tests suites benchmarks
	$(BIN)/mypy rig

lab-down:
	-$(BIN)/rig lab down

## All benchmarks into BENCHMARKS.md (about 45 min: 20 hangs, a 20-minute NMI soak on 2 devices,
## 1/2/4-device matrix). Shorter: make bench BENCH_ARGS="--only hang --hangs 5".
BENCH_ARGS ?=
bench: deps
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean: lab-down
	rm -rf .lab reports/* devices/lab/*.toml
