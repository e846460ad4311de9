#!/usr/bin/env bash
# test_disk_full.sh: a full disk during quantize_nf4, train and export of a real recipe
# (tests/reliability/common.sh). The cache is a small tmpfs (needs root: CI runs as root) that
# holds the stages before the one under test, with a filler file leaving too little room for
# that stage's output. The run must fail with exit code 1 and a message that names the file it
# could not write and says the disk is full; nothing of that stage may be committed to the
# cache (no artifact directory for its key, no temp directory left); once the filler is gone,
# the next run succeeds and gives the same bytes as a run that never saw a full disk.
set -u
. "$(dirname "$0")/reliability/common.sh"
rel_recipe "$W/r.yaml" 40
cd "$W"
MNT=$W/mnt
mkdir -p "$MNT"
if ! out=$(mount -t tmpfs -o size=16m qlora-test-tmpfs "$MNT" 2>&1); then
    echo "FAIL cannot mount a tmpfs for the full-disk test (uid $(id -u)): $out"
    echo "     this test needs root (or CAP_SYS_ADMIN); CI runs it as root"
    exit 1
fi
rel_cleanup_extra='umount "$MNT" 2>/dev/null'

# the reference: every stage on an ordinary disk
"$BIN" r.yaml -q || { bad "the reference run failed"; checks_done; exit 1; }
cp -a cache full
ref_export=$(art full export)

# fill the tmpfs cache so that only $1 KiB stay free
fill_to() {
    rm -f "$MNT/filler"
    local avail=$(( $(stat -f -c '%a*%S' "$MNT") ))
    head -c $(( avail - $1 * 1024 )) /dev/zero > "$MNT/filler"
}

# full_disk STAGE FREE_KIB WHAT [--set ...]: the cache holds every stage before STAGE
full_disk() {
    local stage=$1 kib=$2 what=$3; shift 3
    rm -rf "${MNT:?}"/*
    mkdir -p "$MNT/cache"
    cp -a full/. "$MNT/cache/"
    # drop STAGE and what comes after it
    case $stage in
        quantize_nf4) rm -rf "$MNT"/cache/artifacts/{quantize_nf4,attach_lora,dataset,train,export} ;;
        train) rm -rf "$MNT"/cache/artifacts/{train,export} ;;
        export) rm -rf "$MNT"/cache/artifacts/export ;;
    esac
    fill_to "$kib"
    QLORA_CACHE=$MNT/cache "$BIN" r.yaml -q "$@" >out.txt 2>&1; rc=$?
    local tag="full disk in $stage ($what)"
    check "$tag: exit code 1 (got $rc)" test $rc -eq 1
    check "$tag: the message says the disk is full" grep -q "No space left on device" out.txt
    check "$tag: the message names the file" grep -Eq "cannot (write|create|sync|close|rename) '$MNT/cache/[^']+'" out.txt
    check "$tag: the message names the stage" grep -q "stage '[a-z0-9]*'" out.txt
    check "$tag: no $stage artifact committed" test -z "$(art "$MNT/cache" "$stage")"
    check "$tag: no temp directory left" test -z "$(ls -A "$MNT/cache/tmp")"
    [ $rc -eq 1 ] || cat out.txt
    echo "     message: $(grep -m1 error out.txt)"
    rm -f "$MNT/filler"
    QLORA_CACHE=$MNT/cache "$BIN" r.yaml -q "$@" >again.txt 2>&1; rc=$?
    check "$tag: with space again, the next run succeeds (rc $rc)" test $rc -eq 0
    check "$tag: and gives the reference bytes" cmp -s "$ref_export/adapter/adapter_model.safetensors" "$(art "$MNT/cache" export)/adapter/adapter_model.safetensors"
    check "$tag: the cache verifies" env QLORA_CACHE="$MNT/cache" "$BIN" cache verify >/dev/null
}

full_disk quantize_nf4 200 "the 4-bit weights do not fit"
full_disk train 200 "the first checkpoint does not fit"
full_disk train 420 "the final checkpoint fits, the adapter does not" --set stages.train.save_steps=0
full_disk export 500 "the merged model does not fit"
checks_done
