# shadowbox-rig: the two entry points of the README, plus helpers.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: deps demo test lint lab-down bench clean

deps:
	@bash tools/bootstrap.sh

## Run the rig on the virtual lab and write reports.
demo: deps
	$(BIN)/rig demo

## Install what the tests need and run them (the lab tests boot real QEMU guests).
test: deps
	$(BIN)/pytest $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check rig tests suites benchmarks
	$(BIN)/mypy rig

lab-down:
	-$(BIN)/rig lab down

bench: deps
	$(BIN)/python -m benchmarks

clean: lab-down
	rm -rf .lab reports/* devices/lab/*.toml
