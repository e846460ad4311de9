/* test_runner_lib.c: the runner's library (runner/recipe.c, plan.c, cache.c) from C, without the
 * program: what a recipe resolves to, which facts of the kind table reach the cache key, and an
 * artifact's way into and out of the cache. The shell tests drive the same code through the CLI;
 * these pin the pieces one by one. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "runner/cache.h"
#include "runner/plan.h"
#include "runner/recipe.h"
#include "test.h"

static char tmp[] = "/tmp/qlora_runnerlib_XXXXXX";

static char *write_in(const char *name, const char *text) {
    char *p = fs_join(tmp, name);
    CHECK_EQ_INT(fs_write_atomic(p, text, strlen(text)), 0);
    return p;
}

static const char *const recipe_text =
    "name: lib\n"
    "seed: 7\n"
    "device: cpu\n"
    "hooks: {format: fmt.lua, lr: lr.lua}\n"
    "stages:\n"
    "  data: {kind: dataset, model: base, path: data.jsonl, format: completion}\n" /* before its input */
    "  base: {kind: init_model}\n"
    "  eval: {kind: evaluate, model: base, data: data}\n";

static int stage_of(const recipe *r, const char *name) { return recipe_stage_index(r, name); }

static bool has_file(const recipe_stage *s, const char *suffix) {
    size_t i;
    json_t *x;
    json_array_foreach(s->key_files, i, x) {
        const char *p = json_string_value(x);
        size_t lp = strlen(p), ls = strlen(suffix);
        if (lp >= ls && !strcmp(p + lp - ls, suffix)) return true;
    }
    return false;
}

TEST(test_recipe_resolves) {
    char *path = fs_join(tmp, "recipe.yaml");
    recipe *r = NULL;
    CHECK_EQ_INT(recipe_load(&r, path, NULL, 0), 0);
    if (!r) { fprintf(stderr, "%s\n", err_msg()); free(path); return; }
    CHECK_EQ_STR(r->name, "lib");
    CHECK_EQ_INT(r->n_stages, 3);
    /* topological order: an input before the stage that reads it */
    CHECK(stage_of(r, "base") < stage_of(r, "data") && stage_of(r, "data") < stage_of(r, "eval"));
    const recipe_stage *data = &r->stages[stage_of(r, "data")], *base = &r->stages[stage_of(r, "base")];
    const recipe_stage *eval = &r->stages[stage_of(r, "eval")];
    CHECK_EQ_INT(data->n_refs, 1);
    CHECK_EQ_STR(data->refs[0].role, "model");
    CHECK_EQ_INT(data->refs[0].target, stage_of(r, "base"));
    /* the recipe's seed fills a kind's own */
    CHECK_EQ_INT(json_integer_value(json_object_get(data->params, "seed")), 7);
    /* hook limits from the one hook table */
    CHECK_EQ_INT(json_integer_value(json_object_get(r->hooks, "memory_mb")), 256);
    CHECK_EQ_INT(json_integer_value(json_object_get(r->hooks, "instructions")), 100000000);
    /* the kind table's key_hooks: format shapes dataset and evaluate, lr neither, init_model nothing */
    CHECK(has_file(data, "/fmt.lua") && has_file(data, "/data.jsonl"));
    CHECK(!has_file(data, "/lr.lua"));
    CHECK(has_file(eval, "/fmt.lua") && !has_file(eval, "/lr.lua"));
    CHECK_EQ_INT(json_array_size(base->key_files), 0);
    json_t *res = json_object_get(json_object_get(r->resolved, "stages"), "data");
    CHECK_EQ_STR(json_string_value(json_object_get(res, "kind")), "dataset");
    recipe_free(&r);
    CHECK(r == NULL);

    /* --set reaches a stage; a bad value is a recipe error naming the key */
    char *sets[] = {"stages.data.sequence_len=1"};
    CHECK_EQ_INT(recipe_load(&r, path, sets, 1), ERR_RECIPE);
    CHECK(strstr(err_msg(), "sequence_len"));
    err_clear();
    free(path);
}

TEST(test_plan_keys) {
    char *path = fs_join(tmp, "recipe.yaml"), *cdir = fs_join(tmp, "cache");
    recipe *r = NULL;
    CHECK_EQ_INT(recipe_load(&r, path, NULL, 0), 0);
    if (!r) { free(path), free(cdir); return; }
    cache c;
    CHECK_EQ_INT(cache_open(&c, cdir), 0);
    plan p;
    CHECK_EQ_INT(plan_build(&p, r, &c, &(plan_opts){0}), 0);
    int di = stage_of(r, "data"), ei = stage_of(r, "eval"), bi = stage_of(r, "base");
    /* device_dependent from the kind table: evaluate's key has the device, dataset's not */
    CHECK_EQ_STR(json_string_value(json_object_get(p.st[ei].key_doc, "device")), "cpu");
    CHECK(json_object_get(p.st[di].key_doc, "device") == NULL);
    CHECK_EQ_INT(p.st[di].status, PLAN_RUN);
    char kdata[33], kbase[33];
    snprintf(kdata, sizeof kdata, "%s", p.st[di].key);
    snprintf(kbase, sizeof kbase, "%s", p.st[bi].key);
    plan_free(&p);
    recipe_free(&r);
    /* the format hook's content is in the dataset's key, not in init_model's */
    free(write_in("fmt.lua", "function format(r, ctx) return {prompt = '', response = r.text .. '!'} end\n"));
    CHECK_EQ_INT(recipe_load(&r, path, NULL, 0), 0);
    CHECK_EQ_INT(plan_build(&p, r, &c, &(plan_opts){0}), 0);
    CHECK(strcmp(p.st[di].key, kdata) != 0);
    CHECK_EQ_STR(p.st[bi].key, kbase);
    plan_free(&p);
    recipe_free(&r);
    cache_close(&c);
    free(path), free(cdir);
}

