#!/usr/bin/env bash
# Engine tests (tests/test_engines.py) start a one-node SLURM cluster and a Ray head on 127.0.0.1.
# Install what they need where it is missing: Debian's slurm-wlm and munge via apt, and nslab's
# optional extras slurm (submitit) and ray into .venv (or $PYTHON), pinned by constraints.txt.
# Safe to run again: it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then
  echo "engines-setup: slurm present: $(/usr/sbin/slurmctld -V 2>/dev/null || slurmctld -V)"
elif [ "$(id -u)" -ne 0 ]; then  # the test cluster needs root anyway (slurmd runs jobs as their user)
  echo "engines-setup: slurm missing and not root: SLURM tests will skip" >&2
else
  echo "engines-setup: installing Debian's slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
fi

PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "engines-setup: $PY not found: run 'make setup' first" >&2
  exit 1
fi
if "$PY" -c "import submitit, ray" >/dev/null 2>&1; then
  echo "engines-setup: submitit and ray present"
else
  echo "engines-setup: installing nslab's slurm and ray extras"
  "$PY" -m pip install --quiet -c constraints.txt -e '.[slurm,ray]'
fi
