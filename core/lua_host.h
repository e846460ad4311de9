/* lua_host.h: one sandboxed Lua 5.4 state per hook file.
 *
 * A hook file runs in a state that opens only safe libraries: base (without dofile and
 * loadfile; `load` accepts text chunks only; `print` goes to the log callback), string,
 * table, math, utf8, coroutine, os.clock/time/date/difftime, and a read-only io.open /
 * io.lines. Capabilities widen that: LUA_HOST_CAP_IO gives the full io library (never
 * io.popen) plus os.remove/os.rename; LUA_HOST_CAP_HTTP enables qlora.http_post. A
 * `write_root` instead limits file writes to one directory (the `lua` stage's output).
 * `require "qlora"` gives the host module (log, metric, tokenize, count_tokens, json,
 * env, http_post); `require "name"` also loads name.lua from the hook's own directory.
 *
 * Limits: a custom allocator caps the state's memory; a count hook caps the number of
 * VM instructions per call (lua_host_call resets the counter). Every call goes through
 * lua_pcall with a traceback handler; a failed call returns the caller's error code with
 * a message naming the hook file and line, the function and what it was called for
 * ("record 812", "step 40"), followed by the Lua traceback.
 *
 * core/ knows nothing of tokenizers or stages: whoever owns the state fills the callback
 * slots (lua_host_set_callbacks). Ownership: lua_host_open / lua_host_free. */
#ifndef CORE_LUA_HOST_H
#define CORE_LUA_HOST_H

#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lua_host lua_host;

enum lua_host_cap {
    LUA_HOST_CAP_IO = 1 << 0,  /* read and write files anywhere; os.remove, os.rename */
    LUA_HOST_CAP_HTTP = 1 << 1 /* qlora.http_post */
};

/* The limits of a recipe's hooks (hooks.memory_mb, hooks.instructions): their one set of
 * values, which lua_host_opts_from_json applies and core/hooks.h's table gives the recipe
 * checker. The `lua` stage sets its own, larger limits directly in lua_host_opts. */
#define LUA_HOST_MEMORY_MB_MIN 1
#define LUA_HOST_MEMORY_MB_MAX 65536
#define LUA_HOST_MEMORY_MB_DEFAULT 256
#define LUA_HOST_INSTRUCTIONS_MIN 1000
#define LUA_HOST_INSTRUCTIONS_MAX 1000000000000ll
#define LUA_HOST_INSTRUCTIONS_DEFAULT 100000000ll

#define LUA_HOST_DEFAULT_MEMORY ((size_t)LUA_HOST_MEMORY_MB_DEFAULT << 20)      /* bytes */
#define LUA_HOST_DEFAULT_INSTRUCTIONS ((uint64_t)LUA_HOST_INSTRUCTIONS_DEFAULT) /* per call */

typedef struct lua_host_opts {
    unsigned caps;              /* LUA_HOST_CAP_* */
    size_t memory_limit;        /* bytes; 0: LUA_HOST_DEFAULT_MEMORY */
    uint64_t instruction_limit; /* VM instructions per call; 0: LUA_HOST_DEFAULT_INSTRUCTIONS */
    const char *write_root;     /* if set: io.open may write only below this directory, and
                                   relative paths resolve against it */
} lua_host_opts;

/* The slots a stage fills so hooks reach it. Any may be NULL: the matching qlora function
 * then raises a clear error (tokenize) or does nothing (metric, log). */
typedef struct lua_host_callbacks {
    void *ud;
    /* encode text without special tokens; *ids malloc'd; returns 0 or an ERR_* code */
    int (*tokenize)(void *ud, const char *text, size_t len, int32_t **ids, size_t *n);
    void (*metric)(void *ud, const char *name, double value);
    /* level is "debug", "info", "warn" or "error" */
    void (*log)(void *ud, const char *level, const char *msg);
} lua_host_callbacks;

/* Create the state and run the file's top level (under the limits). A file may define its
 * hook functions as globals or return a table of them. Errors: ERR_RECIPE for a missing or
 * unparsable file, the file's own error otherwise. */
int lua_host_open(lua_host **out, const char *path, const lua_host_opts *opts);
void lua_host_free(lua_host **h);

void lua_host_set_callbacks(lua_host *h, const lua_host_callbacks *cb);

/* The process's HTTP client for qlora.http_post (hooks under `allow: [http]`): POST body with
 * the header lines to url within timeout_s; *status and the response (malloc'd into *resp,
 * *resp_len bytes, at most limit) on success; 0 or ERR_NETWORK with err_set() context. net/http.c
 * registers its client when the program starts; without one http_post says there is none. */
typedef int (*lua_host_http_post_fn)(const char *url, const char *const *headers, int n_headers, const char *body,
                                     size_t body_len, long timeout_s, long *status, char **resp, size_t *resp_len,
                                     size_t limit);
void lua_host_set_http_post(lua_host_http_post_fn fn);
const char *lua_host_path(const lua_host *h);
/* Absolute paths of the files the state has read so far: modules through require, files
 * opened for reading with io.open or io.lines (missing ones too), in order, each once. The
 * hook file itself is not among them. Borrowed: valid until lua_host_free. */
const json_t *lua_host_loaded_files(const lua_host *h);
lua_State *lua_host_state(lua_host *h);
size_t lua_host_memory_used(const lua_host *h);

/* Whether the file defines function `name` (in its returned table or as a global). */
bool lua_host_has_function(lua_host *h, const char *name);
/* Push function `name` for a call; returns ERR_RECIPE if the file does not define it.
 * Then push the arguments (lua_host_push_json helps) and call lua_host_call. */
int lua_host_push_function(lua_host *h, const char *name);
/* Call the function below nargs arguments; leaves nresults values on success. On failure
 * the stack is restored to below the function and the message reads
 * "<file>:<line>: <error> (in <fn>() for <what>)" plus the traceback; `what` may be NULL.
 * err_code is what a failure returns (ERR_DATA for data hooks). */
int lua_host_call(lua_host *h, int nargs, int nresults, int err_code, const char *fn, const char *what);

/* Run a coroutine step: `co` holds the function (first resume) or is suspended. Returns 0
 * with *done false and the yielded values on co's stack (*nres of them), or *done true and
 * the function's return values. Errors as lua_host_call. */
int lua_host_resume(lua_host *h, lua_State *co, int nargs, int *nres, bool *done, int err_code, const char *fn,
                    const char *what);

/* JSON <-> Lua. A JSON null inside an object is an absent key; inside an array it is
 * qlora.json.null (so positions survive). Conversions run protected: a memory-cap failure
 * is an error, never a panic. lua_host_push_json pushes one value on h's main stack. */
int lua_host_push_json(lua_host *h, const json_t *v);
/* Convert the value at idx of L (h's state or one of its threads) to JSON (new reference).
 * A table with keys 1..n is an array, any other table an object (string keys only). */
int lua_host_to_json(lua_host *h, lua_State *L, int idx, json_t **out);

/* Options from a recipe's hooks object: "allow": ["io","http"], "memory_mb", "instructions".
 * Unknown capability names are an ERR_RECIPE naming them. */
int lua_host_opts_from_json(lua_host_opts *o, const json_t *spec);

#endif
