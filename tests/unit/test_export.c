/* test_export.c: merged export (bf16 and NF4 bases), the GGUF byte layout (header, KVs,
 * tensor infos, alignment, q/k permutation, q8_0 blocks) read back by an independent little
 * reader, and the failure paths (mismatched adapter, unknown format, a full disk). */
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/rng.h"
#include "formats/gguf.h"
#include "formats/peft.h"
#include "formats/safetensors.h"
#include "export/export.h"
#include "export/gguf_export.h"
#include "model/init_model.h"
#include "export/merge.h"
#include "test.h"

static char tmpdir[256];
static char *P(const char *name) { return fs_join(tmpdir, name); }

/* ---- a minimal GGUF reader, written from the spec, independent of the writer ---- */

typedef struct rd {
    const uint8_t *p;
    size_t n, at;
    int bad;
} rd;
static uint64_t rd_u(rd *r, int sz) {
    uint64_t v = 0;
    if (r->at + (size_t)sz > r->n) { r->bad = 1; return 0; }
    memcpy(&v, r->p + r->at, (size_t)sz);
    r->at += (size_t)sz;
    return v;
}
static char *rd_str(rd *r) {
    uint64_t l = rd_u(r, 8);
    if (r->bad || r->at + l > r->n) { r->bad = 1; return strdup(""); }
    char *s = strndup((const char *)r->p + r->at, l);
    r->at += l;
    return s;
}
static const int type_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct gkv {
    char *key;
    uint32_t type, elem;
    uint64_t count;
    size_t at; /* value (or first element) offset */
} gkv;
typedef struct gten {
    char *name;
    uint32_t ndim, type;
    uint64_t ne[4], off;
} gten;
typedef struct gfile {
    char *data;
    size_t len;
    uint64_t n_t, n_kv;
    gkv kv[128];
    gten t[256];
    size_t data_start;
} gfile;

static void skip_value(rd *r, uint32_t type) {
    if (type == 8) free(rd_str(r));
    else r->at += (size_t)type_size[type];
}

static int gguf_parse(gfile *g, const char *path) {
    memset(g, 0, sizeof *g);
    if (fs_read_all(path, &g->data, &g->len)) return 1;
    rd r = {(const uint8_t *)g->data, g->len, 0, 0};
    if (memcmp(g->data, "GGUF", 4)) return 2;
    r.at = 4;
    if (rd_u(&r, 4) != 3) return 3;
    g->n_t = rd_u(&r, 8);
    g->n_kv = rd_u(&r, 8);
    if (g->n_kv > 128 || g->n_t > 256) return 4;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gkv *k = &g->kv[i];
        k->key = rd_str(&r);
        k->type = (uint32_t)rd_u(&r, 4);
        if (k->type == 9) {
            k->elem = (uint32_t)rd_u(&r, 4);
            k->count = rd_u(&r, 8);
            k->at = r.at;
            for (uint64_t e = 0; e < k->count && !r.bad; e++) skip_value(&r, k->elem);
        } else {
            k->at = r.at;
            skip_value(&r, k->type);
        }
    }
    for (uint64_t i = 0; i < g->n_t; i++) {
        gten *t = &g->t[i];
        t->name = rd_str(&r);
        t->ndim = (uint32_t)rd_u(&r, 4);
        for (uint32_t d = 0; d < t->ndim && d < 4; d++) t->ne[d] = rd_u(&r, 8);
        t->type = (uint32_t)rd_u(&r, 4);
        t->off = rd_u(&r, 8);
    }
    g->data_start = (r.at + 31) / 32 * 32;
    return r.bad ? 5 : 0;
}
static void gguf_done(gfile *g) {
    for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    for (uint64_t i = 0; i < g->n_t; i++) free(g->t[i].name);
    free(g->data);
}
static const gkv *kv_find(const gfile *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}
static uint32_t kv_u32(const gfile *g, const char *key) {
    const gkv *k = kv_find(g, key);
    uint32_t v = 0xffffffffu;
    if (k && k->type == 4) memcpy(&v, g->data + k->at, 4);
    return v;
}
static const gten *t_find(const gfile *g, const char *name) {
    for (uint64_t i = 0; i < g->n_t; i++)
        if (!strcmp(g->t[i].name, name)) return &g->t[i];
    return NULL;
}

/* ---- fixtures: a tiny model and an adapter with non-zero B ---- */

