/* fuzz_common.h: helpers for the libFuzzer targets: most of our readers take a path, so an
 * input is written to a per-process temporary file first. */
#ifndef TESTS_FUZZ_COMMON_H
#define TESTS_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"

static char fuzz_dir[64];

static const char *fuzz_tmpdir(void) {
    if (!fuzz_dir[0]) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/qlora-fuzz-%d", (int)getpid());
        char cmd[128];
        snprintf(cmd, sizeof cmd, "mkdir -p %s", fuzz_dir);
        if (system(cmd)) abort();
        log_set_quiet(1);
    }
    return fuzz_dir;
}

/* write data to <tmpdir>/<name>; returns the path (static buffer) */
static const char *fuzz_write(const char *name, const uint8_t *data, size_t size) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

#endif
