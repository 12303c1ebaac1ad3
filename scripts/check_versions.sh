#!/usr/bin/env bash
# Run the whole test suite on the oldest and on the newest dependency versions pyproject.toml allows, each in a venv
# of its own (.venv-oldest, .venv-newest), and print the versions and the result of each. Raising a bound in
# pyproject.toml means running this first; the versions it passed on are listed in README.md ("Tested versions").
#   bash scripts/check_versions.sh            # both
#   bash scripts/check_versions.sh newest     # one of them; extra arguments after `--` go to pytest
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#names[@]} -eq 0 ] && names=(oldest newest)
mkdir -p .version-check
status=0
for name in "${names[@]}"; do
    case "$name" in
        oldest) constraints=scripts/oldest-constraints.txt ;;
        newest) constraints=.version-check/torch-only.txt; echo "torch==2.13.0" > "$constraints" ;;
        *) echo "check_versions.sh: unknown set '$name': use oldest and/or newest" >&2; exit 2 ;;
    esac
    venv=".venv-$name"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" "torch==2.13.0"
    # --upgrade-strategy eager: an existing venv moves to the newest versions the bounds (and constraints) allow
    "${pip[@]}" --upgrade --upgrade-strategy eager -c "$constraints" -e ".[dev]"
    versions=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(torch|transformers|peft|accelerate|optimum|lm.eval|huggingface.hub|datasets)==' | tr '\n' ' ')
    log=".version-check/$name.log"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" > "$log" 2>&1
    code=$?
    [ $code -ne 0 ] && status=1
    echo "$name: $versions"
    echo "$name: $(tail -n 1 "$log")   (exit $code, log: $log)"
done
exit $status