static void make_model(const char *dir, const char *arch) {
    init_model_opts o;
    init_model_opts_default(&o);
    init_model_shape s = {arch, "tiny", 64, 2, 4, 2, 96, 0, 0};
    init_model_resolve(&o, &s);
    o.seed = 11;
    init_model_write(&o, dir, NULL);
}

static void make_adapter(const char *dir, int64_t hidden, int64_t kv, int64_t inter) {
    peft_adapter a;
    peft_adapter_init(&a);
    a.r = 4;
    a.alpha = 8;
    peft_adapter_add_target(&a, "q_proj");
    peft_adapter_add_target(&a, "k_proj");
    peft_adapter_add_target(&a, "down_proj");
    char mod[96];
    for (int l = 0; l < 2; l++) {
        struct { const char *m; int64_t in, out; } lin[] = {{"self_attn.q_proj", hidden, hidden}, {"self_attn.k_proj", hidden, kv}, {"mlp.down_proj", inter, hidden}};
        for (int k = 0; k < 3; k++) {
            snprintf(mod, sizeof mod, "model.layers.%d.%s", l, lin[k].m);
            peft_lora *p;
            peft_adapter_add(&a, mod, lin[k].in, lin[k].out, &p);
            for (int64_t i = 0; i < 4 * lin[k].in; i++) p->A[i] = 0.1f * rng_normal(5, rng_stream_of(mod), (uint64_t)i);
            for (int64_t i = 0; i < 4 * lin[k].out; i++) p->B[i] = 0.1f * rng_normal(6, rng_stream_of(mod), (uint64_t)i);
        }
    }
    peft_adapter_save(&a, dir);
    peft_adapter_free(&a);
}

TEST(test_q8_0_and_permute) {
    float x[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = (float)(i - 20) * 0.37f;
    uint8_t q[2 * GGML_Q8_0_BYTES];
    CHECK_EQ_INT(ggml_row_bytes(GGML_TYPE_Q8_0, 64), 68);
    CHECK_EQ_INT(ggml_row_bytes(GGML_TYPE_Q8_0, 65), 0);
    ggml_quantize_q8_0(x, q, 64);
    /* block 0: amax = 20*0.37 at i=0, so d = 7.4/127 and x[0] is code -127 */
    uint16_t h;
    memcpy(&h, q, 2);
    CHECK(h == f32_to_f16(7.4f / 127.0f));
    CHECK_EQ_INT((int8_t)q[2], -127);
    ggml_dequantize_q8_0(q, y, 64);
    /* each value within half a step of its block (plus what the f16 scale rounding adds) */
    for (int b = 0; b < 2; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * b + i]));
        memcpy(&h, q + GGML_Q8_0_BYTES * b, 2);
        double d = amax / 127.0, tol = 0.5 * d + 127 * fabs(f16_to_f32(h) - d) + 1e-6;
        for (int i = 0; i < 32; i++) CHECK_NEAR(y[32 * b + i], x[32 * b + i], tol);
    }
    /* permutation: within a head of d=4 rows, GGUF row 2i+j = HF row j*2+i: [0,2,1,3] */
    float w[8 * 2];
    for (int i = 0; i < 16; i++) w[i] = (float)(i / 2); /* row r holds r */
    gguf_permute_qk(w, 2, 8, 2);
    const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int r = 0; r < 8; r++) CHECK(w[2 * r] == want[r] && w[2 * r + 1] == want[r]);
    char name[64];
    CHECK_EQ_INT(gguf_export_tensor_name("model.layers.3.self_attn.k_proj.bias", name, sizeof name), 0);
    CHECK_EQ_STR(name, "blk.3.attn_k.bias");
    CHECK_EQ_INT(gguf_export_tensor_name("model.layers.0.mlp.down_proj.weight", name, sizeof name), 0);
    CHECK_EQ_STR(name, "blk.0.ffn_down.weight");
    CHECK_EQ_INT(gguf_export_tensor_name("lm_head.weight", name, sizeof name), 0);
    CHECK_EQ_STR(name, "output.weight");
}

/* q8_0 on a block whose answer is known by hand: max |x| = 127, so d = 1 (f16 0x3c00) and q is x
 * rounded half away from zero; truncation or round-half-even give other bytes */
