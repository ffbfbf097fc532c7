# lakescore: `make demo` runs the whole job on the embedded default; `make test` runs the tests.
# Both create or reuse .venv, install the project, and download the Delta jars once into .jars/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JARS := .jars
# `lakescore serve-sql`'s read-only parser and password check (jvm/src/), compiled against pyspark's jars.
SQL_SERVER_JAR := $(JARS)/sql-server/lakescore-sql-server.jar
# Spark's Python workers must run the venv's interpreter (else: "No module named 'pandas'").
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export RAY_TRAIN_V2_ENABLED := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-fast bench bench-scale gpu-check jars lock dist clean

setup: $(VENV)/.installed $(JARS)/.resolved $(SQL_SERVER_JAR)

$(VENV)/.installed: pyproject.toml
	@# A first install needs about 7 GiB (torch from PyPI is the CUDA build): say so before pip runs out.
	@test -x $(BIN)/python || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	sys.exit(None if free >= 8 else f"only {free:.1f} GiB free on this disk; the virtual environment needs about 7 GiB \
	(torch from PyPI is the CUDA build) and the tests about 1 GiB more. Free some space, then run make again.")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Downloads the jars jars/lock.toml names from Maven Central ($$LAKESCORE_MAVEN_REPO for a mirror) and
# checks each SHA-256: Python and the network only, no Maven.
$(JARS)/.resolved: jars/lock.toml $(VENV)/.installed
	$(BIN)/python -m lakescore.jars $(JARS)
	touch $@

jars: $(JARS)/.resolved

$(SQL_SERVER_JAR): $(wildcard jvm/src/lakescore/sqlserver/*.java) $(VENV)/.installed
	@command -v javac >/dev/null && command -v jar >/dev/null || { echo "javac not found: serve-sql's jar is \
	compiled from jvm/src/. Install a JDK 17 (Debian/Ubuntu: sudo apt-get install openjdk-17-jdk-headless; \
	macOS: brew install openjdk@17), then run make again." >&2; exit 1; }
	rm -rf $(@D)/classes && mkdir -p $(@D)/classes
	javac --release 17 -nowarn -d $(@D)/classes \
	  -cp "$$($(BIN)/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*"))')" \
	  $(filter %.java,$^)
	jar cf $@ -C $(@D)/classes .
	rm -rf $(@D)/classes

# Maintainer: after changing jars/pom.xml (a Delta bump), rewrite jars/lock.toml with Maven and commit it.
lock: $(VENV)/.installed
	$(BIN)/python -m lakescore.jars --lock

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.run

# Hours, not minutes: 10M, 30M and 100M rows generated, trained on and scored, in local[1], local[2]
# and on a loopback standalone cluster of 1 and 2 workers (docs/scaling.md). Not part of bench or test.
bench-scale: setup
	$(BIN)/python -m benchmarks.scale --report scale-report.md

# On a machine with a CUDA GPU: Ray Train with ray.use_gpu=true, and scoring on CUDA against the CPU.
gpu-check: $(VENV)/.installed
	$(BIN)/python -m benchmarks.gpu

# What spark-submit ships to a cluster: dist/lakescore-<version>.zip for --py-files (cluster_configs/README.md).
dist: $(VENV)/.installed
	$(BIN)/lakescore package --dest dist

clean:
	rm -rf build dist *.egg-info .pytest_cache
