/* test_init_model.c: generated models (write, read back, shapes, determinism, sharding,
 * tokenizer files), the byte tokenizer, and the malformed-safetensors corpus. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "model/init_model.h"
#include "tokenizer/tokenizer_byte.h"
#include "tokenizer/tokfile.h"
#include "test.h"

static char tmpdir[256];

static char *tmp_path(const char *name) { return fs_join(tmpdir, name); }

static void tiny_opts(init_model_opts *o, uint64_t seed) {
    init_model_opts_default(o);
    init_model_shape s = {"llama", "tiny", 64, 2, 4, 2, 96, 0, 0};
    init_model_resolve(o, &s);
    o->seed = seed;
}

static int files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t lx = 0, ly = 0;
    int eq = !fs_read_all(a, &x, &lx) && !fs_read_all(b, &y, &ly) && lx == ly && !memcmp(x, y, lx);
    free(x);
    free(y);
    return eq;
}

TEST(test_write_read) {
    init_model_opts o;
    tiny_opts(&o, 7);
    char *dir = tmp_path("m1");
    model_config cfg;
    CHECK_EQ_INT(init_model_write(&o, dir, &cfg), 0);
    CHECK_EQ_INT(cfg.vocab_size, TOKBYTE_VOCAB);
    model_config c;
    CHECK_EQ_INT(config_load(&c, dir), 0);
    CHECK_EQ_INT(c.hidden_size, 64);
    CHECK_EQ_INT(c.num_layers, 2);
    CHECK_EQ_INT(c.vocab_size, 259);
    CHECK_EQ_INT(c.bos_token_id, 256);
    CHECK_EQ_INT(c.eos_token_id, 257);
    CHECK_EQ_INT(c.pad_token_id, 258);
    CHECK_EQ_STR(c.dtype, "bfloat16");
    config_tensor *ts;
    size_t n;
    CHECK_EQ_INT(config_tensors(&c, &ts, &n), 0);
    st_model *m;
    CHECK_EQ_INT(st_open(&m, dir), 0);
    CHECK_EQ_INT(st_count(m), n);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_find(m, ts[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK(t->dtype == ST_BF16);
        CHECK_EQ_INT(t->ndim, ts[i].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK_EQ_INT(t->shape[d], ts[i].shape[d]);
        int64_t numel = st_numel(t);
        float *v = malloc((size_t)numel * sizeof *v);
        st_read_f32(t, 0, numel, v);
        if (ts[i].role == TROLE_NORM) {
            for (int64_t k = 0; k < numel; k++) CHECK(v[k] == 1.0f);
        } else {
            double s1 = 0, s2 = 0;
            for (int64_t k = 0; k < numel; k++) { s1 += v[k]; s2 += (double)v[k] * v[k]; }
            double mean = s1 / (double)numel, sd = sqrt(s2 / (double)numel - mean * mean);
            CHECK_NEAR(mean, 0, 0.003);
            CHECK_NEAR(sd, 0.02, 0.002);
            /* element k is exactly the counter-based draw, rounded to bf16 */
            uint64_t st_id = rng_stream_of(ts[i].name);
            for (int64_t k = 0; k < 5; k++)
                CHECK(v[k] == bf16_to_f32(f32_to_bf16(0.02f * rng_normal(7, st_id, (uint64_t)k))));
        }
        if (ts[i].role == TROLE_EMBED) /* transformers zeroes the padding row */
            for (int64_t k = 258 * 64; k < 259 * 64; k++) CHECK(v[k] == 0.0f);
        free(v);
    }
    CHECK_EQ_STR(st_metadata(m, "format"), "pt");
    st_close(&m);
    free(ts);
    /* the byte tokenizer files */
    tokfile tf;
    CHECK_EQ_INT(tokfile_load(&tf, dir), 0);
    CHECK_EQ_INT(tf.n_vocab, 259);
    CHECK(tf.style == TOKFILE_BYTE_LEVEL);
    CHECK_EQ_INT(tf.bos, 256);
    CHECK_EQ_INT(tf.eos, 257);
    CHECK_EQ_INT(tf.pad, 258);
    CHECK(tf.add_bos && !tf.add_eos);
    CHECK_EQ_INT(tf.n_merges, 0);
    CHECK_EQ_STR(tf.tokens[' '], "\xc4\xa0");  /* U+0120 */
    CHECK_EQ_STR(tf.tokens['\n'], "\xc4\x8a"); /* U+010A */
    CHECK_EQ_STR(tf.tokens['A'], "A");
    CHECK_EQ_STR(tf.tokens[0xe9], "\xc3\xa9");
    CHECK(tf.special[256] && tf.special[258] && !tf.special[65]);
    tokfile_free(&tf);
    CHECK_EQ_INT(tokbyte_codepoint(0x7f), 0x121);
    CHECK_EQ_INT(tokbyte_codepoint(0x80), 0x122);
    CHECK_EQ_INT(tokbyte_codepoint(0xa0), 0x142);
    CHECK_EQ_INT(tokbyte_codepoint(0xad), 0x143);
    CHECK_EQ_INT(tokbyte_codepoint('\t'), 0x109);
    config_free(&c);
    free(dir);
}

