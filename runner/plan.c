/* plan.c: cache keys, cached-or-run decisions and their reasons (see plan.h). */
#define _GNU_SOURCE
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/collective.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"
#include "core/log.h"
#include "model/device.h"
#include "runner/gates.h"
#include "runner/yaml_tree.h"

#define KEY_FORMAT 1 /* bump when the key document's shape changes */

const char *plan_resolve_device(const char *want) { return device_resolve(want); }



/* a name for a file that survives moving the checkout: relative to the recipe dir when inside it */
static const char *file_label(const recipe *r, const char *path, char *buf, size_t n) {
    char *rd = realpath(r->dir, NULL);
    size_t l = rd ? strlen(rd) : 0;
    if (rd && !strncmp(path, rd, l) && path[l] == '/') snprintf(buf, n, "%s", path + l + 1);
    else snprintf(buf, n, "%s", path);
    free(rd);
    return buf;
}

static json_t *key_doc(const plan *p, int i) {
    const recipe *r = p->r;
    const recipe_stage *s = &r->stages[i];
    json_t *d = json_object();
    json_object_set_new(d, "key_format", json_integer(KEY_FORMAT));
    json_object_set_new(d, "kind", json_string(s->kind->name));
    json_object_set_new(d, "kind_version", json_integer(s->kind->version));
    json_t *params = json_object(), *inputs = json_object(), *files = json_object();
    char lab[4096];
    for (const param_spec *ps = s->kind->params; ps->name; ps++) {
        if (ps->flags & PARAM_NOKEY) continue;
        json_t *v = json_object_get(s->params, ps->name);
        if (ps->type == PARAM_REF && json_is_string(v)) {
            for (int k = 0; k < s->n_refs; k++)
                if (!strcmp(s->refs[k].role, ps->name)) {
                    json_object_set_new(inputs, ps->name, json_string(p->st[s->refs[k].target].key));
                    json_object_set_new(params, ps->name, json_string("@input"));
                }
        } else if (ps->type == PARAM_FILE && json_is_string(v)) {
            json_object_set_new(params, ps->name, json_string(file_label(r, json_string_value(v), lab, sizeof lab)));
        } else if (ps->type == PARAM_FILES && json_is_array(v)) {
            json_t *a = json_array();
            size_t k;
            json_t *x;
            json_array_foreach(v, k, x) json_array_append_new(a, json_string(file_label(r, json_string_value(x), lab, sizeof lab)));
            json_object_set_new(params, ps->name, a);
        } else {
            json_object_set(params, ps->name, v ? v : json_null());
        }
    }
    size_t k;
    json_t *x;
    json_array_foreach(s->key_files, k, x) {
        const char *path = json_string_value(x);
        if (fs_is_dir(path)) { /* every file of a directory (a tokenizer directory, say) */
            json_t *list = cache_list_files(path);
            size_t q;
            json_t *rel;
            json_array_foreach(list, q, rel) {
                char *full = fs_join(path, json_string_value(rel)), h[HASH_HEX_LEN], name[4200];
                if (hash_file_memo(p->c->memo, full, h)) { err_clear(); snprintf(h, sizeof h, "unreadable"); }
                snprintf(name, sizeof name, "%s/%s", file_label(r, path, lab, sizeof lab), json_string_value(rel));
                json_object_set_new(files, name, json_string(h));
                free(full);
            }
            json_decref(list);
            continue;
        }
        char h[HASH_HEX_LEN];
        if (hash_file_memo(p->c->memo, path, h)) { err_clear(); snprintf(h, sizeof h, "unreadable"); }
        json_object_set_new(files, file_label(r, path, lab, sizeof lab), json_string(h));
    }
    if (s->hook_shaped && s->hooks && json_array_size(json_object_get(s->hooks, "allow")))
        json_object_set(d, "hook_allow", json_object_get(s->hooks, "allow"));
    if (s->kind->resolve) {
        json_t *res = NULL;
        if (s->kind->resolve(s->params, &res)) {
            json_decref(res);
            res = json_pack("{s:s}", "unresolved", err_msg());
            err_clear();
        }
        if (res) json_object_set_new(d, "resolved", res);
    }
    json_object_set_new(d, "params", params);
    json_object_set_new(d, "inputs", inputs);
    json_object_set_new(d, "files", files);
    if (s->kind->device_dependent) json_object_set_new(d, "device", json_string(p->device));
    return d;
}