TEST(test_q8_0_block_by_hand) {
    float x[32] = {127, 2.5f, -2.5f, 2.49f, 63.5f, -0.5f, 0.5f, -126.6f, 1.75f, -1.25f};
    for (int i = 10; i < 32; i++) x[i] = (float)(i - 20) * 0.75f; /* -7.5 .. 8.25 */
    uint8_t blk[GGML_Q8_0_BYTES];
    ggml_quantize_q8_0(x, blk, 32);
    uint16_t h;
    memcpy(&h, blk, 2);
    CHECK_EQ_INT(h, 0x3c00);
    const int want[10] = {127, 3, -3, 2, 64, -1, 1, -127, 2, -1};
    for (int i = 0; i < 10; i++) CHECK_EQ_INT((int8_t)blk[2 + i], want[i]);
    for (int i = 10; i < 32; i++) { /* (i - 20) * 0.75: a .25, .5 or .75 fraction or none */
        int q4 = (i - 20) * 3, q = q4 / 4, r = q4 % 4; /* x = q4 / 4 */
        int want_q = r == 0 ? q : (q4 > 0 ? (r >= 2 ? q + 1 : q) : (r <= -2 ? q - 1 : q));
        CHECK_EQ_INT((int8_t)blk[2 + i], want_q);
    }
    float back[32];
    ggml_dequantize_q8_0(blk, back, 32);
    CHECK(back[1] == 3.0f && back[7] == -127.0f);
}

TEST(test_gguf_writer_layout) {
    gguf_writer *w;
    CHECK_EQ_INT(gguf_writer_open(&w), 0);
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_u32(w, "a.u32", 7);
    gguf_set_i32(w, "a.i32", -3);
    gguf_set_f32(w, "a.f32", 1.5f);
    gguf_set_bool(w, "a.bool", true);
    gguf_set_u64(w, "a.u64", 1ull << 40);
    int8_t i8 = -5;
    double f64 = 2.25;
    gguf_set_scalar(w, "a.i8", GGUF_VALUE_I8, &i8);
    gguf_set_scalar(w, "a.f64", GGUF_VALUE_F64, &f64);
    const char *strs[] = {"x", "", "hello"};
    gguf_set_str_array(w, "a.strs", strs, 3);
    int32_t ints[3] = {1, -2, 3};
    gguf_set_array(w, "a.ints", GGUF_VALUE_I32, ints, 3);
    gguf_set_u32(w, "a.u32", 8); /* replaced in place */
    CHECK_EQ_INT(gguf_add_tensor(w, "this.name.is.far.too.long.for.gguf.which.allows.sixty.three.bytes", GGML_TYPE_F32, 1, (int64_t[]){1}, NULL, NULL), ERR_STAGE);
    CHECK_EQ_INT(gguf_add_tensor(w, "q", GGML_TYPE_Q8_0, 2, (int64_t[]){33, 2}, NULL, NULL), ERR_STAGE);
    gguf_writer_free(&w);
    CHECK(w == NULL);
}

/* ---- test_export_all's steps: one export (peft, merged, f16 GGUF), then a q8_0 GGUF of it ---- */

/* merged k_proj of layer 1 is W + 2 * B @ A, rounded to bf16 once (wm gets it, (32, 64)); an
 * untargeted tensor keeps the base's bytes */
static void export_check_merged(st_model *mb, st_model *mm, const peft_adapter *a, float *wm) {
    CHECK_EQ_INT(st_count(mb), st_count(mm));
    const char *qn = "model.layers.1.self_attn.k_proj.weight";
    const st_tensor *tb = st_find(mb, qn), *tm = st_find(mm, qn);
    const peft_lora *l = peft_adapter_find(a, "model.layers.1.self_attn.k_proj");
    CHECK(tb && tm && l && tm->dtype == ST_BF16);
    float *wb = malloc(32 * 64 * 4);
    st_read_f32(tb, 0, 32 * 64, wb);
    st_read_f32(tm, 0, 32 * 64, wm);
    int bad = 0;
    for (int o2 = 0; o2 < 32; o2++)
        for (int i = 0; i < 64; i++) {
            double d = 0;
            for (int k = 0; k < 4; k++) d += (double)l->B[o2 * 4 + k] * l->A[k * 64 + i];
            float want = bf16_to_f32(f32_to_bf16((float)(wb[o2 * 64 + i] + 2.0 * d)));
            if (fabsf(want - wm[o2 * 64 + i]) > 1e-6f * (1 + fabsf(want)) && fabsf(want - wm[o2 * 64 + i]) > fabsf(want) * 0.0079f) bad++;
        }
    CHECK_EQ_INT(bad, 0);
    const st_tensor *vb = st_find(mb, "model.layers.0.self_attn.v_proj.weight"), *vm = st_find(mm, "model.layers.0.self_attn.v_proj.weight");
    CHECK(vb && vm && vb->nbytes == vm->nbytes && !memcmp(vb->data, vm->data, vb->nbytes));
    free(wb);
}

