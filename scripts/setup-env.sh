#!/usr/bin/env bash
# Set up everything q2-aam needs on Debian 12: QIIME 2 2022.11 from Debian's
# packages, and a venv (.venv) that sees them, with torch, accelerate,
# tensorboard and safetensors.  Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

APT_PACKAGES=(qiime q2-types q2cli q2templates q2-feature-table q2-sample-classifier
              q2-diversity-lib q2-metadata python3-venv python3-unifrac python3-pkg-resources
              python3-matplotlib chromium)  # chromium: the browser test of the visualizers
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">> Installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> Creating $VENV (Debian's Python, seeing Debian's QIIME 2)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# Exactly the files of requirements.lock (versions and sha256; made from requirements.txt
# and constraints.txt by scripts/lock.py), so that every machine gets the same libraries.
# Nothing else is resolved: Debian's numpy/pandas/scikit-bio/biom/click stay.
"${PIP[@]}" install --require-hashes --no-deps -r requirements.lock
# accelerate may pull a newer click into the venv; q2cli 2022.11 needs Debian's 8.1.3.
if "$VENV/bin/python" -c "import click, sys; sys.exit(0 if click.__file__.startswith('/usr/lib') else 1)"; then :; else
  "${PIP[@]}" uninstall -y click
fi
"${PIP[@]}" install --no-deps --no-build-isolation -e .

# `qiime` inside the venv: /usr/bin/qiime runs the system Python, which cannot see the venv.
ABS_VENV=$(cd "$VENV" && pwd)
cat > "$VENV/bin/qiime" <<WRAPPER
#!$ABS_VENV/bin/python
# q2cli running in this venv, so that it sees q2-aam and the venv's torch.
import os, sys
os.environ.setdefault("XDG_CONFIG_HOME", "$ABS_VENV/q2cli-config")
from q2cli.__main__ import qiime
sys.exit(qiime())
WRAPPER
chmod +x "$VENV/bin/qiime"
# q2cli caches plugin signatures and refreshes only on a version change.
# Its output is shown only when it fails (a plugin that cannot load says why here).
if ! refresh_log=$("$VENV/bin/qiime" dev refresh-cache 2>&1); then
  echo "$refresh_log" >&2
  echo "!! 'qiime dev refresh-cache' failed in $VENV: QIIME 2 could not load its plugins (above)." >&2
  exit 1
fi
"$VENV/bin/qiime" aam --help >/dev/null
echo ">> Environment ready: source $VENV/bin/activate"
