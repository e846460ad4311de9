/* datasets.c: config and split -> data files of a hub dataset repo (see datasets.h and
 * docs/hub-datasets.md). The listing comes through hub_snapshot_download's select hook, so the
 * files are chosen from the revision's whole file list and downloaded in the same call. */
#define _GNU_SOURCE
#include "hub/datasets.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core/err.h"
#include "core/fsutil.h"

#define CONVERT_REV "refs/convert/parquet"

static const char *const data_exts[] = {".parquet", ".jsonl", ".json", ".csv", ".txt", NULL};

/* the split names of the file-name conventions, with their keywords */
static const struct {
    const char *split;
    const char *words[5];
} split_words[] = {{"train", {"train", "training", NULL}},
                   {"validation", {"validation", "valid", "dev", "val", NULL}},
                   {"test", {"test", "testing", "eval", "evaluation", NULL}}};

static bool is_data_file(const char *f) {
    const char *base = strrchr(f, '/');
    base = base ? base + 1 : f;
    if (base[0] == '.' || !strcasecmp(base, "README.md")) return false;
    size_t n = strlen(f);
    for (int i = 0; data_exts[i]; i++) {
        size_t e = strlen(data_exts[i]);
        if (n > e && !strcasecmp(f + n - e, data_exts[i])) return true;
    }
    return false;
}

/* ---- a small list of names, for choices and messages ---- */

typedef struct names {
    char **v;
    int n;
} names;

static void names_add(names *l, const char *s, size_t len) {
    for (int i = 0; i < l->n; i++)
        if (strlen(l->v[i]) == len && !strncmp(l->v[i], s, len)) return;
    char **v = realloc(l->v, (size_t)(l->n + 1) * sizeof *v);
    if (!v) return;
    l->v = v;
    l->v[l->n] = strndup(s, len);
    if (l->v[l->n]) l->n++;
}

static bool names_has(const names *l, const char *s) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], s)) return true;
    return false;
}

static void names_free(names *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* "'a', 'b'" */
static char *names_list(names *l) {
    qsort(l->v, (size_t)l->n, sizeof *l->v, cmp_str);
    size_t cap = 16;
    for (int i = 0; i < l->n; i++) cap += strlen(l->v[i]) + 4;
    char *s = malloc(cap), *p = s;
    if (!s) return NULL;
    *p = 0;
    for (int i = 0; i < l->n; i++) p += sprintf(p, "%s'%s'", i ? ", " : "", l->v[i]);
    return s;
}

static int unknown(const char *what, const char *name, const char *repo, names *avail) {
    char *list = names_list(avail);
    int rc = err_set(ERR_RECIPE, "dataset '%s' has no %s '%s' (it has %s)", repo, what, name,
                     list && *list ? list : "none");
    free(list);
    return rc;
}

/* ---- the README's YAML front matter as JSON ---- */

static json_t *yaml_node_json(yaml_document_t *doc, yaml_node_t *n, int depth) {
    if (!n || depth > 32) return json_null();
    switch (n->type) {
    case YAML_SCALAR_NODE: {
        const char *v = (const char *)n->data.scalar.value;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
            if (!strcmp(v, "true") || !strcmp(v, "True")) return json_true();
            if (!strcmp(v, "false") || !strcmp(v, "False")) return json_false();
        }
        return json_stringn(v, n->data.scalar.length);
    }
    case YAML_SEQUENCE_NODE: {
        json_t *a = json_array();
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
            json_array_append_new(a, yaml_node_json(doc, yaml_document_get_node(doc, *it), depth + 1));
        return a;
    }
    case YAML_MAPPING_NODE: {
        json_t *o = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE) continue;
            json_object_set_new(o, (const char *)k->data.scalar.value,
                                yaml_node_json(doc, yaml_document_get_node(doc, p->value), depth + 1));
        }
        return o;
    }
    default: return json_null();
    }
}