json_t *plan_file_hashes(const cache *c, const json_t *paths) {
    json_t *o = json_object();
    size_t i;
    json_t *x;
    json_array_foreach(paths, i, x) {
        char h[HASH_HEX_LEN];
        if (!fs_exists(json_string_value(x)) || fs_is_dir(json_string_value(x)) || hash_file_memo(c->memo, json_string_value(x), h)) {
            err_clear();
            snprintf(h, sizeof h, "missing");
        }
        json_object_set_new(o, json_string_value(x), json_string(h));
    }
    return o;
}

/* The first file a cached stage's hooks read (manifest "hook_files") that differs now, as a
 * reason; NULL when all are as they were. Files a hook loads at its top level are in the key
 * already; these are the ones found only while it ran (io reads, a require inside a function). */
static char *hook_files_changed(const plan *p, const json_t *manifest) {
    const char *path;
    json_t *v;
    json_object_foreach(json_object_get(manifest, "hook_files"), path, v) {
        json_t *one = json_array();
        json_array_append_new(one, json_string(path));
        json_t *now = plan_file_hashes(p->c, one);
        bool same_hash = json_equal(json_object_get(now, path), v);
        json_decref(now);
        json_decref(one);
        if (!same_hash) {
            char lab[4096], *why = NULL;
            if (asprintf(&why, "file '%s' (read by a hook) changed", file_label(p->r, path, lab, sizeof lab)) < 0) why = NULL;
            return why;
        }
    }
    return NULL;
}

