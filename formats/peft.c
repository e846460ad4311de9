/* peft.c: PEFT LoRA adapter directories (see peft.h and docs/peft.md). */
#include "peft.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/pubdir.h"
#include "core/json_in.h"
#include "pyjson.h"
#include "safetensors.h"

#define NAME_PREFIX "base_model.model."
#define SUFFIX_A ".lora_A.weight"
#define SUFFIX_B ".lora_B.weight"

void peft_adapter_init(peft_adapter *a) {
    memset(a, 0, sizeof *a);
    a->r = 8;
    a->alpha = 8;
    a->task_type = strdup("CAUSAL_LM");
}

void peft_adapter_free(peft_adapter *a) {
    for (size_t i = 0; i < a->n_targets; i++) free(a->targets[i]);
    free(a->targets);
    for (size_t i = 0; i < a->n_lora; i++) {
        free(a->lora[i].module);
        free(a->lora[i].A);
        free(a->lora[i].B);
    }
    free(a->lora);
    free(a->target_regex);
    free(a->base_model);
    free(a->task_type);
    json_decref(a->extra);
    memset(a, 0, sizeof *a);
}

int peft_adapter_add_target(peft_adapter *a, const char *target) {
    for (size_t i = 0; i < a->n_targets; i++)
        if (!strcmp(a->targets[i], target)) return 0;
    char **nt = realloc(a->targets, (a->n_targets + 1) * sizeof *nt);
    if (!nt) return err_set(ERR_STAGE, "out of memory");
    a->targets = nt;
    if (!(a->targets[a->n_targets] = strdup(target))) return err_set(ERR_STAGE, "out of memory");
    a->n_targets++;
    return 0;
}

peft_lora *peft_adapter_find(const peft_adapter *a, const char *module) {
    for (size_t i = 0; i < a->n_lora; i++)
        if (!strcmp(a->lora[i].module, module)) return &a->lora[i];
    return NULL;
}

static int add_rank(peft_adapter *a, const char *module, int r, int64_t in, int64_t out, peft_lora **lora) {
    if (r <= 0 || in <= 0 || out <= 0) return err_set(ERR_STAGE, "lora module '%s': bad sizes r=%d in=%lld out=%lld", module, r, (long long)in, (long long)out);
    if (peft_adapter_find(a, module)) return err_set(ERR_STAGE, "lora module '%s' added twice", module);
    peft_lora *nl = realloc(a->lora, (a->n_lora + 1) * sizeof *nl);
    if (!nl) return err_set(ERR_STAGE, "out of memory");
    a->lora = nl;
    peft_lora *l = &a->lora[a->n_lora];
    memset(l, 0, sizeof *l);
    l->module = strdup(module);
    l->r = r;
    l->in = in;
    l->out = out;
    l->A = calloc((size_t)(r * in), sizeof(float));
    l->B = calloc((size_t)(out * r), sizeof(float));
    if (!l->module || !l->A || !l->B) {
        free(l->module); free(l->A); free(l->B);
        return err_set(ERR_STAGE, "out of memory for lora module '%s'", module);
    }
    a->n_lora++;
    if (lora) *lora = l;
    return 0;
}

int peft_adapter_add(peft_adapter *a, const char *module, int64_t in, int64_t out, peft_lora **lora) {
    return add_rank(a, module, a->r, in, out, lora);
}

bool peft_target_matches(const char *target, const char *module) {
    size_t lt = strlen(target), lm = strlen(module);
    if (lt > lm) return false;
    if (strcmp(module + lm - lt, target)) return false;
    return lt == lm || module[lm - lt - 1] == '.';
}

/* a value from rank_pattern / alpha_pattern whose key selects module (peft matches the
 * key as a suffix of the module path on a '.' boundary) */
static const json_t *pattern_value(const peft_adapter *a, const char *pattern, const char *module) {
    json_t *p = a->extra ? json_object_get(a->extra, pattern) : NULL;
    if (!json_is_object(p)) return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(p, k, v) if (peft_target_matches(k, module) && json_is_number(v)) return v;
    return NULL;
}

double peft_adapter_scale(const peft_adapter *a, const peft_lora *l) {
    const json_t *av = pattern_value(a, "alpha_pattern", l->module);
    double alpha = av ? json_number_value(av) : a->alpha;
    return a->use_rslora ? alpha / sqrt((double)l->r) : alpha / (double)l->r;
}

