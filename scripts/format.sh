#!/usr/bin/env bash
# Formats the C++ sources (src, tests, bench, fuzz) with .clang-format, using the clang-format pinned in
# requirements.txt (a pip wheel, installed into build/pyenv by scripts/install-python-clients.sh), so
# every machine formats alike whatever clang-format its distribution ships.
# Usage: scripts/format.sh                 reformats every file that differs, in place
#        scripts/format.sh --check         lists the files that differ; exits 1 when there is one (CI)
#        scripts/format.sh [--check] FILE...  only those files
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then
  check=1
  shift
fi
venv=${DREAMLORA_PYENV:-build/pyenv}
want=$(sed -n 's/^clang-format==//p' requirements.txt)
cf="$venv/bin/clang-format"
if [ ! -x "$cf" ] || ! "$cf" --version | grep -q "version $want"; then
  bash scripts/install-python-clients.sh "$venv" >&2
fi
if ! "$cf" --version | grep -q "version $want"; then
  echo "format.sh: $cf is not clang-format $want (requirements.txt)" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'src/*.h' 'src/*.cpp' 'tests/*.h' 'tests/*.cpp' 'bench/*.h' 'bench/*.cpp' \
                                    'fuzz/*.h' 'fuzz/*.cpp')
fi
if [ $check -eq 0 ]; then
  "$cf" -i --style=file "${files[@]}"
  exit 0
fi
unformatted=0
for f in "${files[@]}"; do
  if ! "$cf" --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "$f"
    unformatted=$((unformatted + 1))
  fi
done
if [ $unformatted -gt 0 ]; then
  echo "format.sh: $unformatted of ${#files[@]} files are not formatted (scripts/format.sh fixes them)" >&2
  exit 1
fi
