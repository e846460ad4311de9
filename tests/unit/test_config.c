/* test_config.c: config.json of llama/mistral/qwen2 in both transformers layouts, the 4.x
 * writer, presets, the tensor layout against a transformers-written checkpoint, and the
 * adapter-vs-model validator. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "model/adapter.h"
#include "model/config.h"
#include "test.h"

static char tmpdir[256];

static int from_text(model_config *c, const char *text) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    int rc = config_from_json(c, j, "config.json");
    json_decref(j);
    return rc;
}

TEST(test_fixture_bf16) {
    model_config c;
    CHECK_EQ_INT(config_load(&c, "fixtures/bnb/tiny-llama-bf16"), 0);
    CHECK(c.arch == ARCH_LLAMA);
    CHECK_EQ_INT(c.hidden_size, 128);
    CHECK_EQ_INT(c.num_layers, 2);
    CHECK_EQ_INT(c.num_heads, 4);
    CHECK_EQ_INT(c.num_kv_heads, 2);
    CHECK_EQ_INT(c.head_dim, 32);
    CHECK_EQ_INT(c.intermediate_size, 256);
    CHECK_EQ_INT(c.vocab_size, 512);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 0);
    CHECK(c.rope_type == ROPE_DEFAULT);
    CHECK_EQ_STR(c.dtype, "bfloat16");
    CHECK_EQ_INT(c.pad_token_id, -1);
    CHECK(!c.quantized);
    /* our tensor layout is exactly the checkpoint's names and shapes */
    config_tensor *ts;
    size_t n;
    CHECK_EQ_INT(config_tensors(&c, &ts, &n), 0);
    st_model *m;
    CHECK_EQ_INT(st_open(&m, "fixtures/bnb/tiny-llama-bf16"), 0);
    CHECK_EQ_INT(st_count(m), n);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_find(m, ts[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK_EQ_INT(t->ndim, ts[i].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK_EQ_INT(t->shape[d], ts[i].shape[d]);
    }
    st_close(&m);
    free(ts);
    CHECK_EQ_INT(config_param_count(&c), 128 * 512 * 2 + 128 + 2 * (128 * 128 * 2 + 2 * 128 * 64 + 3 * 128 * 256 + 256));
    config_free(&c);
}

TEST(test_fixture_nf4) {
    model_config c;
    CHECK_EQ_INT(config_load(&c, "fixtures/bnb/tiny-llama-nf4"), 0);
    CHECK(c.quantized);
    CHECK_EQ_STR(c.quant_type, "nf4");
    CHECK(c.double_quant);
    CHECK_EQ_STR(c.compute_dtype, "bfloat16");
    config_free(&c);
}

TEST(test_v4_llama3) {
    model_config c;
    const char *text = "{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                       "\"num_hidden_layers\":1,\"intermediate_size\":96,\"vocab_size\":300,\"rope_theta\":500000.0,"
                       "\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                       "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},\"eos_token_id\":[128001,128009],"
                       "\"torch_dtype\":\"bfloat16\",\"rms_norm_eps\":1e-05}";
    CHECK_EQ_INT(from_text(&c, text), 0);
    CHECK(c.rope_type == ROPE_LLAMA3);
    CHECK_NEAR(c.rope_factor, 8, 0);
    CHECK_NEAR(c.rope_high_freq_factor, 4, 0);
    CHECK_EQ_INT(c.rope_original_max_position, 8192);
    CHECK_NEAR(c.rope_theta, 500000.0, 0);
    CHECK_EQ_INT(c.eos_token_id, 128001);
    CHECK_EQ_INT(c.head_dim, 16);
    /* the writer round-trips it, in the 4.x layout with Python's float spelling */
    char dir[300];
    snprintf(dir, sizeof dir, "%s/v4", tmpdir);
    fs_mkdir_p(dir);
    CHECK_EQ_INT(config_save(&c, dir), 0);
    char *p = fs_join(dir, "config.json"), *s = NULL;
    size_t len;
    CHECK_EQ_INT(fs_read_all(p, &s, &len), 0);
    CHECK(len > 2 && s[len - 1] == '\n' && s[len - 2] == '}');
    CHECK(strstr(s, "  \"rms_norm_eps\": 1e-05,\n") != NULL);
    CHECK(strstr(s, "  \"rope_theta\": 500000.0,\n") != NULL);
    CHECK(strstr(s, "    \"rope_type\": \"llama3\"\n") != NULL);
    CHECK(strstr(s, "\"torch_dtype\": \"bfloat16\"") != NULL);
    CHECK(strstr(s, "\"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n") != NULL);
    free(s);
    free(p);
    model_config d;
    CHECK_EQ_INT(config_load(&d, dir), 0);
    CHECK(d.rope_type == ROPE_LLAMA3 && d.rope_original_max_position == 8192 && d.head_dim == 16 && d.num_kv_heads == 2);
    config_free(&d);
    config_free(&c);
}