/* the `configs:` list of the README's front matter (between the first two "---" lines), or NULL */
static json_t *readme_configs(const char *readme) {
    if (!readme || strncmp(readme, "---", 3)) return NULL;
    const char *start = strchr(readme, '\n');
    if (!start) return NULL;
    start++;
    const char *end = start;
    for (;;) {
        if (!strncmp(end, "---", 3) && (end[3] == '\n' || end[3] == '\r' || !end[3])) break;
        end = strchr(end, '\n');
        if (!end) return NULL;
        end++;
    }
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) return NULL;
    yaml_parser_set_input_string(&p, (const unsigned char *)start, (size_t)(end - start));
    json_t *configs = NULL;
    if (yaml_parser_load(&p, &doc)) {
        json_t *all = yaml_node_json(&doc, yaml_document_get_root_node(&doc), 0);
        json_t *c = json_object_get(all, "configs");
        if (json_is_array(c)) configs = json_incref(c);
        json_decref(all);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    return configs;
}

/* data_files of one config -> {split: [patterns]} */
static json_t *config_splits(json_t *df) {
    json_t *m = json_object();
    if (json_is_string(df)) {
        json_object_set_new(m, "train", json_pack("[O]", df));
    } else if (json_is_array(df)) {
        size_t i;
        json_t *e;
        json_array_foreach(df, i, e) {
            if (json_is_string(e)) {
                json_t *t = json_object_get(m, "train");
                if (!t) json_object_set_new(m, "train", t = json_array());
                json_array_append(t, e);
            } else if (json_is_object(e)) {
                const char *sp = json_string_value(json_object_get(e, "split"));
                json_t *path = json_object_get(e, "path");
                if (!sp) sp = "train";
                json_t *t = json_object_get(m, sp);
                if (!t) json_object_set_new(m, sp, t = json_array());
                if (json_is_string(path)) json_array_append(t, path);
                else if (json_is_array(path)) json_array_extend(t, path);
            }
        }
    } else if (json_is_object(df)) {
        const char *sp;
        json_t *v;
        json_object_foreach(df, sp, v) json_object_set_new(m, sp, json_is_string(v) ? json_pack("[O]", v) : json_copy(v));
    }
    return m;
}

/* ---- picking ---- */

/* the config the recipe asks for among `have`, or the default one */
static int choose_config(const char *repo, const char *want, names *have, const char *dflt, const char **out) {
    if (want) {
        if (!names_has(have, want)) return unknown("config", want, repo, have);
        *out = want;
        return 0;
    }
    if (dflt) *out = dflt;
    else if (names_has(have, "default")) *out = "default";
    else if (have->n == 1) *out = have->v[0];
    else {
        char *list = names_list(have);
        int rc = err_set(ERR_RECIPE, "dataset '%s' has several configs (%s): name one with config", repo, list ? list : "");
        free(list);
        return rc;
    }
    return 0;
}

static bool word_in(const char *path, const char *word) {
    size_t wl = strlen(word);
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "-._ 0123456789/");
        if (n == wl && !strncasecmp(p, word, wl)) return true;
        p += n;
        if (*p) p++;
    }
    return false;
}

/* push_to_hub's "data/SPLIT-NNNNN-of-NNNNN.ext": the split, or false */
static bool pushed_split(const char *f, const char *prefix, const char **sp, size_t *len) {
    size_t pl = strlen(prefix);
    if (strncmp(f, prefix, pl)) return false;
    const char *s = f + pl, *m = strstr(s, "-of-");
    if (!m || m - s < 7 || strchr(s, '/')) return false;
    const char *dash = m - 6;
    if (*dash != '-') return false;
    for (int i = 1; i <= 5; i++)
        if (dash[i] < '0' || dash[i] > '9') return false;
    for (int i = 4; i <= 8; i++)
        if (m[i] < '0' || m[i] > '9') return false;
    *sp = s;
    *len = (size_t)(dash - s);
    return *len > 0;
}