/* the merged directory is a plain (unquantized) model with a tokenizer.json beside it */
static void export_check_merged_config(const char *pm) {
    model_config mc;
    CHECK_EQ_INT(config_load(&mc, pm), 0);
    CHECK(!mc.quantized);
    char *tok = fs_join(pm, "tokenizer.json");
    CHECK(fs_exists(tok));
    free(tok);
    config_free(&mc);
}

/* the f16 GGUF: metadata, tensor names and shapes, 32-byte alignment, q/k rows permuted from the
 * merged weights wm (layer 1's k_proj) */
static void export_check_gguf_f16(const char *out, const float *wm) {
    char gname[64];
    export_gguf_name(GGML_TYPE_F16, gname, sizeof gname);
    char *pg = fs_join(out, gname);
    gfile g;
    CHECK_EQ_INT(gguf_parse(&g, pg), 0);
    const gkv *arch = kv_find(&g, "general.architecture");
    CHECK(arch && arch->type == 8 && !memcmp(g.data + arch->at + 8, "llama", 5));
    CHECK(g.kv[0].key && !strcmp(g.kv[0].key, "general.architecture"));
    CHECK_EQ_INT(kv_u32(&g, "llama.block_count"), 2);
    CHECK_EQ_INT(kv_u32(&g, "llama.embedding_length"), 64);
    CHECK_EQ_INT(kv_u32(&g, "llama.attention.head_count_kv"), 2);
    CHECK_EQ_INT(kv_u32(&g, "llama.rope.dimension_count"), 16);
    CHECK_EQ_INT(kv_u32(&g, "general.file_type"), 1);
    CHECK_EQ_INT(kv_u32(&g, "tokenizer.ggml.bos_token_id"), 256);
    const gkv *toks = kv_find(&g, "tokenizer.ggml.tokens");
    CHECK(toks && toks->type == 9 && toks->elem == 8 && toks->count == 259);
    const gkv *model = kv_find(&g, "tokenizer.ggml.model");
    CHECK(model && !memcmp(g.data + model->at + 8, "gpt2", 4));
    CHECK_EQ_INT(g.n_t, 2 * 9 + 3);
    for (uint64_t i = 0; i < g.n_t; i++) CHECK(g.t[i].off % 32 == 0);
    const gten *tk = t_find(&g, "blk.1.attn_k.weight"), *tn = t_find(&g, "blk.0.attn_norm.weight");
    CHECK(tk && tk->type == GGML_TYPE_F16 && tk->ndim == 2 && tk->ne[0] == 64 && tk->ne[1] == 32);
    CHECK(tn && tn->type == GGML_TYPE_F32 && tn->ndim == 1 && tn->ne[0] == 64);
    if (tk) {
        /* GGUF row 2i+j of head h = merged row h*d + j*d/2 + i (d = 16) */
        const uint16_t *gd = (const uint16_t *)(g.data + g.data_start + tk->off);
        int mism = 0;
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 2; j++)
                    for (int c = 0; c < 64; c++) {
                        float gv = f16_to_f32(gd[(h * 16 + 2 * i + j) * 64 + c]);
                        float mv = wm[(h * 16 + j * 8 + i) * 64 + c];
                        if (fabsf(gv - mv) > 5e-3f * fabsf(mv) + 1e-6f) mism++; /* bf16 vs f16 rounding */
                    }
        CHECK_EQ_INT(mism, 0);
    }
    gguf_done(&g);
    free(pg);
}

/* the q8_0 GGUF: its quantization keys, and v_proj (vm, the merged model's) bit for bit by the
 * reference q8_0 rule */
