#!/usr/bin/env bash
# Installed like a real tool: `make install` into a prefix (program, recipes, hooks, docs, man
# page, completions), `make uninstall` removing exactly what it wrote, a read-only prefix refused
# before anything is written; the Debian package built by CPack has the runtime libraries as
# Depends, installs with dpkg, validates and runs the demo from the installed files, and is
# removed cleanly. As root the package goes through dpkg -i / dpkg -r (as on the CI machine);
# otherwise it is unpacked into a scratch root with dpkg -x.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
BUILD=${QLORA_BUILD:?}
SRC=${QLORA_SRC:-$(pwd)}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
command -v dpkg-deb >/dev/null || { echo "FAIL dpkg-deb is missing (apt-get install dpkg)"; exit 1; }

# ---- make install / make uninstall ----
P=$T/prefix
make -s -C "$SRC" install BUILD="$BUILD" PREFIX="$P" >"$T/install.log" 2>&1
check "make install succeeds" test $? -eq 0
for f in bin/qlora-run share/qlora-run/recipes/demo.yaml share/qlora-run/hooks/demo_task.lua \
         share/doc/qlora-run/README.md share/doc/qlora-run/recipes.md share/man/man1/qlora-run.1 \
         share/bash-completion/completions/qlora-run share/zsh/vendor-completions/_qlora-run; do
  check "installed $f" test -s "$P/$f"
