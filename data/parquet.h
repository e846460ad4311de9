/* parquet.h: a streaming reader for Apache Parquet files, records out as JSON objects.
 *
 * What it reads (docs/parquet.md has the format as we implement it): the footer and page
 * headers (Thrift compact protocol, data/thrift.h); data pages v1 and v2 and dictionary pages;
 * the PLAIN, PLAIN_DICTIONARY, RLE_DICTIONARY, RLE (booleans), DELTA_BINARY_PACKED,
 * DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY and BYTE_STREAM_SPLIT encodings; RLE/bit-packed
 * definition and repetition levels; the codecs UNCOMPRESSED, SNAPPY, GZIP, BROTLI and ZSTD.
 * Columns may be nullable and nested: structs, LIST in its 3-level form (either element name,
 * `element` or the older `item`) and the legacy 2-level forms, MAP (as a JSON object), and
 * bare repeated fields (as JSON arrays).
 *
 * A record is one row as a JSON object with the top-level fields in schema order: strings
 * (BYTE_ARRAY with or without a STRING annotation; the bytes must be UTF-8 without NUL) as
 * JSON strings, integers as integers (unsigned annotations honoured), floats as reals
 * (NaN and infinities as null), booleans, null for a missing value, lists as arrays, structs as
 * objects; INT96 timestamps as ISO 8601 text, as hyparquet gives them (docs/parquet.md).
 *
 * Only the projected columns are decoded, one row group at a time: memory is the decoded
 * projected columns of one row group (the file itself is memory-mapped).
 *
 * Errors are ERR_DATA with the file, row group, column and page (or row) and what was wrong.
 * Ownership: pq_open / pq_close; records are new references. */
#ifndef DATA_PARQUET_H
#define DATA_PARQUET_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pq_file pq_file;

/* Map the file and parse its footer and schema. Projects every top-level field. */
int pq_open(pq_file **out, const char *path);
void pq_close(pq_file **f);

int64_t pq_num_rows(const pq_file *f);
int pq_num_row_groups(const pq_file *f);
size_t pq_num_fields(const pq_file *f);
/* the i-th top-level field's name */
const char *pq_field_name(const pq_file *f, size_t i);

/* Decode only these top-level fields. A name with required[i] set that the file lacks is an
 * ERR_DATA naming the fields the file has; an absent optional one is left out of the records.
 * required may be NULL (none required). Call before the first pq_next. */
int pq_project(pq_file *f, const char *const *names, const int *required, size_t n);

/* The next row in *rec (a new reference), or *rec = NULL after the last one. */
int pq_next(pq_file *f, json_t **rec);
/* rows returned so far (the 0-based index of the row an error names) */
int64_t pq_row_index(const pq_file *f);

/* Decode the projected columns of row group rg without building records (benchmarks):
 * *string_bytes receives the bytes of string and binary values decoded. */
int pq_decode_row_group(pq_file *f, int rg, size_t *string_bytes);

#endif
