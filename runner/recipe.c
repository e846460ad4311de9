/* recipe.c: load, merge and validate a recipe against the stage kinds' param tables. */
#define _GNU_SOURCE
#include "recipe.h"

#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "model/config.h"

#define MAX_ERRORS 20
#define MAX_EXTENDS 16

int recipe_parse_gpus(const char *text, int *gpus) {
    *gpus = 1;
    if (!text) return 0;
    if (!strcmp(text, "all")) {
        *gpus = 0;
        return 0;
    }
    char *end;
    long n = strtol(text, &end, 10);
    if (end == text || *end || n < 1 || n > 4096) return -1;
    *gpus = (int)n;
    return 0;
}

/* ---- schema of the top level and of hooks ---- */

static const param_spec top_params[] = {
    {"name", PARAM_STRING, NULL, 1, 0, NULL, "the recipe's name: names its run records and its --lock", PARAM_REQUIRED},
    {"description", PARAM_STRING, NULL, 1, 0, NULL, "free text", 0},
    {"extends", PARAM_FILE, NULL, 1, 0, NULL, "a base recipe merged key by key under this one", 0},
    {"seed", PARAM_INT, "0", 0, 4294967295.0, NULL, "the seed every stage's own seed defaults to", 0},
    {"device", PARAM_ENUM, "auto", 1, 0, "auto|cuda|cpu", "where training runs: auto picks the GPU when there is one", 0},
    {"deterministic", PARAM_BOOL, "false", 0, -1, NULL,
     "every GPU kernel sums in a fixed order, so the same recipe and seed give bit-identical losses and adapters "
     "on the same GPU model, driver and build (docs/determinism.md); train and evaluate default to it", 0},
    {"gpus", PARAM_STRING, "1", 1, 0, NULL,
     "processes to train with on this machine, one a GPU: a number or 'all' (started through mpirun; "
     "docs/multi-gpu.md)", 0},
    {"cache_dir", PARAM_STRING, NULL, 1, 0, NULL, "the artifact cache (default $QLORA_CACHE or ~/.cache/qlora-run)", 0},
    {"runs_dir", PARAM_STRING, NULL, 1, 0, NULL, "where run records go (default $QLORA_RUNS or ./runs)", 0},
    {"output_dir", PARAM_STRING, NULL, 1, 0, NULL,
     "where the exports go, one folder per export stage (OUTPUT_DIR/STAGE/adapter, ...), copied there when "
     "complete; relative to the recipe's folder; `--out DIR` overrides it (docs/exports.md)", 0},
    {"hooks", PARAM_ANY, NULL, 1, 0, NULL, "Lua hook files by hook point, and the sandbox's allowances (see below)", 0},
    {"stages", PARAM_ANY, NULL, 1, 0, NULL, "the stages: a mapping of stage name to {kind: ..., parameters}", PARAM_REQUIRED},
    {"gates", PARAM_ANY, NULL, 1, 0, NULL, "quality gates: STAGE.METRIC to {min, max, max_regression}; exports and publishing run only when all pass (see below)", 0},
    {"report_to", PARAM_LIST, "[]", 1, 0, "tensorboard", "also write the run's scalars as TensorBoard event files in the run record", 0},
    {0}};

static const param_spec gate_params[] = {
    {"min", PARAM_FLOAT, NULL, 1, 0, NULL, "the metric must be at least this", 0},
    {"max", PARAM_FLOAT, NULL, 1, 0, NULL, "the metric must be at most this", 0},
    {"max_regression", PARAM_FLOAT, NULL, 0, 1000, NULL, "at most this much worse, relative, than the last successful run (0.02: 2%)", 0},
    {"better", PARAM_ENUM, NULL, 1, 0, "lower|higher", "which way is better, for a metric whose kind does not say (Lua stages, score hooks)", 0},
    {0}};

const param_spec *recipe_top_params(void) { return top_params; }
const param_spec *recipe_gate_params(void) { return gate_params; }

/* The schema of `hooks:`, built once from core/hooks.h's table: a file for each hook point,
 * the capabilities, and the limits the Lua host applies. */
#define N_HOOK_PARAMS 24
static param_spec hook_params[N_HOOK_PARAMS];
static char hook_defaults[4][32];

const param_spec *recipe_hook_params(void) {
    if (hook_params[0].name) return hook_params;
    int n = 0, nd = 0;
    for (const hooks_point_info *p = hooks_point_table; p->name; p++)
        hook_params[n++] = (param_spec){p->name, PARAM_FILE, NULL, 1, 0, NULL, p->doc, 0};
    hook_params[n++] = (param_spec){"allow", PARAM_LIST, "[]", 1, 0, HOOKS_ALLOW_CHOICES,
                                    "capabilities granted to hooks beyond the sandbox", 0};
    for (const hooks_limit_info *l = hooks_limit_table; l->name; l++) {
        snprintf(hook_defaults[nd], sizeof hook_defaults[nd], "%lld", (long long)l->def);
        hook_params[n++] = (param_spec){l->name, PARAM_INT, hook_defaults[nd++], (double)l->min, (double)l->max, NULL, l->doc, 0};
    }
    hook_params[n] = (param_spec){0};
    return hook_params;
}

/* ---- error collection ---- */

typedef struct errs {
    char *buf;
    size_t len;
    int n;
} errs;

static void errs_addv(errs *e, const yt_node *at, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    e->n++;
    if (e->n > MAX_ERRORS) return;
    char *s = yt_located(at, "%s", msg);
    size_t l = strlen(s);
    e->buf = realloc(e->buf, e->len + l + 2);
    if (e->len) e->buf[e->len++] = '\n';
    memcpy(e->buf + e->len, s, l + 1);
    e->len += l;
    free(s);
}

