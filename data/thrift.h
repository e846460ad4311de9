/* thrift.h: a reader for the Thrift compact protocol, the encoding of Parquet's file footer and
 * page headers (docs/parquet.md gives the wire format).
 *
 * The reader walks a byte range in place and never allocates. Every read checks the bounds;
 * the first malformed byte sets t->bad (and t->why) and every later read returns zero, so a
 * struct parser can read on and check once at the end. Nesting deeper than THRIFT_MAX_DEPTH
 * (a corrupt or hostile footer) is malformed too.
 *
 * Struct parsing: loop `while (thrift_field(t, &st, &id, &type))` and switch on id; a field the
 * parser does not know, or one whose wire type is not the expected one, goes to thrift_skip. */
#ifndef DATA_THRIFT_H
#define DATA_THRIFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define THRIFT_MAX_DEPTH 32

/* compact-protocol wire types */
enum thrift_type {
    THRIFT_STOP = 0,
    THRIFT_TRUE = 1, /* a bool field's value is its type */
    THRIFT_FALSE = 2,
    THRIFT_BYTE = 3,
    THRIFT_I16 = 4,
    THRIFT_I32 = 5,
    THRIFT_I64 = 6,
    THRIFT_DOUBLE = 7,
    THRIFT_BINARY = 8,
    THRIFT_LIST = 9,
    THRIFT_SET = 10,
    THRIFT_MAP = 11,
    THRIFT_STRUCT = 12
};

typedef struct thrift_in {
    const uint8_t *p, *end;
    int depth;
    bool bad;
    const char *why; /* what was malformed, set with bad */
} thrift_in;

/* where one struct's field ids are counted from (field ids are deltas) */
typedef struct thrift_struct {
    int16_t last;
} thrift_struct;

void thrift_init(thrift_in *t, const void *p, size_t n);
/* Enter a struct: false when nested too deep. Pair with thrift_struct_end. */
bool thrift_struct_begin(thrift_in *t, thrift_struct *s);
void thrift_struct_end(thrift_in *t);
/* The next field of the struct: false at its STOP byte (or on malformed input). */
bool thrift_field(thrift_in *t, thrift_struct *s, int16_t *id, uint8_t *type);
int32_t thrift_i32(thrift_in *t);
int64_t thrift_i64(thrift_in *t);
/* a field's bool: the value is in its wire type */
bool thrift_bool(thrift_in *t, uint8_t type);
/* binary or string: a view into the input */
bool thrift_binary(thrift_in *t, const uint8_t **p, size_t *n);
/* A list or set header: element type and count (the count is checked against the bytes left,
 * each element taking at least one byte, so a corrupt count cannot ask for a huge array). */
bool thrift_list(thrift_in *t, uint8_t *elem, uint32_t *n);
/* skip one value of a wire type (nested values included) */
void thrift_skip(thrift_in *t, uint8_t type);
/* mark the input malformed (a parser found a value it cannot accept) */
void thrift_fail(thrift_in *t, const char *why);

#endif
