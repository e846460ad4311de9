# npm_pkg.sh: sourced by the tests that check our files with an independent JavaScript reader.
#
#   npm_pkg DIR_VAR PACKAGE VERSION
#
# installs PACKAGE@VERSION (pinned) once under $QLORA_BUILD/npm/<name>-<version> and exports
# DIR_VAR as that directory (node resolves the package from DIR_VAR/node_modules). When node or
# npm is missing, or the npm registry cannot be reached, the test is skipped (exit 0) with the
# reason; any other install failure fails the test.
npm_pkg() {
    local var=$1 pkg=$2 ver=$3
    mkdir -p "$QLORA_BUILD/npm"
    local dir
    dir="$(cd "$QLORA_BUILD/npm" && pwd)/${pkg##*/}-$ver"
    export "$var=$dir"
    [ -f "$dir/node_modules/$pkg/package.json" ] && return 0
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
        echo "SKIP: node/npm are not installed"; exit 0
    fi
    mkdir -p "$dir"
    if ! timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$pkg@$ver"; then
        if ! timeout 30 npm ping >/dev/null 2>&1; then
            echo "SKIP: the npm registry is unreachable, cannot install $pkg@$ver"; exit 0
        fi
        echo "FAIL: npm install $pkg@$ver failed"; exit 1
    fi
}