static void errs_add(errs *e, const yt_node *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errs_add(errs *e, const yt_node *at, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    errs_addv(e, at, fmt, ap);
    va_end(ap);
}

static int errs_finish(errs *e) {
    if (!e->n) return 0;
    if (e->n > MAX_ERRORS) {
        char more[64];
        snprintf(more, sizeof more, "\n(%d more errors not shown)", e->n - MAX_ERRORS);
        e->buf = realloc(e->buf, e->len + strlen(more) + 1);
        strcpy(e->buf + e->len, more);
    }
    err_set(ERR_RECIPE, "%s", e->buf);
    free(e->buf);
    e->buf = NULL;
    return ERR_RECIPE;
}

/* ---- did you mean ---- */

static size_t lev(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    size_t d[65][65];
    for (size_t i = 0; i <= la; i++) d[i][0] = i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            /* a swap of two neighbours counts as one edit */
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < c) c = d[i - 2][j - 2] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

const char *recipe_suggest(const char *word, const char *const *cands, size_t n) {
    const char *best = NULL;
    size_t bd = 99, lim = strlen(word) / 3;
    if (lim < 2) lim = 2;
    for (size_t i = 0; i < n; i++) {
        size_t d = lev(word, cands[i]);
        if (d < bd) { bd = d; best = cands[i]; }
    }
    return bd <= lim ? best : NULL;
}

static char *suggest_suffix(const char *word, const char *const *cands, size_t n) {
    const char *s = recipe_suggest(word, cands, n);
    char *out;
    if (s) {
        if (asprintf(&out, " (did you mean '%s'?)", s) < 0) out = NULL;
    } else {
        out = strdup("");
    }
    return out;
}

/* split "a|b|c" into a NULL-terminated array in one allocation */
static const char **split_choices(const char *choices, size_t *n) {
    size_t cnt = 1;
    for (const char *p = choices; *p; p++) cnt += *p == '|';
    size_t len = strlen(choices) + 1;
    char **arr = malloc((cnt + 1) * sizeof *arr + len);
    char *s = (char *)(arr + cnt + 1);
    memcpy(s, choices, len);
    size_t i = 0;
    arr[i++] = s;
    for (char *p = s; *p; p++)
        if (*p == '|') { *p = 0; arr[i++] = p + 1; }
    arr[i] = NULL;
    *n = cnt;
    return (const char **)arr;
}

static bool in_choices(const char *v, const char *choices) {
    size_t n;
    const char **c = split_choices(choices, &n);
    bool ok = false;
    for (size_t i = 0; i < n; i++) ok |= !strcmp(c[i], v);
    free(c);
    return ok;
}

static char *choices_text(const char *choices) {
    char *s = strdup(choices);
    size_t n = 0;
    for (char *p = s; *p; p++) n += *p == '|';
    char *out = malloc(strlen(s) + 3 * n + 1);
    char *o = out;
    for (char *p = s; *p; p++) {
        if (*p == '|') { memcpy(o, ", ", 2); o += 2; }
        else *o++ = *p;
    }
    *o = 0;
    free(s);
    return out;
}

/* ---- merging: extends and --set ---- */

static void merge_into(yt_node *base, const yt_node *over) {
    for (size_t i = 0; i < over->n; i++) {
        const char *k = over->keys[i]->text;
        yt_node *bv = yt_map_get(base, k);
        const yt_node *ov = over->vals[i];
        if (bv && bv->type == YT_MAP && ov->type == YT_MAP) {
            /* a stage that changes its kind is replaced, not merged: old keys would not fit */
            const yt_node *bk = yt_map_get(bv, "kind"), *ok = yt_map_get(ov, "kind");
            if (bk && ok && bk->type == YT_SCALAR && ok->type == YT_SCALAR && strcmp(bk->text, ok->text)) {
                yt_map_set(base, k, yt_clone(ov), over->keys[i]);
                continue;
            }
            merge_into(bv, ov);
        } else {
            yt_map_set(base, k, yt_clone(ov), over->keys[i]);
        }
    }
}

static int load_with_extends(const char *path, int depth, char **chain, yt_node **out) {
    *out = NULL;
    if (depth >= MAX_EXTENDS) return err_set(ERR_RECIPE, "%s: 'extends' chain deeper than %d", path, MAX_EXTENDS);
    char *real = realpath(path, NULL);
    if (!real) return err_errno(ERR_RECIPE, "cannot open recipe '%s'", path);
    for (int i = 0; i < depth; i++)
        if (!strcmp(chain[i], real)) {
            free(real);
            return err_set(ERR_RECIPE, "%s: 'extends' loops back to a recipe that extends it", path);
        }
    chain[depth] = real;
    yt_node *root;
    int rc = yt_parse_file(path, &root);
    if (rc) { free(real); chain[depth] = NULL; return rc; }
    if (root->type != YT_MAP) {
        char *m = yt_located(root, "a recipe is a mapping with 'name' and 'stages', not a %s", root->type == YT_SEQ ? "list" : "single value");
        err_set(ERR_RECIPE, "%s", m);
        free(m);
        yt_free(&root);
        free(real);
        chain[depth] = NULL;
        return ERR_RECIPE;
    }
    yt_node *ext = yt_map_get(root, "extends");
    if (ext) {
        if (ext->type != YT_SCALAR || yt_is_null(ext)) {
            char *m = yt_located(ext, "'extends' takes the path of a base recipe");
            err_set(ERR_RECIPE, "%s", m);
            free(m);
            rc = ERR_RECIPE;
        } else {
            char *dir = fs_dirname(path);
            char *bp = ext->text[0] == '/' ? strdup(ext->text) : fs_join(dir, ext->text);
            free(dir);
            if (!fs_exists(bp)) {
                char *m = yt_located(ext, "base recipe '%s' does not exist", ext->text);
                err_set(ERR_RECIPE, "%s", m);
                free(m);
                rc = ERR_RECIPE;
            } else {
                yt_node *base;
                rc = load_with_extends(bp, depth + 1, chain, &base);
                if (!rc) {
                    merge_into(base, root);
                    yt_free(&root);
                    root = base;
                }
            }
            free(bp);
        }
    }
    free(real);
    chain[depth] = NULL;
    if (rc) { yt_free(&root); return rc; }
    *out = root;
    return 0;
}

static int apply_set(yt_node *root, const char *set) {
    const char *eq = strchr(set, '=');
    if (!eq || eq == set) return err_set(ERR_USAGE, "--set '%s': expected KEY.PATH=VALUE, e.g. stages.train.learning_rate=1e-4", set);
    char *path = strndup(set, (size_t)(eq - set));
    char origin[512];
    snprintf(origin, sizeof origin, "--set %s", path);
    yt_node *val;
    int rc = yt_parse_string(*(eq + 1) ? eq + 1 : "''", origin, &val);
    if (rc) { free(path); return rc; }
    yt_node *cur = root;
    char *save, *tok = strtok_r(path, ".", &save);
    while (tok) {
        char *next = strtok_r(NULL, ".", &save);
        if (!next) {
            yt_map_set(cur, tok, val, val);
            val = NULL;
            break;
        }
        yt_node *child = yt_map_get(cur, tok);
        if (!child && cur != root && cur == yt_map_get(root, "stages") && strcmp(next, "kind")) {
            /* a typo in a stage name would otherwise make a new stage without a kind */
            const char **names = malloc((cur->n ? cur->n : 1) * sizeof *names);
            for (size_t k = 0; names && k < cur->n; k++) names[k] = cur->keys[k]->text;
            const char *sug = names ? recipe_suggest(tok, names, cur->n) : NULL;
            char hint[160] = "";
            if (sug) snprintf(hint, sizeof hint, " (did you mean '%s'?)", sug);
            rc = err_set(ERR_USAGE, "--set %.*s: the recipe has no stage '%s'%s; a new stage needs its kind first "
                                    "(--set stages.%s.kind=...)", (int)(eq - set), set, tok, hint, tok);
            free(names);
            break;
        }
        if (!child) {
            child = yt_new_map(val);
            yt_map_set(cur, tok, child, val);
        } else if (child->type != YT_MAP) {
            rc = err_set(ERR_USAGE, "--set %.*s: '%s' is not a mapping, so it has no key '%s'", (int)(eq - set), set, tok, next);
            break;
        }
        cur = child;
        tok = next;
    }
    if (val) yt_free(&val);
    free(path);
    return rc;
}

/* ---- typed values ---- */

static const char *type_name(param_type t) {
    switch (t) {
    case PARAM_STRING: return "a string";
    case PARAM_INT: return "an integer";
    case PARAM_FLOAT: return "a number";
    case PARAM_BOOL: return "true or false";
    case PARAM_ENUM: return "one of the allowed values";
    case PARAM_LIST: return "a list";
    case PARAM_REF: return "a stage name";
    case PARAM_FILE: return "a file path";
    case PARAM_FILES: return "a file path, glob or list of them";
    case PARAM_ANY: return "a value";
    case PARAM_ENTRIES: return "a list of entries";
    }
    return "?";
}

static const char *node_what(const yt_node *n) {
    if (n->type == YT_MAP) return "a mapping";
    if (n->type == YT_SEQ) return "a list";
    return n->quoted ? "a quoted string" : "a plain value";
}

static char *resolve_path(const yt_node *at, const char *p) {
    if (p[0] == '/') return strdup(p);
    char *dir = at && at->file && at->file[0] != '-' ? fs_dirname(at->file) : strdup(".");
    char *full = fs_join(dir, p);
    free(dir);
    char *real = realpath(full, NULL);
    if (real) { free(full); return real; }
    return full;
}

typedef struct vctx {
    errs *e;
    const char *where; /* "stage 'train'" for messages */
    json_t *key_files; /* paths of files that enter the cache key */
    const param_spec *table; /* the kind's params (for PARAM_ENTRIES) */
} vctx;

static void add_key_file(vctx *v, const char *path) {
    if (!v->key_files) return;
    size_t i;
    json_t *x;
    json_array_foreach(v->key_files, i, x) if (!strcmp(json_string_value(x), path)) return;
    json_array_append_new(v->key_files, json_string(path));
}

/* a kind's own key paths (stage_kind.key_paths): resolved against the recipe's folder and made
 * absolute (the plan labels files relative to the recipe); a file that does not exist is a recipe
 * error at the stage, a folder that does not exist is the stage's to report */
typedef struct kind_paths {
    vctx *v;
    const char *recipe_dir;
    const yt_node *at;
} kind_paths;

static void add_kind_path(void *ud, const char *path, stage_key_path what) {
    kind_paths *k = ud;
    char *given = path[0] == '/' ? strdup(path) : fs_join(k->recipe_dir, path);
    char *real = given ? realpath(given, NULL) : NULL;
    bool is_dir = real && fs_is_dir(real);
    if (what == STAGE_KEY_DIR ? is_dir : real && !is_dir) add_key_file(k->v, real);
    else if (what == STAGE_KEY_FILE)
        errs_add(k->v->e, k->at, "%s: file '%s' does not exist (looked for '%s')", k->v->where, path, given ? given : path);
    free(real);
    free(given);
}

static json_t *typed_value(vctx *v, const param_spec *s, const yt_node *n);

/* PARAM_ENTRIES: each entry a mapping of the kind's PARAM_ENTRY keys, typed by their own specs */
static json_t *entries_value(vctx *v, const param_spec *s, const yt_node *n) {
    if (n->type != YT_SEQ) {
        errs_add(v->e, n, "%s: '%s' must be a list of entries (- key: value ...)", v->where, s->name);
        return NULL;
    }
    size_t nspec = 0;
    const char *names[128];
    for (const param_spec *t = v->table; t && t->name && nspec < 128; t++)
        if (t->flags & (PARAM_ENTRY | PARAM_ENTRY_ONLY)) names[nspec++] = t->name;
    json_t *arr = json_array();
    bool bad = false;
    for (size_t i = 0; i < n->n; i++) {
        const yt_node *m = n->vals[i];
        if (m->type != YT_MAP) {
            errs_add(v->e, m, "%s: each entry of '%s' must be a mapping (- path: ...)", v->where, s->name);
            bad = true;
            continue;
        }
        json_t *o = json_object();
        for (size_t k = 0; k < m->n; k++) {
            const char *key = m->keys[k]->text;
            const param_spec *es = NULL;
            for (const param_spec *t = v->table; t && t->name; t++)
                if ((t->flags & (PARAM_ENTRY | PARAM_ENTRY_ONLY)) && !strcmp(t->name, key)) es = t;
            if (!es) {
                char *sug = suggest_suffix(key, names, nspec);
                errs_add(v->e, m->keys[k], "%s: '%s' entry %zu: unknown key '%s'%s", v->where, s->name, i, key, sug);
                free(sug);
                bad = true;
                continue;
            }
            json_t *j = yt_is_null(m->vals[k]) ? json_null() : typed_value(v, es, m->vals[k]);
            if (!j) { bad = true; continue; }
            json_object_set_new(o, key, j);
        }
        json_array_append_new(arr, o);
    }
    if (bad) { json_decref(arr); return NULL; }
    return arr;
}

/* The hooks that shape stage rs: the recipe's hooks for its kind's points (already open in h)
 * and its own hook-file params (PARAM_HOOK), opened here with the recipe's allowances so a
 * syntax error or a missing function is found now, located at the param. The files those
 * hooks loaded while their top level ran (require "helper") enter the stage's key; files
 * they read only when called are recorded by the run (stage_note_hook_files). */
static void open_stage_hooks(errs *e, recipe_stage *rs, hooks *h, const json_t *hk) {
    vctx v = {e, NULL, rs->key_files, NULL};
    json_t *loaded = json_array();
    const char *kh = rs->kind->key_hooks;
    if (kh && *kh) {
        size_t nh;
        const char **pts = split_choices(kh, &nh);
        for (size_t k = 0; k < nh; k++)
            if (hooks_has(h, pts[k])) {
                rs->hook_shaped = true;
                hooks_loaded_files(h, pts[k], loaded);
            }
        free(pts);
    }
    json_t *opts = json_object();
    const char *settings[] = {"allow", "memory_mb", "instructions"};
    for (int k = 0; k < 3; k++)
        if (json_object_get(hk, settings[k])) json_object_set(opts, settings[k], json_object_get(hk, settings[k]));
    hooks *own = NULL;
    for (const param_spec *p = rs->kind->params; rs->params && p->name; p++) {
        const char *path = json_string_value(json_object_get(rs->params, p->name));
        if (!(p->flags & PARAM_HOOK) || !path) continue;
        rs->hook_shaped = true;
        if (!own && hooks_open(&own, opts)) {
            err_clear();
            break;
        }
        const yt_node *at = yt_map_get(rs->node, p->name);
        if (hooks_bind(own, p->choices, path)) {
            errs_add(e, at ? at : rs->node, "stage '%s': %s: %s", rs->name, p->name, err_msg());
            err_clear();
            continue;
        }
        hooks_loaded_files(own, p->choices, loaded);
    }
    hooks_free(&own);
    json_decref(opts);
    size_t i;
    json_t *x;
    json_array_foreach(loaded, i, x) add_key_file(&v, json_string_value(x));
    json_decref(loaded);
}

/* Convert node n to JSON per spec; NULL (with an error recorded) when it does not fit. */
/* For a message about a value not among choices: the "(did you mean ...)" suffix and the allowed
 * values as text. Free both. */
static void choices_hint(const char *choices, const char *given, char **sug, char **all) {
    size_t nc;
    const char **c = split_choices(choices, &nc);
    *sug = suggest_suffix(given, c, nc);
    *all = choices_text(choices);
    free(c);
}

/* A PARAM_FILES item: a glob next to the recipe; every file it matches goes into arr (absolute)
 * and into the key. False (with the error) when it matches none. */
static bool files_item(vctx *v, const yt_node *it, json_t *arr) {
    char *p = resolve_path(it, it->text);
    glob_t g;
    int gr = glob(p, 0, NULL, &g);
    if (gr != 0 || g.gl_pathc == 0) {
        errs_add(v->e, it, "%s: '%s' matches no file (looked for '%s')", v->where, it->text, p);
        if (gr == 0) globfree(&g);
        free(p);
        return false;
    }
    for (size_t k = 0; k < g.gl_pathc; k++) {
        char *rp = realpath(g.gl_pathv[k], NULL);
        json_array_append_new(arr, json_string(rp ? rp : g.gl_pathv[k]));
        add_key_file(v, rp ? rp : g.gl_pathv[k]);
        free(rp);
    }
    globfree(&g);
    free(p);
    return true;
}

/* PARAM_LIST and PARAM_FILES: a list of plain values, or one value standing for a list of one. */
static json_t *list_value(vctx *v, const param_spec *s, const yt_node *n) {
    if (n->type == YT_MAP) {
        errs_add(v->e, n, "%s: '%s' must be %s, not a mapping", v->where, s->name, type_name(s->type));
        return NULL;
    }
    json_t *arr = json_array();
    size_t cnt = n->type == YT_SEQ ? n->n : 1;
    for (size_t i = 0; i < cnt; i++) {
        const yt_node *it = n->type == YT_SEQ ? n->vals[i] : n;
        if (it->type != YT_SCALAR || yt_is_null(it)) {
            errs_add(v->e, it, "%s: each item of '%s' must be a plain value", v->where, s->name);
            json_decref(arr);
            return NULL;
        }
        if (s->type == PARAM_LIST && s->choices && !in_choices(it->text, s->choices)) {
            char *sug, *all;
            choices_hint(s->choices, it->text, &sug, &all);
            errs_add(v->e, it, "%s: '%s' is not allowed in '%s'%s; allowed: %s", v->where, it->text, s->name, sug, all);
            free(sug);
            free(all);
            json_decref(arr);
            return NULL;
        }
        if (s->type == PARAM_LIST) json_array_append_new(arr, json_string(it->text));
        else if (!files_item(v, it, arr)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* PARAM_STRING; with PARAM_PATH_OR_WORD, a path next to the recipe (it must exist, and its content,
 * a directory's files, enters the key) or one of the keywords. */
static json_t *string_value(vctx *v, const param_spec *s, const yt_node *n) {
    const char *t = n->text;
    char *p = (s->flags & PARAM_PATH_OR_WORD) ? resolve_path(n, t) : NULL;
    if (p && (strchr(t, '/') || strchr(t, '.') || fs_exists(p))) {
        if (!fs_exists(p)) {
            errs_add(v->e, n, "%s: '%s' names '%s', which does not exist (paths are relative to the recipe's directory)", v->where, s->name, t);
            free(p);
            return NULL;
        }
        add_key_file(v, p);
        json_t *j = json_string(p);
        free(p);
        return j;
    }
    free(p);
    if ((s->flags & PARAM_PATH_OR_WORD) && s->choices && !in_choices(t, s->choices)) {
        char *sug, *all;
        choices_hint(s->choices, t, &sug, &all);
        errs_add(v->e, n, "%s: %s '%s' is neither a keyword (%s) nor a file or directory next to the recipe%s",
                 v->where, s->name, t, all, sug);
        free(sug);
        free(all);
        return NULL;
    }
    return json_string(t);
}

static json_t *bool_value(vctx *v, const param_spec *s, const yt_node *n) {
    const char *t = n->text;
    if (!n->quoted && (!strcmp(t, "true") || !strcmp(t, "True"))) return json_true();
    if (!n->quoted && (!strcmp(t, "false") || !strcmp(t, "False"))) return json_false();
    errs_add(v->e, n, "%s: '%s' must be true or false, not '%s'", v->where, s->name, t);
    return NULL;
}

/* a number within the spec's [min, max] (no bounds when min > max); else the error, the value as
 * shown */
static bool in_range(vctx *v, const param_spec *s, const yt_node *n, double x, const char *shown) {
    if (s->min > s->max || (x >= s->min && x <= s->max)) return true;
    errs_add(v->e, n, "%s: '%s' is %s, out of range [%.15g, %.15g]", v->where, s->name, shown, s->min, s->max);
    return false;
}

static json_t *int_value(vctx *v, const param_spec *s, const yt_node *n) {
    const char *t = n->text;
    char *end;
    errno = 0;
    long long x = strtoll(t, &end, 10);
    if (n->quoted || !*t || *end || errno) {
        /* 1e3 or 1000.0 written for an integer: accept when exact */
        double d = strtod(t, &end);
        if (!n->quoted && *t && !*end && isfinite(d) && d == floor(d) && fabs(d) < 9e15) x = (long long)d;
        else {
            errs_add(v->e, n, "%s: '%s' must be an integer, not '%s'", v->where, s->name, t);
            return NULL;
        }
    }
    char shown[32];
    snprintf(shown, sizeof shown, "%lld", x);
    return in_range(v, s, n, (double)x, shown) ? json_integer(x) : NULL;
}

static json_t *float_value(vctx *v, const param_spec *s, const yt_node *n) {
    const char *t = n->text;
    char *end;
    errno = 0;
    double d = strtod(t, &end);
    if (n->quoted || !*t || *end || errno || !isfinite(d)) {
        errs_add(v->e, n, "%s: '%s' must be a number, not '%s'", v->where, s->name, t);
        return NULL;
    }
    char shown[32];
    snprintf(shown, sizeof shown, "%g", d);
    return in_range(v, s, n, d, shown) ? json_real(d) : NULL;
}

static json_t *enum_value(vctx *v, const param_spec *s, const yt_node *n) {
    const char *t = n->text;
    if (in_choices(t, s->choices)) return json_string(t);
    char *sug, *all;
    choices_hint(s->choices, t, &sug, &all);
    errs_add(v->e, n, "%s: '%s' must be one of %s, not '%s'%s", v->where, s->name, all, t, sug);
    free(sug);
    free(all);
    return NULL;
}

/* PARAM_FILE: a file next to the recipe (absolute in the result); its content enters the key. */
static json_t *file_value(vctx *v, const param_spec *s, const yt_node *n) {
    (void)s;
    const char *t = n->text;
    char *p = resolve_path(n, t);
    if (!fs_exists(p) || fs_is_dir(p)) {
        errs_add(v->e, n, "%s: file '%s' does not exist (paths are relative to the recipe's directory)", v->where, t);
        free(p);
        return NULL;
    }
    add_key_file(v, p);
    json_t *j = json_string(p);
    free(p);
    return j;
}

/* One parameter's YAML value checked against its spec and typed: NULL after an error (added to
 * v->e with the node's position). */
static json_t *typed_value(vctx *v, const param_spec *s, const yt_node *n) {
    if (s->type == PARAM_ANY) return yt_to_json(n);
    if (s->type == PARAM_ENTRIES) return entries_value(v, s, n);
    if (s->type == PARAM_LIST || s->type == PARAM_FILES) return list_value(v, s, n);
    if (n->type != YT_SCALAR) {
        errs_add(v->e, n, "%s: '%s' must be %s, not %s", v->where, s->name, type_name(s->type), node_what(n));
        return NULL;
    }
    switch (s->type) {
    case PARAM_STRING: return string_value(v, s, n);
    case PARAM_REF: return json_string(n->text); /* checked once every stage is known */
    case PARAM_BOOL: return bool_value(v, s, n);
    case PARAM_INT: return int_value(v, s, n);
    case PARAM_FLOAT: return float_value(v, s, n);
    case PARAM_ENUM: return enum_value(v, s, n);
    case PARAM_FILE: return file_value(v, s, n);
    default: return yt_to_json(n);
    }
}

static json_t *default_value(const param_spec *s) {
    if (!s->def) return json_null();
    if (!*s->def) return json_string("");
    yt_node *n;
    if (yt_parse_string(s->def, "(default)", &n)) { err_clear(); return json_null(); }
    errs e = {0};
    vctx v = {&e, "default", NULL, NULL};
    json_t *j;
    if (s->type == PARAM_FILE || s->type == PARAM_FILES) j = yt_to_json(n); /* defaults name no files */
    else j = typed_value(&v, s, n);
    free(e.buf);
    yt_free(&n);
    return j ? j : json_null();
}

/* Validate mapping `m` against spec; returns a resolved object (NULL on error, recorded). */
static json_t *validate_map(vctx *v, const param_spec *spec, const yt_node *m, const char *skip_key) {
    json_t *out = json_object();
    bool bad = false;
    size_t nspec = 0;
    for (const param_spec *s = spec; s->name; s++) nspec++;
    const char **names = malloc((nspec + 1) * sizeof *names);
    for (size_t i = 0; i < nspec; i++) names[i] = spec[i].name;
    for (size_t i = 0; i < m->n; i++) {
        const char *k = m->keys[i]->text;
        if (skip_key && !strcmp(k, skip_key)) continue;
        const param_spec *s = NULL;
        for (size_t j = 0; j < nspec; j++)
            if (!strcmp(spec[j].name, k)) s = &spec[j];
        if (!s) {
            char *sug = suggest_suffix(k, names, nspec);
            errs_add(v->e, m->keys[i], "%s: unknown key '%s'%s", v->where, k, sug);
            free(sug);
            bad = true;
            continue;
        }
        if (s->flags & PARAM_ENTRY_ONLY) {
            const char *list = "the list";
            for (const param_spec *t = spec; t->name; t++)
                if (t->type == PARAM_ENTRIES) list = t->name;
            errs_add(v->e, m->keys[i], "%s: '%s' is set per entry of '%s', not for the whole stage", v->where, k, list);
            bad = true;
            continue;
        }
        if (yt_is_null(m->vals[i])) {
            if (s->flags & PARAM_REQUIRED) {
                errs_add(v->e, m->vals[i], "%s: '%s' needs a value", v->where, k);
                bad = true;
            }
            json_object_set_new(out, k, json_null());
            continue;
        }
        json_t *j = typed_value(v, s, m->vals[i]);
        if (!j) { bad = true; continue; }
        json_object_set_new(out, k, j);
    }
    /* defaults and required keys, in table order for a readable `show` */
    json_t *ordered = json_object();
    for (size_t j = 0; j < nspec; j++) {
        const param_spec *s = &spec[j];
        json_t *have = json_object_get(out, s->name);
        if (have) {
            json_object_set(ordered, s->name, have);
        } else if (s->flags & PARAM_ENTRY_ONLY) {
            continue; /* never at the top */
        } else if (s->flags & PARAM_REQUIRED) {
            errs_add(v->e, m, "%s: missing required key '%s' (%s)", v->where, s->name, s->doc);
            bad = true;
        } else {
            json_object_set_new(ordered, s->name, default_value(s));
        }
    }
    json_decref(out);
    free(names);
    if (bad) { json_decref(ordered); return NULL; }
    return ordered;
}

/* ---- the whole recipe ---- */

static bool valid_stage_name(const char *s) {
    if (!*s || strlen(s) > 64) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return false;
    return true;
}

static bool test_kinds_enabled(void) {
    const char *e = getenv("QLORA_TEST_KINDS");
    return e && !strcmp(e, "1");
}

static const char **kind_names(size_t *n) {
    const stage_kind *const *all = stage_kind_all();
    size_t c = 0;
    while (all[c]) c++;
    const char **names = malloc((c + 1) * sizeof *names);
    size_t k = 0;
    for (size_t i = 0; i < c; i++)
        if (strncmp(all[i]->name, "test_", 5) || test_kinds_enabled()) names[k++] = all[i]->name;
    names[k] = NULL;
    *n = k;
    return names;
}

int recipe_stage_index(const recipe *r, const char *name) {
    for (int i = 0; i < r->n_stages; i++)
        if (!strcmp(r->stages[i].name, name)) return i;
    return -1;
}

static void stage_free(recipe_stage *s) {
    free(s->name);
    json_decref(s->params);
    json_decref(s->key_files);
    json_decref(s->hooks);
    for (int i = 0; i < s->n_refs; i++) free(s->refs[i].role);
}

void recipe_free(recipe **pr) {
    recipe *r = *pr;
    if (!r) return;
    for (int i = 0; i < r->n_stages; i++) stage_free(&r->stages[i]);
    free(r->stages);
    free(r->path);
    free(r->dir);
    free(r->name);
    free(r->cache_dir);
    free(r->runs_dir);
    free(r->output_dir);
    json_decref(r->hooks);
    json_decref(r->resolved);
    for (int i = 0; i < r->n_gates; i++) {
        free(r->gates[i].label);
        free(r->gates[i].stage);
        free(r->gates[i].metric);
    }
    free(r->gates);
    yt_free(&r->root);
    free(r);
    *pr = NULL;
}

/* The stages in a new order (order[i]: the old index of the stage that goes to place i), their
 * references remapped. */
static void stages_reorder(recipe *r, const int *order) {
    int n = r->n_stages;
    recipe_stage *ns = malloc((size_t)n * sizeof *ns);
    int *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++) pos[order[i]] = i;
    for (int i = 0; i < n; i++) {
        ns[i] = r->stages[order[i]];
        for (int k = 0; k < ns[i].n_refs; k++) ns[i].refs[k].target = pos[ns[i].refs[k].target];
    }
    free(r->stages);
    r->stages = ns;
    free(pos);
}

/* Topological sort (Kahn, stable by recipe order); on a cycle, name it. */
static int toposort(recipe *r, errs *e) {
    int n = r->n_stages;
    int *state = calloc((size_t)n, sizeof *state), *order = malloc((size_t)n * sizeof *order), *stack = malloc((size_t)n * sizeof *stack);
    int no = 0, rc = 0;
    /* DFS for a readable cycle message */
    for (int s = 0; s < n && !rc; s++) {
        if (state[s]) continue;
        int sp = 0;
        int *next = calloc((size_t)n, sizeof *next);
        stack[sp++] = s;
        state[s] = 1;
        while (sp && !rc) {
            int u = stack[sp - 1];
            if (next[u] < r->stages[u].n_refs) {
                int w = r->stages[u].refs[next[u]++].target;
                if (state[w] == 1) {
                    /* the cycle is w ... u -> w on the stack */
                    char buf[2048] = "";
                    int from = 0;
                    while (stack[from] != w) from++;
                    for (int i = from; i < sp; i++) {
                        strncat(buf, r->stages[stack[i]].name, sizeof buf - strlen(buf) - 5);
                        strncat(buf, " -> ", sizeof buf - strlen(buf) - 1);
                    }
                    strncat(buf, r->stages[w].name, sizeof buf - strlen(buf) - 1);
                    errs_add(e, r->stages[u].node, "stages form a cycle: %s (a stage's inputs must come before it)", buf);
                    rc = ERR_RECIPE;
                } else if (state[w] == 0) {
                    state[w] = 1;
                    stack[sp++] = w;
                }
            } else {
                state[u] = 2;
                order[no++] = u;
                sp--;
            }
        }
        free(next);
    }
    if (!rc) stages_reorder(r, order);
    free(state);
    free(order);
    free(stack);
    return rc;
}

/* ---- the models, before anything runs ---- */

/* the preview of stage i's "model" input (NULL when it has none or it is not known) */
static const stage_model_preview *model_input(const recipe *r, const stage_model_preview *pv, int i) {
    for (int k = 0; k < r->stages[i].n_refs; k++)
        if (!strcmp(r->stages[i].refs[k].role, "model"))
            return pv[r->stages[i].refs[k].target].config ? &pv[r->stages[i].refs[k].target] : NULL;
    return NULL;
}

/* What each stage's model will be, as far as that is known before anything runs (its kind's
 * model_preview: a generated model from its params, a local folder's config.json read as the
 * stages will read it, passed on through quantize_nf4), and each kind's check_model against its
 * model input's: an architecture, rope type or field a local config.json has and the engine does
 * not support, or a LoRA target the family lacks, refuses the recipe before any stage runs or
 * writes to the cache. Stages are in topological order. */
static void preview_models(recipe *r, errs *e) {
    stage_model_preview *pv = calloc((size_t)(r->n_stages ? r->n_stages : 1), sizeof *pv);
    for (int i = 0; pv && i < r->n_stages; i++) {
        recipe_stage *rs = &r->stages[i];
        if (!rs->params) continue;
        const stage_model_preview *in = model_input(r, pv, i);
        if (rs->kind->model_preview && rs->kind->model_preview(rs->params, r->dir, in, &pv[i])) {
            errs_add(e, rs->node, "stage '%s': %s", rs->name, err_msg());
            err_clear();
            continue;
        }
        const char *key = NULL;
        if (in && rs->kind->check_model && rs->kind->check_model(rs->params, in->config, &key)) {
            const yt_node *at = key ? yt_map_get(rs->node, key) : NULL;
            char model[PATH_MAX + 32] = "", dflt[128] = "";
            if (in->from) snprintf(model, sizeof model, " (the model: %s)", in->from);
            if (key && !at) snprintf(dflt, sizeof dflt, " (%s is not set: its default)", key);
            errs_add(e, at ? at : rs->node, "stage '%s': %s%s%s", rs->name, err_msg(), dflt, model);
            err_clear();
        }
    }
    for (int i = 0; pv && i < r->n_stages; i++) stage_model_preview_free(&pv[i]);
    free(pv);
}

bool recipe_stage_held(const recipe *r, int i) {
    if (r->stages[i].kind->flags & STAGE_KIND_PUBLISHES) return true;
    for (int k = 0; k < r->stages[i].n_refs; k++)
        if (recipe_stage_held(r, r->stages[i].refs[k].target)) return true;
    return false;
}

/* ---- gates ---- */

static const char *better_word(metric_better b) { return b == METRIC_LOWER ? "lower" : b == METRIC_HIGHER ? "higher" : "neither"; }

/* One `STAGE.METRIC: {conditions}` entry; false (with errors recorded) when it does not fit. */
static bool load_gate(recipe *r, errs *e, const yt_node *key, const yt_node *val, recipe_gate *g) {
    const char *label = key->text, *dot = strchr(label, '.');
    if (!dot || dot == label || !dot[1]) {
        errs_add(e, key, "gates: '%s' must name STAGE.METRIC, e.g. eval.val_loss", label);
        return false;
    }
    char *stage = strndup(label, (size_t)(dot - label));
    int si = recipe_stage_index(r, stage);
    if (si < 0) {
        const char **names = malloc((size_t)(r->n_stages + 1) * sizeof *names);
        for (int k = 0; k < r->n_stages; k++) names[k] = r->stages[k].name;
        char *sug = suggest_suffix(stage, names, (size_t)r->n_stages);
        errs_add(e, key, "gates: '%s' names stage '%s', which does not exist%s", label, stage, sug);
        free(sug);
        free(names);
        free(stage);
        return false;
    }
    const stage_kind *kind = r->stages[si].kind;
    const metric_spec *ms = stage_metric_find(kind, dot + 1);
    if (!ms) {
        size_t nm = 0;
        for (const metric_spec *m = kind->metrics; m && m->name; m++) nm++;
        const char **names = malloc((nm + 1) * sizeof *names);
        size_t tot = 1;
        for (size_t k = 0; k < nm; k++) names[k] = kind->metrics[k].name, tot += strlen(names[k]) + 2;
        char *all = calloc(1, tot);
        for (size_t k = 0; k < nm; k++) { if (k) strcat(all, ", "); strcat(all, names[k]); }
        char *sug = suggest_suffix(dot + 1, names, nm);
        if (nm) errs_add(e, key, "gates: a %s stage records no metric '%s'%s; it records: %s", kind->name, dot + 1, sug, all);
        else errs_add(e, key, "gates: a %s stage records no metrics, so '%s' cannot be gated", kind->name, label);
        free(sug);
        free(all);
        free(names);
        free(stage);
        return false;
    }
    if (val->type != YT_MAP) {
        errs_add(e, val, "gates: '%s' takes a mapping of conditions, e.g. {max: 1.2, max_regression: 0.02}", label);
        free(stage);
        return false;
    }
    char where[256];
    snprintf(where, sizeof where, "gate '%s'", label);
    vctx v = {e, where, NULL, gate_params};
    json_t *c = validate_map(&v, gate_params, val, NULL);
    if (!c) { free(stage); return false; }
    bool ok = true;
    *g = (recipe_gate){.label = strdup(label), .stage = stage, .metric = strdup(dot + 1), .better = ms->better, .node = key};
    json_t *x;
    if (json_is_number(x = json_object_get(c, "min"))) g->has_min = true, g->min = json_number_value(x);
    if (json_is_number(x = json_object_get(c, "max"))) g->has_max = true, g->max = json_number_value(x);
    if (json_is_number(x = json_object_get(c, "max_regression")))
        g->has_regression = true, g->max_regression = json_number_value(x);
    const char *bw = json_string_value(json_object_get(c, "better"));
    if (bw) {
        metric_better want = !strcmp(bw, "lower") ? METRIC_LOWER : METRIC_HIGHER;
        if (ms->better != METRIC_ANY && ms->better != want) {
            errs_add(e, yt_map_get(val, "better"), "%s: a %s stage's '%s' is better %s; 'better: %s' contradicts it", where,
                     kind->name, g->metric, better_word(ms->better), bw);
            ok = false;
        }
        g->better = want;
    } else if (ms->better == METRIC_ANY) {
        g->better = METRIC_NEITHER;
    }
    if (!g->has_min && !g->has_max && !g->has_regression) {
        errs_add(e, val, "%s: no condition: give min, max or max_regression", where);
        ok = false;
    }
    if (g->has_min && g->has_max && g->min > g->max) {
        errs_add(e, val, "%s: min %g is above max %g: no value can pass", where, g->min, g->max);
        ok = false;
    }
    if (g->has_regression && g->better == METRIC_NEITHER) {
        if (ms->better == METRIC_ANY)
            errs_add(e, yt_map_get(val, "max_regression"), "%s: max_regression needs to know which way is worse: add 'better: lower' or 'better: higher'", where);
        else
            errs_add(e, yt_map_get(val, "max_regression"), "%s: a %s stage's '%s' is neither better high nor low; use min or max", where, kind->name, g->metric);
        ok = false;
    }
    json_decref(c);
    return ok;
}

static void load_gates(recipe *r, const yt_node *gn, errs *e) {
    if (!gn || yt_is_null(gn)) return;
    if (gn->type != YT_MAP) {
        errs_add(e, gn, "recipe: 'gates' must be a mapping of STAGE.METRIC to conditions, e.g. {eval.val_loss: {max: 1.2}}");
        return;
    }
    r->gates = calloc(gn->n ? gn->n : 1, sizeof *r->gates);
    for (size_t i = 0; i < gn->n; i++) {
        recipe_gate g = {0};
        if (load_gate(r, e, gn->keys[i], gn->vals[i], &g)) {
            int si = recipe_stage_index(r, g.stage);
            if (recipe_stage_held(r, si))
                errs_add(e, gn->keys[i], "gates: '%s' gates stage '%s', which exports or publishes (or reads what does): a gate must hold such stages back, so it cannot wait for one",
                         g.label, g.stage);
            r->gates[r->n_gates++] = g;
        } else {
            free(g.label);
            free(g.stage);
            free(g.metric);
        }
    }
}

/* With gates, the held-back stages go last (stable): a valid topological order still, since
 * every stage that reads a held one is held too. */
static void order_held_last(recipe *r) {
    int n = r->n_stages, *order = malloc((size_t)n * sizeof *order), no = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if (recipe_stage_held(r, i) == (pass == 1)) order[no++] = i;
    stages_reorder(r, order);
    free(order);
}

static json_t *gates_json(const recipe *r) {
    json_t *o = json_object();
    for (int i = 0; i < r->n_gates; i++) {
        const recipe_gate *g = &r->gates[i];
        json_t *c = json_object();
        if (g->has_min) json_object_set_new(c, "min", json_real(g->min));
        if (g->has_max) json_object_set_new(c, "max", json_real(g->max));
        if (g->has_regression) json_object_set_new(c, "max_regression", json_real(g->max_regression));
        if (g->better != METRIC_NEITHER) json_object_set_new(c, "better", json_string(better_word(g->better)));
        json_object_set_new(o, g->label, c);
    }
    return o;
}

/* ---- recipe_load, in its steps ---- */

/* the top-level keys: name, seed, device, cache and runs directories (absolute) */
static json_t *load_top(recipe *r, errs *e) {
    vctx v = {e, "recipe", NULL, NULL};
    json_t *top = validate_map(&v, top_params, r->root, NULL);
    if (!top) return NULL;
    r->name = strdup(json_string_value(json_object_get(top, "name")));
    r->seed = (uint64_t)json_integer_value(json_object_get(top, "seed"));
    snprintf(r->device, sizeof r->device, "%s", json_string_value(json_object_get(top, "device")));
    r->deterministic = json_is_true(json_object_get(top, "deterministic"));
    const char *g = json_string_value(json_object_get(top, "gpus"));
    if (recipe_parse_gpus(g, &r->gpus))
        errs_add(e, yt_map_get(r->root, "gpus"), "recipe: 'gpus' must be a number of GPUs (1 to 4096) or 'all', not '%s'", g);
    const char *cd = json_string_value(json_object_get(top, "cache_dir"));
    const char *rd = json_string_value(json_object_get(top, "runs_dir"));
    if (cd) r->cache_dir = cd[0] == '/' ? strdup(cd) : fs_join(r->dir, cd);
    if (rd) r->runs_dir = rd[0] == '/' ? strdup(rd) : fs_join(r->dir, rd);
    const char *od = json_string_value(json_object_get(top, "output_dir"));
    if (od && !*od) errs_add(e, yt_map_get(r->root, "output_dir"), "recipe: 'output_dir' is empty: name a folder for the exports");
    else if (od) r->output_dir = od[0] == '/' ? strdup(od) : fs_join(r->dir, od);
    /* absolute, so stages may change directory freely */
    char *absdir = realpath(r->dir, NULL);
    if (absdir) {
        if (cd && cd[0] != '/') { free(r->cache_dir); r->cache_dir = fs_join(absdir, cd); }
        if (rd && rd[0] != '/') { free(r->runs_dir); r->runs_dir = fs_join(absdir, rd); }
        if (od && *od && od[0] != '/') { free(r->output_dir); r->output_dir = fs_join(absdir, od); }
        free(absdir);
    }
    if (!valid_stage_name(r->name))
        errs_add(e, yt_map_get(r->root, "name"), "recipe: 'name' must be letters, digits, '_' or '-' (it names directories), not '%s'", r->name);
    return top;
}

/* `hooks:` against the hook table, defaults filled; unset hook points are left out, so
 * stages see only the hooks that exist. NULL when invalid. */
static json_t *load_hooks(const yt_node *hn, errs *e) {
    vctx hv = {e, "hooks", NULL, NULL};
    json_t *hk = NULL;
    if (hn && !yt_is_null(hn)) {
        if (hn->type != YT_MAP) errs_add(e, hn, "recipe: 'hooks' must be a mapping of hook point to Lua file");
        else hk = validate_map(&hv, recipe_hook_params(), hn, NULL);
    } else {
        yt_node *empty = yt_new_map(NULL);
        hk = validate_map(&hv, recipe_hook_params(), empty, NULL);
        yt_free(&empty);
    }
    if (hk) {
        const char *hkey;
        json_t *hval;
        void *tmp;
        json_object_foreach_safe(hk, tmp, hkey, hval) if (json_is_null(hval)) json_object_del(hk, hkey);
    }
    return hk;
}

/* one stage: its kind, its parameters, its check, the files and hooks in its key */
static void load_stage(recipe *r, const yt_node *key, const yt_node *st, json_t *hk, const char **kinds, size_t nk,
                       errs *e) {
    if (!valid_stage_name(key->text)) {
        errs_add(e, key, "stage name '%s' must be 1-64 letters, digits, '_' or '-'", key->text);
        return;
    }
    char where[128];
    snprintf(where, sizeof where, "stage '%s'", key->text);
    if (st->type != YT_MAP) {
        errs_add(e, st->type == YT_SCALAR ? key : st, "%s: expected a mapping with 'kind' and its parameters", where);
        return;
    }
    const yt_node *kn = yt_map_get(st, "kind");
    if (!kn || yt_is_null(kn) || kn->type != YT_SCALAR) {
        size_t tot = 0;
        for (size_t k = 0; k < nk; k++) tot += strlen(kinds[k]) + 2;
        char *all = calloc(1, tot + 1);
        for (size_t k = 0; k < nk; k++) { if (k) strcat(all, ", "); strcat(all, kinds[k]); }
        errs_add(e, kn ? kn : key, "%s: missing 'kind' (one of: %s)", where, all);
        free(all);
        return;
    }
    const stage_kind *kind = stage_kind_find(kn->text);
    if (kind && !strncmp(kind->name, "test_", 5) && !test_kinds_enabled()) kind = NULL;
    if (!kind) {
        char *sug = suggest_suffix(kn->text, kinds, nk);
        errs_add(e, kn, "%s: unknown kind '%s'%s", where, kn->text, sug);
        free(sug);
        return;
    }
    recipe_stage *rs = &r->stages[r->n_stages++];
    rs->name = strdup(key->text);
    rs->kind = kind;
    rs->node = st;
    rs->key_files = json_array();
    vctx sv = {e, where, rs->key_files, kind->params};
    rs->params = validate_map(&sv, kind->params, st, "kind");
    if (rs->params) {
        /* a kind's own seed defaults to the recipe's */
        if (stage_param_find(kind, "seed") && json_is_null(json_object_get(rs->params, "seed")))
            json_object_set_new(rs->params, "seed", json_integer((json_int_t)r->seed));
        /* and its deterministic mode to the recipe's */
        if (stage_param_find(kind, "deterministic") && json_is_null(json_object_get(rs->params, "deterministic")))
            json_object_set_new(rs->params, "deterministic", json_boolean(r->deterministic));
        if (kind->check && kind->check(rs->params)) {
            errs_add(e, st, "%s: %s", where, err_msg());
            err_clear();
        }
        if (kind->key_paths) {
            kind_paths kp = {&sv, r->dir, st};
            kind->key_paths(rs->params, add_kind_path, &kp);
        }
    }
    /* the hooks that shape this kind's output */
    if (hk && kind->key_hooks) {
        size_t nh;
        const char **pts = split_choices(kind->key_hooks, &nh);
        for (size_t h = 0; h < nh; h++) {
            const char *f = json_string_value(json_object_get(hk, pts[h]));
            if (f) add_key_file(&sv, f);
        }
        free(pts);
    }
    rs->hooks = hk ? json_incref(hk) : NULL;
}

/* every PARAM_REF of stage i to the stage it names, checked for existence, self and kind */
static void resolve_refs(recipe *r, int i, errs *e) {
    recipe_stage *rs = &r->stages[i];
    if (!rs->params) return;
    char where[128];
    snprintf(where, sizeof where, "stage '%s'", rs->name);
    for (const param_spec *p = rs->kind->params; p->name; p++) {
        if (p->type != PARAM_REF) continue;
        const char *target = json_string_value(json_object_get(rs->params, p->name));
        if (!target) continue;
        const yt_node *at = yt_map_get(rs->node, p->name);
        int t = -1;
        for (int k = 0; k < r->n_stages; k++)
            if (!strcmp(r->stages[k].name, target)) t = k;
        if (t < 0) {
            const char **names = malloc((size_t)r->n_stages * sizeof *names);
            for (int k = 0; k < r->n_stages; k++) names[k] = r->stages[k].name;
            char *sug = suggest_suffix(target, names, (size_t)r->n_stages);
            errs_add(e, at, "%s: '%s' refers to stage '%s', which does not exist%s", where, p->name, target, sug);
            free(sug);
            free(names);
            continue;
        }
        if (t == i) {
            errs_add(e, at, "%s: '%s' refers to the stage itself", where, p->name);
            continue;
        }
        if (p->choices && !in_choices(r->stages[t].kind->name, p->choices)) {
            char *all = choices_text(p->choices);
            errs_add(e, at, "%s: '%s' must name a stage of kind %s, but '%s' is a %s stage", where, p->name, all,
                     target, r->stages[t].kind->name);
            free(all);
            continue;
        }
        if (rs->n_refs == STAGE_MAX_INPUTS) {
            errs_add(e, at, "%s: more than %d inputs", where, STAGE_MAX_INPUTS);
            continue;
        }
        rs->refs[rs->n_refs].role = strdup(p->name);
        rs->refs[rs->n_refs].target = t;
        rs->n_refs++;
    }
}

/* the resolved recipe, for show and the run record */
static json_t *build_resolved(const recipe *r, const json_t *top) {
    json_t *res = json_object();
    json_object_set_new(res, "name", json_string(r->name));
    json_t *desc = json_object_get(top, "description");
    if (json_is_string(desc)) json_object_set(res, "description", desc);
    json_object_set_new(res, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(res, "device", json_string(r->device));
    json_object_set_new(res, "deterministic", json_boolean(r->deterministic));
    json_object_set(res, "gpus", json_object_get(top, "gpus"));
    json_object_set(res, "cache_dir", json_object_get(top, "cache_dir"));
    json_object_set(res, "runs_dir", json_object_get(top, "runs_dir"));
    if (json_object_get(top, "output_dir")) json_object_set(res, "output_dir", json_object_get(top, "output_dir"));
    json_object_set(res, "hooks", r->hooks);
    json_t *stages = json_object();
    for (int i = 0; i < r->n_stages; i++) {
        json_t *s = json_object();
        json_object_set_new(s, "kind", json_string(r->stages[i].kind->name));
        json_object_update(s, r->stages[i].params);
        json_object_set_new(stages, r->stages[i].name, s);
    }
    json_object_set_new(res, "stages", stages);
    if (r->n_gates) json_object_set_new(res, "gates", gates_json(r));
    json_object_set(res, "report_to", json_object_get(top, "report_to"));
    return res;
}

int recipe_load(recipe **out, const char *path, char *const *sets, int n_sets) {
    *out = NULL;
    char *chain[MAX_EXTENDS] = {0};
    yt_node *root;
    int rc = load_with_extends(path, 0, chain, &root);
    if (rc) return rc;
    for (int i = 0; i < n_sets && !rc; i++) rc = apply_set(root, sets[i]);
    if (rc) { yt_free(&root); return rc; }

    recipe *r = calloc(1, sizeof *r);
    r->root = root;
    r->path = strdup(path);
    r->dir = fs_dirname(path);
    errs e = {0};
    json_t *top = load_top(r, &e);
    yt_node *hn = yt_map_get(root, "hooks");
    r->hooks = load_hooks(hn, &e);
    yt_node *sn = yt_map_get(root, "stages");
    if (sn && sn->type != YT_MAP) errs_add(&e, sn, "recipe: 'stages' must be a mapping of stage name to {kind: ..., ...}");
    else if (sn && sn->n == 0) errs_add(&e, sn, "recipe: 'stages' is empty: a recipe needs at least one stage");
    if (sn && sn->type == YT_MAP) {
        size_t nk;
        const char **kinds = kind_names(&nk);
        r->stages = calloc(sn->n ? sn->n : 1, sizeof *r->stages);
        for (size_t i = 0; i < sn->n; i++) load_stage(r, sn->keys[i], sn->vals[i], r->hooks, kinds, nk, &e);
        for (int i = 0; i < r->n_stages; i++) resolve_refs(r, i, &e);
        free(kinds);
    }
    if (!e.n) toposort(r, &e);
    if (!e.n) preview_models(r, &e);
    if (!e.n) load_gates(r, yt_map_get(root, "gates"), &e);
    if (!e.n && r->n_gates) order_held_last(r);
    if (top) {
        json_t *rt = json_object_get(top, "report_to");
        size_t q;
        json_t *x;
        json_array_foreach(rt, q, x) r->tensorboard |= !strcmp(json_string_value(x), "tensorboard");
    }
    /* open every hook now: a syntax error or a missing function fails before any work */
    if (!e.n && r->hooks) {
        hooks *h = NULL;
        if (hooks_open(&h, r->hooks)) {
            errs_add(&e, hn, "hooks: %s", err_msg());
            err_clear();
        } else {
            for (int i = 0; i < r->n_stages; i++) open_stage_hooks(&e, &r->stages[i], h, r->hooks);
        }
        hooks_free(&h);
    }
    if (e.n) {
        json_decref(top);
        recipe_free(&r);
        return errs_finish(&e);
    }
    r->resolved = build_resolved(r, top);
    json_decref(top);
    *out = r;
    return 0;
}