/* ---- adapter_config.json ---- */

/* The keys peft 0.21 writes for features we do not use, with the values it writes. */
static json_t *config_defaults(void) {
    static const char *nulls[] = {"alora_invocation_tokens", "arrow_config", "auto_mapping", "corda_config",
                                  "eva_config", "exclude_modules", "kasa_config", "layer_replication",
                                  "layers_pattern", "layers_to_transform", "lora_ga_config", "megatron_config",
                                  "modules_to_save", "monteclora_config", "revision", "target_parameters",
                                  "trainable_token_indices", "use_bdlora", "velora_config"};
    static const char *falses[] = {"ensure_weight_tying", "fan_in_fan_out", "lora_bias", "use_dora", "use_qalora"};
    static const char *empties[] = {"alpha_pattern", "loftq_config", "rank_pattern"};
    json_t *j = json_object();
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++) json_object_set_new(j, nulls[i], json_null());
    for (size_t i = 0; i < sizeof falses / sizeof *falses; i++) json_object_set_new(j, falses[i], json_false());
    for (size_t i = 0; i < sizeof empties / sizeof *empties; i++) json_object_set_new(j, empties[i], json_object());
    json_object_set_new(j, "bias", json_string("none"));
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "init_lora_weights", json_true());
    json_object_set_new(j, "megatron_core", json_string("megatron.core"));
    json_object_set_new(j, "peft_type", json_string("LORA"));
    json_object_set_new(j, "peft_version", json_string(PEFT_VERSION_WRITTEN));
    json_object_set_new(j, "qalora_group_size", json_integer(16));
    return j;
}

/* Python writes an int where the user gave one: keep integral alphas integers */
static json_t *number(double x) {
    if (x == floor(x) && fabs(x) < 1e15) return json_integer((json_int_t)x);
    return json_real(x);
}

static json_t *opt_string(const char *s) { return s ? json_string(s) : json_null(); }

char *peft_config_text(const peft_adapter *a) {
    json_t *j = config_defaults();
    if (a->extra) json_object_update(j, a->extra);
    json_object_set_new(j, "base_model_name_or_path", opt_string(a->base_model));
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "lora_alpha", number(a->alpha));
    json_object_set_new(j, "lora_dropout", json_real(a->dropout));
    json_object_set_new(j, "peft_type", json_string("LORA"));
    json_object_set_new(j, "r", json_integer(a->r));
    json_object_set_new(j, "task_type", opt_string(a->task_type));
    json_object_set_new(j, "use_rslora", json_boolean(a->use_rslora));
    if (a->target_regex) {
        json_object_set_new(j, "target_modules", json_string(a->target_regex));
    } else {
        json_t *t = json_array();
        for (size_t i = 0; i < a->n_targets; i++) json_array_append_new(t, json_string(a->targets[i]));
        json_object_set_new(j, "target_modules", t);
    }
    char *s = pyjson_dumps(j, 2, true);
    json_decref(j);
    return s;
}

static char *tensor_name(const char *module, const char *suffix) {
    size_t n = strlen(NAME_PREFIX) + strlen(module) + strlen(suffix) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s%s", NAME_PREFIX, module, suffix);
    return s;
}

int peft_adapter_save(const peft_adapter *a, const char *dir) {
    char *text = peft_config_text(a);
    if (!text) return err_set(ERR_STAGE, "out of memory");
    char *tmp = NULL;
    int rc = pubdir_begin(&tmp, dir);
    if (rc) { free(text); return err_wrap("saving adapter '%s'", dir); }
    st_writer *w = NULL;
    char **names = calloc(2 * a->n_lora + 1, sizeof *names);
    rc = names ? st_writer_open(&w, tmp, "adapter_model", 0) : err_set(ERR_STAGE, "out of memory");
    for (size_t i = 0; i < a->n_lora && !rc; i++) {
        const peft_lora *l = &a->lora[i];
        int64_t sa[2] = {l->r, l->in}, sb[2] = {l->out, l->r};
        names[2 * i] = tensor_name(l->module, SUFFIX_A);
        names[2 * i + 1] = tensor_name(l->module, SUFFIX_B);
        if (!names[2 * i] || !names[2 * i + 1]) { rc = err_set(ERR_STAGE, "out of memory"); break; }
        rc = st_writer_add(w, names[2 * i], ST_F32, 2, sa, l->A, NULL, NULL);
        if (!rc) rc = st_writer_add(w, names[2 * i + 1], ST_F32, 2, sb, l->B, NULL, NULL);
    }
    if (!rc) rc = st_writer_finish(&w);
    st_writer_free(&w);
    if (!rc) {
        char *p = fs_join(tmp, PEFT_CONFIG_FILE);
        rc = fs_write_atomic(p, text, strlen(text));
        free(p);
    }
    if (!rc) rc = pubdir_commit(&tmp, dir);
    else pubdir_abort(&tmp);
    for (size_t i = 0; names && i < 2 * a->n_lora; i++) free(names[i]);
    free(names);
    free(text);
    if (rc) err_wrap("saving adapter '%s'", dir);
    return rc;
}

