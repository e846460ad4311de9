/* test_config.c: config.json of llama/mistral/qwen2 in both transformers layouts, the 4.x
 * writer, presets, the tensor layout against a transformers-written checkpoint, and the
 * adapter-vs-model validator. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "model/adapter.h"
#include "model/config.h"
#include "model/lora_init.h"
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
        {"gemma3-1b", 999885952LL}, {"phi3-mini", 3821079552LL}, {"gemma2-2b", 2614341888LL},
        {"gemma2-9b", 9241705984LL}, {"gemma2-27b", 27227128320LL}, {"phi4", 14659507200LL}};
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

/* gemma-2-2b's config.json as transformers 4.42 wrote it (google/gemma-2-2b), and the 5.x form */
TEST(test_gemma2) {
    model_config c;
    CHECK_EQ_INT(from_text(&c, "{\"architectures\":[\"Gemma2ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
                               "\"attn_logit_softcapping\":50.0,\"bos_token_id\":2,\"cache_implementation\":\"hybrid\","
                               "\"eos_token_id\":1,\"final_logit_softcapping\":30.0,\"head_dim\":256,\"hidden_act\":\"gelu_pytorch_tanh\","
                               "\"hidden_activation\":\"gelu_pytorch_tanh\",\"hidden_size\":2304,\"initializer_range\":0.02,"
                               "\"intermediate_size\":9216,\"max_position_embeddings\":8192,\"model_type\":\"gemma2\","
                               "\"num_attention_heads\":8,\"num_hidden_layers\":26,\"num_key_value_heads\":4,\"pad_token_id\":0,"
                               "\"query_pre_attn_scalar\":256,\"rms_norm_eps\":1e-06,\"rope_theta\":10000.0,\"sliding_window\":4096,"
                               "\"torch_dtype\":\"float32\",\"transformers_version\":\"4.42.4\",\"use_cache\":true,\"vocab_size\":256000}"),
                 0);
    CHECK(c.arch == ARCH_GEMMA2 && !c.qk_norm && c.head_dim == 256 && c.attn_softcap == 50.0 && c.final_softcap == 30.0);
    CHECK(c.query_pre_attn_scalar == 256 && c.rope_local_theta == 10000.0 && c.tie_word_embeddings);
    CHECK_EQ_INT(config_layer_window(&c, 0), 4096); /* 4.x: layer_idx % 2 == 0 slides */
    CHECK_EQ_INT(config_layer_window(&c, 1), 0);
    CHECK_EQ_INT(config_layer_window(&c, 24), 4096);
    /* the preset is that model (tied, as Gemma2Config's default) */
    model_config p;
    CHECK_EQ_INT(config_preset(&p, ARCH_LLAMA, "gemma2-2b"), 0);
    CHECK(p.arch == ARCH_GEMMA2 && p.hidden_size == 2304 && p.num_layers == 26 && p.sliding_window == 4096 &&
          p.attn_softcap == 50.0 && p.final_softcap == 30.0 && p.tie_word_embeddings);
    /* 5.x: rope_parameters, layer_types, defaults where keys are absent (Gemma2Config's) */
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":3,\"head_dim\":128,\"hidden_size\":512,"
                               "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rope_parameters\":{\"rope_type\":\"default\","
                               "\"rope_theta\":20000.0},\"layer_types\":[\"sliding_attention\",\"full_attention\",\"sliding_attention\"]}"),
                 0);
    CHECK(c.rope_theta == 20000.0 && c.rope_local_theta == 20000.0 && c.attn_softcap == 50.0 && c.final_softcap == 30.0 &&
          c.sliding_window == 4096 && c.query_pre_attn_scalar == 256);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma2\",\"attn_logit_softcapping\":null,\"final_logit_softcapping\":null}"), 0);
    CHECK(c.attn_softcap == 0 && c.final_softcap == 0);
    /* read back from what we write, the keys transformers 4.x and 5.x read */
    CHECK_EQ_INT(config_preset(&p, ARCH_GEMMA2, "tiny"), 0);
    json_t *j = config_to_json(&p);
    CHECK(json_real_value(json_object_get(j, "attn_logit_softcapping")) == 50.0);
    CHECK(json_real_value(json_object_get(j, "final_logit_softcapping")) == 30.0);
    CHECK(!strcmp(json_string_value(json_object_get(j, "hidden_activation")), "gelu_pytorch_tanh"));
    CHECK(!json_object_get(j, "sliding_window_pattern") && !json_object_get(j, "rope_local_base_freq"));
    CHECK(!strcmp(json_string_value(json_array_get(json_object_get(j, "layer_types"), 0)), "sliding_attention"));
    model_config d;
    CHECK_EQ_INT(config_from_json(&d, j, "config.json"), 0);
    CHECK(d.arch == ARCH_GEMMA2 && !d.qk_norm && d.sliding_window == 128 && d.sliding_window_pattern == 2 && d.head_dim == 64 &&
          d.attn_softcap == 50.0 && d.final_softcap == 30.0 && d.query_pre_attn_scalar == 64 && d.tie_word_embeddings);
    json_decref(j);
}