static int pick_readme(const char *repo, char *const *files, int n, json_t *configs, const char *config,
                       const char *split, bool *want, char **config_used) {
    names have = {0};
    const char *dflt = NULL;
    size_t i;
    json_t *c;
    json_array_foreach(configs, i, c) {
        const char *name = json_string_value(json_object_get(c, "config_name"));
        if (!name) continue;
        names_add(&have, name, strlen(name));
        if (json_is_true(json_object_get(c, "default")) && !dflt) dflt = name;
    }
    const char *use = NULL;
    int rc = choose_config(repo, config, &have, dflt, &use);
    json_t *splits = NULL;
    if (!rc) {
        json_array_foreach(configs, i, c) if (!strcmp(json_string_value(json_object_get(c, "config_name")) ?: "", use))
            splits = config_splits(json_object_get(c, "data_files"));
        *config_used = strdup(use);
    }
    names_free(&have);
    if (rc) return rc;
    json_t *pats = json_object_get(splits, split);
    if (!pats) {
        names sp = {0};
        const char *k;
        json_t *v;
        json_object_foreach(splits, k, v) names_add(&sp, k, strlen(k));
        rc = unknown("split", split, repo, &sp);
        names_free(&sp);
        json_decref(splits);
        return rc;
    }
    int hits = 0;
    for (int f = 0; f < n; f++) {
        json_t *pat;
        json_array_foreach(pats, i, pat) {
            const char *ps = json_string_value(pat);
            if (ps && hub_pattern_match(ps, files[f]) && is_data_file(files[f])) {
                want[f] = true;
                hits++;
                break;
            }
        }
    }
    if (!hits) {
        char *s = json_dumps(pats, JSON_COMPACT);
        rc = err_set(ERR_DATA, "dataset '%s', config '%s', split '%s': the README's data_files %s match no data file "
                               "qlora-run reads (.parquet, .jsonl, .json, .csv, .txt)", repo, *config_used, split, s ? s : "");
        free(s);
    }
    json_decref(splits);
    return rc;
}

/* refs/convert/parquet: CONFIG/SPLIT/NNNN.parquet (or CONFIG/partial-SPLIT/...), older CONFIG/NAME-SPLIT.parquet */
static bool converted_place(const char *f, const char **cfg, size_t *cl, const char **sp, size_t *sl) {
    size_t n = strlen(f);
    if (n < 9 || strcmp(f + n - 8, ".parquet")) return false;
    const char *s1 = strchr(f, '/');
    if (!s1) return false;
    *cfg = f;
    *cl = (size_t)(s1 - f);
    const char *rest = s1 + 1, *s2 = strchr(rest, '/');
    if (s2) {
        if (strchr(s2 + 1, '/')) return false;
        if (!strncmp(rest, "partial-", 8)) rest += 8;
        *sp = rest;
        *sl = (size_t)(s2 - rest);
        return *sl > 0;
    }
    /* NAME-SPLIT.parquet or NAME-SPLIT-NNNNN-of-NNNNN.parquet */
    const char *end = f + n - 8, *of = strstr(rest, "-of-");
    if (of && of - rest > 6) end = of - 6;
    const char *dash = end;
    while (dash > rest && dash[-1] != '-') dash--;
    if (dash == rest) return false;
    *sp = dash;
    *sl = (size_t)(end - dash);
    return *sl > 0;
}

