# Two set-up commands (see README):
#   make run    install into .venv and start the service on embedded defaults
#   make test   install system tools + .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEB_PACKAGES := orthanc dcmtk dicom3tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-test system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[ml]"

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"

system-deps:
	@missing=""; \
	for tool in Orthanc:orthanc storescu:dcmtk dciodvfy:dicom3tools g++:g++ openssl:openssl stunnel:stunnel4 node:nodejs chromium:chromium chromedriver:chromium-driver rsyslogd:rsyslog; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${tool%%:*} ] || missing="$$missing $${tool##*:}"; \
	done; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || missing="$$missing rsyslog-openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: install
	$(BIN)/dicom-service serve

test: system-deps install-test
	$(BIN)/ruff check dicom_service tests benchmarks
	$(BIN)/pytest

bench: install-test
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/turnaround.py
	$(BIN)/python -m benchmarks.implants
	$(BIN)/python -m benchmarks.video --ten-second
	$(BIN)/python -m benchmarks.video_memory
	$(BIN)/python -m benchmarks.frame_preview
	$(BIN)/python -m benchmarks.implant_review
	$(BIN)/python -m benchmarks.audit_forwarding

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
