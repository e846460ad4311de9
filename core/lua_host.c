/* lua_host.c: the sandboxed Lua state behind every hook (see lua_host.h).
 *
 * The sandbox is built by opening the standard libraries into a scratch table and copying
 * only the safe functions into the globals, so nothing unsafe is reachable by name. The
 * memory cap lives in the allocator (lua_Alloc) and counts every live block; the
 * instruction budget is a count hook that every thread inherits. Functions that build Lua
 * values from C run under lua_pcall so that hitting the memory cap is an error, not a
 * panic. */
#define _GNU_SOURCE
#include "lua_host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "fsutil.h"

#define HOOK_EVERY 1000         /* instructions between two count-hook calls */
#define JSON_MAX_DEPTH 200      /* Lua -> JSON nesting (also catches cyclic tables) */
#define HTTP_MAX_BODY (16u << 20)
#define LOADED_KEY "qlora.loaded"

struct lua_host {
    lua_State *L;
    char *path, *dir, *write_root;
    unsigned caps;
    size_t mem_used, mem_cap;
    size_t mem_limit; /* mem_cap while Lua code runs, unlimited while C builds arguments or reads
                         results (a failure there would have no protected call to land in) */
    uint64_t instr_count, instr_limit;
    lua_host_callbacks cb;
    int module_ref; /* the table the file returned, or LUA_NOREF */
    json_t *loaded; /* absolute paths of the files read through require, io.open(r), io.lines */
};

static lua_host *host_of(lua_State *L) { return *(lua_host **)lua_getextraspace(L); }

/* ---- limits ---- */

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    lua_host *h = ud;
    size_t old = ptr ? osize : 0; /* with ptr NULL, osize is an object type, not a size */
    if (nsize == 0) {
        free(ptr);
        h->mem_used -= old;
        return NULL;
    }
    if (nsize > old && h->mem_used - old + nsize > h->mem_limit) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) h->mem_used = h->mem_used - old + nsize;
    return p;
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_host *h = host_of(L);
    h->instr_count += HOOK_EVERY;
    if (h->instr_count > h->instr_limit) {
        char msg[160]; /* lua_pushfstring knows no %llu */
        snprintf(msg, sizeof msg,
                 "instruction budget of %llu exceeded (raise hooks.instructions in the recipe if this is intended)",
                 (unsigned long long)h->instr_limit);
        luaL_error(L, "%s", msg);
    }
}

/* ---- errors ---- */

/* "file:line:" of the innermost Lua function of L1, or "" */
static void where_lua(lua_State *L1, char *buf, size_t n) {
    lua_Debug ar;
    buf[0] = 0;
    for (int level = 0; lua_getstack(L1, level, &ar); level++) {
        lua_getinfo(L1, "Sl", &ar);
        if (ar.currentline > 0) {
            snprintf(buf, n, "%s:%d:", ar.short_src, ar.currentline);
            return;
        }
    }
}

/* The error message of L1's top value, prefixed with the Lua location when it lacks one
 * (errors raised from C functions such as luaL_argerror carry none). Pushed on L. */
static void push_located_message(lua_State *L, lua_State *L1, int idx) {
    const char *msg = lua_tostring(L1, idx);
    char where[512];
    where_lua(L1, where, sizeof where);
    if (!msg) msg = lua_isnil(L1, idx) ? "nil error" : "error object is not a string";
    if (where[0] && strncmp(msg, where, strcspn(where, ":")) != 0)
        lua_pushfstring(L, "%s %s", where, msg);
    else
        lua_pushstring(L, msg);
}

static int msg_handler(lua_State *L) {
    push_located_message(L, L, 1);
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    return 1;
}

/* What a hook that calls a function the sandbox leaves out is told, instead of Lua's bare
 * "attempt to call a nil value (field 'execute')": which capability it would need, if any. */