static void export_check_gguf_q8_0(const char *out, const st_tensor *vm) {
    char gname[64];
    export_gguf_name(GGML_TYPE_Q8_0, gname, sizeof gname);
    char *pg = fs_join(out, gname);
    gfile g;
    CHECK_EQ_INT(gguf_parse(&g, pg), 0);
    CHECK_EQ_INT(kv_u32(&g, "general.quantization_version"), 2);
    CHECK_EQ_INT(kv_u32(&g, "general.file_type"), 7);
    const gten *tv = t_find(&g, "blk.0.attn_v.weight");
    CHECK(tv && tv->type == GGML_TYPE_Q8_0);
    if (tv) {
        /* bit for bit the reference q8_0 rule (llama.cpp's quantize_row_q8_0_ref): per block of 32,
         * d = max |x| / 127 stored as f16, q = round-half-away-from-zero(x * (1 / d)). v_proj has no
         * LoRA, so x is the base's bf16 value exactly. */
        float *vv = malloc(32 * 64 * 4);
        st_read_f32(vm, 0, 32 * 64, vv);
        const uint8_t *qb = (const uint8_t *)g.data + g.data_start + tv->off;
        int bad_d = 0, bad_q = 0;
        for (int b = 0; b < 32 * 64 / 32; b++) {
            const float *x = vv + 32 * b;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
            float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
            uint16_t h;
            memcpy(&h, qb + 34 * b, 2);
            bad_d += h != f32_to_f16(d);
            for (int i = 0; i < 32; i++) bad_q += (int8_t)qb[34 * b + 2 + i] != (int8_t)roundf(x[i] * id);
        }
        CHECK_EQ_INT(bad_d, 0);
        CHECK_EQ_INT(bad_q, 0);
        free(vv);
    }
    gguf_done(&g);
    free(pg);
}

TEST(test_export_all) {
    char *base = P("base"), *ad = P("adapter"), *out = P("out");
    make_model(base, "llama");
    make_adapter(ad, 64, 32, 96);
    fs_mkdir_p(out);
    export_opts o = {.base = base, .adapter = ad, .formats = EXPORT_PEFT | EXPORT_MERGED | EXPORT_GGUF, .gguf_type = GGML_TYPE_F16, .threads = 2};
    CHECK_EQ_INT(export_run(&o, out), 0);
    /* the adapter re-saved with all six LoRA pairs; it stays loaded for the merged step */
    char *pa = fs_join(out, "adapter");
    peft_adapter a;
    CHECK_EQ_INT(peft_adapter_load(&a, pa), 0);
    CHECK_EQ_INT(a.n_lora, 6);
    free(pa);
    char *pm = fs_join(out, "model");
    st_model *mb, *mm;
    CHECK_EQ_INT(st_open(&mb, base), 0);
    CHECK_EQ_INT(st_open(&mm, pm), 0);
    float *wm = malloc(32 * 64 * 4);
    export_check_merged(mb, mm, &a, wm);
    export_check_merged_config(pm);
    export_check_gguf_f16(out, wm);
    /* the same export again, GGUF alone, as q8_0 */
    o.formats = EXPORT_GGUF;
    o.gguf_type = GGML_TYPE_Q8_0;
    CHECK_EQ_INT(export_run(&o, out), 0);
    export_check_gguf_q8_0(out, st_find(mm, "model.layers.0.self_attn.v_proj.weight"));
    free(wm);
    st_close(&mb);
    st_close(&mm);
    peft_adapter_free(&a);
    free(pm);
    free(base);
    free(ad);
    free(out);
}

