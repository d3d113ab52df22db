# make demo: set everything up and run the whole experiment (report in runs/demo/report.md)
# make test: set everything up and run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist
MCU_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc libc6-dev

.PHONY: setup dataset mcu-tools demo test clean

setup: $(VENV)/.installed dataset mcu-tools

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

dataset:
	@test -d $(FASHION) || $(SUDO) apt-get install -y dataset-fashion-mnist \
	  || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

# the Cortex-M cross compiler, newlib and QEMU, for the engine's emulated-board runs (edgeprune.mcu); the host's C
# compiler builds the QEMU plugin that estimates cycles, and the engine for the host in the tests
mcu-tools:
	@command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null && command -v cc >/dev/null \
	  && test -f /usr/lib/arm-none-eabi/newlib/rdimon.specs \
	  || $(SUDO) apt-get install -y $(MCU_PACKAGES) \
	  || ($(SUDO) apt-get update && $(SUDO) apt-get install -y $(MCU_PACKAGES))

demo: setup
	$(VENV)/bin/edgeprune run --out runs/demo

test: setup
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
