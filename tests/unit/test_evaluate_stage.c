/* test_evaluate_stage.c: the evaluate stage on a generated tiny llama: base and tuned side by
 * side (loss, perplexity, generations, exact match and a Lua score hook), results.json, the
 * report; and the generation loop (greedy determinism, stop strings, EOS). */
#define _GNU_SOURCE
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "generate/generate.h"
#include "model/llama_peft.h"
#include "tokenizer/tokenizer.h"
#include "test.h"
#include "train_fixture.h"

extern const stage_kind stage_kind_attach_lora, stage_kind_train, stage_kind_evaluate;

static char root[256];
static char *model_art, *data_art, *lora_art, *train_art;

static int run_stage(const stage_kind *k, json_t *params, const char *out, json_t **report, json_t **metrics,
                     json_t *hooks) {
    stage_ctx ctx;
    fix_ctx(&ctx, k, k->name, params, out, NULL);
    fix_input(&ctx, "model", "init_model", model_art);
    if (json_object_get(params, "adapter"))
        fix_input(&ctx, "adapter", k == &stage_kind_train ? "attach_lora" : "train",
                  k == &stage_kind_train ? lora_art : train_art);
    if (json_object_get(params, "data")) {
        fix_input(&ctx, "data", "dataset", data_art);
    }
    ctx.hooks = hooks;
    fs_mkdir_p(out);
    int rc = k->check ? k->check(params) : 0;
    if (!rc) rc = k->run(&ctx);
    if (rc) fprintf(stderr, "stage %s: %s\n", k->name, err_msg());
    if (report) *report = ctx.report;
    else json_decref(ctx.report);
    if (metrics) *metrics = ctx.metrics;
    else json_decref(ctx.metrics);
    json_decref(ctx.hook_files);
    json_decref(params);
    return rc;
}

TEST(test_evaluate_side_by_side) {
    char *out = fs_join(root, "eval1");
    json_t *report = NULL, *metrics = NULL;
    json_t *p = json_pack("{s:s, s:s, s:s, s:[s, s], s:i, s:i}", "model", "m", "adapter", "t", "data", "d", "prompts",
                          "abc>", "hello", "max_new_tokens", 6, "score_records", 5);
    CHECK_EQ_INT(run_stage(&stage_kind_evaluate, p, out, &report, &metrics, NULL), 0);
    double base = json_real_value(json_object_get(metrics, "val_loss_base"));
    double tuned = json_real_value(json_object_get(metrics, "val_loss"));
    CHECK(tuned < base);
    json_t *gens = json_object_get(report, "generations");
    CHECK_EQ_INT(json_array_size(gens), 2 + 5);
    json_t *g0 = json_array_get(gens, 0);
    CHECK(json_is_string(json_object_get(g0, "base")) && json_is_string(json_object_get(g0, "tuned")));
    json_t *g2 = json_array_get(gens, 2);
    CHECK_EQ_STR(json_string_value(json_object_get(g2, "source")), "val");
    CHECK(json_is_string(json_object_get(g2, "reference")));
    json_t *score = json_object_get(report, "score");
    CHECK_EQ_INT(json_integer_value(json_object_get(score, "n")), 5);
    CHECK_EQ_STR(json_string_value(json_object_get(score, "metric")), "exact_match");
    char *rp = fs_join(out, "results.json");
    json_t *res = json_load_file(rp, 0, NULL);
    CHECK(res && json_equal(res, report));
    json_decref(res);
    free(rp);
    json_decref(report);
    json_decref(metrics);
    free(out);
}