TEST(test_export_qwen2_and_nf4) {
    char *base = P("qbase"), *out = P("qout");
    make_model(base, "qwen2");
    fs_mkdir_p(out);
    export_opts o = {.base = base, .formats = EXPORT_GGUF, .gguf_type = GGML_TYPE_BF16, .threads = 1};
    CHECK_EQ_INT(export_run(&o, out), 0);
    char *pg = fs_join(out, "model-bf16.gguf");
    gfile g;
    CHECK_EQ_INT(gguf_parse(&g, pg), 0);
    const gkv *arch = kv_find(&g, "general.architecture");
    CHECK(arch && !memcmp(g.data + arch->at + 8, "qwen2", 5));
    CHECK_EQ_INT(kv_u32(&g, "qwen2.block_count"), 2);
    CHECK(t_find(&g, "blk.0.attn_q.bias") != NULL);
    CHECK(t_find(&g, "output.weight") == NULL); /* tied */
    /* qwen2 is not permuted: the q rows are the model's own */
    const gten *tq = t_find(&g, "blk.0.attn_q.weight");
    st_model *m;
    CHECK_EQ_INT(st_open(&m, base), 0);
    const st_tensor *q = st_find(m, "model.layers.0.self_attn.q_proj.weight");
    CHECK(tq && q && tq->type == GGML_TYPE_BF16 && !memcmp(g.data + g.data_start + tq->off, q->data, q->nbytes));
    st_close(&m);
    gguf_done(&g);
    free(pg);
    /* the bitsandbytes NF4 checkpoint dequantizes to within NF4 error of the bf16 original */
    char *mo = P("nf4merged");
    merge_src *ms;
    CHECK_EQ_INT(merge_open(&ms, "fixtures/bnb/tiny-llama-nf4", NULL, 2), 0);
    CHECK_EQ_INT(merge_write_model(ms, mo, ST_BF16, 0, NULL, NULL), 0);
    /* --merged-dtype f32 and f16: the same merged numbers, unrounded or as f16; config.json says so */
    char *mo32 = P("nf4merged32"), *mo16 = P("nf4merged16");
    CHECK_EQ_INT(merge_write_model(ms, mo32, ST_F32, 0, NULL, NULL), 0);
    CHECK_EQ_INT(merge_write_model(ms, mo16, ST_F16, 0, NULL, NULL), 0);
    merge_close(&ms);
    {
        st_model *s32, *s16, *s_bf;
        CHECK_EQ_INT(st_open(&s32, mo32), 0);
        CHECK_EQ_INT(st_open(&s16, mo16), 0);
        CHECK_EQ_INT(st_open(&s_bf, mo), 0);
        const char *nm = "model.layers.1.mlp.up_proj.weight";
        const st_tensor *t32 = st_find(s32, nm), *t16 = st_find(s16, nm), *tb = st_find(s_bf, nm);
        CHECK(t32 && t16 && tb && t32->dtype == ST_F32 && t16->dtype == ST_F16 && tb->dtype == ST_BF16);
        if (t32 && t16 && tb) {
            int64_t n = st_numel(t32), off32 = 0, off16 = 0;
            float *f32 = malloc((size_t)n * 4), *f16v = malloc((size_t)n * 4);
            st_read_f32(t32, 0, n, f32);
            st_read_f32(t16, 0, n, f16v);
            const uint16_t *hb = (const uint16_t *)tb->data;
            for (int64_t i = 0; i < n; i++) {
                uint16_t b;
                memcpy(&b, hb + i, 2);
                off32 += f32_to_bf16(f32[i]) != b;
                off16 += f16_to_f32(f32_to_f16(f32[i])) != f16v[i];
            }
            CHECK_EQ_INT(off32, 0);
            CHECK_EQ_INT(off16, 0);
            free(f32);
            free(f16v);
        }
        model_config c32, c16;
        CHECK_EQ_INT(config_load(&c32, mo32), 0);
        CHECK_EQ_INT(config_load(&c16, mo16), 0);
        CHECK_EQ_STR(c32.dtype, "float32");
        CHECK_EQ_STR(c16.dtype, "float16");
        config_free(&c32);
        config_free(&c16);
        st_close(&s32);
        st_close(&s16);
        st_close(&s_bf);
    }
    st_model *a, *b;
    CHECK_EQ_INT(st_open(&a, mo), 0);
    CHECK_EQ_INT(st_open(&b, "fixtures/bnb/tiny-llama-bf16"), 0);
    CHECK_EQ_INT(st_count(a), st_count(b));
    const st_tensor *x = st_find(a, "model.layers.1.mlp.up_proj.weight"), *y = st_find(b, "model.layers.1.mlp.up_proj.weight");
    CHECK(x && y && x->dtype == ST_BF16 && x->nbytes == y->nbytes);
    if (x && y) {
        int64_t n = st_numel(x);
        float *fx = malloc((size_t)n * 4), *fy = malloc((size_t)n * 4);
        st_read_f32(x, 0, n, fx);
        st_read_f32(y, 0, n, fy);
        double amax = 0, err = 0;
        for (int64_t i = 0; i < n; i++) { amax = fmax(amax, fabs(fy[i])); err = fmax(err, fabs(fx[i] - fy[i])); }
        CHECK(err > 0 && err < 0.16 * amax); /* half the widest NF4 code gap */
        free(fx);
        free(fy);
    }
    /* unquantized tensors come through exactly */
    x = st_find(a, "model.embed_tokens.weight");
    y = st_find(b, "model.embed_tokens.weight");
    CHECK(x && y && !memcmp(x->data, y->data, x->nbytes));
    st_close(&a);
    st_close(&b);
    model_config c;
    CHECK_EQ_INT(config_load(&c, mo), 0);
    CHECK(!c.quantized);
    config_free(&c);
    /* NF4 base + adapter: the delta is added to the dequantized weight, in fp32 */
    char *ad = P("nf4_adapter");
    make_adapter(ad, 128, 64, 256);
    merge_src *plain, *lora;
    CHECK_EQ_INT(merge_open(&plain, "fixtures/bnb/tiny-llama-nf4", NULL, 1), 0);
    CHECK_EQ_INT(merge_open(&lora, "fixtures/bnb/tiny-llama-nf4", ad, 2), 0);
    if (plain && lora) {
        const char *name = "model.layers.1.mlp.down_proj.weight";
        float *w0 = malloc(128 * 256 * 4), *w1 = malloc(128 * 256 * 4);
        CHECK_EQ_INT(merge_read(plain, name, w0), 0);
        CHECK_EQ_INT(merge_read(lora, name, w1), 0);
        const peft_lora *l = peft_adapter_find(merge_adapter(lora), "model.layers.1.mlp.down_proj");
        CHECK(l != NULL);
        double worst = 0;
        for (int o2 = 0; l && o2 < 128; o2++)
            for (int i = 0; i < 256; i++) {
                double d = 0;
                for (int k = 0; k < 4; k++) d += (double)l->B[o2 * 4 + k] * l->A[k * 256 + i];
                worst = fmax(worst, fabs(w0[o2 * 256 + i] + 2.0 * d - w1[o2 * 256 + i]));
            }
        CHECK(worst < 1e-5);
        free(w0);
        free(w1);
    }
    merge_close(&plain);
    merge_close(&lora);
    free(ad);
    free(mo);
    free(mo32);
    free(mo16);
    free(base);
    free(out);
}