static const char *sandbox_hint(const char *msg, unsigned caps) {
    static const struct {
        const char *pattern, *hint;
        bool io_cap; /* allow: [io] provides it */
    } hints[] = {
        {"(field 'execute')", "os.execute is not available to hooks: no capability runs programs", false},
        {"(field 'popen')", "io.popen is not available to hooks: no capability runs programs", false},
        {"(field 'getenv')", "os.getenv is not available to hooks: use qlora.env(name) (secrets such as HF_TOKEN "
                             "stay unreadable)", false},
        {"(field 'exit')", "os.exit is not available to hooks: raise an error with error(...) instead", false},
        {"(global 'dofile')", "dofile is not available to hooks: require \"name\" loads name.lua next to the hook",
         false},
        {"(global 'loadfile')", "loadfile is not available to hooks: require \"name\" loads name.lua next to the "
                                "hook", false},
        {"(field 'remove')", "os.remove needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'rename')", "os.rename needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'tmpname')", "os.tmpname needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'write')", "io.write needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'read')", "io.read needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'output')", "io.output needs `allow: [io]` in the recipe's hooks", true},
        {"(field 'input')", "io.input needs `allow: [io]` in the recipe's hooks", true},
    };
    if (!strstr(msg, "attempt to call a nil value")) return NULL;
    for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++)
        if (strstr(msg, hints[i].pattern) && !(hints[i].io_cap && (caps & LUA_HOST_CAP_IO))) return hints[i].hint;
    return NULL;
}

/* Turn the error on top of L1 into err_set: "<msg> (in fn() for what)\n<traceback>". */
static int host_error(lua_host *h, lua_State *L1, int status, int code, const char *fn, const char *what) {
    char ctx[256];
    if (fn)
        snprintf(ctx, sizeof ctx, " (in %s()%s%s)", fn, what ? " for " : "", what ? what : "");
    else
        snprintf(ctx, sizeof ctx, " (in the file's top level)");
    int rc;
    if (status == LUA_ERRMEM) {
        rc = err_set(code, "%s: memory limit of %zu MiB exceeded%s (raise hooks.memory_mb in the recipe if this is intended)",
                     h->path, h->mem_cap >> 20, ctx);
    } else {
        const char *m = lua_tostring(L1, -1);
        if (!m) m = "error object is not a string";
        const char *tb = strstr(m, "\nstack traceback:");
        int head = tb ? (int)(tb - m) : (int)strlen(m);
        const char *hint = sandbox_hint(m, h->caps);
        rc = err_set(code, "%.*s%s%s%s%s", head, m, hint ? ": " : "", hint ? hint : "", ctx, tb ? tb : "");
    }
    lua_pop(L1, 1);
    return rc;
}

int lua_host_call(lua_host *h, int nargs, int nresults, int err_code, const char *fn, const char *what) {
    lua_State *L = h->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msg_handler);
    lua_insert(L, base);
    h->instr_count = 0;
    h->mem_limit = h->mem_cap;
    int st = lua_pcall(L, nargs, nresults, base);
    h->mem_limit = SIZE_MAX;
    lua_remove(L, base);
    if (st == LUA_OK) return 0;
    int rc = host_error(h, L, st, err_code, fn, what);
    lua_gc(L, LUA_GCCOLLECT);
    return rc;
}

int lua_host_resume(lua_host *h, lua_State *co, int nargs, int *nres, bool *done, int err_code, const char *fn,
                    const char *what) {
    h->instr_count = 0;
    h->mem_limit = h->mem_cap;
    int st = lua_resume(co, h->L, nargs, nres);
    h->mem_limit = SIZE_MAX;
    if (st == LUA_YIELD || st == LUA_OK) {
        *done = st == LUA_OK;
        return 0;
    }
    if (st != LUA_ERRMEM) {
        /* the coroutine's stack is not unwound: its traceback is still there */
        push_located_message(co, co, -1);
        luaL_traceback(co, co, lua_tostring(co, -1), 0);
        lua_remove(co, -2);
    }
    int rc = host_error(h, co, st, err_code, fn, what);
    *done = true;
    *nres = 0;
    return rc;
}

/* ---- JSON <-> Lua ---- */