/* deterministic: the top level fills train's and evaluate's own (a stage may override it), and it
 * is in the key of the stages it shapes and of no other */
TEST(test_deterministic_key) {
    char *path = fs_join(tmp, "recipe.yaml"), *cdir = fs_join(tmp, "cache");
    recipe *r = NULL;
    cache c;
    CHECK_EQ_INT(cache_open(&c, cdir), 0);
    plan p;
    char keval[33] = "", kbase[33] = "";
    CHECK_EQ_INT(recipe_load(&r, path, NULL, 0), 0);
    if (!r) { cache_close(&c), free(path), free(cdir); return; }
    int ei = stage_of(r, "eval"), bi = stage_of(r, "base");
    CHECK(json_is_false(json_object_get(r->stages[ei].params, "deterministic")));
    CHECK(json_object_get(r->stages[bi].params, "deterministic") == NULL);
    CHECK(json_is_false(json_object_get(r->resolved, "deterministic")));
    CHECK_EQ_INT(plan_build(&p, r, &c, &(plan_opts){0}), 0);
    snprintf(keval, sizeof keval, "%s", p.st[ei].key);
    snprintf(kbase, sizeof kbase, "%s", p.st[bi].key);
    plan_free(&p);
    recipe_free(&r);

    char *on[] = {"deterministic=true"};
    CHECK_EQ_INT(recipe_load(&r, path, on, 1), 0);
    if (r) {
        CHECK(json_is_true(json_object_get(r->stages[ei].params, "deterministic")));
        CHECK_EQ_INT(plan_build(&p, r, &c, &(plan_opts){0}), 0);
        CHECK(strcmp(p.st[ei].key, keval) != 0);
        CHECK_EQ_STR(p.st[bi].key, kbase);
        plan_free(&p);
        recipe_free(&r);
    }
    char *off[] = {"deterministic=true", "stages.eval.deterministic=false"};
    CHECK_EQ_INT(recipe_load(&r, path, off, 2), 0);
    if (r) {
        CHECK(json_is_false(json_object_get(r->stages[ei].params, "deterministic")));
        CHECK_EQ_INT(plan_build(&p, r, &c, &(plan_opts){0}), 0);
        CHECK_EQ_STR(p.st[ei].key, keval);
        plan_free(&p);
        recipe_free(&r);
    }
    char *bad[] = {"deterministic=yes"};
    CHECK_EQ_INT(recipe_load(&r, path, bad, 1), ERR_RECIPE);
    CHECK(strstr(err_msg(), "deterministic"));
    err_clear();
    cache_close(&c);
    free(path), free(cdir);
}

TEST(test_cache_commit_lookup) {
    char *cdir = fs_join(tmp, "cache2");
    cache c;
    CHECK_EQ_INT(cache_open(&c, cdir), 0);
    const char *key = "0123456789abcdef0123456789abcdef";
    json_t *m = NULL;
    char *why = NULL;
    CHECK_EQ_INT(cache_lookup(&c, "test_echo", key, &m, &why), 1); /* absent */
    char *t = NULL;
    CHECK_EQ_INT(cache_tmp_dir(&c, "test_echo", key, &t), 0);
    char *f = fs_join(t, "out.txt");
    CHECK_EQ_INT(fs_write_atomic(f, "hello\n", 6), 0);
    free(f);
    json_t *man = json_pack("{s:s, s:s}", "stage", "a", "key", key);
    CHECK_EQ_INT(cache_commit(&c, "test_echo", key, t, man), 0);
    json_decref(man);
    free(t);
    CHECK_EQ_INT(cache_lookup(&c, "test_echo", key, &m, &why), 0);
    json_t *files = json_object_get(m, "files");
    CHECK_EQ_INT(json_array_size(files), 1);
    CHECK_EQ_STR(json_string_value(json_object_get(json_array_get(files, 0), "path")), "out.txt");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_array_get(files, 0), "size")), 6);
    json_decref(m);
    m = NULL;
    /* a changed file is caught by a verify */
    char *dir = cache_artifact_dir(&c, "test_echo", key), *out = fs_join(dir, "out.txt");
    CHECK_EQ_INT(fs_write_atomic(out, "HELLO\n", 6), 0);
    CHECK(cache_verify_dir(&c, dir, &why) != 0);
    CHECK(why && strstr(why, "out.txt"));
    free(why);
    free(out), free(dir);
    cache_close(&c);
    free(cdir);
}

int main(void) {
    if (!mkdtemp(tmp)) return 1;
    free(write_in("recipe.yaml", recipe_text));
    free(write_in("fmt.lua", "function format(r, ctx) return {prompt = '', response = r.text} end\n"));
    free(write_in("lr.lua", "function lr(step, total, base) return base end\n"));
    free(write_in("data.jsonl", "{\"text\": \"a\"}\n"));
    RUN(test_recipe_resolves);
    RUN(test_plan_keys);
    RUN(test_deterministic_key);
    RUN(test_cache_commit_lookup);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmp);
    return test_summary();
}