/* ---- load ---- */

/* move a string field out of the config (null or absent -> NULL) */
static void take_string(json_t *cfg, const char *key, char **dst) {
    json_t *v = json_object_get(cfg, key);
    free(*dst);
    *dst = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
    json_object_del(cfg, key);
}

static int parse_config(peft_adapter *a, json_t *cfg, const char *path) {
    json_t *v = json_object_get(cfg, "peft_type");
    if (!json_is_string(v)) return err_set(ERR_DATA, "%s: missing \"peft_type\" (not a PEFT adapter config)", path);
    if (strcmp(json_string_value(v), "LORA"))
        return err_set(ERR_DATA, "%s: peft_type '%s' is not supported (only LORA adapters)", path, json_string_value(v));
    /* options that change the forward pass, which we would silently get wrong */
    static const char *unsupported[] = {"use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (json_is_true(json_object_get(cfg, unsupported[i])))
            return err_set(ERR_DATA, "%s: \"%s\": true is not supported (plain LoRA only)", path, unsupported[i]);
    json_t *ms = json_object_get(cfg, "modules_to_save");
    if (ms && !json_is_null(ms) && !(json_is_array(ms) && !json_array_size(ms)))
        return err_set(ERR_DATA, "%s: \"modules_to_save\" is not supported (fully trained modules besides LoRA)", path);
    v = json_object_get(cfg, "r");
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 65536)
            return err_set(ERR_DATA, "%s: \"r\" must be a positive integer", path);
        a->r = (int)json_integer_value(v);
    }
    v = json_object_get(cfg, "lora_alpha");
    if (v) {
        if (!json_is_number(v)) return err_set(ERR_DATA, "%s: \"lora_alpha\" must be a number", path);
        a->alpha = json_number_value(v);
    }
    v = json_object_get(cfg, "lora_dropout");
    if (v) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) >= 1)
            return err_set(ERR_DATA, "%s: \"lora_dropout\" must be a number in [0, 1)", path);
        a->dropout = json_number_value(v);
    }
    v = json_object_get(cfg, "use_rslora");
    if (v && !json_is_boolean(v)) return err_set(ERR_DATA, "%s: \"use_rslora\" must be true or false", path);
    a->use_rslora = json_is_true(v);
    v = json_object_get(cfg, "target_modules");
    if (json_is_string(v)) {
        a->target_regex = strdup(json_string_value(v));
    } else if (json_is_array(v)) {
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!json_is_string(t)) return err_set(ERR_DATA, "%s: \"target_modules\" entries must be strings", path);
            int rc = peft_adapter_add_target(a, json_string_value(t));
            if (rc) return rc;
        }
    } else if (v && !json_is_null(v)) {
        return err_set(ERR_DATA, "%s: \"target_modules\" must be a list of names or a string", path);
    }
    take_string(cfg, "base_model_name_or_path", &a->base_model);
    take_string(cfg, "task_type", &a->task_type);
    /* what is left is kept verbatim for the next save */
    static const char *modelled[] = {"r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "peft_type", "inference_mode"};
    for (size_t i = 0; i < sizeof modelled / sizeof *modelled; i++) json_object_del(cfg, modelled[i]);
    a->extra = json_incref(cfg);
    return 0;
}

/* the module path of a tensor name, or NULL with *which 'A'/'B' */
static char *module_of(const char *name, char *which) {
    size_t lp = strlen(NAME_PREFIX), ln = strlen(name), ls = strlen(SUFFIX_A);
    if (ln <= lp + ls || strncmp(name, NAME_PREFIX, lp)) return NULL;
    if (!strcmp(name + ln - ls, SUFFIX_A)) *which = 'A';
    else if (!strcmp(name + ln - ls, SUFFIX_B)) *which = 'B';
    else return NULL;
    return strndup(name + lp, ln - lp - ls);
}