TEST(test_v5_rope_parameters) {
    model_config c;
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"mistral\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":1,"
                               "\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":2.0,\"rope_theta\":1000000.0},\"sliding_window\":4096,"
                               "\"dtype\":\"float16\"}"), 0);
    CHECK(c.arch == ARCH_MISTRAL && c.rope_type == ROPE_LINEAR);
    CHECK_NEAR(c.rope_factor, 2, 0);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_EQ_INT(c.sliding_window, 4096);
    CHECK_EQ_INT(c.num_kv_heads, 4);
    CHECK_EQ_STR(c.dtype, "float16");
    config_free(&c);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":1,"
                               "\"use_sliding_window\":false,\"sliding_window\":131072,\"tie_word_embeddings\":true}"), 0);
    CHECK(c.arch == ARCH_QWEN2 && c.attention_bias && c.tie_word_embeddings);
    CHECK_EQ_INT(c.sliding_window, 0);
    config_tensor *ts;
    size_t n;
    CHECK_EQ_INT(config_tensors(&c, &ts, &n), 0);
    int biases = 0, heads = 0;
    for (size_t i = 0; i < n; i++) {
        biases += ts[i].role == TROLE_BIAS;
        heads += ts[i].role == TROLE_LM_HEAD;
        CHECK(!strstr(ts[i].name, "o_proj.bias"));
    }
    CHECK_EQ_INT(biases, 3);
    CHECK_EQ_INT(heads, 0);
    free(ts);
    config_free(&c);
}

TEST(test_rejects) {
    model_config c;
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gpt2\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "gpt2") && strstr(err_msg(), "llama, mistral, qwen2, qwen3"));
    CHECK_EQ_INT(from_text(&c, "{\"hidden_size\":64}"), ERR_DATA);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":6}"), ERR_DATA);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"num_attention_heads\":8,\"num_key_value_heads\":3}"), ERR_DATA);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}"), ERR_DATA);
    CHECK(strstr(err_msg(), "yarn") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"quantization_config\":{\"quant_method\":\"gptq\"}}"), ERR_DATA);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"hidden_size\":\"big\"}"), ERR_DATA);
    CHECK_EQ_INT(config_load(&c, "/nonexistent"), ERR_DATA);
}

TEST(test_presets) {
    model_config c;
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "1b"), 0);
    CHECK_EQ_INT(config_param_count(&c), 1100048384LL); /* TinyLlama-1.1B */
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "7b"), 0);
    CHECK_EQ_INT(config_param_count(&c), 6738415616LL); /* Llama-2-7B */
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "70b"), 0);
    CHECK_EQ_INT(config_param_count(&c), 68976648192LL); /* Llama-2-70B */
    CHECK_EQ_INT(config_preset(&c, ARCH_MISTRAL, "7b"), 0);
    CHECK_EQ_INT(config_param_count(&c), 7241732096LL); /* Mistral-7B */
    CHECK_EQ_INT(config_preset(&c, ARCH_QWEN2, "tiny"), 0);
    CHECK(c.tie_word_embeddings && c.attention_bias);
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "3b"), ERR_USAGE);
    model_arch a;
    CHECK_EQ_INT(config_arch_from_name("qwen2", &a), 0);
    CHECK(a == ARCH_QWEN2);
    CHECK_EQ_INT(config_arch_from_name("falcon", &a), ERR_USAGE);
    /* the real shapes: parameter counts of the published models (gemma3's text models) */
    static const struct { const char *name; long long params; } real[] = {
        {"llama3-8b", 8030261248LL}, {"llama3-70b", 70553706496LL}, {"qwen3-0.6b", 596049920LL},
        {"qwen3-8b", 8190735360LL}, {"qwen3-32b", 32762123264LL}, {"mistral-7b", 7248023552LL},
        {"gemma3-1b", 999885952LL}};
    for (size_t i = 0; i < sizeof real / sizeof *real; i++) {
        CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, real[i].name), 0);
        if (config_param_count(&c) != real[i].params)
            fprintf(stderr, "  %s: %lld parameters, published %lld\n", real[i].name, (long long)config_param_count(&c), real[i].params);
        CHECK_EQ_INT(config_param_count(&c), real[i].params);
    }
    CHECK(config_preset_is_named("qwen3-8b", &a) && a == ARCH_QWEN3);
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "gemma3-27b"), 0);
    CHECK(c.arch == ARCH_GEMMA3 && c.head_dim == 128 && c.query_pre_attn_scalar == 168 && c.rope_type == ROPE_LINEAR);
    CHECK_EQ_INT(config_layer_window(&c, 4), 1024);
    CHECK_EQ_INT(config_layer_window(&c, 5), 0); /* every sixth layer is global */
}

