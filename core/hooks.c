/* hooks.c: hook points on top of the Lua host (see hooks.h). */
#define _GNU_SOURCE
#include "hooks.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

const hooks_point_info hooks_point_table[] = {
    {"format", "format(record, ctx): a record to {prompt, response} or {segments}"},
    {"generate", "generate(ctx): records for a synthetic dataset"},
    {"lr", "lr(step, total_steps, base_lr): the learning rate schedule"},
    {"score", "score(prediction, record): a task metric for evaluate"},
    {"on_step", "on_step(metrics): after each training step (logging)"},
    {"on_eval", "on_eval(results): after each evaluation (logging)"},
    {"on_stage_end", "on_stage_end(stage, manifest): after each stage (notifications)"},
    {"on_run_end", "on_run_end(summary): at the end of the run (notifications)"},
    {"task", "task(record, ctx): a benchmark record to {text, choices, gold[, subject]} (evaluate tasks, format lua)"},
    {0}};
#define N_POINTS 9

const hooks_limit_info hooks_limit_table[] = {
    {"memory_mb", LUA_HOST_MEMORY_MB_MIN, LUA_HOST_MEMORY_MB_MAX, LUA_HOST_MEMORY_MB_DEFAULT,
     "memory cap of each hook's Lua state"},
    {"instructions", LUA_HOST_INSTRUCTIONS_MIN, LUA_HOST_INSTRUCTIONS_MAX, LUA_HOST_INSTRUCTIONS_DEFAULT,
     "instruction budget of one hook call"},
    {0}};

static bool is_setting(const char *key) {
    if (!strcmp(key, "allow")) return true;
    for (const hooks_limit_info *l = hooks_limit_table; l->name; l++)
        if (!strcmp(l->name, key)) return true;
    return false;
}

/* "format, generate, ...; settings: allow, memory_mb, instructions" for messages */
static void keys_text(char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; hooks_point_table[i].name && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? ", " : "", hooks_point_table[i].name);
    if (o < n) o += (size_t)snprintf(buf + o, n - o, "; settings: allow");
    for (const hooks_limit_info *l = hooks_limit_table; l->name && o < n; l++)
        o += (size_t)snprintf(buf + o, n - o, ", %s", l->name);
}

struct hooks {
    lua_host_opts opts;
    int n_files;
    lua_host **files;       /* one state per distinct path */
    int bound[N_POINTS];    /* index into files, -1 if unbound */
    lua_host_callbacks cb;
};

static int point_index(const char *point) {
    for (int i = 0; hooks_point_table[i].name; i++)
        if (!strcmp(hooks_point_table[i].name, point)) return i;
    return -1;
}

int hooks_bind(hooks *h, const char *point, const char *path) {
    int p = point_index(point);
    if (p < 0) return err_set(ERR_RECIPE, "hooks: unknown hook point '%s'", point);
    int f = -1;
    for (int i = 0; i < h->n_files; i++)
        if (!strcmp(lua_host_path(h->files[i]), path)) f = i;
    if (f < 0) {
        lua_host *lh;
        int rc = lua_host_open(&lh, path, &h->opts);
        if (rc) return rc;
        lua_host **nf = realloc(h->files, (size_t)(h->n_files + 1) * sizeof *nf);
        if (!nf) {
            lua_host_free(&lh);
            return err_set(ERR_STAGE, "out of memory");
        }
        h->files = nf;
        lua_host_set_callbacks(lh, &h->cb);
        f = h->n_files++;
        h->files[f] = lh;
    }
    if (!lua_host_has_function(h->files[f], point))
        return err_set(ERR_RECIPE, "hooks.%s: '%s' defines no function '%s'", point, path, point);
    h->bound[p] = f;
    return 0;
}

int hooks_open(hooks **out, const json_t *spec) {
    *out = NULL;
    hooks *h = calloc(1, sizeof *h);
    if (!h) return err_set(ERR_STAGE, "out of memory");
    for (int i = 0; i < N_POINTS; i++) h->bound[i] = -1;
    int rc = lua_host_opts_from_json(&h->opts, spec);
    if (!rc && spec && !json_is_object(spec)) rc = err_set(ERR_RECIPE, "hooks: expected a mapping of hook point to file");
    const char *k;
    json_t *v;
    if (!rc && spec) {
        json_object_foreach((json_t *)spec, k, v) {
            if (is_setting(k)) continue;
            if (point_index(k) < 0) {
                char keys[512];
                keys_text(keys, sizeof keys);
                rc = err_set(ERR_RECIPE, "hooks: unknown key '%s' (hook points: %s)", k, keys);
                break;
            }
            if (!json_is_string(v)) {
                rc = err_set(ERR_RECIPE, "hooks.%s: expected the path of a .lua file", k);
                break;
            }
            if ((rc = hooks_bind(h, k, json_string_value(v)))) break;
        }
    }
    if (rc) {
        hooks_free(&h);
        return rc;
    }
    *out = h;
    return 0;
}

