#!/usr/bin/env bash
# Install everything megatron_speech needs on a fresh Debian machine into ./.venv (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

# slurm-wlm + munge: the tests run the sbatch scripts on a local cluster.
# espeak-ng, flite, festival (+ voices), wordnet-base: voices and text of the synthetic speech corpus.
APT_PACKAGES=(g++ slurm-wlm munge espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              wordnet-base)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/cpu.txt
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c "import megatron_speech._C as c; print(c.build_info())"
