/* chat_template.c: finding a model's chat template and rendering it (see chat_template.h). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "tokenizer/chat_template.h"

static int load_object(const char *path, json_t **out) {
    *out = NULL;
    if (!fs_exists(path)) return 0;
    json_error_t je;
    json_t *j = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je); /* model_max_length can be 1e30 */
    if (!j) return err_set(ERR_DATA, "'%s':%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return err_set(ERR_DATA, "'%s': expected a JSON object at the top level", path);
    }
    *out = j;
    return 0;
}

/* a special token as tokenizer_config.json writes it: "<s>" or {"content": "<s>", ...} */
static const char *token_text(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static int template_from_config(const json_t *cfg, const char *path, char **text) {
    json_t *ct = json_object_get(cfg, "chat_template");
    *text = NULL;
    if (!ct || json_is_null(ct)) return 0;
    if (json_is_string(ct)) {
        *text = strdup(json_string_value(ct));
        return *text ? 0 : err_set(ERR_STAGE, "out of memory");
    }
    if (json_is_array(ct)) {
        size_t i;
        json_t *e;
        json_array_foreach(ct, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            const char *t = json_string_value(json_object_get(e, "template"));
            if (!name || !t)
                return err_set(ERR_DATA, "'%s': chat_template[%zu]: expected {\"name\": ..., \"template\": ...}", path, i);
            if (!strcmp(name, "default")) {
                *text = strdup(t);
                return *text ? 0 : err_set(ERR_STAGE, "out of memory");
            }
        }
        return err_set(ERR_DATA, "'%s': chat_template is a list without a \"default\" entry", path);
    }
    return err_set(ERR_DATA, "'%s': chat_template must be a string or a list of named templates", path);
}

int chat_template_load(chat_template **out, const char *model_dir, const char *template_file) {
    *out = NULL;
    chat_template *ct = calloc(1, sizeof *ct);
    if (!ct) return err_set(ERR_STAGE, "out of memory");
    char *cfg_path = fs_join(model_dir, "tokenizer_config.json"), *map_path = fs_join(model_dir, "special_tokens_map.json");
    char *jinja_path = fs_join(model_dir, "chat_template.jinja");
    json_t *cfg = NULL, *map = NULL;
    int rc = load_object(cfg_path, &cfg);
    if (!rc) rc = load_object(map_path, &map);
    size_t len = 0;
    if (!rc && template_file) {
        rc = fs_read_all(template_file, &ct->text, &len);
        ct->source = strdup(template_file);
    } else if (!rc && fs_exists(jinja_path)) {
        rc = fs_read_all(jinja_path, &ct->text, &len);
        ct->source = strdup(jinja_path);
    } else if (!rc) {
        rc = cfg ? template_from_config(cfg, cfg_path, &ct->text) : 0;
        if (!rc && !ct->text)
            rc = err_set(ERR_DATA,
                         "'%s': the model has no chat template (no chat_template in tokenizer_config.json, no "
                         "chat_template.jinja): name a built-in one (chat_template: one of " CHAT_TEMPLATE_BUILTINS
                         ") or a file (chat_template_file: my.jinja)",
                         model_dir);
        if (!rc) {
            len = strlen(ct->text);
            ct->source = strdup(cfg_path);
        }
    }
    if (!rc && !ct->source) rc = err_set(ERR_STAGE, "out of memory");
    if (!rc) rc = jinja_parse(&ct->tpl, ct->text, len, ct->source);
    if (!rc) {
        ct->tokens = json_object();
        static const char *const names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            const char *t = token_text(json_object_get(map, names[i]));
            if (!t) t = token_text(json_object_get(cfg, names[i]));
            if (t) json_object_set_new(ct->tokens, names[i], json_string(t));
        }
    }
    json_decref(cfg);
    json_decref(map);
    free(cfg_path);
    free(map_path);
    free(jinja_path);
    if (rc) {
        chat_template_free(&ct);
        return rc;
    }
    *out = ct;
    return 0;
}

void chat_template_free(chat_template **ct) {
    if (!*ct) return;
    jinja_free(&(*ct)->tpl);
    free((*ct)->source);
    free((*ct)->text);
    json_decref((*ct)->tokens);
    free(*ct);
    *ct = NULL;
}

int chat_template_render(const chat_template *ct, const json_t *messages, const json_t *tools,
                         const json_t *documents, const json_t *kwargs, bool add_generation_prompt,
                         const jinja_limits *lim, jinja_result *out) {
    json_t *ctx = json_object();
    if (!ctx) return err_set(ERR_STAGE, "out of memory");
    json_object_set(ctx, "messages", (json_t *)messages);
    json_object_set_new(ctx, "tools", tools ? json_incref((json_t *)tools) : json_null());
    json_object_set_new(ctx, "documents", documents ? json_incref((json_t *)documents) : json_null());
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    json_object_update(ctx, ct->tokens);
    if (kwargs) json_object_update(ctx, (json_t *)kwargs);
    int rc = jinja_render(ct->tpl, ctx, lim, out);
    json_decref(ctx);
    return rc;
}