done
check "the installed program answers --version" "$P/bin/qlora-run" --version
check "the installed demo recipe validates" "$P/bin/qlora-run" validate "$P/share/qlora-run/recipes/demo.yaml"
check "the man page is roff for qlora-run(1)" grep -q '^\.TH QLORA\\-RUN 1' "$P/share/man/man1/qlora-run.1"
check "the man page lists every command" bash -c "for c in \$('$BIN' --help | awk '/^  [a-z-]+ /{print \$1}'); do grep -q \"qlora\\\\\\\\-run \$c\" '$P/share/man/man1/qlora-run.1' || { echo \"missing \$c\"; exit 1; }; done"
check "the bash completion parses" bash -n "$P/share/bash-completion/completions/qlora-run"
# the completion offers commands, options and the recipe's stage names
out=$(cd "$T" && bash -c "source '$P/share/bash-completion/completions/qlora-run'
  qlora-run() { '$P/bin/qlora-run' \"\$@\"; }
  COMP_WORDS=(qlora-run gen); COMP_CWORD=1; _qlora_run; echo \"\${COMPREPLY[*]}\"
  COMP_WORDS=(qlora-run export --for); COMP_CWORD=2; _qlora_run; echo \"\${COMPREPLY[*]}\"
  COMP_WORDS=(qlora-run '$SRC/recipes/demo.yaml' --only t); COMP_CWORD=3; _qlora_run; echo \"\${COMPREPLY[*]}\"")
check "completion: command names" grep -qx 'generate' <<<"$(sed -n 1p <<<"$out")"
check "completion: options of the command" grep -qx -- '--format' <<<"$(sed -n 2p <<<"$out")"
check "completion: stage names from the recipe" grep -qx 'train' <<<"$(sed -n 3p <<<"$out")"
touch "$P/bin/users-own-file"
make -s -C "$SRC" uninstall BUILD="$BUILD" >"$T/uninstall.log" 2>&1
check "make uninstall succeeds" test $? -eq 0
check "make uninstall removed the program and the recipes" test ! -e "$P/bin/qlora-run" -a ! -e "$P/share/qlora-run/recipes/demo.yaml"
check "make uninstall leaves a file it did not install" test -e "$P/bin/users-own-file"
# a read-only prefix: refused with a clear message before anything is written
mkdir -p "$T/ro"
if [ "$(id -u)" = 0 ]; then
  # root may write anywhere a mode allows: a read-only mount is what stops it
  mount -t tmpfs -o ro,size=1m tmpfs "$T/ro" || { bad "cannot mount a read-only tmpfs for the read-only prefix case"; }
  trap 'umount "$T/ro" 2>/dev/null; rm -rf "$T"' EXIT
else
  chmod 555 "$T/ro"
fi
RO=$T/ro/prefix
make -s -C "$SRC" install BUILD="$BUILD" PREFIX="$RO" >"$T/ro.log" 2>&1
rc=$?
check "make install into a read-only prefix fails" test $rc -ne 0
check "... saying what to do" grep -q "cannot write to .*run as root, or choose another PREFIX" "$T/ro.log"
check "... and writes nothing" test ! -e "$RO"

# ---- the Debian package ----
cpack --config "$BUILD/CPackConfig.cmake" -B "$T/pkg" >"$T/cpack.log" 2>&1
deb=$(ls "$T"/pkg/qlora-run_*.deb 2>/dev/null | head -1)
check "cpack builds the .deb" test -n "$deb"
[ -n "$deb" ] || { cat "$T/cpack.log"; checks_done; exit 1; }
dep=$(dpkg-deb -f "$deb" Depends)
for lib in libyaml-0-2 liblua5.4-0 libcurl4 libjansson4 libpcre2-8-0 libxxhash0 libssl3; do
  check "Depends names $lib" grep -q "$lib" <<<"$dep"
done
check "Depends names no CUDA library (CUDA is optional)" bash -c "! grep -qi 'cuda\|cublas\|nvidia' <<<'$dep'"
run_demo() { # $1: the installed program, $2: its share dir
  mkdir -p "$T/work" && (cd "$T/work" && QLORA_CACHE="$T/cache" "$1" "$2/recipes/demo.yaml" --set stages.train.max_steps=10 --quiet)
}
if [ "$(id -u)" = 0 ]; then
  if dpkg -s qlora-run >/dev/null 2>&1; then
    bad "a qlora-run package is already installed on this machine: not touching it (dpkg -r qlora-run first)"
  else
    dpkg -i "$deb" >"$T/dpkg.log" 2>&1
    check "dpkg -i installs the package" test $? -eq 0
    check "/usr/bin/qlora-run --version" /usr/bin/qlora-run --version
    check "validate /usr/share/qlora-run/recipes/demo.yaml" /usr/bin/qlora-run validate /usr/share/qlora-run/recipes/demo.yaml
    check "the demo runs from the installed files" run_demo /usr/bin/qlora-run /usr/share/qlora-run
    dpkg -r qlora-run >"$T/dpkg-r.log" 2>&1
    check "dpkg -r removes it" test $? -eq 0
    check "... with no file left behind" bash -c "test ! -e /usr/bin/qlora-run && test ! -e /usr/share/qlora-run && test ! -e /usr/share/man/man1/qlora-run.1"
  fi
else
  dpkg -x "$deb" "$T/root"
  check "the unpacked program answers --version" "$T/root/usr/bin/qlora-run" --version
  check "the unpacked demo recipe validates" "$T/root/usr/bin/qlora-run" validate "$T/root/usr/share/qlora-run/recipes/demo.yaml"
  check "the demo runs from the unpacked files" run_demo "$T/root/usr/bin/qlora-run" "$T/root/usr/share/qlora-run"
fi
# a CUDA build with the default architecture list (what `make` gives a user with nvcc installed; CI
# pins one architecture): the list is one definition, not one -D per architecture (configured only)
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  cmake -S "$SRC" -B "$T/cuda-default" -DQLORA_CUDA=ON -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
    >"$T/cuda-default.log" 2>&1
  check "a CUDA configure with the default architectures succeeds" test $? -eq 0
  check "... and passes them as one definition" grep -q 'QLORA_CUDA_ARCHS=\\"80,86,89,90\\"' "$T/cuda-default/CMakeFiles/qlora.dir/flags.make"
  check "... with no stray -D per architecture" bash -c "! grep -qE -e '-D(86|89)' '$T/cuda-default/CMakeFiles/qlora.dir/flags.make'"
fi
checks_done
