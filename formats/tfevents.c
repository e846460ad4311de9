/* tfevents.c: TensorBoard event files (see tfevents.h). The protobuf encoding is written by
 * hand: three messages, a few fields each (wire types: 0 varint, 1 fixed64, 2 length-delimited,
 * 5 fixed32; a key is field_number << 3 | wire_type). */
#define _GNU_SOURCE
#include "tfevents.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"

struct tfevents {
    FILE *f;
    char *path;
};

/* Event fields: wall_time 1 (double), step 2 (int64), file_version 3 (string), summary 5.
 * Summary: value 1 (repeated Value). Value: tag 1 (string), simple_value 2 (float). */
enum { EV_WALL_TIME = 1, EV_STEP = 2, EV_FILE_VERSION = 3, EV_SUMMARY = 5, SUM_VALUE = 1, VAL_TAG = 1, VAL_SIMPLE = 2 };
enum { WT_VARINT = 0, WT_FIXED64 = 1, WT_LEN = 2, WT_FIXED32 = 5 };

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1; /* Castagnoli, reflected */
        crc_table[i] = c;
    }
}

uint32_t tfevents_crc32c(const void *data, size_t n) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    const uint8_t *p = data;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

uint32_t tfevents_masked_crc(const void *data, size_t n) {
    uint32_t c = tfevents_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static size_t put_varint(uint8_t *b, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) b[n++] = (uint8_t)(v | 0x80), v >>= 7;
    b[n++] = (uint8_t)v;
    return n;
}

static size_t put_key(uint8_t *b, int field, int wt) { return put_varint(b, (uint64_t)(field << 3 | wt)); }

static size_t put_le(uint8_t *b, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * i));
    return (size_t)bytes;
}

static size_t put_double(uint8_t *b, int field, double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    size_t n = put_key(b, field, WT_FIXED64);
    return n + put_le(b + n, u, 8);
}

static size_t put_bytes(uint8_t *b, int field, const void *s, size_t len) {
    size_t n = put_key(b, field, WT_LEN);
    n += put_varint(b + n, len);
    memcpy(b + n, s, len);
    return n + len;
}

size_t tfevents_encode_scalar(uint8_t *buf, const char *tag, int64_t step, double wall_time, float value) {
    size_t tl = strlen(tag);
    uint8_t *val = malloc(tl + 32), *sum = malloc(tl + 48);
    /* Value {tag, simple_value} */
    size_t nv = put_bytes(val, VAL_TAG, tag, tl);
    uint32_t fu;
    memcpy(&fu, &value, 4);
    nv += put_key(val + nv, VAL_SIMPLE, WT_FIXED32);
    nv += put_le(val + nv, fu, 4);
    /* Summary {value} */
    size_t ns = put_bytes(sum, SUM_VALUE, val, nv);
    /* Event {wall_time, step, summary} */
    size_t n = put_double(buf, EV_WALL_TIME, wall_time);
    n += put_key(buf + n, EV_STEP, WT_VARINT);
    n += put_varint(buf + n, (uint64_t)step);
    n += put_bytes(buf + n, EV_SUMMARY, sum, ns);
    free(val);
    free(sum);
    return n;
}

static int write_record(tfevents *w, const uint8_t *data, size_t len) {
    uint8_t head[12];
    put_le(head, len, 8);
    put_le(head + 8, tfevents_masked_crc(head, 8), 4);
    uint8_t tail[4];
    put_le(tail, tfevents_masked_crc(data, len), 4);
    if (fwrite(head, 1, 12, w->f) != 12 || fwrite(data, 1, len, w->f) != len || fwrite(tail, 1, 4, w->f) != 4 || fflush(w->f))
        return err_errno(ERR_STAGE, "cannot write '%s'", w->path);
    return 0;
}

int tfevents_open(tfevents **out, const char *dir, double wall_time) {
    *out = NULL;
    int rc = fs_mkdir_p(dir);
    if (rc) return rc;
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    tfevents *w = calloc(1, sizeof *w);
    if (asprintf(&w->path, "%s/events.out.tfevents.%lld.%s.%d.qlora-run", dir, (long long)wall_time, host, (int)getpid()) < 0) {
        free(w);
        return err_set(ERR_STAGE, "out of memory");
    }
    w->f = fopen(w->path, "wb");
    if (!w->f) {
        rc = err_errno(ERR_STAGE, "cannot create '%s'", w->path);
        free(w->path);
        free(w);
        return rc;
    }
    uint8_t buf[64];
    size_t n = put_double(buf, EV_WALL_TIME, wall_time);
    n += put_bytes(buf + n, EV_FILE_VERSION, "brain.Event:2", 13);
    if ((rc = write_record(w, buf, n))) {
        tfevents_close(&w);
        return rc;
    }
    *out = w;
    return 0;
}

int tfevents_scalar(tfevents *w, const char *tag, int64_t step, double wall_time, float value) {
    size_t tl = strlen(tag);
    uint8_t *buf = malloc(tl + 96);
    size_t n = tfevents_encode_scalar(buf, tag, step, wall_time, value);
    int rc = write_record(w, buf, n);
    free(buf);
    return rc;
}

const char *tfevents_path(const tfevents *w) { return w->path; }

void tfevents_close(tfevents **pw) {
    tfevents *w = *pw;
    if (!w) return;
    if (w->f) fclose(w->f);
    free(w->path);
    free(w);
    *pw = NULL;
}
