/* json_in.h: reading JSON that comes from outside (config.json, tokenizer_config.json,
 * generation_config.json, adapter_config.json, special_tokens_map.json, hub listings).
 *
 * Python writes integers of any size, and transformers puts int(1e30) into
 * tokenizer_config.json's model_max_length whenever no limit is known
 * ("model_max_length": 1000000000000000019884624838656), which jansson refuses as
 * "too big integer". json_in_load* accept such numbers: an integer literal that does not fit
 * int64 is read as a real (the nearest double), every other value exactly as jansson reads it.
 * The text is rewritten in place of the literal with a real literal of the same length, so
 * the line:column of a later syntax error stays true.
 *
 * The getters check one key of an object and, on a wrong type, set ERR_DATA with the file, the
 * key, what was expected and what was found: `config.json: "num_hidden_layers" must be an
 * integer >= 1 (got a string)`. An absent key or null gives the default. */
#ifndef CORE_JSON_IN_H
#define CORE_JSON_IN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parse path (flags: jansson's decoding flags, e.g. JSON_REJECT_DUPLICATES). *out: new reference.
 * ERR_DATA "path:line:col: text" on bad JSON; ERR_DATA for a missing file. */
int json_in_load_file(const char *path, size_t flags, json_t **out);
/* the same over a buffer; name is used in messages (a file path or "the hub's answer") */
int json_in_loadb(const char *text, size_t len, size_t flags, const char *name, json_t **out);

/* "an integer", "a string", ...: what a value is, for messages */
const char *json_in_type_name(const json_t *v);

/* integer in [min, max]; a real is refused (a float where a count is meant is a mistake) */
int json_in_int(const json_t *obj, const char *key, const char *path, int64_t def, int64_t min, int64_t max,
                int64_t *out);
/* a size limit where huge means none (model_max_length): an integer >= 1, or a number at or
 * beyond 2^63 (int(1e30), 1e30), which reads as INT64_MAX */
int json_in_limit(const json_t *obj, const char *key, const char *path, int64_t def, int64_t *out);
/* any number (integer or real) */
int json_in_num(const json_t *obj, const char *key, const char *path, double def, double *out);
int json_in_bool(const json_t *obj, const char *key, const char *path, bool def, bool *out);
/* a string (borrowed from obj) or def */
int json_in_str(const json_t *obj, const char *key, const char *path, const char *def, const char **out);

#endif