TEST(test_export_errors) {
    char *base = P("base"), *bad = P("bad_adapter"), *out = P("eout");
    make_adapter(bad, 128, 64, 96); /* made for a wider model */
    fs_mkdir_p(out);
    export_opts o = {.base = base, .adapter = bad, .formats = EXPORT_MERGED, .threads = 1};
    CHECK_EQ_INT(export_run(&o, out), ERR_DATA);
    CHECK(strstr(err_msg(), "another base model") != NULL);
    char *pm = fs_join(out, "model");
    CHECK(!fs_exists(pm));
    unsigned bit;
    CHECK_EQ_INT(export_format_from_name("onnx", &bit), ERR_USAGE);
    CHECK(strstr(err_msg(), "peft, merged or gguf") != NULL);
    ggml_type t;
    CHECK_EQ_INT(gguf_export_type("q4_k", &t), ERR_USAGE);
    /* a full disk: file writes beyond 64 KB fail; nothing is left under the final names */
    char *ad = P("adapter");
    o.adapter = ad;
    o.formats = EXPORT_MERGED | EXPORT_GGUF;
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 65536;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    int rc = export_run(&o, out);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK_EQ_INT(rc, ERR_STAGE);
    CHECK(!fs_exists(pm));
    DIR *d = opendir(out);
    int entries = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') { entries++; fprintf(stderr, "left behind: %s\n", e->d_name); }
    if (d) closedir(d);
    CHECK_EQ_INT(entries, 0);
    free(pm);
    free(ad);
    free(base);
    free(bad);
    free(out);
}

/* a SentencePiece-style BPE tokenizer (Llama-2 layout, tiny): GGUF gets model "llama",
 * scores that follow the merge ranks, and SPM token types */