static void push_json_raw(lua_State *L, const json_t *v) {
    luaL_checkstack(L, 3, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *e;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach((json_t *)v, k, e) {
            if (json_is_null(e)) continue;
            push_json_raw(L, e);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *e;
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach(v, i, e) {
            push_json_raw(L, e);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL: lua_pushlightuserdata(L, NULL); break;
    }
}

static int push_json_cf(lua_State *L) {
    const json_t *v = lua_touserdata(L, 1);
    push_json_raw(L, v);
    return 1;
}

int lua_host_push_json(lua_host *h, const json_t *v) {
    lua_State *L = h->L;
    lua_pushcfunction(L, push_json_cf);
    lua_pushlightuserdata(L, (void *)v);
    int st = lua_pcall(L, 1, 1, 0);
    if (st == LUA_OK) return 0;
    lua_pop(L, 1);
    if (st == LUA_ERRMEM)
        return err_set(ERR_DATA, "%s: memory limit of %zu MiB exceeded while passing data to the hook", h->path,
                       h->mem_cap >> 20);
    return err_set(ERR_DATA, "%s: cannot pass data to the hook", h->path);
}

static const char *lua_kind(lua_State *L, int idx) { return lua_typename(L, lua_type(L, idx)); }

/* Never raises a Lua error, so C may call it outside a protected call. */
static json_t *to_json_rec(lua_State *L, int idx, int depth, char *err, size_t errlen) {
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
        {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                snprintf(err, errlen, "cannot convert %g to JSON", d);
                return NULL;
            }
            return json_real(d);
        }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_t *j = json_stringn(s, n);
        if (!j) snprintf(err, errlen, "string is not valid UTF-8");
        return j;
    }
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx)) return json_null();
        break;
    case LUA_TTABLE: {
        if (depth >= JSON_MAX_DEPTH) {
            snprintf(err, errlen, "table nested deeper than %d levels (a cycle?)", JSON_MAX_DEPTH);
            return NULL;
        }
        if (!lua_checkstack(L, 4)) {
            snprintf(err, errlen, "out of Lua stack");
            return NULL;
        }
        /* an array when every key is an integer 1..n */
        lua_Integer n = 0, max = 0;
        bool array = true;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            n++;
            if (lua_type(L, -2) == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
                if (lua_tointeger(L, -2) > max) max = lua_tointeger(L, -2);
            } else {
                array = false;
            }
            lua_pop(L, 1);
        }
        array = array && n > 0 && max == n;
        json_t *out = array ? json_array() : json_object();
        if (array) {
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, i);
                json_t *e = to_json_rec(L, -1, depth + 1, err, errlen);
                lua_pop(L, 1);
                if (!e) {
                    json_decref(out);
                    return NULL;
                }
                json_array_append_new(out, e);
            }
            return out;
        }
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                snprintf(err, errlen, "table mixes a %s key with others (JSON objects need string keys)",
                         lua_kind(L, -2));
                lua_pop(L, 2);
                json_decref(out);
                return NULL;
            }
            const char *k = lua_tostring(L, -2);
            json_t *e = to_json_rec(L, -1, depth + 1, err, errlen);
            lua_pop(L, 1);
            if (!e) {
                lua_pop(L, 1);
                json_decref(out);
                return NULL;
            }
            json_object_set_new(out, k, e);
        }
        return out;
    }
    default: break;
    }
    snprintf(err, errlen, "cannot convert a %s value to JSON", lua_kind(L, idx));
    return NULL;
}

int lua_host_to_json(lua_host *h, lua_State *L, int idx, json_t **out) {
    char err[256];
    *out = to_json_rec(L, idx, 0, err, sizeof err);
    if (!*out) return err_set(ERR_DATA, "%s: %s", h->path, err);
    return 0;
}

/* ---- the qlora module ---- */

static int q_log(lua_State *L) {
    lua_host *h = host_of(L);
    const char *level = luaL_checkstring(L, 1);
    if (strcmp(level, "debug") && strcmp(level, "info") && strcmp(level, "warn") && strcmp(level, "error"))
        return luaL_argerror(L, 1, "level must be \"debug\", \"info\", \"warn\" or \"error\"");
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        if (i > 2) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    if (h->cb.log) h->cb.log(h->cb.ud, level, lua_tostring(L, -1));
    return 0;
}

