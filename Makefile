# Route B (no ROS install): everything lives in .venv; each target sets up what it needs.
# A second `make setup` with nothing changed does nothing.
PYTHON ?= python3.11
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SOURCES := package.xml CMakeLists.txt setup.py $(wildcard cmake/*) $(wildcard msg/*.msg) $(wildcard action/*.action) \
	$(shell find dispider_ros launch config -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.xml' \) 2>/dev/null)
# rclpy from the wheels needs to find the venv's ROS prefix at run time.
export AMENT_PREFIX_PATH := $(abspath $(VENV))$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))

.PHONY: setup test demo bench-quick bench soak clean

setup: $(VENV)/.installed

$(VENV)/.deps: requirements/ros.txt requirements/python.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -r requirements/ros.txt -r requirements/python.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	env -u PYTHONPATH $(PIP) install -q --no-deps .
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) -m dispider_ros.nodes.demo

# Results go to build/bench-results/; RECORD=1 rewrites the committed bench/results/.
bench-quick: setup
	$(PY) -m bench --quick $(if $(RECORD),--record)

bench: setup
	$(PY) -m bench $(if $(RECORD),--record)

soak: setup
	$(PY) -m bench.soak $(if $(RECORD),--record)

clean:
	rm -rf build *.egg-info $(VENV)