static int pick_converted(const char *repo, char *const *files, int n, const char *config, const char *split,
                          bool *want, char **config_used, bool *found) {
    names cfgs = {0};
    const char *c, *s;
    size_t cl, sl;
    for (int f = 0; f < n; f++)
        if (converted_place(files[f], &c, &cl, &s, &sl)) names_add(&cfgs, c, cl);
    *found = cfgs.n > 0;
    if (!*found) {
        names_free(&cfgs);
        return 0;
    }
    const char *use = NULL;
    int rc = choose_config(repo, config, &cfgs, NULL, &use);
    if (!rc) *config_used = strdup(use);
    names_free(&cfgs);
    if (rc) return rc;
    names splits = {0};
    int hits = 0;
    for (int f = 0; f < n; f++) {
        if (!converted_place(files[f], &c, &cl, &s, &sl) || cl != strlen(*config_used) || strncmp(c, *config_used, cl))
            continue;
        names_add(&splits, s, sl);
        if (sl == strlen(split) && !strncmp(s, split, sl)) want[f] = true, hits++;
    }
    if (!hits) rc = unknown("split", split, repo, &splits);
    names_free(&splits);
    return rc;
}

int hub_dataset_pick(const char *repo, char *const *files, int n, const char *readme, const char *config,
                     const char *split, bool converted, bool *want, char **config_used, bool *found) {
    *config_used = NULL;
    *found = false;
    if (!split) split = "train";
    for (int f = 0; f < n; f++) want[f] = false;
    if (converted) return pick_converted(repo, files, n, config, split, want, config_used, found);
    int n_data = 0;
    for (int f = 0; f < n; f++) n_data += is_data_file(files[f]);
    if (!n_data) return 0;
    *found = true;
    json_t *configs = readme_configs(readme);
    if (configs && json_array_size(configs)) {
        int rc = pick_readme(repo, files, n, configs, config, split, want, config_used);
        json_decref(configs);
        return rc;
    }
    json_decref(configs);
    names one = {0};
    names_add(&one, "default", 7);
    const char *use;
    int rc = choose_config(repo, config, &one, NULL, &use);
    names_free(&one);
    if (rc) return rc;
    *config_used = strdup("default");
    /* each data file's split: push_to_hub names first, else keywords, else train */
    const char **of = calloc((size_t)n + 1, sizeof *of);
    size_t *ol = calloc((size_t)n + 1, sizeof *ol);
    if (!of || !ol) {
        free(of);
        free(ol);
        return err_set(ERR_STAGE, "out of memory");
    }
    int pushed = 0, keyed = 0;
    for (int f = 0; f < n; f++)
        if (is_data_file(files[f]) && pushed_split(files[f], "data/", &of[f], &ol[f])) pushed++;
    if (!pushed) {
        for (int f = 0; f < n; f++) {
            if (!is_data_file(files[f])) continue;
            for (size_t k = 0; k < sizeof split_words / sizeof split_words[0] && !of[f]; k++)
                for (int w = 0; split_words[k].words[w] && !of[f]; w++)
                    if (word_in(files[f], split_words[k].words[w])) {
                        of[f] = split_words[k].split;
                        ol[f] = strlen(of[f]);
                        keyed++;
                    }
        }
        if (!keyed)
            for (int f = 0; f < n; f++)
                if (is_data_file(files[f])) of[f] = "train", ol[f] = 5;
    }
    names splits = {0};
    int hits = 0;
    for (int f = 0; f < n; f++) {
        if (!of[f]) continue;
        names_add(&splits, of[f], ol[f]);
        if (ol[f] == strlen(split) && !strncmp(of[f], split, ol[f])) want[f] = true, hits++;
    }
    if (!hits) rc = unknown("split", split, repo, &splits);
    names_free(&splits);
    free(of);
    free(ol);
    return rc;
}

/* ---- resolve and download ---- */

typedef struct pick_state {
    const hub_config *cfg;
    const hub_dataset_opts *o;
    bool converted, found;
    char *config_used;
    names chosen;
} pick_state;

/* offline (or the hub unreachable), main's snapshot not in the cache: hub.c's message */
static bool snap_not_cached(void) {
    return err_code() == ERR_NETWORK && strstr(err_msg(), "is not in the cache");
}

/* The split's files of push_to_hub's layout name their count ("train-00001-of-00003"): a cached
 * snapshot (offline) missing one of them is an interrupted download, not a smaller split */