static int malloc_box_gc(lua_State *L) {
    void **box = lua_touserdata(L, 1);
    free(*box);
    *box = NULL;
    return 0;
}

static int q_print(lua_State *L) {
    lua_pushstring(L, "info");
    lua_insert(L, 1);
    return q_log(L);
}

static int q_metric(lua_State *L) {
    lua_host *h = host_of(L);
    const char *name = luaL_checkstring(L, 1);
    double v = luaL_checknumber(L, 2);
    if (h->cb.metric) h->cb.metric(h->cb.ud, name, v);
    return 0;
}

/* A userdata owning a malloc'd block, freed by __gc: C buffers handed to Lua code that may
 * raise (the memory cap) never leak. */
static void **push_malloc_box(lua_State *L) {
    void **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    if (luaL_newmetatable(L, "qlora.malloc_box")) {
        lua_pushcfunction(L, malloc_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return box;
}

static int tokenize_common(lua_State *L, bool count_only) {
    lua_host *h = host_of(L);
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (!h->cb.tokenize)
        return luaL_error(L, "qlora.%s: no tokenizer here (only stages that read a model, such as dataset, provide one)",
                          count_only ? "count_tokens" : "tokenize");
    void **box = push_malloc_box(L);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = h->cb.tokenize(h->cb.ud, s, len, &ids, &n);
    *box = ids;
    if (rc) return luaL_error(L, "%s", err_msg());
    if (count_only) {
        lua_pushinteger(L, (lua_Integer)n);
        return 1;
    }
    lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int q_tokenize(lua_State *L) { return tokenize_common(L, false); }
static int q_count_tokens(lua_State *L) { return tokenize_common(L, true); }

static int q_json_encode(lua_State *L) {
    luaL_checkany(L, 1);
    size_t flags = JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "indent");
        if (lua_isinteger(L, -1)) flags = JSON_INDENT((int)lua_tointeger(L, -1) & 31) | JSON_SORT_KEYS | JSON_ENCODE_ANY;
        lua_pop(L, 1);
    }
    char err[256];
    json_t *j = to_json_rec(L, 1, 0, err, sizeof err);
    if (!j) return luaL_error(L, "json.encode: %s", err);
    char *s = json_dumps(j, flags);
    json_decref(j);
    if (!s) return luaL_error(L, "json.encode: cannot encode the value");
    lua_pushstring(L, s);
    free(s);
    return 1;
}

static int q_json_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t e;
    json_t *j = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!j) return luaL_error(L, "json.decode: line %d column %d: %s", e.line, e.column, e.text);
    /* a userdata with a __gc would be neater; a protected push keeps j from leaking */
    lua_pushcfunction(L, push_json_cf);
    lua_pushlightuserdata(L, j);
    int st = lua_pcall(L, 1, 1, 0);
    json_decref(j);
    if (st != LUA_OK) return lua_error(L);
    return 1;
}

/* names a hook may never read: credentials that must not reach logs or webhooks */
static const char *const env_denied[] = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", NULL};

static int q_env(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    for (int i = 0; env_denied[i]; i++)
        if (!strcmp(name, env_denied[i])) return luaL_error(L, "qlora.env: '%s' is not readable from hooks", name);
    const char *v = getenv(name);
    if (v) lua_pushstring(L, v);
    else lua_pushnil(L);
    return 1;
}

/* The HTTP client behind qlora.http_post, given by the program (the runner passes net/'s):
 * core/ knows nothing of libcurl. NULL: http_post answers that it is not available. */
static lua_host_http_post_fn http_post_fn;
void lua_host_set_http_post(lua_host_http_post_fn fn) { http_post_fn = fn; }

typedef struct http_buf {
    char *p;
} http_buf;

static int http_buf_gc(lua_State *L) {
    http_buf *b = lua_touserdata(L, 1);
    free(b->p);
    b->p = NULL;
    return 0;
}

