/* yaml_tree.h: a recipe file as a tree of nodes that remember where they came from.
 *
 * libyaml's document API gives nodes with 0-based marks; we copy them into our own tree
 * (1-based line and column, the file name, whether a scalar was quoted) so every later
 * error can say `recipe.yaml:12:5: ...` and show the line with a caret. ${VAR} and
 * ${VAR:-default} are expanded in scalars while parsing. Duplicate mapping keys are errors.
 * Ownership: yt_parse_file/yt_parse_string return a tree freed with yt_free; the source
 * text of every parsed file is kept in a process-wide table for the caret display. */
#ifndef RUNNER_YAML_TREE_H
#define RUNNER_YAML_TREE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum yt_type { YT_SCALAR, YT_MAP, YT_SEQ } yt_type;

typedef struct yt_node {
    yt_type type;
    char *text;        /* scalar value after ${} expansion */
    bool quoted;       /* a quoted scalar is always a string */
    const char *file;  /* interned; "--set" for command-line overrides */
    int line, col;     /* 1-based; 0 when synthetic */
    size_t n;
    struct yt_node **keys; /* YT_MAP: scalar keys */
    struct yt_node **vals; /* YT_MAP values, YT_SEQ items */
} yt_node;

/* Parse errors become ERR_RECIPE with a located message (already formatted with caret). */
int yt_parse_file(const char *path, yt_node **out);
int yt_parse_string(const char *text, const char *origin, yt_node **out);
void yt_free(yt_node **n);
yt_node *yt_clone(const yt_node *n);

yt_node *yt_map_get(const yt_node *map, const char *key);
yt_node *yt_map_key(const yt_node *map, const char *key); /* the key node (for its position) */
/* set key to val in map (replacing; takes ownership of val) */
void yt_map_set(yt_node *map, const char *key, yt_node *val, const yt_node *pos);
yt_node *yt_new_map(const yt_node *pos);

bool yt_is_null(const yt_node *n); /* unquoted ~, null, empty */

/* "file:line:col: message\n  <source line>\n  <caret>" into a malloc'd string */
char *yt_located(const yt_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Convert to JSON with YAML 1.2 core schema typing of unquoted scalars. */
json_t *yt_to_json(const yt_node *n);

/* Emit JSON as block YAML (for `qlora-run show`), keys in object order. */
char *yt_emit_json(const json_t *j);

/* A double as a person writes it: the shortest text that reads back as the same value, in plain
 * notation where it is short (0.005, 20.0, 1e-08), always with a '.' or exponent. */
void yt_format_real(double d, char *out, size_t n);

#endif