/* the families' errors: file, key, supported values, before anything runs */
TEST(test_family_rejects) {
    model_config c;
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"phi\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "config.json: model_type 'phi' is not supported (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3)") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "multimodal") != NULL);
    /* gemma3 carries Gemma-2's soft-capping when its config asks (the same code path) */
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3_text\",\"final_logit_softcapping\":30.0}"), 0);
    CHECK(c.final_softcap == 30.0 && c.attn_softcap == 0);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma3_text\",\"final_logit_softcapping\":-1}"), ERR_DATA);
    CHECK(strstr(err_msg(), "config.json: \"final_logit_softcapping\" must be a positive number or null (got a number <= 0)") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma2\",\"attn_logit_softcapping\":\"50\"}"), ERR_DATA);
    CHECK(strstr(err_msg(), "config.json: \"attn_logit_softcapping\" must be a positive number or null (got a string)") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma2\",\"rope_parameters\":{\"full_attention\":{},\"sliding_attention\":{}}}"),
                 ERR_DATA);
    CHECK(strstr(err_msg(), "gemma2 with rope_parameters per layer type is not supported") != NULL);
    CHECK_EQ_INT(from_text(&c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":2,\"layer_types\":[\"full_attention\",\"sliding_attention\"]}"),
                 ERR_DATA);
    CHECK(strstr(err_msg(), "\"layer_types\"[0] is \"full_attention\", which disagrees") != NULL);
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

/* "factors":[...] of n entries, each v */
static char *factors_json(const char *key, int n, double v) {
    char *s = malloc(32 + (size_t)n * 8), *p = s;
    p += sprintf(p, "\"%s\":[", key);
    for (int i = 0; i < n; i++) p += sprintf(p, "%s%.2f", i ? "," : "", v + 0.01 * i);
    sprintf(p, "]");
    return s;
}

/* phi3 as transformers 4.x writes Phi-3-mini-128k-instruct ("su", original_max_position_embeddings at the
 * top) and 5.x writes Phi-4-mini (rope_parameters with partial_rotary_factor 0.75: 96 of 128 dims) */
