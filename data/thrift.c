/* thrift.c: the Thrift compact protocol reader (see thrift.h and docs/parquet.md).
 *
 * Integers are ULEB128 varints, i16/i32/i64 zigzag-encoded; a field header is one byte, the
 * high nibble the id delta (0: the id follows as a zigzag i16) and the low nibble the type; a
 * list header is one byte, the high nibble the count (15: a varint count follows) and the low
 * nibble the element type. */
#include "data/thrift.h"

#include <string.h>

void thrift_init(thrift_in *t, const void *p, size_t n) {
    t->p = p;
    t->end = t->p + n;
    t->depth = 0;
    t->bad = false;
    t->why = NULL;
}

void thrift_fail(thrift_in *t, const char *why) {
    if (!t->bad) t->why = why;
    t->bad = true;
    t->p = t->end;
}

static uint64_t varint(thrift_in *t) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (t->p >= t->end) {
            thrift_fail(t, "truncated varint");
            return 0;
        }
        uint8_t b = *t->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    thrift_fail(t, "varint longer than 10 bytes");
    return 0;
}

static int64_t zigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

bool thrift_struct_begin(thrift_in *t, thrift_struct *s) {
    s->last = 0;
    if (t->bad) return false;
    if (++t->depth > THRIFT_MAX_DEPTH) {
        thrift_fail(t, "structures nested too deep");
        return false;
    }
    return true;
}

void thrift_struct_end(thrift_in *t) { t->depth--; }

bool thrift_field(thrift_in *t, thrift_struct *s, int16_t *id, uint8_t *type) {
    if (t->bad) return false;
    if (t->p >= t->end) {
        thrift_fail(t, "truncated structure (no stop byte)");
        return false;
    }
    uint8_t b = *t->p++;
    if (b == 0) return false;
    *type = b & 0x0f;
    if (*type > THRIFT_STRUCT) {
        thrift_fail(t, "unknown field type");
        return false;
    }
    int delta = b >> 4;
    if (delta) *id = (int16_t)(s->last + delta);
    else *id = (int16_t)zigzag(varint(t));
    s->last = *id;
    return !t->bad;
}

int32_t thrift_i32(thrift_in *t) {
    int64_t v = zigzag(varint(t));
    if (v < INT32_MIN || v > INT32_MAX) {
        thrift_fail(t, "i32 out of range");
        return 0;
    }
    return (int32_t)v;
}

int64_t thrift_i64(thrift_in *t) { return zigzag(varint(t)); }

bool thrift_bool(thrift_in *t, uint8_t type) { return type == THRIFT_TRUE; }

bool thrift_binary(thrift_in *t, const uint8_t **p, size_t *n) {
    uint64_t len = varint(t);
    if (t->bad) return false;
    if (len > (uint64_t)(t->end - t->p)) {
        thrift_fail(t, "string longer than the bytes left");
        return false;
    }
    *p = t->p;
    *n = (size_t)len;
    t->p += len;
    return true;
}

bool thrift_list(thrift_in *t, uint8_t *elem, uint32_t *n) {
    if (t->p >= t->end) {
        thrift_fail(t, "truncated list header");
        return false;
    }
    uint8_t b = *t->p++;
    uint64_t count = b >> 4;
    if (count == 15) count = varint(t);
    *elem = b & 0x0f;
    if (t->bad) return false;
    if (count > (uint64_t)(t->end - t->p)) {
        thrift_fail(t, "list longer than the bytes left");
        return false;
    }
    *n = (uint32_t)count;
    return true;
}

void thrift_skip(thrift_in *t, uint8_t type) {
    if (t->bad) return;
    switch (type) {
    case THRIFT_TRUE:
    case THRIFT_FALSE: return; /* a field's bool is in its header */
    case THRIFT_BYTE:
        if (t->p >= t->end) thrift_fail(t, "truncated byte");
        else t->p++;
        return;
    case THRIFT_I16:
    case THRIFT_I32:
    case THRIFT_I64: varint(t); return;
    case THRIFT_DOUBLE:
        if (t->end - t->p < 8) thrift_fail(t, "truncated double");
        else t->p += 8;
        return;
    case THRIFT_BINARY: {
        const uint8_t *p;
        size_t n;
        thrift_binary(t, &p, &n);
        return;
    }
    case THRIFT_LIST:
    case THRIFT_SET: {
        uint8_t e;
        uint32_t n;
        if (!thrift_list(t, &e, &n)) return;
        if (++t->depth > THRIFT_MAX_DEPTH) {
            thrift_fail(t, "structures nested too deep");
            return;
        }
        /* bools inside a list take one byte each */
        for (uint32_t i = 0; i < n && !t->bad; i++) thrift_skip(t, e == THRIFT_TRUE || e == THRIFT_FALSE ? THRIFT_BYTE : e);
        t->depth--;
        return;
    }
    case THRIFT_MAP: {
        uint64_t n = varint(t);
        if (t->bad || n == 0) return;
        if (t->p >= t->end || n > (uint64_t)(t->end - t->p)) {
            thrift_fail(t, "map longer than the bytes left");
            return;
        }
        uint8_t kv = *t->p++, k = kv >> 4, v = kv & 0x0f;
        if (++t->depth > THRIFT_MAX_DEPTH) {
            thrift_fail(t, "structures nested too deep");
            return;
        }
        for (uint64_t i = 0; i < n && !t->bad; i++) {
            thrift_skip(t, k == THRIFT_TRUE || k == THRIFT_FALSE ? THRIFT_BYTE : k);
            thrift_skip(t, v == THRIFT_TRUE || v == THRIFT_FALSE ? THRIFT_BYTE : v);
        }
        t->depth--;
        return;
    }
    case THRIFT_STRUCT: {
        thrift_struct s;
        if (!thrift_struct_begin(t, &s)) return;
        int16_t id;
        uint8_t ft;
        while (thrift_field(t, &s, &id, &ft)) thrift_skip(t, ft);
        thrift_struct_end(t);
        return;
    }
    default: thrift_fail(t, "unknown value type"); return;
    }
}
