# Two commands a reader needs (README.md):
#   make book   set up .venv, then build the HTML book, executing every chapter (offline: the
#               micro preset, a CLIP pretrained by this project whose weights ship in the package)
#   make test   set up .venv, then run the unit tests and the notebooks (pytest + nbval)
#   make book-check   after make book: open every page in headless Chromium (network blocked) and
#                     fail on raw TeX, broken links, warnings in outputs, code wider than the column
#   make gpu-check    on a machine with a CUDA GPU (< 8 min): throughputs, the CLI, every chapter
#                     with its wall time and clean outputs, the test suite -> _build/gpu_check/
# Everything runs offline: HF_HUB_OFFLINE stops open_clip from trying to reach the hub, and the
# preset follows promptmoe.default_preset() (offline CPU: micro) unless PROMPTMOE_PRESET is set.
# Unit tests run on the random `tiny` preset (tests/conftest.py); the notebooks run as readers
# see them, so `test` runs them in a second pytest process that does not inherit that setting.

VENV   ?= .venv
PY     := $(VENV)/bin/python
# On this machine kind the matching CPU-runnable torch/torchvision pair is installed first;
# requirements.txt itself only asks for ranges so Colab keeps its own torch.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
QUICK  := HF_HUB_OFFLINE=1

.PHONY: setup test unit notebooks book book-check gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $@

unit: setup
	$(QUICK) $(PY) -m pytest tests

notebooks: setup
	$(QUICK) $(PY) -m pytest --nbval-lax book/

test: setup
	$(QUICK) $(PY) -m pytest tests
	$(QUICK) $(PY) -m pytest --nbval-lax book/

book: setup
	$(QUICK) $(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going

book-check: setup
	$(PY) tools/check_pages.py _build/html --widths 1280 1920

gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out _build/gpu_check

clean:
	rm -rf _build .pytest_cache