TEST(test_gguf_spm_tokenizer) {
    char *tokdir = P("spm"), *base = P("spm_base"), *out = P("spm_out");
    fs_mkdir_p(tokdir);
    json_t *vocab = json_object();
    json_object_set_new(vocab, "<unk>", json_integer(0));
    json_object_set_new(vocab, "<s>", json_integer(1));
    json_object_set_new(vocab, "</s>", json_integer(2));
    for (int b = 0; b < 256; b++) {
        char k[8];
        snprintf(k, sizeof k, "<0x%02X>", b);
        json_object_set_new(vocab, k, json_integer(3 + b));
    }
    const char *pieces[] = {"\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab"};
    for (int i = 0; i < 6; i++) json_object_set_new(vocab, pieces[i], json_integer(259 + i));
    json_t *tj = json_pack("{s:s, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}],"
                           " s:n, s:{s:s, s:s, s:s, s:b}, s:{s:s, s:o, s:[s, s, s], s:b, s:b, s:s}}",
                           "version", "1.0", "added_tokens", "id", 0, "content", "<unk>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1,
                           "id", 1, "content", "<s>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1,
                           "id", 2, "content", "</s>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1,
                           "normalizer", "pre_tokenizer", "type", "Metaspace", "replacement", "\xe2\x96\x81", "prepend_scheme", "first", "split", 0,
                           "model", "type", "BPE", "vocab", vocab, "merges", "\xe2\x96\x81 a", "a b", "\xe2\x96\x81" "a b", "byte_fallback", 1, "fuse_unk", 1,
                           "unk_token", "<unk>");
    CHECK(tj != NULL);
    char *tp = fs_join(tokdir, "tokenizer.json"), *cp = fs_join(tokdir, "tokenizer_config.json");
    json_dump_file(tj, tp, 0);
    const char *cfg = "{\"add_bos_token\": true, \"add_eos_token\": false, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\"}";
    fs_write_atomic(cp, cfg, strlen(cfg));
    json_decref(tj);
    init_model_opts o;
    init_model_opts_default(&o);
    init_model_shape s = {"llama", "tiny", 64, 1, 4, 2, 96, 0, 0};
    CHECK_EQ_INT(init_model_resolve(&o, &s), 0);
    o.tokenizer = tokdir;
    model_config mc;
    CHECK_EQ_INT(init_model_write(&o, base, &mc), 0);
    CHECK_EQ_INT(mc.vocab_size, 265);
    CHECK_EQ_INT(mc.bos_token_id, 1);
    CHECK_EQ_INT(mc.eos_token_id, 2);
    CHECK_EQ_INT(mc.pad_token_id, -1);
    fs_mkdir_p(out);
    export_opts e = {.base = base, .formats = EXPORT_GGUF, .gguf_type = GGML_TYPE_Q8_0, .threads = 1};
    CHECK_EQ_INT(export_run(&e, out), 0);
    char *pg = fs_join(out, "model-q8_0.gguf");
    gfile g;
    CHECK_EQ_INT(gguf_parse(&g, pg), 0);
    const gkv *model = kv_find(&g, "tokenizer.ggml.model"), *types = kv_find(&g, "tokenizer.ggml.token_type"),
              *scores = kv_find(&g, "tokenizer.ggml.scores");
    CHECK(model && !memcmp(g.data + model->at + 8, "llama", 5));
    CHECK(kv_find(&g, "tokenizer.ggml.merges") == NULL);
    CHECK(types && types->elem == 5 && types->count == 265 && scores && scores->elem == 6 && scores->count == 265);
    if (types && scores && types->count == 265 && scores->count == 265) {
        int32_t ty[265];
        float sc[265];
        memcpy(ty, g.data + types->at, sizeof ty);
        memcpy(sc, g.data + scores->at, sizeof sc);
        CHECK_EQ_INT(ty[0], 2);   /* unknown */
        CHECK_EQ_INT(ty[1], 3);   /* control */
        CHECK_EQ_INT(ty[3], 6);   /* byte */
        CHECK_EQ_INT(ty[260], 1); /* normal */
        CHECK(sc[262] == 0.0f && sc[263] == -1.0f && sc[264] == -2.0f); /* merge ranks 0, 1, 2 */
        CHECK(sc[260] == 0.0f);
    }
    CHECK_EQ_INT(kv_u32(&g, "tokenizer.ggml.unknown_token_id"), 0);
    gguf_done(&g);
    free(pg);
    free(tp);
    free(cp);
    free(tokdir);
    free(base);
    free(out);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_export.%d", (int)getpid());
    fs_mkdir_p(tmpdir);
    RUN(test_q8_0_and_permute);
    RUN(test_q8_0_block_by_hand);
    RUN(test_gguf_writer_layout);
    RUN(test_export_all);
    RUN(test_export_qwen2_and_nf4);
    RUN(test_export_errors);
    RUN(test_gguf_spm_tokenizer);
    fs_rm_rf(tmpdir);
    return test_summary();
}
