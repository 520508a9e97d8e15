#!/usr/bin/env bash
# Run the storage contract tests and the sampler equivalence tests against the newest
# Optuna release, in a throwaway venv that sees everything else installed here.
# csearch pins the tested Optuna minor version and reaches into Optuna's internals
# (search/_optuna/); this catches an upgrade that breaks those before users do.
# Not part of the README's test command: it needs the network (PyPI) and changes nothing.
#
#   benchmarks/optuna_newest.sh            # newest release on PyPI
#   OPTUNA_SPEC="optuna==5.1.0" benchmarks/optuna_newest.sh
#
# Set CSEARCH_TEST_POSTGRES_URL (and CSEARCH_TEST_MYSQL_URL) to include those backends.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/optuna-newest"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
  "${OPTUNA_SPEC:-optuna}"
installed=$("$venv/bin/python" -c "import optuna; print(optuna.__version__)")
echo "optuna under test: $installed (csearch pins $(grep -o 'optuna~=[0-9.]*' pyproject.toml))"
PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/storage/test_storage_contract.py tests/unit/test_samplers.py "$@"