static int check_shards(const char *repo, const names *chosen) {
    for (int i = 0; i < chosen->n; i++) {
        const char *f = chosen->v[i], *of = strstr(f, "-of-");
        unsigned total;
        if (!of || of - f < 5 || sscanf(of + 4, "%5u", &total) != 1) continue;
        int have = 0;
        for (int k = 0; k < chosen->n; k++)
            have += !strncmp(chosen->v[k], f, (size_t)(of - f - 5)) && strstr(chosen->v[k], "-of-") &&
                    !strncmp(strstr(chosen->v[k], "-of-"), of, 9);
        if ((unsigned)have != total)
            return err_set(ERR_NETWORK, "dataset '%s': the cache holds %d of the %u files of '%.*s*%.9s' (a download "
                                        "was interrupted): run once online to complete it",
                           repo, have, total, (int)(of - f - 5), f, of);
    }
    return 0;
}

static int on_listing(void *user, const char *commit, char *const *files, int n, bool *want) {
    pick_state *st = user;
    char *readme = NULL;
    int rc = 0;
    bool has_readme = false;
    for (int f = 0; f < n; f++) has_readme |= !strcmp(files[f], "README.md");
    if (has_readme && !st->converted) {
        char *local = NULL;
        rc = hub_file_download(st->cfg, HUB_REPO_DATASET, st->o->repo, commit, "README.md", NULL, NULL, &local);
        size_t len;
        if (!rc) rc = fs_read_all(local, &readme, &len);
        free(local);
        if (rc) return err_wrap("dataset '%s': the README (for its configs)", st->o->repo);
    }
    free(st->config_used);
    st->config_used = NULL;
    rc = hub_dataset_pick(st->o->repo, files, n, readme, st->o->config, st->o->split, st->converted, want,
                          &st->config_used, &st->found);
    free(readme);
    names_free(&st->chosen);
    for (int f = 0; !rc && f < n; f++)
        if (want[f]) names_add(&st->chosen, files[f], strlen(files[f]));
    if (!rc && st->cfg->offline) rc = check_shards(st->o->repo, &st->chosen);
    if (!st->o->download || !st->found)
        for (int f = 0; f < n; f++) want[f] = false; /* the listing is all we need */
    return rc;
}

int hub_dataset_resolve(const hub_config *cfg, const hub_dataset_opts *o, hub_dataset *out) {
    memset(out, 0, sizeof *out);
    const char *rev = o->revision && *o->revision ? o->revision : "main";
    pick_state st = {cfg, o, false, false, NULL, {0}};
    hub_snapshot snap;
    int rc = 0;
    char first[1024] = "";
    for (int pass = 0; pass < 2; pass++) {
        hub_fetch_opts fo = {.type = HUB_REPO_DATASET, .repo = o->repo, .revision = pass ? CONVERT_REV : rev,
                             .progress = o->progress, .progress_user = o->progress_user,
                             .interrupted = o->interrupted, .select = on_listing, .select_user = &st};
        st.converted = pass == 1;
        rc = hub_snapshot_download(cfg, &fo, &snap);
        if (rc && pass == 0 && snap_not_cached() && !strcmp(rev, "main")) {
            /* offline, main never cached: a script dataset's conversion may be */
            snprintf(first, sizeof first, "%s", err_msg());
            err_clear();
            continue;
        }
        if (rc && pass == 1 && first[0] && snap_not_cached()) { /* neither: say what is missing first */
            rc = err_set(ERR_NETWORK, "%s (nor its %s branch)", first, CONVERT_REV);
            break;
        }
        if (rc || st.found) break;
        hub_snapshot_free(&snap);
        if (pass == 0 && strcmp(rev, "main")) { /* the conversion follows main, not a pinned revision */
            return err_set(ERR_DATA, "dataset '%s' at '%s' holds no data file qlora-run reads (.parquet, .jsonl, "
                                     ".json, .csv, .txt)", o->repo, rev);
        }
    }
    if (!rc && !st.found)
        rc = err_set(ERR_DATA, "dataset '%s' holds no data file qlora-run reads (.parquet, .jsonl, .json, .csv, .txt), "
                               "and its %s branch no Parquet conversion", o->repo, CONVERT_REV);
    if (!rc) {
        out->repo = strdup(o->repo);
        out->revision = strdup(st.converted ? CONVERT_REV : rev);
        out->commit = strdup(snap.commit);
        out->config = st.config_used;
        st.config_used = NULL;
        out->split = strdup(o->split ? o->split : "train");
        qsort(st.chosen.v, (size_t)st.chosen.n, sizeof *st.chosen.v, cmp_str);
        out->files = st.chosen.v;
        out->n_files = st.chosen.n;
        st.chosen.v = NULL;
        st.chosen.n = 0;
        if (o->download) {
            out->local = calloc((size_t)out->n_files + 1, sizeof *out->local);
            for (int i = 0; out->local && i < out->n_files; i++) out->local[i] = fs_join(snap.dir, out->files[i]);
            if (!out->local) rc = err_set(ERR_STAGE, "out of memory");
        }
        hub_snapshot_free(&snap);
    }
    free(st.config_used);
    names_free(&st.chosen);
    if (rc) hub_dataset_free(out);
    return rc;
}