static void append(char **why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(char **why, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *n;
    if (asprintf(&n, "%s%s%s", *why ? *why : "", *why ? "; " : "", buf) < 0) return;
    free(*why);
    *why = n;
}

static bool same(const json_t *a, const json_t *b) { return (!a && !b) || (a && b && json_equal((json_t *)a, (json_t *)b)); }

static char *short_json(const json_t *v) {
    if (json_is_real(v)) { /* 0.005, not 0.0050000000000000001 */
        char buf[48];
        yt_format_real(json_real_value(v), buf, sizeof buf);
        return strdup(buf);
    }
    char *s = json_dumps(v ? v : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (s && strlen(s) > 40) strcpy(s + 37, "...");
    return s;
}

/* what differs between the last run's key document and this one */
static char *explain(const json_t *old, const json_t *now) {
    char *why = NULL;
    if (!old) return strdup("not run before");
    if (json_integer_value(json_object_get(old, "kind_version")) != json_integer_value(json_object_get(now, "kind_version")) ||
        !same(json_object_get(old, "kind"), json_object_get(now, "kind")) ||
        !same(json_object_get(old, "key_format"), json_object_get(now, "key_format")))
        append(&why, "stage kind or its version changed");
    const char *k;
    json_t *v;
    json_t *op = json_object_get(old, "params"), *np = json_object_get(now, "params");
    json_object_foreach(np, k, v) {
        json_t *o = json_object_get(op, k);
        if (!same(o, v)) {
            char *a = short_json(o), *b = short_json(v);
            append(&why, "%s: %s -> %s", k, a, b);
            free(a);
            free(b);
        }
    }
    json_t *oi = json_object_get(old, "inputs"), *ni = json_object_get(now, "inputs");
    json_object_foreach(ni, k, v) if (!same(json_object_get(oi, k), v)) append(&why, "input '%s' changed", k);
    json_t *of = json_object_get(old, "files"), *nf = json_object_get(now, "files");
    json_object_foreach(nf, k, v) {
        if (!json_object_get(of, k)) append(&why, "file '%s' is new", k);
        else if (!same(json_object_get(of, k), v)) append(&why, "file '%s' changed", k);
    }
    if (!same(json_object_get(old, "device"), json_object_get(now, "device"))) append(&why, "device changed");
    json_t *ores = json_object_get(old, "resolved"), *nres = json_object_get(now, "resolved");
    if (!same(ores, nres)) {
        const char *oc = json_string_value(json_object_get(ores, "commit")), *nc = json_string_value(json_object_get(nres, "commit"));
        if (oc && nc && strcmp(oc, nc)) append(&why, "the source moved to commit %.12s (was %.12s)", nc, oc);
        else append(&why, "the resolved source changed");
    }
    if (!same(json_object_get(old, "world"), json_object_get(now, "world"))) append(&why, "number of ranks changed");
    if (!same(json_object_get(old, "hook_allow"), json_object_get(now, "hook_allow"))) append(&why, "hook allowances changed");
    return why;
}

/* --only, --until and --force: which stages are selected (--until: with their ancestors) and
 * forced (with their descendants); a name the recipe lacks is a usage error with a suggestion */
static int plan_select(plan *p, const plan_opts *o) {
    const recipe *r = p->r;
    int n = r->n_stages;
    const char *names[3] = {o ? o->only : NULL, o ? o->until : NULL, o ? o->force : NULL};
    const char *flags[3] = {"--only", "--until", "--force"};
    int idx[3] = {-1, -1, -1};
    for (int k = 0; k < 3; k++) {
        if (!names[k]) continue;
        idx[k] = recipe_stage_index(r, names[k]);
        if (idx[k] < 0) {
            const char **all = malloc((size_t)(n ? n : 1) * sizeof *all);
            for (int i = 0; all && i < n; i++) all[i] = r->stages[i].name;
            const char *sug = all ? recipe_suggest(names[k], all, (size_t)n) : NULL;
            int rc = err_set(ERR_USAGE, "%s '%s': the recipe has no such stage%s%s%s", flags[k], names[k],
                             sug ? " (did you mean '" : "", sug ? sug : "", sug ? "'?)" : "");
            free(all);
            return rc;
        }
    }
    for (int i = 0; i < n; i++) p->st[i].selected = idx[0] < 0 && idx[1] < 0;
    if (idx[0] >= 0) p->st[idx[0]].selected = true;
    if (idx[1] >= 0) {
        p->st[idx[1]].selected = true;
        for (int i = n - 1; i >= 0; i--) /* ancestors: reverse topological order */
            if (p->st[i].selected)
                for (int k = 0; k < r->stages[i].n_refs; k++) p->st[r->stages[i].refs[k].target].selected = true;
    }
    if (idx[2] >= 0) {
        p->st[idx[2]].forced = true;
        for (int i = 0; i < n; i++) /* descendants: topological order */
            for (int k = 0; k < r->stages[i].n_refs; k++)
                if (p->st[r->stages[i].refs[k].target].forced) p->st[i].forced = true;
    }
    return 0;
}

/* stage i's key document and keys: work_key, and key (with the number of ranks for a kind whose
 * artifact depends on it) */
static void stage_keys(plan *p, int i) {
    plan_stage *ps = &p->st[i];
    ps->key_doc = key_doc(p, i);
    char *s = json_dumps(ps->key_doc, JSON_COMPACT | JSON_SORT_KEYS);
    hash_bytes_hex(s, strlen(s), ps->work_key);
    free(s);
    memcpy(ps->key, ps->work_key, sizeof ps->key);
    if (p->r->stages[i].kind->ranks_in_key && coll_world() > 1) {
        json_object_set_new(ps->key_doc, "world", json_integer(coll_world()));
        s = json_dumps(ps->key_doc, JSON_COMPACT | JSON_SORT_KEYS);
        hash_bytes_hex(s, strlen(s), ps->key);
        free(s);
    }
}

/* Stage i runs, comes from the cache or is skipped, and why it runs: forced, a stale input or hook
 * file, a corrupt artifact, or what changed in its key since the recipe's last run. */
static void stage_status(plan *p, int i) {
    const recipe *r = p->r;
    const cache *c = p->c;
    plan_stage *ps = &p->st[i];
    char *why = NULL;
    int lk = cache_lookup(c, r->stages[i].kind->name, ps->key, &ps->manifest, &why);
    if (lk == 0 && !ps->forced && ps->selected) {
        char *changed = NULL;
        for (int k = 0; k < r->stages[i].n_refs && !changed; k++)
            if (p->st[r->stages[i].refs[k].target].stale) {
                if (asprintf(&changed, "input '%s' is made again", r->stages[r->stages[i].refs[k].target].name) < 0)
                    changed = NULL;
            }
        if (!changed) changed = hook_files_changed(p, ps->manifest);
        if (changed) { /* same key, stale content: recompute as --force would */
            ps->status = PLAN_RUN;
            ps->forced = ps->stale = true;
            ps->why = changed;
            free(why);
            return;
        }
    }
    if (lk == 0 && !ps->forced) {
        ps->status = ps->selected ? PLAN_CACHED : PLAN_SKIP;
        free(why);
        if (!ps->selected) { /* an unselected input that is cached is fine */ }
        return;
    }
    if (!ps->selected) {
        ps->status = PLAN_SKIP;
        free(why);
        return;
    }
    ps->status = PLAN_RUN;
    if (ps->forced) {
        ps->why = strdup("forced (--force)");
        free(why);
    } else if (lk == 2) {
        if (asprintf(&ps->why, "cached artifact is corrupt: %s", why ? why : "?") < 0) ps->why = NULL;
        free(why);
    } else {
        free(why);
        json_t *old = cache_index_get(c, r->name, r->stages[i].name);
        json_t *olddoc = old ? json_object_get(old, "key_doc") : NULL;
        char *ex = explain(olddoc, ps->key_doc);
        if (!ex) ex = strdup(old ? "artifact no longer in the cache" : "not run before");
        ps->why = ex;
        json_decref(old);
    }
}

int plan_build(plan *p, recipe *r, const cache *c, const plan_opts *o) {
    memset(p, 0, sizeof *p);
    p->r = r;
    p->c = c;
    snprintf(p->device, sizeof p->device, "%s", plan_resolve_device(r->device));
    int n = r->n_stages;
    p->st = calloc((size_t)(n ? n : 1), sizeof *p->st);
    int rc = plan_select(p, o);
    if (rc) return rc;
    /* keys in topological order */
    for (int i = 0; i < n; i++) {
        stage_keys(p, i);
        stage_status(p, i);
    }
    /* a selected stage whose input is neither selected nor cached cannot run */
    for (int i = 0; i < n; i++) {
        if (!p->st[i].selected) continue;
        for (int k = 0; k < r->stages[i].n_refs; k++) {
            int t = r->stages[i].refs[k].target;
            if (!p->st[t].selected && !p->st[t].manifest)
                return err_set(ERR_USAGE, "stage '%s' needs '%s', which is not in the cache: run it first (drop --only, or use --until %s)",
                               r->stages[i].name, r->stages[t].name, r->stages[i].name);
        }
    }
    return 0;
}

void plan_free(plan *p) {
    if (!p->st) return;
    for (int i = 0; i < p->r->n_stages; i++) {
        json_decref(p->st[i].key_doc);
        json_decref(p->st[i].manifest);
        free(p->st[i].why);
    }
    free(p->st);
    p->st = NULL;
}

void plan_print(const plan *p, FILE *f, bool with_keys) {
    const recipe *r = p->r;
    int wn = 5, wk = 4;
    for (int i = 0; i < r->n_stages; i++) {
        int a = (int)strlen(r->stages[i].name), b = (int)strlen(r->stages[i].kind->name);
        if (a > wn) wn = a;
        if (b > wk) wk = b;
    }
    fprintf(f, "plan for '%s': %d stages, device %s\n", r->name, r->n_stages, p->device);
    for (int i = 0; i < r->n_stages; i++) {
        const plan_stage *ps = &p->st[i];
        const char *st = ps->status == PLAN_CACHED ? "cached" : ps->status == PLAN_RUN ? "run" : "skip";
        char inputs[512] = "";
        for (int k = 0; k < r->stages[i].n_refs; k++) {
            strncat(inputs, k ? ", " : "<- ", sizeof inputs - strlen(inputs) - 1);
            strncat(inputs, r->stages[r->stages[i].refs[k].target].name, sizeof inputs - strlen(inputs) - 1);
        }
        if (with_keys)
            fprintf(f, "  %-*s  %-*s  %-6s  %.12s  %s\n", wn, r->stages[i].name, wk, r->stages[i].kind->name, st, ps->key, inputs);
        else
            fprintf(f, "  %-*s  %-*s  %-6s  %s\n", wn, r->stages[i].name, wk, r->stages[i].kind->name, st, inputs);
        if (ps->status == PLAN_RUN && ps->why) fprintf(f, "  %-*s  why: %s\n", wn, "", ps->why);
    }
    if (!r->n_gates) return;
    fprintf(f, "gates (checked when their stage ends; a failure stops the run with exit 9):\n");
    for (int i = 0; i < r->n_gates; i++) {
        char *c = gates_conditions_text(&r->gates[i]);
        fprintf(f, "  gate %s: %s\n", r->gates[i].label, c);
        free(c);
    }
    char held[1024] = "";
    for (int i = 0; i < r->n_stages; i++)
        if (recipe_stage_held(r, i)) {
            if (*held) strncat(held, ", ", sizeof held - strlen(held) - 1);
            strncat(held, r->stages[i].name, sizeof held - strlen(held) - 1);
        }
    fprintf(f, "  holds back: %s\n", *held ? held : "(no export or publishing stage)");
}

json_t *plan_index_entry(const plan *p, int i) {
    json_t *e = json_object();
    json_object_set_new(e, "key", json_string(p->st[i].key));
    json_object_set_new(e, "kind", json_string(p->r->stages[i].kind->name));
    json_object_set(e, "key_doc", p->st[i].key_doc);
    return e;
}
