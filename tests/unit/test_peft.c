/* test_peft.c: PEFT adapter round trip; the exact adapter_config.json and adapter_model.safetensors
 * bytes peft 0.21.0 writes for the same adapter (tests/fixtures/peft, written by peft itself:
 * tests/golden/make_peft_fixture.py); Python-compatible JSON floats and strings; rejection of
 * malformed adapters. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/peft.h"
#include "formats/pyjson.h"
#include "formats/safetensors.h"
#include "test.h"

static char tmpdir[256];

static void make_adapter(peft_adapter *a) {
    peft_adapter_init(a);
    a->r = 4;
    a->alpha = 16;
    a->dropout = 0.05;
    a->base_model = strdup("tiny-llama");
    /* peft keeps target_modules in a Python set and writes it in hash order: this is the order
     * it wrote for the fixture (make_peft_fixture.py, PYTHONHASHSEED=0) */
    peft_adapter_add_target(a, "v_proj");
    peft_adapter_add_target(a, "q_proj");
    peft_lora *l;
    peft_adapter_add(a, "model.layers.0.self_attn.q_proj", 32, 32, &l);
    for (int i = 0; i < 4 * 32; i++) l->A[i] = (float)i * 0.01f;
    for (int i = 0; i < 32 * 4; i++) l->B[i] = -(float)i * 0.5f;
    peft_adapter_add(a, "model.layers.0.self_attn.v_proj", 32, 16, &l);
    for (int i = 0; i < 4 * 32; i++) l->A[i] = 1.0f + (float)i;
    for (int i = 0; i < 16 * 4; i++) l->B[i] = 2.0f - (float)i;
}

