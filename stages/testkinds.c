/* testkinds.c: stage kinds for the runner's own tests (enabled with QLORA_TEST_KINDS=1).
 *
 * test_echo writes out.txt: its `text`, then the out.txt of each input, so a test can see
 * which stages ran and what they read; it appends one line to $QLORA_TEST_LOG per run
 * (how a test counts executions across processes). test_sleep sleeps `ms` milliseconds in
 * small steps, polling for interruption, then writes its text (for kill and concurrency tests).
 * test_publish is test_echo held back by gates as an export is (for tests/test_gates.sh). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/fsutil.h"
#include "stage.h"

static int note_run(stage_ctx *c) {
    const char *log = getenv("QLORA_TEST_LOG");
    if (!log) return 0;
    FILE *f = fopen(log, "a");
    if (!f) return err_errno(ERR_STAGE, "cannot open '%s'", log);
    fprintf(f, "%s\n", c->name);
    fclose(f);
    return 0;
}

static int write_out(stage_ctx *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    fprintf(m, "%s:%s\n", c->name, stage_str(c, "text") ? stage_str(c, "text") : "");
    char *file = stage_path(c, "file");
    if (file) {
        char *t;
        if (fs_read_all(file, &t, NULL) == 0) { fprintf(m, "file:%s", t); free(t); }
        free(file);
    }
    for (int i = 0; i < c->n_inputs; i++) {
        char *p = fs_join(c->inputs[i].dir, "out.txt"), *t;
        if (fs_read_all(p, &t, NULL) == 0) { fputs(t, m); free(t); }
        free(p);
    }
    fclose(m);
    char *out = fs_join(c->out_dir, "out.txt");
    int rc = fs_write_atomic(out, buf, len);
    free(out);
    free(buf);
    if (!rc && stage_bool(c, "fail")) rc = err_set(ERR_STAGE, "test_echo asked to fail");
    stage_metric(c, "bytes", (double)len);
    return rc;
}

static int echo_run(stage_ctx *c) {
    int rc = note_run(c);
    return rc ? rc : write_out(c);
}

static int sleep_run(stage_ctx *c) {
    int rc = note_run(c);
    if (rc) return rc;
    int64_t ms = stage_int(c, "ms");
    for (int64_t t = 0; t < ms; t += 10) {
        if (stage_interrupted(c)) return err_set(ERR_INTERRUPTED, "interrupted");
        stage_progress(c, "sleeping", (double)t, (double)ms, "ms");
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    return write_out(c);
}

static const param_spec echo_params[] = {
    {"text", PARAM_STRING, "", 1, 0, NULL, "text to write", 0},
    {"input", PARAM_REF, NULL, 1, 0, "test_echo|test_sleep|test_publish", "an input stage", 0},
    {"input2", PARAM_REF, NULL, 1, 0, "test_echo|test_sleep", "a second input stage", 0},
    {"file", PARAM_FILE, NULL, 1, 0, NULL, "a file whose content is copied", 0},
    {"files", PARAM_FILES, NULL, 1, 0, NULL, "files or globs (their content enters the key)", 0},
    {"source", PARAM_STRING, "none", 1, 0, NULL, "a keyword, or a file or directory whose content enters the key", PARAM_PATH_OR_WORD},
    {"count", PARAM_INT, "1", 0, 100, NULL, "a bounded integer", 0},
    {"ratio", PARAM_FLOAT, "0.5", 0, 1, NULL, "a bounded number", 0},
    {"mode", PARAM_ENUM, "fast", 1, 0, "fast|slow|careful", "an enum", 0},
    {"tags", PARAM_LIST, "[]", 1, 0, NULL, "a list", 0},
    {"flag", PARAM_BOOL, "false", 1, 0, NULL, "a bool", 0},
    {"fail", PARAM_BOOL, "false", 1, 0, NULL, "fail after writing", 0},
    {"log_every", PARAM_INT, "10", 1, 1000, NULL, "not part of the key", PARAM_NOKEY},
    {"seed", PARAM_INT, NULL, 0, 4294967295.0, NULL, "defaults to the recipe seed", 0},
    {0}};

static const param_spec sleep_params[] = {
    {"text", PARAM_STRING, "", 1, 0, NULL, "text to write", 0},
    {"ms", PARAM_INT, "100", 0, 600000, NULL, "milliseconds to sleep", PARAM_REQUIRED},
    {"input", PARAM_REF, NULL, 1, 0, "test_echo", "an input stage", 0},
    {"input2", PARAM_REF, NULL, 1, 0, "test_echo|test_sleep", "a second input stage", 0},
    {"file", PARAM_FILE, NULL, 1, 0, NULL, "a file whose content is copied", 0},
    {"fail", PARAM_BOOL, "false", 1, 0, NULL, "fail after writing", 0},
    {0}};

static int echo_check(const json_t *p) {
    if (json_is_true(json_object_get(p, "flag")) && !strcmp(json_string_value(json_object_get(p, "mode")), "slow"))
        return err_set(ERR_RECIPE, "'flag: true' cannot go with 'mode: slow'");
    return 0;
}

static const metric_spec echo_metrics[] = {{"bytes", METRIC_HIGHER, "bytes written to out.txt"}, {0}};

const stage_kind stage_kind_test_echo = {
    .name = "test_echo",
    .version = 1,
    .doc = "test only: writes its text and its inputs' texts",
    .params = echo_params,
    .check = echo_check,
    .run = echo_run,
    .metrics = echo_metrics,
};
const stage_kind stage_kind_test_publish = {
    .name = "test_publish",
    .version = 1,
    .doc = "test only: an echo held back by gates, as export is",
    .params = echo_params,
    .check = echo_check,
    .run = echo_run,
    .metrics = echo_metrics,
    .flags = STAGE_KIND_PUBLISHES,
};
const stage_kind stage_kind_test_sleep = {
    .name = "test_sleep",
    .version = 1,
    .doc = "test only: sleeps, then writes its text",
    .params = sleep_params,
    .run = sleep_run,
    .metrics = echo_metrics,
};
