# `make demo` and `make test` are the two set-up commands of the README: each creates .venv
# from requirements.txt first if needed.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: venv demo test test-slow bench bench-gpu data priors clean-venv

$(VENV_STAMP): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
	touch $(VENV_STAMP)

venv: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) main.py

test: $(VENV_STAMP)
	$(PY) -m pytest -q

test-slow: $(VENV_STAMP)
	$(PY) -m pytest -q -m slow

bench: $(VENV_STAMP)
	$(PY) bench_ct.py
	$(PY) bench.py --device=cpu

# On a CUDA machine: every GPU measurement and check in one call, within BUDGET seconds (default 540;
# docs/performance.md, "GPU run"); QUICK=1 DEVICE=cpu for a dry run at toy sizes
bench-gpu:
	bash bench_gpu.sh

# Needs Debian packages (apt-get): invesalius-examples mricron-data insighttoolkit5-examples dicom3tools,
# the nilearn wheel (MNI152 template) and the dicompyler-core sdist (breast RT CT slice of
# ood_samples/CT/breast_rt), both read from the archive; nothing is installed
data: $(VENV_STAMP)
	$(PY) -m pip download --disable-pip-version-check -q --no-deps nilearn==0.14.1 -d data/sources
	$(PY) -m pip download --disable-pip-version-check -q --no-deps --no-binary=:all: dicompyler-core==0.5.6 -d data/sources
	$(PY) -m utils.prepare_data --out data --samples indist_samples --val val_samples --ood ood_samples

# demo_*_64 (legacy recipe) and broad_*_64 (augmented, broader data); one core each, one at a
# time; re-running a line resumes from its workdir. Step counts: models/priors/README.md
priors: $(VENV_STAMP)
	$(PY) train.py --config=configs/train_prior.py:ct --workdir=exp/train_ct --threads=1
	$(PY) train.py --config=configs/train_prior.py:mri --workdir=exp/train_mri --config.train.num_steps=1000 --threads=1
	$(PY) train.py --config=configs/train_prior.py:ct_broad --workdir=exp/train_broad_ct --threads=1
	$(PY) train.py --config=configs/train_prior.py:mri_broad --workdir=exp/train_broad_mri --config.train.ckpt_every=100 --threads=1

clean-venv:
	rm -rf .venv