#define HTTP_MAX_HEADERS 64

/* qlora.http_post(url, body [, headers]) -> status, body | nil, message */
static int q_http_post(lua_State *L) {
    lua_host *h = host_of(L);
    const char *url = luaL_checkstring(L, 1);
    size_t body_len;
    const char *body = luaL_optlstring(L, 2, "", &body_len);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    if (!(h->caps & LUA_HOST_CAP_HTTP))
        return luaL_error(L, "qlora.http_post: network access needs `allow: [http]` in the recipe's hooks");
    if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        return luaL_argerror(L, 1, "only http:// and https:// URLs are allowed");
    if (!http_post_fn) return luaL_error(L, "qlora.http_post: no HTTP client in this program");

    /* the header lines stay on the Lua stack (so a luaL_ error leaks nothing) until the call */
    int nh = 0;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (nh == HTTP_MAX_HEADERS) return luaL_error(L, "qlora.http_post: more than %d headers", HTTP_MAX_HEADERS);
            const char *v = luaL_tolstring(L, -1, NULL); /* stack: key value vcopy */
            if (lua_type(L, -3) == LUA_TSTRING)
                lua_pushfstring(L, "%s: %s", lua_tostring(L, -3), v);
            else
                lua_pushstring(L, v);
            lua_remove(L, -2); /* tolstring's copy */
            lua_insert(L, -3); /* keep the line below key and value */
            lua_pop(L, 1);
            nh++;
            luaL_checkstack(L, 3, "too many headers");
        }
    }
    int first = lua_gettop(L) - nh + 1;
    const char *lines[HTTP_MAX_HEADERS];
    for (int i = 0; i < nh; i++) lines[i] = lua_tostring(L, first + i);
    http_buf *b = lua_newuserdatauv(L, sizeof *b, 0); /* frees the response even if a later push throws */
    b->p = NULL;
    if (luaL_newmetatable(L, "qlora.http_buf")) {
        lua_pushcfunction(L, http_buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    long status = 0;
    size_t n = 0;
    if (http_post_fn(url, lines, nh, body, body_len, 30, &status, &b->p, &n, HTTP_MAX_BODY)) {
        lua_pushnil(L);
        lua_pushfstring(L, "http_post %s", err_msg());
        return 2;
    }
    lua_pushinteger(L, status);
    lua_pushlstring(L, b->p ? b->p : "", n);
    return 2;
}

static const luaL_Reg qlora_funcs[] = {
    {"log", q_log},
    {"metric", q_metric},
    {"tokenize", q_tokenize},
    {"count_tokens", q_count_tokens},
    {"env", q_env},
    {"http_post", q_http_post},
    {NULL, NULL},
};

static const luaL_Reg json_funcs[] = {
    {"encode", q_json_encode},
    {"decode", q_json_decode},
    {NULL, NULL},
};

static void push_qlora_module(lua_State *L) {
    luaL_newlib(L, qlora_funcs);
    luaL_newlib(L, json_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
}

/* ---- the sandbox ---- */

/* Remember a file the hook read: its content shapes what the hook returns, so the stages the
 * hook serves key on it (docs/hooks.md). Relative paths resolve against the working directory,
 * as io.open resolves them; a file that does not exist is recorded too (creating it matters). */
static void note_loaded(lua_host *h, const char *path) {
    char *abs = realpath(path, NULL);
    if (!abs) {
        char cwd[4096];
        if (path[0] == '/' || !getcwd(cwd, sizeof cwd)) abs = strdup(path);
        else abs = fs_join(cwd, path);
    }
    if (!abs) return;
    size_t i;
    json_t *x;
    json_array_foreach(h->loaded, i, x) if (!strcmp(json_string_value(x), abs)) {
        free(abs);
        return;
    }
    json_array_append_new(h->loaded, json_string(abs));
    free(abs);
}

/* require "qlora", or "name" from name.lua next to the hook file */
static int sandbox_require(lua_State *L) {
    lua_host *h = host_of(L);
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
    lua_getfield(L, -1, name);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    if (!strcmp(name, "qlora")) {
        push_qlora_module(L);
    } else {
        bool ok = name[0] && !strstr(name, "..") && name[0] != '.';
        for (const char *c = name; *c && ok; c++)
            ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                 *c == '.' || *c == '-';
        if (!ok) return luaL_error(L, "module '%s': hooks may require only 'qlora' and .lua files next to them", name);
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, h->dir);
        luaL_addchar(&b, '/');
        for (const char *c = name; *c; c++) luaL_addchar(&b, *c == '.' ? '/' : *c);
        luaL_addstring(&b, ".lua");
        luaL_pushresult(&b);
        const char *file = lua_tostring(L, -1);
        note_loaded(h, file);
        if (luaL_loadfilex(L, file, "t") != LUA_OK)
            return luaL_error(L, "module '%s' not found: %s (hooks may require only 'qlora' and .lua files next to them)",
                              name, lua_tostring(L, -1));
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name); /* the loaded table */
    return 1;
}

/* load(chunk [, name [, mode [, env]]]) with mode forced to text */
static int sandbox_load(lua_State *L) {
    if (lua_gettop(L) < 3) lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Resolve a path for io: below write_root when there is one. Pushes the path to use. */
static void sandbox_path(lua_State *L, lua_host *h, const char *path, bool writes) {
    if (!h->write_root) {
        if (writes && !(h->caps & LUA_HOST_CAP_IO))
            luaL_error(L, "cannot write '%s': hooks may write files only with `allow: [io]` in the recipe's hooks", path);
        lua_pushstring(L, path);
        return;
    }
    for (const char *p = path; (p = strstr(p, "..")); p += 2)
        if ((p == path || p[-1] == '/') && (p[2] == 0 || p[2] == '/'))
            luaL_error(L, "cannot open '%s': '..' is not allowed in paths", path);
    size_t rl = strlen(h->write_root);
    if (path[0] != '/') {
        lua_pushfstring(L, "%s/%s", h->write_root, path);
        return;
    }
    bool inside = !strncmp(path, h->write_root, rl) && (path[rl] == '/' || path[rl] == 0);
    if (writes && !inside)
        luaL_error(L, "cannot write '%s': this script may write only below its output directory '%s'", path,
                   h->write_root);
    lua_pushstring(L, path);
}

static int sandbox_io_open(lua_State *L) {
    lua_host *h = host_of(L);
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    bool writes = strpbrk(mode, "wa+") != NULL;
    sandbox_path(L, h, path, writes);
    if (!writes) note_loaded(h, lua_tostring(L, -1));
    lua_replace(L, 1);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, LUA_MULTRET);
    return lua_gettop(L);
}

static int sandbox_io_lines(lua_State *L) {
    lua_host *h = host_of(L);
    const char *path = luaL_checkstring(L, 1); /* no filename would mean stdin */
    sandbox_path(L, h, path, false);
    note_loaded(h, lua_tostring(L, -1));
    lua_replace(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void copy_fields(lua_State *L, int from, int to, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        lua_getfield(L, from, names[i]);
        lua_setfield(L, to, names[i]);
    }
}

static int sandbox_open(lua_State *L) {
    lua_host *h = host_of(L);
    static const struct {
        const char *name;
        lua_CFunction open;
    } safe[] = {{LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string}, {LUA_TABLIBNAME, luaopen_table},
                {LUA_MATHLIBNAME, luaopen_math}, {LUA_UTF8LIBNAME, luaopen_utf8},  {LUA_COLIBNAME, luaopen_coroutine}};
    for (size_t i = 0; i < sizeof safe / sizeof safe[0]; i++) {
        luaL_requiref(L, safe[i].name, safe[i].open, 1);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    lua_setglobal(L, "dofile");
    lua_pushnil(L);
    lua_setglobal(L, "loadfile");
    lua_getglobal(L, "load");
    lua_pushcclosure(L, sandbox_load, 1);
    lua_setglobal(L, "load");
    lua_pushcfunction(L, q_print);
    lua_setglobal(L, "print");
    lua_pushcfunction(L, sandbox_require);
    lua_setglobal(L, "require");
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);

    /* os: time only, plus file removal with the io capability */
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    int full_os = lua_gettop(L);
    lua_newtable(L);
    static const char *const os_safe[] = {"clock", "time", "date", "difftime", NULL};
    static const char *const os_io[] = {"remove", "rename", "tmpname", NULL};
    copy_fields(L, full_os, full_os + 1, os_safe);
    if ((h->caps & LUA_HOST_CAP_IO) && !h->write_root) copy_fields(L, full_os, full_os + 1, os_io);
    lua_setglobal(L, "os");
    lua_pop(L, 1);

    /* io: never popen; writes through the checked open */
    luaL_requiref(L, LUA_IOLIBNAME, luaopen_io, 0);
    int full_io = lua_gettop(L);
    lua_newtable(L);
    lua_getfield(L, full_io, "open");
    lua_pushcclosure(L, sandbox_io_open, 1);
    lua_setfield(L, -2, "open");
    lua_getfield(L, full_io, "lines");
    lua_pushcclosure(L, sandbox_io_lines, 1);
    lua_setfield(L, -2, "lines");
    static const char *const io_safe[] = {"type", NULL};
    static const char *const io_cap[] = {"close", "flush", "input", "output", "read", "write", "tmpfile",
                                         "stdin", "stdout", "stderr", NULL};
    copy_fields(L, full_io, full_io + 1, io_safe);
    if ((h->caps & LUA_HOST_CAP_IO) && !h->write_root) copy_fields(L, full_io, full_io + 1, io_cap);
    lua_setglobal(L, "io");
    lua_pop(L, 1);
    return 0;
}

/* ---- lifecycle ---- */

int lua_host_opts_from_json(lua_host_opts *o, const json_t *spec) {
    memset(o, 0, sizeof *o);
    if (!spec || !json_is_object(spec)) return 0;
    json_t *allow = json_object_get(spec, "allow");
    json_t *one = NULL;
    if (json_is_string(allow)) {
        one = json_array();
        json_array_append(one, allow);
        allow = one;
    }
    if (allow && !json_is_array(allow) && !json_is_null(allow))
        return err_set(ERR_RECIPE, "hooks.allow: expected a list of capabilities (io, http)");
    size_t i;
    json_t *e;
    json_array_foreach(allow, i, e) {
        const char *s = json_string_value(e);
        if (s && !strcmp(s, "io")) o->caps |= LUA_HOST_CAP_IO;
        else if (s && !strcmp(s, "http")) o->caps |= LUA_HOST_CAP_HTTP;
        else {
            json_decref(one);
            return err_set(ERR_RECIPE, "hooks.allow: unknown capability '%s' (known: io, http)", s ? s : "?");
        }
    }
    json_decref(one);
    json_t *m = json_object_get(spec, "memory_mb");
    if (m) {
        if (!json_is_integer(m) || json_integer_value(m) < LUA_HOST_MEMORY_MB_MIN ||
            json_integer_value(m) > LUA_HOST_MEMORY_MB_MAX)
            return err_set(ERR_RECIPE, "hooks.memory_mb: expected an integer from %d to %d", LUA_HOST_MEMORY_MB_MIN,
                           LUA_HOST_MEMORY_MB_MAX);
        o->memory_limit = (size_t)json_integer_value(m) << 20;
    }
    json_t *ins = json_object_get(spec, "instructions");
    if (ins) {
        if (!json_is_integer(ins) || json_integer_value(ins) < LUA_HOST_INSTRUCTIONS_MIN ||
            json_integer_value(ins) > LUA_HOST_INSTRUCTIONS_MAX)
            return err_set(ERR_RECIPE, "hooks.instructions: expected an integer from %lld to %lld",
                           (long long)LUA_HOST_INSTRUCTIONS_MIN, (long long)LUA_HOST_INSTRUCTIONS_MAX);
        o->instruction_limit = (uint64_t)json_integer_value(ins);
    }
    return 0;
}

int lua_host_open(lua_host **out, const char *path, const lua_host_opts *opts) {
    *out = NULL;
    lua_host *h = calloc(1, sizeof *h);
    if (!h) return err_set(ERR_STAGE, "out of memory");
    lua_host_opts def = {0};
    if (!opts) opts = &def;
    h->path = strdup(path);
    h->dir = fs_dirname(path);
    h->write_root = opts->write_root ? strdup(opts->write_root) : NULL;
    if (h->write_root) {
        size_t n = strlen(h->write_root);
        while (n > 1 && h->write_root[n - 1] == '/') h->write_root[--n] = 0;
    }
    h->caps = opts->caps;
    h->mem_cap = opts->memory_limit ? opts->memory_limit : LUA_HOST_DEFAULT_MEMORY;
    h->mem_limit = SIZE_MAX;
    h->instr_limit = opts->instruction_limit ? opts->instruction_limit : LUA_HOST_DEFAULT_INSTRUCTIONS;
    h->module_ref = LUA_NOREF;
    h->loaded = json_array();
    h->L = lua_newstate(host_alloc, h);
    if (!h->L) {
        lua_host_free(&h);
        return err_set(ERR_STAGE, "%s: cannot create a Lua state", path);
    }
    *(lua_host **)lua_getextraspace(h->L) = h;
    lua_State *L = h->L;
    lua_pushcfunction(L, sandbox_open);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_host_free(&h);
        return err_set(ERR_STAGE, "%s: cannot set up the Lua sandbox (memory limit too small?)", path);
    }
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);

    int st = luaL_loadfilex(L, path, "t");
    if (st != LUA_OK) {
        int rc = err_set(ERR_RECIPE, "%s", st == LUA_ERRFILE ? "" : lua_tostring(L, -1));
        if (st == LUA_ERRFILE) rc = err_set(ERR_RECIPE, "cannot read hook '%s': %s", path, lua_tostring(L, -1));
        lua_host_free(&h);
        return rc;
    }
    int rc = lua_host_call(h, 0, 1, ERR_RECIPE, NULL, NULL);
    if (rc) {
        lua_host_free(&h);
        return rc;
    }
    if (lua_istable(L, -1)) h->module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else lua_pop(L, 1);
    *out = h;
    return 0;
}