void hub_dataset_free(hub_dataset *d) {
    if (!d) return;
    for (int i = 0; i < d->n_files; i++) {
        free(d->files[i]);
        if (d->local) free(d->local[i]);
    }
    free(d->files);
    free(d->local);
    free(d->repo);
    free(d->revision);
    free(d->commit);
    free(d->config);
    free(d->split);
    memset(d, 0, sizeof *d);
}

bool hub_dataset_url(const char *url, char **repo, char **rev) {
    *repo = *rev = NULL;
    if (!url || strncmp(url, "hf://datasets/", 14)) return false;
    const char *s = url + 14, *slash1 = strchr(s, '/');
    if (!slash1 || strchr(slash1 + 1, '/')) return false;
    size_t n = strlen(s);
    char *spec = strndup(s, n && s[n - 1] == '/' ? n - 1 : n);
    bool ok = spec && !hub_parse_repo_spec(spec, repo, rev) && hub_repo_id_valid(*repo);
    free(spec);
    if (!ok) {
        err_clear();
        free(*repo);
        free(*rev);
        *repo = *rev = NULL;
    }
    return ok;
}

int hub_fetch_url(const hub_config *cfg, const char *url, hub_progress_fn progress, void *user, char **local) {
    int rc;
    if (!strncmp(url, "hf://datasets/", 14)) {
        const char *s = url + 14, *slash1 = strchr(s, '/'), *slash2 = slash1 ? strchr(slash1 + 1, '/') : NULL;
        if (!slash2 || !slash2[1])
            return err_set(ERR_RECIPE, "url '%s': expected hf://datasets/org/name[@revision]/path/in/repo", url);
        char *spec = strndup(s, (size_t)(slash2 - s)), *repo = NULL, *rev = NULL;
        rc = spec ? hub_parse_repo_spec(spec, &repo, &rev) : err_set(ERR_STAGE, "out of memory");
        if (rc) rc = err_set(ERR_RECIPE, "url '%s': %s", url, err_msg());
        else rc = hub_file_download(cfg, HUB_REPO_DATASET, repo, rev, slash2 + 1, progress, user, local);
        free(spec);
        free(repo);
        free(rev);
    } else if (!strncmp(url, "https://", 8) || !strncmp(url, "http://", 7)) {
        rc = hub_url_download(cfg, url, progress, user, local);
    } else {
        rc = err_set(ERR_RECIPE, "url '%s': expected https://... or hf://datasets/org/name/path", url);
    }
    return rc;
}
