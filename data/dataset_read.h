/* dataset_read.h: records from dataset files: a JSON array, JSON lines, CSV, plain text or Parquet.
 *
 * A reader returns one record at a time as a JSON object, so a large JSON array or JSONL file
 * is never held as one parsed tree (the file itself is memory-mapped):
 *   json (array of objects)  one record per element
 *   jsonl                    one object per non-blank line
 *   csv                      RFC 4180 (quoted fields, "" escapes, CRLF or LF, newlines
 *                            inside quotes); the first row names the fields; values are strings
 *   text                     the whole file as one record {"text": ...}
 *   parquet                  one record per row (data/parquet.h), one row group in memory at a time
 * Every byte must be UTF-8 (a leading BOM is skipped). Errors name the place:
 * "data/x.json:14:7: ..." for JSON, "data/x.csv:9: ..." for CSV rows.
 * Ownership: dataset_reader_open / dataset_reader_close; records are new references. */
#ifndef FORMATS_DATASET_READ_H
#define FORMATS_DATASET_READ_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum dataset_type {
    DATASET_TYPE_AUTO,
    DATASET_TYPE_JSON,
    DATASET_TYPE_JSONL,
    DATASET_TYPE_CSV,
    DATASET_TYPE_TEXT,
    DATASET_TYPE_PARQUET
} dataset_type;

/* "auto", "json", "jsonl", "csv", "text", "parquet"; ERR_RECIPE for anything else */
int dataset_type_parse(const char *name, dataset_type *out);
const char *dataset_type_name(dataset_type t);

typedef struct dataset_reader dataset_reader;

/* AUTO picks by extension (.jsonl/.ndjson, .json, .csv, .parquet, else text); a .json file that
 * does not start with '[' is read as JSON lines; a file that starts with Parquet's magic "PAR1"
 * is Parquet whatever its name. */
int dataset_reader_open(dataset_reader **out, const char *path, dataset_type type);
/* The fields the caller reads (formats read only theirs). Parquet decodes only these columns,
 * and a required one the file lacks is an ERR_DATA naming the columns it has; the text formats
 * carry every field anyway, so this changes nothing for them. required may be NULL. */
int dataset_reader_columns(dataset_reader *r, const char *const *names, const int *required, size_t n);
/* The next record in *rec (a new reference), or *rec = NULL at the end. ERR_DATA with a
 * "path:line:col: message" on malformed input. */
int dataset_reader_next(dataset_reader *r, json_t **rec);
/* After an ERR_DATA from dataset_reader_next, whether the reader moved past the bad line (JSONL)
 * or row (CSV) so that calling it again goes on with the next record (on_error: skip). A JSON
 * array cannot resynchronise. */
bool dataset_reader_can_go_on(const dataset_reader *r);
/* where the record last returned (or the bad one) starts: its 0-based index and 1-based line */
size_t dataset_reader_index(const dataset_reader *r);
size_t dataset_reader_line(const dataset_reader *r);
const char *dataset_reader_path(const dataset_reader *r);
dataset_type dataset_reader_type(const dataset_reader *r);
void dataset_reader_close(dataset_reader **r);

/* Expand paths and glob patterns into a sorted, duplicate-free list of files. A pattern
 * that matches nothing, or names a directory, is an ERR_DATA. *paths: malloc'd array of
 * malloc'd strings, freed with dataset_paths_free. */
int dataset_glob(const char *const *patterns, size_t n_patterns, char ***paths, size_t *n_paths);
void dataset_paths_free(char ***paths, size_t n);

#endif