void lua_host_free(lua_host **hp) {
    lua_host *h = *hp;
    if (!h) return;
    if (h->L) lua_close(h->L);
    free(h->path);
    free(h->dir);
    free(h->write_root);
    json_decref(h->loaded);
    free(h);
    *hp = NULL;
}

void lua_host_set_callbacks(lua_host *h, const lua_host_callbacks *cb) {
    if (cb) h->cb = *cb;
    else memset(&h->cb, 0, sizeof h->cb);
}

const char *lua_host_path(const lua_host *h) { return h->path; }
const json_t *lua_host_loaded_files(const lua_host *h) { return h->loaded; }
lua_State *lua_host_state(lua_host *h) { return h->L; }
size_t lua_host_memory_used(const lua_host *h) { return h->mem_used; }

/* pushes the value named `name` (returned table first, then globals) */
static void get_named(lua_host *h, const char *name) {
    lua_State *L = h->L;
    if (h->module_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->module_ref);
        lua_getfield(L, -1, name);
        lua_remove(L, -2);
        if (!lua_isnil(L, -1)) return;
        lua_pop(L, 1);
    }
    lua_getglobal(L, name);
}

bool lua_host_has_function(lua_host *h, const char *name) {
    get_named(h, name);
    bool ok = lua_isfunction(h->L, -1);
    lua_pop(h->L, 1);
    return ok;
}

int lua_host_push_function(lua_host *h, const char *name) {
    if (!lua_checkstack(h->L, 8)) return err_set(ERR_STAGE, "%s: out of Lua stack", h->path);
    get_named(h, name);
    if (lua_isfunction(h->L, -1)) return 0;
    lua_pop(h->L, 1);
    return err_set(ERR_RECIPE, "hook '%s' defines no function '%s'", h->path, name);
}