void hooks_free(hooks **hp) {
    hooks *h = *hp;
    if (!h) return;
    for (int i = 0; i < h->n_files; i++) lua_host_free(&h->files[i]);
    free(h->files);
    free(h);
    *hp = NULL;
}

lua_host *hooks_host(hooks *h, const char *point) {
    int p = point_index(point);
    return h && p >= 0 && h->bound[p] >= 0 ? h->files[h->bound[p]] : NULL;
}

bool hooks_has(const hooks *h, const char *point) { return hooks_host((hooks *)h, point) != NULL; }

const char *hooks_file(const hooks *h, const char *point) {
    lua_host *lh = hooks_host((hooks *)h, point);
    return lh ? lua_host_path(lh) : NULL;
}

void hooks_loaded_files(hooks *h, const char *point, json_t *into) {
    lua_host *lh = hooks_host(h, point);
    if (!lh) return;
    size_t i, k;
    json_t *x, *y;
    json_array_foreach(lua_host_loaded_files(lh), i, x) {
        bool have = false;
        json_array_foreach(into, k, y) if (json_equal(x, y)) have = true;
        if (!have) json_array_append(into, x);
    }
}

void hooks_set_callbacks(hooks *h, const lua_host_callbacks *cb) {
    if (cb) h->cb = *cb;
    else memset(&h->cb, 0, sizeof h->cb);
    for (int i = 0; i < h->n_files; i++) lua_host_set_callbacks(h->files[i], &h->cb);
}

/* ---- format ---- */

void hooks_format_result_free(hooks_format_result *r) {
    for (int i = 0; i < r->n; i++) free(r->seg[i].text);
    free(r->seg);
    memset(r, 0, sizeof *r);
}

/* t[name] without metamethods (no Lua code runs outside a protected call) */
static int raw_field(lua_State *L, int t, const char *name) {
    t = lua_absindex(L, t);
    lua_pushstring(L, name);
    return lua_rawget(L, t);
}

static int add_segment(hooks_format_result *r, lua_State *L, int idx, bool train) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    hooks_segment *ns = realloc(r->seg, (size_t)(r->n + 1) * sizeof *ns);
    if (!ns) return err_set(ERR_STAGE, "out of memory");
    r->seg = ns;
    char *t = malloc(len + 1);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    memcpy(t, s, len);
    t[len] = 0;
    r->seg[r->n++] = (hooks_segment){t, len, train};
    return 0;
}

