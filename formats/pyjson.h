/* pyjson.h: JSON text byte-identical to Python's json.dumps.
 *
 * transformers (config.json), peft (adapter_config.json) and huggingface_hub write their
 * JSON files with json.dumps(obj, indent=2, sort_keys=True): ", " never appears, strings
 * are ASCII-escaped (\uXXXX, lowercase hex, surrogate pairs), and floats use Python's
 * shortest round-trip repr ("1e-05", "10000.0"). jansson's own dumper differs on floats
 * and escapes, so files meant to match those tools byte for byte go through here.
 * Ownership: the returned string is malloc'd (caller frees); NULL only when out of memory. */
#ifndef FORMATS_PYJSON_H
#define FORMATS_PYJSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* indent < 0: compact with Python's default separators (", " and ": ") */
char *pyjson_dumps(const json_t *j, int indent, bool sort_keys);
/* Write dir/name atomically as transformers writes config.json and generation_config.json:
 * json.dumps(indent=2, sort_keys=True) plus a trailing newline. 0 or an ERR_* code. */
int pyjson_write_config(const json_t *j, const char *dir, const char *name);
/* Python's repr() of a double into buf (at least 32 bytes): "0.1", "1e-05", "inf" */
void pyjson_float_repr(double x, char *buf, size_t n);

#endif