TEST(test_phi3_configs) {
    model_config c;
    char *sf = factors_json("short_factor", 48, 1.0), *lf = factors_json("long_factor", 48, 1.5), text[4096];
    snprintf(text, sizeof text,
             "{\"architectures\":[\"Phi3ForCausalLM\"],\"model_type\":\"phi3\",\"hidden_size\":3072,\"intermediate_size\":8192,"
             "\"num_attention_heads\":32,\"num_key_value_heads\":32,\"num_hidden_layers\":32,\"vocab_size\":32064,"
             "\"max_position_embeddings\":131072,\"original_max_position_embeddings\":4096,\"rope_theta\":10000.0,"
             "\"rope_scaling\":{\"type\":\"su\",%s,%s},\"sliding_window\":262144,\"hidden_act\":\"silu\","
             "\"resid_pdrop\":0.0,\"embd_pdrop\":0.0,\"attention_dropout\":0.0,\"bos_token_id\":1,\"eos_token_id\":32000,"
             "\"pad_token_id\":32000,\"torch_dtype\":\"bfloat16\"}", sf, lf);
    CHECK_EQ_INT(from_text(&c, text), 0);
    CHECK(c.arch == ARCH_PHI3 && c.rope_type == ROPE_LONGROPE && c.n_rope_factors == 48 && c.rope_dim == 96);
    CHECK(c.rope_original_max_position == 4096 && c.rope_long_factor[47] == 1.5 + 0.47 && c.sliding_window == 262144);
    CHECK(fabs(c.rope_attn_factor - sqrt(1 + log(32.0) / log(4096.0))) < 1e-12); /* 1.1902 */
    int64_t out, in;
    CHECK_EQ_INT(config_linear_shape(&c, "model.layers.3.self_attn.qkv_proj", &out, &in), 0);
    CHECK(out == 9216 && in == 3072);
    CHECK_EQ_INT(config_linear_shape(&c, "model.layers.3.mlp.gate_up_proj", &out, &in), 0);
    CHECK(out == 16384 && in == 3072);
    CHECK_EQ_INT(config_linear_shape(&c, "model.layers.3.self_attn.q_proj", &out, &in), ERR_DATA);
    CHECK(strstr(err_msg(), "self_attn.{qkv,o}_proj") != NULL);
    /* written back (4.x form: exactly type, short_factor, long_factor) and read again */
    json_t *j = config_to_json(&c);
    CHECK(json_object_size(json_object_get(j, "rope_scaling")) == 3 && !json_object_get(j, "head_dim"));
    model_config d;
    CHECK_EQ_INT(config_from_json(&d, j, "config.json"), 0);
    CHECK(d.rope_type == ROPE_LONGROPE && d.rope_attn_factor == c.rope_attn_factor && d.rope_short_factor[5] == c.rope_short_factor[5]);
    json_decref(j);
    free(sf), free(lf);
    sf = factors_json("short_factor", 48, 1.0), lf = factors_json("long_factor", 48, 2.0);
    snprintf(text, sizeof text,
             "{\"model_type\":\"phi3\",\"hidden_size\":3072,\"intermediate_size\":8192,\"num_attention_heads\":24,"
             "\"num_key_value_heads\":8,\"num_hidden_layers\":32,\"vocab_size\":200064,\"max_position_embeddings\":131072,"
             "\"original_max_position_embeddings\":4096,\"tie_word_embeddings\":true,\"sliding_window\":null,"
             "\"rope_parameters\":{\"rope_type\":\"longrope\",\"rope_theta\":10000.0,\"partial_rotary_factor\":0.75,%s,%s},"
             "\"dtype\":\"bfloat16\"}", sf, lf);
    CHECK_EQ_INT(from_text(&c, text), 0);
    CHECK(c.head_dim == 128 && c.rope_dim == 96 && c.partial_rotary_factor == 0.75 && c.sliding_window == 0 && c.tie_word_embeddings);
    /* the errors: file, key, what is supported */
    char *bad = strstr(text, "0.75");
    memcpy(bad, "0.50", 4); /* 64 rotated dims want 32 factors, not 48 */
    CHECK_EQ_INT(from_text(&c, text), ERR_DATA);
    CHECK(strstr(err_msg(), "config.json: longrope has 48 short/long factors, but 64 rotated dims need 32") != NULL);
    free(sf), free(lf);
    static const struct { const char *json, *msg; } rejects[] = {
        {"{\"model_type\":\"phi3\",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}",
         "rope_scaling type 'yarn' is not supported for phi3 (supported: default, longrope, su)"},
        {"{\"model_type\":\"phi3\",\"hidden_act\":\"gelu\"}", "hidden_act 'gelu' is not supported (supported: silu)"},
        {"{\"model_type\":\"phi3\",\"resid_pdrop\":0.1}", "\"resid_pdrop\" is 0.1: dropout inside the model is not supported"},
        {"{\"model_type\":\"phi3\",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1],\"long_factor\":[1,2]}}",
         "rope_scaling has 1 short_factor and 2 long_factor entries"},
        {"{\"model_type\":\"phi3\",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,\"x\"],\"long_factor\":[1,2]}}",
         "rope_scaling.short_factor[1] must be a positive number"},
        {"{\"model_type\":\"phi3\",\"partial_rotary_factor\":0.001}", "partial_rotary_factor 0.001 gives 0 rotated dims"},
        {"{\"model_type\":\"llama\",\"partial_rotary_factor\":0.5}", "partial_rotary_factor 0.5 is only supported for phi3"},
    };
    for (size_t i = 0; i < sizeof rejects / sizeof *rejects; i++) {
        CHECK_EQ_INT(from_text(&c, rejects[i].json), ERR_DATA);
        if (!strstr(err_msg(), rejects[i].msg)) fprintf(stderr, "  got: %s\n  want: %s\n", err_msg(), rejects[i].msg);
        CHECK(strstr(err_msg(), rejects[i].msg) != NULL);
    }
    /* the preset, and LoRA targets of its family */
    CHECK(config_preset_is_named("phi3-mini", NULL));
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "phi3-mini"), 0);
    CHECK(c.arch == ARCH_PHI3 && c.sliding_window == 2047 && c.eos_token_id == 32000 && c.pad_token_id == 32000);
    CHECK_EQ_INT(config_preset(&c, ARCH_PHI3, "tiny"), 0);
    json_t *tg = json_pack("[s]", "q_proj");
    lora_init_opts o = {.r = 4, .alpha = 8, .targets = tg};
    peft_adapter a;
    CHECK_EQ_INT(lora_adapter_create(&a, &c, &o), ERR_RECIPE);
    CHECK(strstr(err_msg(), "target 'q_proj' matches no module of a phi3 model (its modules: qkv_proj, o_proj, gate_up_proj, down_proj)") != NULL);
    json_decref(tg);
    tg = json_string("all-linear");
    o.targets = tg;
    CHECK_EQ_INT(lora_adapter_create(&a, &c, &o), 0);
    CHECK(a.n_lora == 16 && !strcmp(a.lora[0].module, "model.layers.0.self_attn.qkv_proj") && a.lora[0].out == 4 * 32 + 2 * 4 * 32);
    CHECK(!strcmp(a.lora[2].module, "model.layers.0.mlp.gate_up_proj") && a.lora[2].out == 2 * 352);
    CHECK_EQ_INT(adapter_validate(&a, &c, "ad"), 0);
    peft_adapter_free(&a);
    json_decref(tg);
    CHECK_EQ_INT(config_preset(&c, ARCH_LLAMA, "tiny"), 0);
    tg = json_pack("[s]", "qkv_proj");
    o.targets = tg;
    CHECK_EQ_INT(lora_adapter_create(&a, &c, &o), ERR_RECIPE);
    CHECK(strstr(err_msg(), "matches no module of a llama model") != NULL);
    json_decref(tg);
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
    RUN(test_gemma2);
    RUN(test_phi3_configs);
    RUN(test_adapter_validate);
    fs_rm_rf(tmpdir);
    return test_summary();
}