static int load_tensors(peft_adapter *a, const char *path) {
    st_model *m = NULL;
    int rc = st_open(&m, path);
    if (rc) return rc;
    /* pass 1: every lora_A creates its module; pass 2: attach the B's */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (size_t i = 0; i < st_count(m) && !rc; i++) {
            const st_tensor *t = st_at(m, i);
            char which = 0;
            char *mod = module_of(t->name, &which);
            if (!mod) {
                rc = err_set(ERR_DATA, "%s: tensor '%s' is not a LoRA weight (expected %s<module>%s or %s)", path, t->name, NAME_PREFIX, SUFFIX_A, SUFFIX_B);
                break;
            }
            if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
                rc = err_set(ERR_DATA, "%s: tensor '%s' has dtype %s (expected F32, F16 or BF16)", path, t->name, st_dtype_name(t->dtype));
            } else if (t->ndim != 2 || t->shape[0] <= 0 || t->shape[1] <= 0) {
                rc = err_set(ERR_DATA, "%s: tensor '%s' must be 2-D and non-empty", path, t->name);
            } else if (pass == 0 && which == 'A') {
                char *bname = tensor_name(mod, SUFFIX_B);
                const st_tensor *tb = bname ? st_find(m, bname) : NULL;
                if (!tb) rc = err_set(ERR_DATA, "%s: '%s' has no matching '%s'", path, t->name, bname ? bname : "lora_B");
                else if (tb->ndim != 2 || tb->shape[1] != t->shape[0])
                    rc = err_set(ERR_DATA, "%s: '%s' is [%lld, %lld] but B must be [out, r] with r = %lld from lora_A", path, tb->name,
                                 (long long)tb->shape[0], (long long)(tb->ndim > 1 ? tb->shape[1] : 0), (long long)t->shape[0]);
                else if (t->shape[0] > 65536) rc = err_set(ERR_DATA, "%s: '%s': rank %lld is absurd", path, t->name, (long long)t->shape[0]);
                peft_lora *l = NULL;
                if (!rc) rc = add_rank(a, mod, (int)t->shape[0], t->shape[1], tb->shape[0], &l);
                if (!rc) rc = st_read_f32(t, 0, st_numel(t), l->A);
                if (!rc) rc = st_read_f32(tb, 0, st_numel(tb), l->B);
                free(bname);
            } else if (pass == 1 && which == 'B' && !peft_adapter_find(a, mod)) {
                rc = err_set(ERR_DATA, "%s: '%s' has no matching lora_A", path, t->name);
            }
            free(mod);
        }
    }
    st_close(&m);
    return rc;
}

int peft_adapter_load(peft_adapter *a, const char *dir) {
    peft_adapter_init(a);
    char *cpath = fs_join(dir, PEFT_CONFIG_FILE), *wpath = fs_join(dir, PEFT_WEIGHTS_FILE);
    int rc = 0;
    json_t *cfg = NULL;
    if (!fs_exists(cpath)) {
        rc = err_set(ERR_DATA, "%s: no %s here (not a PEFT adapter directory)", dir, PEFT_CONFIG_FILE);
    } else if (!fs_exists(wpath)) {
        char *bin = fs_join(dir, "adapter_model.bin");
        if (fs_exists(bin)) rc = err_set(ERR_DATA, "%s: only adapter_model.bin (a pickle) is present; re-save the adapter with safe_serialization=True", dir);
        else rc = err_set(ERR_DATA, "%s: no %s here", dir, PEFT_WEIGHTS_FILE);
        free(bin);
    } else {
        rc = json_in_load_file(cpath, JSON_REJECT_DUPLICATES, &cfg);
        if (!rc && !json_is_object(cfg)) rc = err_set(ERR_DATA, "%s: not a JSON object", cpath);
    }
    if (!rc) rc = parse_config(a, cfg, cpath);
    if (!rc) rc = load_tensors(a, wpath);
    if (!rc && a->n_lora == 0) rc = err_set(ERR_DATA, "%s: holds no LoRA tensors", wpath);
    json_decref(cfg);
    free(cpath);
    free(wpath);
    if (rc) peft_adapter_free(a);
    return rc;
}
