#!/bin/sh
# Prints the CPython interpreters ferroloop is tested on that this machine has,
# one path per line: for each version asked (default 3.11 3.12 3.13), `pythonX.Y`
# on PATH if it runs, else pyenv's newest X.Y if pyenv has one, else `python3`
# if that is X.Y. Versions not found are left out; with none found, `python3`.
# Usage: tools/find-pythons.sh [X.Y ...]
versions=${*:-3.11 3.12 3.13}
found=""
for v in $versions; do
    py=""
    if command -v "python$v" >/dev/null 2>&1 && "python$v" -c pass >/dev/null 2>&1; then
        py=$(command -v "python$v")
    elif command -v pyenv >/dev/null 2>&1; then
        release=$(pyenv versions --bare 2>/dev/null | grep -E "^$v\.[0-9]+$" | sort -t. -k3 -n | tail -1)
        if [ -n "$release" ]; then
            candidate="$(pyenv prefix "$release" 2>/dev/null)/bin/python$v"
            [ -x "$candidate" ] && py=$candidate
        fi
    fi
    if [ -z "$py" ] && command -v python3 >/dev/null 2>&1; then
        if [ "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$v" ]; then
            py=$(command -v python3)
        fi
    fi
    [ -n "$py" ] && found="$found $py"
done
[ -z "$found" ] && found=python3
for py in $found; do echo "$py"; done