/* the families' errors: file, key, supported values, before anything runs */
TEST(test_family_rejects) {
    model_config c;
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"phi3\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "config.json: model_type 'phi3' is not supported (supported: llama, mistral, qwen2, qwen3, gemma3_text)") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "multimodal") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3_text\",\"final_logit_softcapping\":30.0}"), ERR_DATA);
    CHECK(strstr(err_msg(), "final_logit_softcapping") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3_text\",\"hidden_activation\":\"relu\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "gelu_pytorch_tanh") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":4}}"), ERR_DATA);
    CHECK(strstr(err_msg(), "rope_scaling type 'longrope' is not supported (supported: default, linear, dynamic, llama3)") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"qwen3\",\"num_hidden_layers\":2,\"use_sliding_window\":true,"
                               "\"sliding_window\":8,\"max_window_layers\":1,\"layer_types\":[\"sliding_attention\",\"full_attention\"]}"),
                 ERR_DATA);
    CHECK(strstr(err_msg(), "layer_types") != NULL);
    /* int(1e30) where a count is meant: an error naming the key, not a silent huge real */
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"llama\",\"max_position_embeddings\":1e30}"), ERR_DATA);
    CHECK(strstr(err_msg(), "\"max_position_embeddings\" must be an integer >= 1 (got 1e+30)") != NULL);
    /* gemma3 read back from what we write */
    CHECK_EQ_INT(config_preset(&c, ARCH_GEMMA3, "tiny"), 0);
    c.rope_type = ROPE_LINEAR, c.rope_factor = 8;
    json_t *j = config_to_json(&c);
    model_config d;
    CHECK_EQ_INT(config_from_json(&d, j, "config.json"), 0);
    CHECK(d.arch == ARCH_GEMMA3 && d.qk_norm && d.sliding_window == 512 && d.sliding_window_pattern == 6 &&
          d.query_pre_attn_scalar == 64 && d.rope_local_theta == 10000.0 && d.rope_type == ROPE_LINEAR && d.head_dim == 64);
    json_decref(j);
}

TEST(test_adapter_validate) {
    model_config c;
    CHECK_EQ_INT(config_load(&c, "fixtures/bnb/tiny-llama-bf16"), 0);
    peft_adapter a;
    peft_adapter_init(&a);
    a.r = 4;
    peft_adapter_add_target(&a, "q_proj");
    peft_adapter_add_target(&a, "v_proj");
    peft_adapter_add(&a, "model.layers.0.self_attn.q_proj", 128, 128, NULL);
    peft_adapter_add(&a, "model.layers.1.self_attn.v_proj", 128, 64, NULL);
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), 0);
    peft_adapter_add(&a, "model.layers.1.self_attn.k_proj", 128, 64, NULL);
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), ERR_DATA);
    CHECK(strstr(err_msg(), "not selected by target_modules") != NULL);
    peft_adapter_free(&a);
    peft_adapter_init(&a);
    peft_adapter_add_target(&a, "v_proj");
    peft_adapter_add(&a, "model.layers.1.self_attn.v_proj", 128, 128, NULL); /* out should be 64 */
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), ERR_DATA);
    CHECK(strstr(err_msg(), "another base model") != NULL);
    peft_adapter_free(&a);
    peft_adapter_init(&a);
    peft_adapter_add_target(&a, "c_attn");
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), ERR_DATA);
    CHECK(strstr(err_msg(), "c_attn") != NULL);
    peft_adapter_free(&a);
    peft_adapter_init(&a);
    peft_adapter_add(&a, "model.layers.7.self_attn.q_proj", 128, 128, NULL); /* only 2 layers */
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), ERR_DATA);
    peft_adapter_free(&a);
    config_free(&c);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config.%d", (int)getpid());
    fs_mkdir_p(tmpdir);
    RUN(test_fixture_bf16);
    RUN(test_fixture_nf4);
    RUN(test_v4_llama3);
    RUN(test_v5_rope_parameters);
    RUN(test_rejects);
    RUN(test_presets);
    RUN(test_family_rejects);
    RUN(test_adapter_validate);
    fs_rm_rf(tmpdir);
    return test_summary();
}