TEST(test_determinism_and_shards) {
    init_model_opts o;
    char *a = tmp_path("d1"), *b = tmp_path("d2"), *s = tmp_path("d3"), *e = tmp_path("d4");
    tiny_opts(&o, 3);
    o.threads = 1;
    CHECK_EQ_INT(init_model_write(&o, a, NULL), 0);
    o.threads = 3;
    CHECK_EQ_INT(init_model_write(&o, b, NULL), 0);
    char *fa = fs_join(a, "model.safetensors"), *fb = fs_join(b, "model.safetensors");
    CHECK(files_equal(fa, fb));
    /* sharded: an index and shards holding the very same tensors */
    o.max_shard_bytes = 60000;
    CHECK_EQ_INT(init_model_write(&o, s, NULL), 0);
    char *idx = fs_join(s, "model.safetensors.index.json"), *one = fs_join(s, "model.safetensors");
    CHECK(fs_exists(idx));
    CHECK(!fs_exists(one));
    st_model *m1, *m2;
    CHECK_EQ_INT(st_open(&m1, a), 0);
    CHECK_EQ_INT(st_open(&m2, s), 0);
    CHECK_EQ_INT(st_count(m1), st_count(m2));
    for (size_t i = 0; i < st_count(m1); i++) {
        const st_tensor *x = st_at(m1, i), *y = st_find(m2, x->name);
        CHECK(y && y->nbytes == x->nbytes && !memcmp(x->data, y->data, x->nbytes));
    }
    st_close(&m1);
    st_close(&m2);
    /* another seed, other bytes */
    o.seed = 4;
    o.max_shard_bytes = 0;
    CHECK_EQ_INT(init_model_write(&o, e, NULL), 0);
    char *fe = fs_join(e, "model.safetensors");
    CHECK(!files_equal(fa, fe));
    free(fa); free(fb); free(fe); free(idx); free(one);
    free(a); free(b); free(s); free(e);
}