static int format_result_read(lua_State *L, int idx, const char *path, const char *what, hooks_format_result *r) {
    const char *shape = "format() must return {prompt=..., response=...}, {segments={{text=..., train=...}, ...}} or nil";
    memset(r, 0, sizeof *r);
    idx = lua_absindex(L, idx);
    if (lua_isnil(L, idx) || (lua_isboolean(L, idx) && !lua_toboolean(L, idx))) {
        r->kind = HOOKS_FORMAT_DROP;
        return 0;
    }
    if (!lua_istable(L, idx))
        return err_set(ERR_DATA, "%s: %s: %s, got a %s", path, what, shape, luaL_typename(L, idx));
    int rc = 0;
    if (raw_field(L, idx, "segments") != LUA_TNIL) {
        r->kind = HOOKS_FORMAT_SEGMENTS;
        if (!lua_istable(L, -1)) rc = err_set(ERR_DATA, "%s: %s: segments must be a list", path, what);
        for (lua_Integer i = 1; !rc; i++) {
            if (lua_rawgeti(L, -1, i) == LUA_TNIL) {
                lua_pop(L, 1);
                break;
            }
            if (!lua_istable(L, -1)) {
                rc = err_set(ERR_DATA, "%s: %s: segments[%lld] must be a table {text=..., train=...}", path, what,
                             (long long)i);
            } else if (raw_field(L, -1, "text") != LUA_TSTRING) {
                rc = err_set(ERR_DATA, "%s: %s: segments[%lld].text must be a string", path, what, (long long)i);
                lua_pop(L, 1);
            } else {
                int ty = raw_field(L, -2, "train");
                bool train = lua_toboolean(L, -1);
                if (ty != LUA_TNIL && ty != LUA_TBOOLEAN)
                    rc = err_set(ERR_DATA, "%s: %s: segments[%lld].train must be true or false", path, what,
                                 (long long)i);
                else
                    rc = add_segment(r, L, -2, train);
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (!rc && r->n == 0) rc = err_set(ERR_DATA, "%s: %s: segments is empty (return nil to drop a record)", path, what);
    } else {
        lua_pop(L, 1);
        r->kind = HOOKS_FORMAT_PAIR;
        int tp = raw_field(L, idx, "prompt");
        int tr = raw_field(L, idx, "response");
        if ((tp != LUA_TSTRING && tp != LUA_TNIL) || tr != LUA_TSTRING)
            rc = err_set(ERR_DATA, "%s: %s: %s (prompt is a %s, response a %s)", path, what, shape,
                         lua_typename(L, tp), lua_typename(L, tr));
        if (!rc) {
            if (tp == LUA_TNIL) {
                lua_pushliteral(L, "");
                lua_replace(L, -3);
            }
            rc = add_segment(r, L, -2, false);
            if (!rc) rc = add_segment(r, L, -1, true);
        }
        lua_pop(L, 2);
    }
    if (rc) hooks_format_result_free(r);
    return rc;
}

int hooks_format(hooks *h, const json_t *record, const json_t *ctx, const char *what, hooks_format_result *out) {
    memset(out, 0, sizeof *out);
    lua_host *lh = hooks_host(h, "format");
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    int rc = lua_host_push_function(lh, "format");
    if (!rc) rc = lua_host_push_json(lh, record);
    if (!rc && ctx) rc = lua_host_push_json(lh, ctx);
    else if (!rc) lua_newtable(L);
    if (rc) {
        lua_settop(L, top);
        return rc;
    }
    rc = lua_host_call(lh, 2, 1, ERR_DATA, "format", what);
    if (rc) return rc;
    rc = format_result_read(L, -1, lua_host_path(lh), what, out);
    lua_settop(L, top);
    return rc;
}

/* ---- generate ---- */

static int emit_value(lua_host *lh, lua_State *co, int idx, const char *what, hooks_emit_fn emit, void *ud) {
    json_t *rec;
    int rc = lua_host_to_json(lh, co, idx, &rec);
    if (rc) return err_wrap("generate() %s", what);
    return emit(ud, rec);
}

int hooks_generate(hooks *h, const json_t *ctx, hooks_emit_fn emit, void *ud) {
    lua_host *lh = hooks_host(h, "generate");
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    lua_State *co = lua_newthread(L); /* anchored on L's stack until we are done */
    int rc = lua_host_push_function(lh, "generate");
    if (!rc) rc = lua_host_push_json(lh, ctx ? ctx : json_object());
    if (rc) {
        lua_settop(L, top);
        return rc;
    }
    lua_xmove(L, co, 2);
    int nargs = 1;
    size_t count = 0;
    char what[64];
    for (;;) {
        snprintf(what, sizeof what, "record %zu", count);
        int nres = 0;
        bool done = false;
        rc = lua_host_resume(lh, co, nargs, &nres, &done, ERR_DATA, "generate", what);
        nargs = 0;
        if (rc) break;
        if (!done) {
            /* one yield, one record (yielding nil is allowed and skipped) */
            if (nres >= 1 && !lua_isnil(co, -nres)) {
                rc = emit_value(lh, co, -nres, what, emit, ud);
                count++;
            }
            lua_pop(co, nres);
            if (rc) break;
            continue;
        }
        /* returned: an optional array of records */
        if (nres >= 1 && lua_istable(co, -nres)) {
            int t = lua_absindex(co, -nres);
            for (lua_Integer i = 1; !rc; i++) {
                if (lua_rawgeti(co, t, i) == LUA_TNIL) {
                    lua_pop(co, 1);
                    break;
                }
                snprintf(what, sizeof what, "record %zu", count);
                rc = emit_value(lh, co, -1, what, emit, ud);
                count++;
                lua_pop(co, 1);
            }
        } else if (nres >= 1 && !lua_isnil(co, -nres)) {
            rc = err_set(ERR_DATA, "%s: generate() must yield records or return a list of them, not a %s",
                         lua_host_path(lh), luaL_typename(co, -nres));
        }
        break;
    }
    lua_settop(L, top);
    return rc == HOOKS_STOP ? 0 : rc;
}

/* ---- numbers and notifications ---- */

int hooks_lr(hooks *h, int64_t step, int64_t total_steps, double base_lr, double *lr) {
    lua_host *lh = hooks_host(h, "lr");
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    int rc = lua_host_push_function(lh, "lr");
    if (rc) return rc;
    lua_pushinteger(L, step);
    lua_pushinteger(L, total_steps);
    lua_pushnumber(L, base_lr);
    char what[48];
    snprintf(what, sizeof what, "step %lld", (long long)step);
    if ((rc = lua_host_call(lh, 3, 1, ERR_STAGE, "lr", what))) return rc;
    int isnum;
    double v = lua_tonumberx(L, -1, &isnum);
    lua_settop(L, top);
    if (!isnum || !isfinite(v) || v < 0)
        return err_set(ERR_STAGE, "%s: lr() for step %lld must return a finite number >= 0", lua_host_path(lh),
                       (long long)step);
    *lr = v;
    return 0;
}

/* call point(args...) where each arg is a string (s) or JSON (j), ignoring results */
static int notify(hooks *h, const char *point, const char *what, const char *arg0, const json_t *arg1) {
    lua_host *lh = hooks_host(h, point);
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    int rc = lua_host_push_function(lh, point);
    int nargs = 0;
    if (!rc && arg0) {
        lua_pushstring(L, arg0);
        nargs++;
    }
    if (!rc) rc = lua_host_push_json(lh, arg1 ? arg1 : json_null());
    if (rc) {
        lua_settop(L, top);
        return rc;
    }
    nargs++;
    rc = lua_host_call(lh, nargs, 0, ERR_STAGE, point, what);
    lua_settop(L, top);
    return rc;
}

int hooks_on_step(hooks *h, const json_t *metrics) {
    char what[48] = "";
    json_t *s = json_object_get(metrics, "step");
    if (json_is_integer(s)) snprintf(what, sizeof what, "step %lld", (long long)json_integer_value(s));
    return notify(h, "on_step", what[0] ? what : NULL, NULL, metrics);
}

int hooks_on_eval(hooks *h, const json_t *results) { return notify(h, "on_eval", NULL, NULL, results); }

int hooks_on_stage_end(hooks *h, const char *stage, const json_t *manifest) {
    char what[128];
    snprintf(what, sizeof what, "stage '%s'", stage);
    return notify(h, "on_stage_end", what, stage, manifest);
}

int hooks_on_run_end(hooks *h, const json_t *summary) { return notify(h, "on_run_end", NULL, NULL, summary); }

int hooks_score(hooks *h, const char *prediction, const json_t *record, const char *what, double *score) {
    return hooks_score_info(h, prediction, record, NULL, what, score);
}

int hooks_score_info(hooks *h, const char *prediction, const json_t *record, const json_t *info, const char *what,
                     double *score) {
    lua_host *lh = hooks_host(h, "score");
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    int rc = lua_host_push_function(lh, "score");
    if (!rc) {
        lua_pushstring(L, prediction);
        rc = lua_host_push_json(lh, record);
    }
    if (!rc && info) rc = lua_host_push_json(lh, info);
    if (rc) {
        lua_settop(L, top);
        return rc;
    }
    if ((rc = lua_host_call(lh, info ? 3 : 2, 1, ERR_DATA, "score", what))) return rc;
    int isnum = 0;
    double v = lua_isboolean(L, -1) ? (double)lua_toboolean(L, -1) : lua_tonumberx(L, -1, &isnum);
    if (lua_isboolean(L, -1)) isnum = 1;
    lua_settop(L, top);
    if (!isnum || !isfinite(v))
        return err_set(ERR_DATA, "%s: score() for %s must return a number or a boolean", lua_host_path(lh),
                       what ? what : "a record");
    *score = v;
    return 0;
}

int hooks_task(hooks *h, const json_t *record, const json_t *ctx, const char *what, json_t **out) {
    *out = NULL;
    lua_host *lh = hooks_host(h, "task");
    if (!lh) return 0;
    lua_State *L = lua_host_state(lh);
    int top = lua_gettop(L);
    int rc = lua_host_push_function(lh, "task");
    if (!rc) rc = lua_host_push_json(lh, record);
    if (!rc) rc = lua_host_push_json(lh, ctx);
    if (rc) {
        lua_settop(L, top);
        return rc;
    }
    if ((rc = lua_host_call(lh, 2, 1, ERR_DATA, "task", what))) return rc;
    if (!lua_isnil(L, -1) && !lua_istable(L, -1)) {
        const char *type = luaL_typename(L, -1); /* a static name: still valid once the value is popped */
        lua_settop(L, top);
        return err_set(ERR_DATA, "%s: task() for %s must return a table {text=, choices=, gold=} or nil, not a %s",
                       lua_host_path(lh), what ? what : "a record", type);
    }
    if (lua_istable(L, -1)) rc = lua_host_to_json(lh, L, -1, out);
    lua_settop(L, top);
    if (rc) err_wrap("%s: task() for %s", lua_host_path(lh), what ? what : "a record");
    return rc;
}
