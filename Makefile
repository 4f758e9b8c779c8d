# The two commands a newcomer needs: `make test` and (once the codec lands) `make demo`.
# Every target builds its own virtual environment from pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# The exact torch pair of this workplace; pyproject.toml only declares the supported range.
CONSTRAINTS := constraints.txt
PIP_INSTALL = $(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)
export WANDB_MODE ?= offline

.PHONY: venv test demo bench lint clean sweep reproduce speech

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)
	@echo "Installed into $(VENV). To use \`codec\` and \`lightning\` directly: source $(VENV)/bin/activate"

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Short phase_1 and phase_b runs on the embedded data, then the reports' comparison, generated:
# compare.md, curves and listen.html (audio examples and spectrograms) in $(DEMO_ROOT)/compare/.
DEMO_STEPS ?= 300
DEMO_ROOT ?= runs/demo
DEMO_ARGS = --trainer.max_steps=$(DEMO_STEPS) --trainer.val_check_interval=100 --run.root=$(DEMO_ROOT) \
	--trainer.enable_model_summary=false
demo: $(STAMP)
	$(VENV)/bin/codec fit -c conf/phase_1.yaml $(DEMO_ARGS)
	$(VENV)/bin/codec fit -c conf/phase_b.yaml $(DEMO_ARGS)
	$(VENV)/bin/codec compare $(DEMO_ROOT)/phase_1 $(DEMO_ROOT)/phase_b --out $(DEMO_ROOT)/compare

# An Optuna ablation study from sweeps/$(ABLATION).yaml; re-running resumes it (storage under runs/sweeps/).
# TRIALS= and STEPS= shorten it, SEEDS= replicates each arm, JOBS= runs worker processes:
# make sweep ABLATION=normalization TRIALS=2 STEPS=100 SEEDS=3
ABLATION ?= normalization
SWEEP_ARGS = $(if $(TRIALS),--trials=$(TRIALS)) $(if $(STEPS),--steps=$(STEPS)) $(if $(SEEDS),--seeds=$(SEEDS)) \
	$(if $(JOBS),--jobs=$(JOBS))
sweep: $(STAMP)
	$(VENV)/bin/codec sweep sweeps/$(ABLATION).yaml $(SWEEP_ARGS)

# The reports' phases trained at real length, beside the reports' outcomes: runs/reproduce/reproduce.md.
# STEPS= (default 6000 on a GPU, 3000 on CPU), PHASES=phase_1,phase_b and JOBS= shorten or shape it.
reproduce: $(STAMP)
	$(VENV)/bin/codec reproduce $(if $(STEPS),--steps=$(STEPS)) $(if $(PHASES),--phases=$(PHASES)) $(if $(JOBS),--jobs=$(JOBS))

# A folder of speech to train on: espeak-ng in 8 voices + the alsa-utils recordings (scripts/make_speech.sh).
# make speech SPEECH_DIR=data/speech; then codec fit -c conf/phase_b.yaml --data.data_dir=data/speech
SPEECH_DIR ?= data/speech
speech:
	scripts/make_speech.sh $(SPEECH_DIR)

bench: $(BENCH_STAMP)
	$(PY) bench/quantizer.py
	$(PY) bench/train_step.py
	$(PY) bench/callbacks.py
	$(PY) bench/parallel_runs.py
	$(PY) bench/ddp_throughput.py

lint: $(STAMP)
	$(PY) -m ruff check codec tests bench scripts

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