TEST(test_evaluate_score_hook) {
    char *out = fs_join(root, "eval2"), *hook = fs_join(root, "score.lua");
    const char *src = "function score(prediction, record)\n"
                      "  if record.response == nil then return 0 end\n"
                      "  return #prediction > 0 and 1 or 0\n"
                      "end\n";
    fs_write_atomic(hook, src, strlen(src));
    json_t *hooks = json_pack("{s:s}", "score", hook);
    json_t *report = NULL;
    json_t *p = json_pack("{s:s, s:s, s:s, s:i, s:i, s:b}", "model", "m", "adapter", "t", "data", "d",
                          "max_new_tokens", 4, "score_records", 3, "compare_base", 0);
    CHECK_EQ_INT(run_stage(&stage_kind_evaluate, p, out, &report, NULL, hooks), 0);
    json_t *score = json_object_get(report, "score");
    CHECK_EQ_STR(json_string_value(json_object_get(score, "metric")), "score hook");
    CHECK(json_object_get(score, "base") == NULL && json_is_real(json_object_get(score, "tuned")));
    json_decref(report);
    json_decref(hooks);
    free(hook);
    free(out);
}

/* record prompts are formatted as the data was: here the built-in alpaca template */
TEST(test_evaluate_alpaca_prompts) {
    char *out = fs_join(root, "eval3");
    CHECK_EQ_INT(fix_write_dataset_meta(data_art, "alpaca"), 0); /* what the dataset stage wrote */
    json_t *report = NULL;
    json_t *p = json_pack("{s:s, s:s, s:[{s:s, s:s}], s:i, s:i}", "model", "m", "data", "d", "prompts", "instruction",
                          "Sort the letters.", "input", "dbca", "max_new_tokens", 2, "score_records", 0);
    CHECK_EQ_INT(run_stage(&stage_kind_evaluate, p, out, &report, NULL, NULL), 0);
    const char *prompt = json_string_value(json_object_get(json_array_get(json_object_get(report, "generations"), 0), "prompt"));
    CHECK(prompt && strstr(prompt, "Below is an instruction") == prompt && strstr(prompt, "dbca") != NULL);
    json_decref(report);
    CHECK_EQ_INT(fix_write_dataset_meta(data_art, "completion"), 0);
    free(out);
}

/* format: chat data with the model's Jinja template: a record prompt is its messages up to the
 * last user turn, rendered with the generation prompt (the final assistant turn is the reference) */
TEST(test_evaluate_chat_prompts) {
    char *out = fs_join(root, "eval4"), *mdir = fs_join(model_art, "model"), *tpl = fs_join(mdir, "chat_template.jinja");
    const char *src = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}";
    CHECK_EQ_INT(fs_write_atomic(tpl, src, strlen(src)), 0);
    const char *meta = "{\"version\":1,\"sequence_len\":16,\"splits\":{\"train\":{},\"val\":{}},\"stats\":{},"
                       "\"formatting\":{\"format\":\"chat\",\"chat_template\":\"tokenizer_default\","
                       "\"train_on_inputs\":false,\"hook_args\":null}}";
    CHECK_EQ_INT(fix_write_file(data_art, "meta.json", meta, strlen(meta)), 0); /* what the dataset stage wrote */
    json_t *report = NULL;
    json_t *p = json_pack("{s:s, s:s, s:[{s:[{s:s, s:s}, {s:s, s:s}]}], s:i, s:i}", "model", "m", "data", "d", "prompts",
                          "messages", "role", "user", "content", "Hi", "role", "assistant", "content", "ref",
                          "max_new_tokens", 2, "score_records", 0);
    CHECK_EQ_INT(run_stage(&stage_kind_evaluate, p, out, &report, NULL, NULL), 0);
    const char *prompt = json_string_value(json_object_get(json_array_get(json_object_get(report, "generations"), 0), "prompt"));
    CHECK_EQ_STR(prompt, "<s><user>Hi</s><assistant>");
    json_decref(report);
    CHECK_EQ_INT(fix_write_dataset_meta(data_art, "completion"), 0);
    unlink(tpl);
    free(tpl);
    free(mdir);
    free(out);
}

