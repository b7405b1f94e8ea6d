#!/bin/sh
# Finds a CPython interpreter for each version asked for (e.g. `tools/find-pythons.sh 3.11 3.12`)
# and prints their real paths, one a line, in the order asked. Used by `make wheels`.
#
# For version X.Y it tries, in turn: `pythonX.Y` and `python3` on PATH (if they run and are
# X.Y), then pyenv's newest installed X.Y.* (through `pyenv prefix`, so pyenv shims need not be
# global). The path printed is the interpreter's own `sys.executable`, not a shim, so it
# still works with a minimal PATH. A version not found is named on stderr; the exit status is
# 0 if any was found, 1 if none was.
set -u

# Prints the interpreter's real path if $1 runs and is version $2; fails otherwise.
is_version() {
    "$1" -c 'import sys
if "%d.%d" % sys.version_info[:2] != sys.argv[1]: sys.exit(1)
print(sys.executable)' "$2" 2>/dev/null
}

found_any=1
missing=""
for v in "$@"; do
    path=""
    for cand in "python$v" python3; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if path=$(is_version "$cand" "$v") && [ -n "$path" ]; then
            break
        fi
        path=""
    done
    if [ -z "$path" ] && command -v pyenv >/dev/null 2>&1; then
        # Newest installed X.Y.* first (skips X.Y-dev, X.Yt and the like).
        pattern="^$(echo "$v" | sed 's/\./\\./g')\.[0-9]+\$"
        for pv in $(pyenv versions --bare 2>/dev/null | grep -E "$pattern" | sort -t. -k3,3nr); do
            prefix=$(pyenv prefix "$pv" 2>/dev/null) || continue
            if path=$(is_version "$prefix/bin/python$v" "$v") && [ -n "$path" ]; then
                break
            fi
            path=""
        done
    fi
    if [ -n "$path" ]; then
        echo "$path"
        found_any=0
    else
        missing="$missing $v"
    fi
done

if [ -n "$missing" ]; then
    echo "find-pythons: no interpreter found for Python$missing" >&2
fi
exit $found_any
