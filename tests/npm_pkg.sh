# npm_pkg.sh: sourced by the tests that check our files with an independent JavaScript reader.
#
#   npm_pkg DIR_VAR PACKAGE VERSION [EXTRA@VERSION...]
#
# installs PACKAGE@VERSION (pinned, with the pinned EXTRA packages beside it in the same
# node_modules, e.g. a platform binary package) once under $QLORA_BUILD/npm/<name>-<version> and exports
# DIR_VAR as that directory (node resolves the package from DIR_VAR/node_modules). The install
# goes to a temp directory renamed when complete, so a cut install is not taken for a cached one.
# When node or npm is missing, or the install fails (the npm registry unreachable, say), the test
# FAILS (exit 1) with the reason: a test that could not compare with its reference has not passed.
# `make deps` installs node and npm (Debian's nodejs 18 and npm 9 do).
npm_pkg() {
    local var=$1 pkg=$2 ver=$3
    shift 3
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "FAIL: node and npm are needed to check against $pkg@$ver (make deps, or apt-get install nodejs npm)"; exit 1
    fi
    mkdir -p "$QLORA_BUILD/npm"
    local dir
    dir="$(cd "$QLORA_BUILD/npm" && pwd)/${pkg##*/}-$ver"
    export "$var=$dir"
    [ -f "$dir/node_modules/$pkg/package.json" ] && return 0
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if ! timeout 300 npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "$pkg@$ver" "$@"; then
        rm -rf "$tmp"
        if ! timeout 30 npm ping >/dev/null 2>&1; then
            echo "FAIL: the npm registry is unreachable, cannot install $pkg@$ver (the reference this test compares with)"; exit 1
        fi
        echo "FAIL: npm install $pkg@$ver failed"; exit 1
    fi
    [ -f "$tmp/node_modules/$pkg/package.json" ] || { rm -rf "$tmp"; echo "FAIL: npm install $pkg@$ver left no $pkg/package.json"; exit 1; }
    rm -rf "$dir" && mv "$tmp" "$dir"
}