TEST(test_generate_loop) {
    model_config c;
    char *mdir = fs_join(model_art, "model");
    CHECK_EQ_INT(config_load(&c, mdir), 0);
    llama_model *m = NULL;
    tokenizer *tok = NULL;
    CHECK_EQ_INT(llama_init(&m, &c, mdir, &LLAMA_LOAD_OPTS_DEFAULT, ops_cpu()), 0);
    CHECK_EQ_INT(tokenizer_load(&tok, mdir), 0);
    gen_opts o = {.sample = SAMPLE_OPTS_GREEDY, .max_new_tokens = 12, .eos_id = -1};
    char *t1 = NULL, *t2 = NULL;
    int n1 = 0, n2 = 0;
    CHECK_EQ_INT(generate_text(m, tok, "abc>", &o, &t1, &n1), 0);
    CHECK_EQ_INT(generate_text(m, tok, "abc>", &o, &t2, &n2), 0);
    CHECK_EQ_INT(n1, 12);
    CHECK(t1 && t2 && !strcmp(t1, t2)); /* greedy is deterministic, and the cache restarts */
    /* a stop string taken from the greedy output cuts the text before it */
    if (t1 && strlen(t1) >= 4) {
        char stop[3] = {t1[2], t1[3], 0};
        const char *stops[1] = {stop};
        o.stop = stops;
        o.n_stop = 1;
        char *t3 = NULL;
        int n3 = 0;
        CHECK_EQ_INT(generate_text(m, tok, "abc>", &o, &t3, &n3), 0);
        CHECK(t3 && strstr(t1, t3) == t1 && strlen(t3) <= 2 && n3 < 12);
        free(t3);
    }
    /* sampling with a seed is reproducible */
    o = (gen_opts){.sample = {.temperature = 1.0f, .top_k = 20, .top_p = 0.9f, .repetition_penalty = 1.1f, .seed = 7},
                   .max_new_tokens = 10, .eos_id = -1};
    char *s1 = NULL, *s2 = NULL;
    CHECK_EQ_INT(generate_text(m, tok, "hello", &o, &s1, NULL), 0);
    CHECK_EQ_INT(generate_text(m, tok, "hello", &o, &s2, NULL), 0);
    CHECK(s1 && s2 && !strcmp(s1, s2));
    free(s1), free(s2), free(t1), free(t2);
    tokenizer_free(&tok);
    llama_free(&m);
    config_free(&c);
    free(mdir);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/qlora-test-eval-%d", (int)getpid());
    fs_rm_rf(root);
    fs_mkdir_p(root);
    model_config c;
    fix_config(&c);
    model_art = fs_join(root, "model-art");
    data_art = fs_join(root, "data-art");
    lora_art = fs_join(root, "lora-art");
    train_art = fs_join(root, "train-art");
    char *mdir = fs_join(model_art, "model");
    int rc = fix_write_model(model_art, &c, 3);
    if (!rc) rc = tokenizer_write_byte(mdir);
    if (!rc) rc = fix_write_dataset(data_art, 96, 16);
    if (!rc)
        rc = run_stage(&stage_kind_attach_lora,
                       json_pack("{s:s, s:i, s:f, s:f, s:[s], s:I}", "model", "m", "lora_r", 8, "lora_alpha", 16.0, "lora_dropout", 0.0,
                                 "lora_target_modules", "all-linear", "seed", (json_int_t)5),
                       lora_art, NULL, NULL, NULL);
    if (!rc)
        rc = run_stage(&stage_kind_train,
                       json_pack("{s:s, s:s, s:s, s:f, s:i, s:i}", "model", "m", "adapter", "a", "data", "d",
                                 "learning_rate", 3e-3, "micro_batch_size", 8, "max_steps", 20),
                       train_art, NULL, NULL, NULL);
    free(mdir);
    if (rc) return 1;
    RUN(test_evaluate_side_by_side);
    RUN(test_evaluate_score_hook);
    RUN(test_evaluate_alpaca_prompts);
    RUN(test_evaluate_chat_prompts);
    RUN(test_generate_loop);
    config_free(&c);
    free(model_art), free(data_art), free(lora_art), free(train_art);
    fs_rm_rf(root);
    return test_summary();
}