TEST(test_pyjson_floats) {
    struct { double x; const char *want; } cases[] = {
        {1e-5, "1e-05"}, {1e-6, "1e-06"}, {0.05, "0.05"}, {10000.0, "10000.0"}, {500000.0, "500000.0"},
        {1e16, "1e+16"}, {1.5e-7, "1.5e-07"}, {123.456, "123.456"}, {0.1, "0.1"}, {1e22, "1e+22"},
        {2.5, "2.5"}, {1234567890123456.0, "1234567890123456.0"}, {0.0, "0.0"}, {-3.0, "-3.0"}, {0.0001, "0.0001"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[64];
        pyjson_float_repr(cases[i].x, buf, sizeof buf);
        CHECK_EQ_STR(buf, cases[i].want);
    }
}

TEST(test_pyjson_strings) {
    json_t *j = json_pack("{s:s}", "a", "\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80\x7f\x01");
    char *s = pyjson_dumps(j, -1, true);
    CHECK_EQ_STR(s, "{\"a\": \"\\u00e9\\u2581\\ud83d\\ude00\\u007f\\u0001\"}");
    free(s);
    json_decref(j);
    j = json_pack("{s:[], s:{}, s:[i,i]}", "z", "y", "x", 1, 2);
    s = pyjson_dumps(j, 2, true);
    CHECK_EQ_STR(s, "{\n  \"x\": [\n    1,\n    2\n  ],\n  \"y\": {},\n  \"z\": []\n}");
    free(s);
    json_decref(j);
}

TEST(test_config_bytes) {
    peft_adapter a;
    make_adapter(&a);
    char *text = peft_config_text(&a);
    char *want = NULL;
    size_t wl = 0;
    CHECK(fs_read_all("fixtures/peft/adapter_config_expected.json", &want, &wl) == 0);
    CHECK(text && want);
    if (text && want) {
        CHECK_EQ_INT(strlen(text), wl);
        CHECK(!strcmp(text, want));
    }
    free(want);
    free(text);
    /* the weights file: the same bytes as peft's (header, tensor order, padding, data) */
    char dir[300];
    snprintf(dir, sizeof dir, "%s/bytes", tmpdir);
    CHECK_EQ_INT(peft_adapter_save(&a, dir), 0);
    char *wp = fs_join(dir, PEFT_WEIGHTS_FILE), *got = NULL;
    size_t gl = 0;
    CHECK_EQ_INT(fs_read_all(wp, &got, &gl), 0);
    CHECK_EQ_INT(fs_read_all("fixtures/peft/adapter_model_expected.safetensors", &want, &wl), 0);
    CHECK(got && want && gl == wl && !memcmp(got, want, wl));
    free(got);
    free(want);
    free(wp);
    peft_adapter_free(&a);
}

TEST(test_round_trip) {
    peft_adapter a, b;
    make_adapter(&a);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/adapter", tmpdir);
    CHECK_EQ_INT(peft_adapter_save(&a, dir), 0);
    /* the saved tensors carry the peft names, shapes and format=pt */
    char *wp = fs_join(dir, PEFT_WEIGHTS_FILE);
    st_model *m = NULL;
    CHECK_EQ_INT(st_open(&m, wp), 0);
    if (m) {
        CHECK_EQ_INT(st_count(m), 4);
        const st_tensor *t = st_find(m, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
        CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 16 && t->shape[1] == 4);
        t = st_find(m, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        CHECK(t && t->shape[0] == 4 && t->shape[1] == 32);
        CHECK_EQ_STR(st_metadata(m, "format"), "pt");
        st_close(&m);
    }
    free(wp);
    CHECK_EQ_INT(peft_adapter_load(&b, dir), 0);
    CHECK_EQ_INT(b.n_lora, 2);
    CHECK_EQ_INT(b.r, 4);
    CHECK_NEAR(b.alpha, 16, 0);
    CHECK_NEAR(b.dropout, 0.05, 0);
    CHECK_EQ_INT(b.n_targets, 2);
    CHECK_EQ_STR(b.base_model, "tiny-llama");
    for (size_t i = 0; i < a.n_lora; i++) {
        peft_lora *x = &a.lora[i], *y = peft_adapter_find(&b, x->module);
        CHECK(y != NULL);
        if (!y) continue;
        CHECK(y->in == x->in && y->out == x->out && y->r == x->r);
        CHECK(!memcmp(x->A, y->A, sizeof(float) * (size_t)(x->r * x->in)));
        CHECK(!memcmp(x->B, y->B, sizeof(float) * (size_t)(x->out * x->r)));
        CHECK_NEAR(peft_adapter_scale(&b, y), 4.0, 0);
    }
    /* saving what we loaded gives the same config bytes (extra keys kept) */
    char *t1 = peft_config_text(&a), *t2 = peft_config_text(&b);
    CHECK_EQ_STR(t1, t2);
    free(t1);
    free(t2);
    b.use_rslora = true;
    CHECK_NEAR(peft_adapter_scale(&b, &b.lora[0]), 8.0, 1e-12);
    /* overwriting an existing adapter replaces it whole */
    CHECK_EQ_INT(peft_adapter_save(&b, dir), 0);
    peft_adapter_free(&a);
    peft_adapter_free(&b);
}

TEST(test_target_match) {
    CHECK(peft_target_matches("q_proj", "model.layers.0.self_attn.q_proj"));
    CHECK(peft_target_matches("self_attn.q_proj", "model.layers.0.self_attn.q_proj"));
    CHECK(!peft_target_matches("proj", "model.layers.0.self_attn.q_proj"));
    CHECK(peft_target_matches("lm_head", "lm_head"));
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = fs_join(dir, name);
    fs_write_atomic(p, text, strlen(text));
    free(p);
}

TEST(test_rejects) {
    peft_adapter a, b;
    make_adapter(&a);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/bad", tmpdir);
    CHECK_EQ_INT(peft_adapter_save(&a, dir), 0);
    write_text(dir, PEFT_CONFIG_FILE, "{\"peft_type\": \"LORA\", \"use_dora\": true}");
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    CHECK(strstr(err_msg(), "use_dora") != NULL);
    write_text(dir, PEFT_CONFIG_FILE, "{\"peft_type\": \"IA3\"}");
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    CHECK(strstr(err_msg(), "IA3") != NULL);
    write_text(dir, PEFT_CONFIG_FILE, "{\"peft_type\": ");
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    write_text(dir, PEFT_CONFIG_FILE, "{\"peft_type\": \"LORA\", \"r\": -1}");
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    /* a B without its A, and a tensor that is not LoRA */
    write_text(dir, PEFT_CONFIG_FILE, "{\"peft_type\": \"LORA\"}");
    char *wp = fs_join(dir, PEFT_WEIGHTS_FILE);
    st_writer *w;
    float z[8] = {0};
    int64_t s2[2] = {2, 4};
    st_writer_open(&w, dir, "adapter_model", 0);
    st_writer_add(w, "base_model.model.x.lora_B.weight", ST_F32, 2, s2, z, NULL, NULL);
    CHECK_EQ_INT(st_writer_finish(&w), 0);
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    CHECK(strstr(err_msg(), "no matching lora_A") != NULL);
    st_writer_open(&w, dir, "adapter_model", 0);
    st_writer_add(w, "base_model.model.lm_head.weight", ST_F32, 2, s2, z, NULL, NULL);
    CHECK_EQ_INT(st_writer_finish(&w), 0);
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    CHECK(strstr(err_msg(), "not a LoRA weight") != NULL);
    /* mismatched ranks between A and B */
    int64_t sa[2] = {2, 4}, sb[2] = {4, 1};
    st_writer_open(&w, dir, "adapter_model", 0);
    st_writer_add(w, "base_model.model.x.lora_A.weight", ST_F32, 2, sa, z, NULL, NULL);
    st_writer_add(w, "base_model.model.x.lora_B.weight", ST_F32, 2, sb, z, NULL, NULL);
    CHECK_EQ_INT(st_writer_finish(&w), 0);
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    unlink(wp);
    CHECK_EQ_INT(peft_adapter_load(&b, dir), ERR_DATA);
    free(wp);
    CHECK_EQ_INT(peft_adapter_load(&b, "/nonexistent/adapter"), ERR_DATA);
    peft_adapter_free(&a);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_peft.%d", (int)getpid());
    fs_mkdir_p(tmpdir);
    RUN(test_pyjson_floats);
    RUN(test_pyjson_strings);
    RUN(test_config_bytes);
    RUN(test_round_trip);
    RUN(test_target_match);
    RUN(test_rejects);
    fs_rm_rf(tmpdir);
    return test_summary();
}
