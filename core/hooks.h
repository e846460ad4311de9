/* hooks.h: the recipe's Lua hooks, one C call per hook point.
 *
 * A recipe's `hooks:` reach a stage as a JSON object (ctx->hooks):
 *   {"format": "/abs/hooks/alpaca.lua", "lr": "/abs/hooks/cosine.lua", ...,
 *    "allow": ["io", "http"], "memory_mb": 256, "instructions": 100000000}
 * hooks_open opens one sandboxed state (core/lua_host.h) per distinct file, runs its top
 * level and checks that it defines the function named after each point it serves, so a
 * recipe with a broken hook fails before any work. A point without a hook is a no-op: the
 * calls below return 0 and leave their outputs untouched (test with hooks_has).
 *
 * Errors: data hooks (format, generate, score) fail with ERR_DATA, the others with
 * ERR_STAGE; messages name the file and line, the function and the record or step.
 * Not thread-safe: call one hooks object from one thread at a time.
 * Ownership: hooks_open / hooks_free; results documented per function. */
#ifndef CORE_HOOKS_H
#define CORE_HOOKS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lua_host.h"

typedef struct hooks hooks;

/* The one table of hook points and hook settings. The recipe checker builds its schema of
 * `hooks:` from it (runner/recipe.c), hooks_open accepts exactly these keys, and the limits are
 * the ones lua_host_opts_from_json applies (core/lua_host.h), so a limit has one value. */
typedef struct hooks_point_info {
    const char *name; /* the hook point, and the name of the function its file defines */
    const char *doc;  /* its signature and what it is for, one line */
} hooks_point_info;
extern const hooks_point_info hooks_point_table[]; /* terminated by {0} */

typedef struct hooks_limit_info {
    const char *name; /* the key under hooks: */
    int64_t min, max, def;
    const char *doc;
} hooks_limit_info;
extern const hooks_limit_info hooks_limit_table[]; /* memory_mb, instructions; terminated by {0} */

/* The capabilities hooks.allow may grant, '|'-separated */
#define HOOKS_ALLOW_CHOICES "io|http"

/* spec may be NULL (no hooks). ERR_RECIPE for unknown points or capabilities, unreadable
 * files, or a file that lacks its point's function. */
int hooks_open(hooks **out, const json_t *spec);
/* Serve `point` from `path` (a stage parameter naming a hook file directly), replacing the
 * recipe-level binding; the file's state is shared with other points it serves. */
int hooks_bind(hooks *h, const char *point, const char *path);
void hooks_free(hooks **h);

bool hooks_has(const hooks *h, const char *point);
const char *hooks_file(const hooks *h, const char *point); /* NULL if unbound */
lua_host *hooks_host(hooks *h, const char *point);        /* NULL if unbound */
/* Append to the array `into` the files the state serving `point` has read (require, io
 * reads; lua_host_loaded_files), skipping those already there. Nothing if unbound. */
void hooks_loaded_files(hooks *h, const char *point, json_t *into);
/* set the callback slots of every state (tokenizer, metrics, log) */
void hooks_set_callbacks(hooks *h, const lua_host_callbacks *cb);

/* format(record, ctx) -> {prompt=, response=} | {segments={{text=, train=}, ...}} | nil */
typedef enum hooks_format_kind {
    HOOKS_FORMAT_DROP,     /* nil: leave the record out */
    HOOKS_FORMAT_PAIR,     /* seg[0] the prompt (train false), seg[1] the response (train true) */
    HOOKS_FORMAT_SEGMENTS  /* seg[0..n) in order, each trained or not */
} hooks_format_kind;

typedef struct hooks_segment {
    char *text; /* malloc'd, NUL-terminated */
    size_t len;
    bool train;
} hooks_segment;

typedef struct hooks_format_result {
    hooks_format_kind kind;
    int n;
    hooks_segment *seg; /* malloc'd */
} hooks_format_result;

void hooks_format_result_free(hooks_format_result *r);
/* `what` names the record in messages ("data/x.json: record 812"). */
int hooks_format(hooks *h, const json_t *record, const json_t *ctx, const char *what, hooks_format_result *out);

/* generate(ctx): a function that yields records with coroutine.yield(record), or returns
 * an array of them (or both). emit receives each record (a new reference it owns) and
 * returns 0 to go on, HOOKS_STOP to end the generator early (enough records), or an ERR_*
 * code to fail. */
#define HOOKS_STOP (-1)
typedef int (*hooks_emit_fn)(void *ud, json_t *record);
int hooks_generate(hooks *h, const json_t *ctx, hooks_emit_fn emit, void *ud);

/* lr(step, total_steps, base_lr) -> a finite learning rate >= 0 */
int hooks_lr(hooks *h, int64_t step, int64_t total_steps, double base_lr, double *lr);
/* notifications: metrics / results / manifest / summary are passed as Lua tables */
int hooks_on_step(hooks *h, const json_t *metrics);
int hooks_on_eval(hooks *h, const json_t *results);
int hooks_on_stage_end(hooks *h, const char *stage, const json_t *manifest);
int hooks_on_run_end(hooks *h, const json_t *summary);
/* score(prediction, record) -> a number, or a boolean (1 or 0) */
int hooks_score(hooks *h, const char *prediction, const json_t *record, const char *what, double *score);
/* score(prediction, record, info): info is what the prompt became ({prompt=, reference=,
 * source=}), passed as a third argument (NULL: none) */
int hooks_score_info(hooks *h, const char *prediction, const json_t *record, const json_t *info, const char *what,
                     double *score);

/* task(record, ctx) -> {text=, choices={...}, gold=, subject=} | nil: a record of a benchmark
 * task in evaluate's `format: lua` (eval/mc.h says what each field is). *out: the table as JSON
 * (new reference), NULL for nil (the record is left out). */
int hooks_task(hooks *h, const json_t *record, const json_t *ctx, const char *what, json_t **out);

#endif
