# q2-aam: `make demo` sets everything up and runs the demo; `make test` runs the tests.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output
STAMP := $(VENV)/.q2-aam-installed

.PHONY: install demo test test-all bench bench-speed clean-demo

install: $(STAMP)

$(STAMP): scripts/setup-env.sh requirements.lock setup.py q2_aam/plugin_setup.py
	VENV=$(VENV) bash scripts/setup-env.sh
	touch $@

demo: install
	VENV=$(VENV) DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests q2_aam/tests

# Everything, including slow real-data tests and benchmarks' checks.
test-all: install
	$(BIN)/python -m pytest -q tests q2_aam/tests

# The accuracy benchmarks (not part of `make test`): the signal suite, real data, new ASVs
# (re-denoised and retrimmed test tables), transfer between studies and every fusion mode,
# q2-aam beside classical models on the same splits. Rows already in
# benchmarks/results/*.tsv are kept (delete a file to rerun it); about 9 h on 2 CPU cores.
bench: install
	cd benchmarks && ../$(BIN)/python suite.py && ../$(BIN)/python accuracy.py && \
		../$(BIN)/python new_asvs.py && ../$(BIN)/python transfer.py && \
		../$(BIN)/python fusion.py --dataset ecam && ../$(BIN)/python fusion.py --dataset karelia

# The speed benchmarks (not part of `make test`): samples/s, peak memory and FLOP/s per
# phase at issue 13's size (results/speed.md, about 10 min), one pretraining epoch on
# synthetic studies of 10k-100k samples (results/scale.md, about 5 min), cost per sample
# at 64-4096 ASVs per sample (results/token-limits.md, about 6 min), the readout at
# karelia's size against earlier commits (results/readout-speed.md, about 13 min), and
# each step of train (1k-20k samples x 3k-30k ASVs, with earlier commits' readouts side by
# side) and predict (up to 100k samples) on synthetic studies (results/scale.md, second
# section; about 15 min for this code, up to 30 min a row for the earlier ones, rows that
# exceed it are marked), 2 cores.
bench-speed: install
	cd benchmarks && ../$(BIN)/python speed.py && ../$(BIN)/python scale.py && \
		../$(BIN)/python token_limits.py && ../$(BIN)/python readout_speed.py && \
		../$(BIN)/python train_scale.py

clean-demo:
	rm -rf $(DEMO_DIR)
