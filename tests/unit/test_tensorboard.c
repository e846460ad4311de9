/* test_tensorboard.c: TensorBoard event files (formats/tfevents.c) read back by an independent
 * decoder: the TFRecord framing with masked CRC-32C (checked against the RFC 3720 test vectors
 * and a bitwise CRC written here), and the Event / Summary / Value protobuf fields TensorBoard
 * reads (file_version first, then wall_time, step, tag, simple_value). The GPU machine's check
 * with TensorBoard's own reader is in docs/tensorboard.md. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/tfevents.h"
#include "test.h"

/* bit by bit, the polynomial written out: nothing shared with the table in tfevents.c */
static uint32_t crc_bitwise(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t mask(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

TEST(crc32c_vectors) {
    CHECK_EQ_INT(tfevents_crc32c("123456789", 9), 0xE3069283u);
    uint8_t z[32] = {0}, f[32], inc[32];
    memset(f, 0xff, 32);
    for (int i = 0; i < 32; i++) inc[i] = (uint8_t)i;
    CHECK_EQ_INT(tfevents_crc32c(z, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
    CHECK_EQ_INT(tfevents_crc32c(f, 32), 0x62A8AB43u);
    CHECK_EQ_INT(tfevents_crc32c(inc, 32), 0x46DD794Eu);
    uint8_t buf[300];
    for (int i = 0; i < 300; i++) buf[i] = (uint8_t)(i * 7 + 3);
    for (size_t n = 0; n <= 300; n += 37) CHECK_EQ_INT(tfevents_crc32c(buf, n), crc_bitwise(buf, n));
    CHECK_EQ_INT(tfevents_masked_crc(buf, 100), mask(crc_bitwise(buf, 100)));
}

/* ---- a reader of what TensorBoard reads ---- */

typedef struct pb {
    const uint8_t *p, *end;
} pb;

static uint64_t varint(pb *b) {
    uint64_t v = 0;
    for (int s = 0; b->p < b->end && s < 64; s += 7) {
        uint8_t x = *b->p++;
        v |= (uint64_t)(x & 0x7f) << s;
        if (!(x & 0x80)) break;
    }
    return v;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

typedef struct event {
    double wall;
    int64_t step;
    char version[32], tag[64];
    float value;
    int has_value;
} event;

static void decode_value(pb b, event *e) {
    while (b.p < b.end) {
        uint64_t key = varint(&b);
        if (key == (1 << 3 | 2)) {
            uint64_t n = varint(&b);
            snprintf(e->tag, sizeof e->tag, "%.*s", (int)n, (const char *)b.p);
            b.p += n;
        } else if (key == (2 << 3 | 5)) {
            uint32_t u = (uint32_t)le(b.p, 4);
            memcpy(&e->value, &u, 4);
            e->has_value = 1;
            b.p += 4;
        } else {
            b.p = b.end;
        }
    }
}

static int decode_event(const uint8_t *p, size_t n, event *e) {
    memset(e, 0, sizeof *e);
    pb b = {p, p + n};
    while (b.p < b.end) {
        uint64_t key = varint(&b);
        if (key == (1 << 3 | 1)) {
            uint64_t u = le(b.p, 8);
            memcpy(&e->wall, &u, 8);
            b.p += 8;
        } else if (key == (2 << 3 | 0)) {
            e->step = (int64_t)varint(&b);
        } else if (key == (3 << 3 | 2)) {
            uint64_t l = varint(&b);
            snprintf(e->version, sizeof e->version, "%.*s", (int)l, (const char *)b.p);
            b.p += l;
        } else if (key == (5 << 3 | 2)) { /* Summary { repeated Value value = 1 } */
            uint64_t l = varint(&b);
            pb s = {b.p, b.p + l};
            if (varint(&s) != (1 << 3 | 2)) return -1;
            uint64_t vl = varint(&s);
            decode_value((pb){s.p, s.p + vl}, e);
            b.p += l;
        } else {
            return -1;
        }
    }
    return 0;
}

TEST(file_round_trip) {
    char dir[] = "/tmp/qlora-tb-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *sub = fs_join(dir, "tb");
    tfevents *w = NULL;
    CHECK_EQ_INT(tfevents_open(&w, sub, 1733300000.25), 0);
    CHECK_EQ_INT(tfevents_scalar(w, "train/loss", 1, 1733300001.5, 2.5f), 0);
    CHECK_EQ_INT(tfevents_scalar(w, "train/loss", 300, 1733300002.5, 0.125f), 0);
    char longtag[200];
    memset(longtag, 'x', sizeof longtag - 1);
    longtag[sizeof longtag - 1] = 0; /* a tag longer than 127 bytes: a two-byte length varint */
    CHECK_EQ_INT(tfevents_scalar(w, longtag, 1LL << 40, 1733300003.0, -1.0f), 0);
    char *path = strdup(tfevents_path(w));
    tfevents_close(&w);
    CHECK(strstr(path, "/events.out.tfevents.1733300000.") != NULL);
    char *data;
    size_t len;
    CHECK_EQ_INT(fs_read_all(path, &data, &len), 0);
    event ev[4];
    int n = 0;
    size_t off = 0;
    while (off + 12 <= len && n < 4) {
        const uint8_t *p = (const uint8_t *)data + off;
        uint64_t l = le(p, 8);
        CHECK_EQ_INT(le(p + 8, 4), mask(crc_bitwise(p, 8)));
        CHECK(off + 12 + l + 4 <= len);
        CHECK_EQ_INT(le(p + 12 + l, 4), mask(crc_bitwise(p + 12, l)));
        CHECK_EQ_INT(decode_event(p + 12, l, &ev[n]), 0);
        n++;
        off += 12 + l + 4;
    }
    CHECK_EQ_INT(n, 4);
    CHECK_EQ_INT(off, len);
    CHECK_EQ_STR(ev[0].version, "brain.Event:2");
    CHECK_NEAR(ev[0].wall, 1733300000.25, 1e-9);
    CHECK_EQ_STR(ev[1].tag, "train/loss");
    CHECK_EQ_INT(ev[1].step, 1);
    CHECK(ev[1].has_value && ev[1].value == 2.5f);
    CHECK_NEAR(ev[1].wall, 1733300001.5, 1e-9);
    CHECK_EQ_INT(ev[2].step, 300);
    CHECK(ev[2].value == 0.125f);
    CHECK_EQ_INT(strlen(ev[3].tag), 63); /* the reader's buffer: the length prefix was read right */
    CHECK_EQ_INT(ev[3].step, 1LL << 40);
    CHECK(ev[3].value == -1.0f);
    free(data);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
    free(path);
    free(sub);
}

int main(void) {
    RUN(crc32c_vectors);
    RUN(file_round_trip);
    return test_summary();
}