TEST(test_arches_and_tokenizer_dir) {
    init_model_opts o;
    init_model_opts_default(&o);
    init_model_shape s = {"qwen2", "tiny", 0, 1, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(init_model_resolve(&o, &s), 0);
    o.dtype = ST_F32;
    char *src = tmp_path("m1"), *dir = tmp_path("q");
    o.tokenizer = src; /* copy the byte tokenizer from the first model */
    model_config cfg;
    CHECK_EQ_INT(init_model_write(&o, dir, &cfg), 0);
    CHECK(cfg.tie_word_embeddings && cfg.attention_bias);
    st_model *m;
    CHECK_EQ_INT(st_open(&m, dir), 0);
    CHECK(st_find(m, "lm_head.weight") == NULL);
    const st_tensor *b = st_find(m, "model.layers.0.self_attn.k_proj.bias");
    CHECK(b && b->dtype == ST_F32 && b->shape[0] == 64);
    if (b) for (int k = 0; k < 64; k++) CHECK(((const float *)b->data)[k] == 0.0f);
    st_close(&m);
    char *t1 = fs_join(src, "tokenizer.json"), *t2 = fs_join(dir, "tokenizer.json");
    CHECK(files_equal(t1, t2));
    free(t1); free(t2);
    model_config c;
    CHECK_EQ_INT(config_load(&c, dir), 0);
    CHECK(c.arch == ARCH_QWEN2 && c.tie_word_embeddings);
    config_free(&c);
    /* mistral: its own class name and config keys */
    init_model_shape ms = {"mistral", "tiny", 0, 1, 0, 0, 0, 0, 0};
    init_model_opts_default(&o);
    CHECK_EQ_INT(init_model_resolve(&o, &ms), 0);
    char *md = tmp_path("mi");
    CHECK_EQ_INT(init_model_write(&o, md, NULL), 0);
    CHECK_EQ_INT(config_load(&c, md), 0);
    CHECK(c.arch == ARCH_MISTRAL);
    config_free(&c);
    free(md);
    free(src);
    free(dir);
}

TEST(test_errors) {
    init_model_opts o;
    tiny_opts(&o, 1);
    o.cfg.vocab_size = 100;
    o.vocab_mode = INIT_VOCAB_KEEP;
    char *dir = tmp_path("bad");
    CHECK_EQ_INT(init_model_write(&o, dir, NULL), ERR_USAGE);
    CHECK(!fs_exists(dir));
    tiny_opts(&o, 1);
    o.tokenizer = "/nonexistent/tok";
    CHECK_EQ_INT(init_model_write(&o, dir, NULL), ERR_DATA);
    CHECK(!fs_exists(dir));
    init_model_shape s = {"llama", "tiny", 100, 0, 3, 0, 0, 0, 0};
    CHECK_EQ_INT(init_model_resolve(&o, &s), ERR_USAGE);
    init_model_shape s2 = {"gpt2", "tiny", 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(init_model_resolve(&o, &s2), ERR_USAGE);
    CHECK(strstr(err_msg(), "llama, mistral, qwen2") != NULL);
    init_model_shape s3 = {"llama", "huge", 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(init_model_resolve(&o, &s3), ERR_USAGE);
    uint64_t b;
    CHECK_EQ_INT(init_model_parse_size("5GB", &b), 0);
    CHECK_EQ_INT(b, 5000000000ull);
    CHECK_EQ_INT(init_model_parse_size("2GiB", &b), 0);
    CHECK_EQ_INT(b, 2147483648ull);
    CHECK_EQ_INT(init_model_parse_size("12 parsecs", &b), ERR_USAGE);
    st_dtype d;
    CHECK_EQ_INT(init_model_dtype("f8", &d), ERR_USAGE);
    free(dir);
}

TEST(test_malformed_corpus) {
    const char *root = "fixtures/malformed_safetensors";
    DIR *d = opendir(root);
    CHECK(d != NULL);
    if (!d) return;
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        char *p = fs_join(root, e->d_name);
        st_model *m = NULL;
        int rc = st_open(&m, p);
        if (rc != ERR_DATA) fprintf(stderr, "%s: expected ERR_DATA, got %d\n", e->d_name, rc);
        CHECK_EQ_INT(rc, ERR_DATA);
        CHECK(m == NULL);
        CHECK(strstr(err_msg(), e->d_name) != NULL); /* the message names the file */
        st_close(&m);
        free(p);
        seen++;
    }
    closedir(d);
    CHECK(seen >= 20);
    /* an index naming a missing shard, or a path outside the directory */
    char *dir = tmp_path("idx"), *ip = NULL;
    fs_mkdir_p(dir);
    ip = fs_join(dir, "model.safetensors.index.json");
    const char *bad[] = {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\"}}",
                         "{\"weight_map\": {\"a\": \"../../etc/passwd\"}}", "{\"weight_map\": 3}", "{"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fs_write_atomic(ip, bad[i], strlen(bad[i]));
        st_model *m = NULL;
        CHECK_EQ_INT(st_open(&m, dir), ERR_DATA);
        st_close(&m);
    }
    free(ip);
    free(dir);
}

/* tokenizer.json files the tokfile reader must refuse with a message, not a crash */
TEST(test_tokfile_rejects) {
    const char *bad[] = {
        "{",                                                                    /* bad JSON */
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",                      /* not BPE */
        "{\"model\": {\"type\": \"BPE\"}}",                                      /* no vocab */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}}}",                /* bad id */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}}}",        /* two tokens, one id */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [3]}}", /* bad merge */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"added_tokens\": [{\"id\": 0, \"content\": \"b\"}]}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}",                         /* empty */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999}}}",          /* absurd id */
    };
    char *dir = tmp_path("badtok"), *p;
    fs_mkdir_p(dir);
    p = fs_join(dir, "tokenizer.json");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fs_write_atomic(p, bad[i], strlen(bad[i]));
        tokfile t;
        int rc = tokfile_load(&t, dir);
        if (rc != ERR_DATA) fprintf(stderr, "case %zu: %d\n", i, rc);
        CHECK_EQ_INT(rc, ERR_DATA);
        CHECK(strstr(err_msg(), "tokenizer.json") != NULL);
    }
    /* merges as pairs and as strings give the same list */
    const char *pairs = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}";
    fs_write_atomic(p, pairs, strlen(pairs));
    tokfile t;
    CHECK_EQ_INT(tokfile_load(&t, dir), 0);
    CHECK_EQ_INT(t.n_merges, 1);
    CHECK_EQ_STR(t.merges[0], "a b");
    CHECK_EQ_INT(tokfile_id(&t, "ab"), 2);
    tokfile_free(&t);
    free(p);
    free(dir);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_init_model.%d", (int)getpid());
    fs_mkdir_p(tmpdir);
    RUN(test_write_read);
    RUN(test_determinism_and_shards);
    RUN(test_arches_and_tokenizer_dir);
    RUN(test_errors);
    RUN(test_malformed_corpus);
    RUN(test_tokfile_rejects);
    fs_rm_rf(tmpdir);
    return test_summary();
}
