/* test_nf4.c: kernels/cpu/nf4 against bitsandbytes' cpu path, bit for bit.
 *
 * For every case of fixtures/bnb/MANIFEST.json (inputs in f32/f16/bf16, odd lengths, an all-zero
 * block, heavy tails; nf4 and fp4; blocksizes 64 and 128; with and without double quant) the
 * fixture holds what bitsandbytes 0.50.2.dev0 wrote on the cpu path. Compared exactly:
 *  - codes (packed bytes), absmax (nodq), quant_map, nested_quant_map;
 *  - with double quant: absmax_codes and nested_absmax computed from our absmax and the fixture's
 *    own offset (the offset is a torch mean whose summation order C cannot reproduce);
 *  - dequantized output in the input dtype, value for value (nodq; dq with the fixture's offset;
 *    +0 and -0 count as equal, see diff_values);
 * and, with our own offset, the double-quant dequantized absmax within 1e-6 relative of the
 * fixture's and the output's within one unit of the input dtype.
 * Also: fast == _ref on random data of every blocksize, threads == no threads, the dynamic
 * map's SHA-256, ops_nf4_dequant_rows on row ranges, NaN/Inf reported at the first index. */
#include <jansson.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "kernels/cpu/nf4.h"
#include "test.h"

static st_model *cases;

static const st_tensor *need(const char *fmt, const char *a, const char *b) {
    char name[256];
    snprintf(name, sizeof name, fmt, a, b);
    const st_tensor *t = st_find(cases, name);
    if (!t) fprintf(stderr, "fixture tensor '%s' missing\n", name);
    return t;
}

/* number of differing bytes; prints the first difference */
static long diff_bytes(const char *what, const char *cs, const void *a, const void *b, size_t n, size_t elem) {
    const uint8_t *x = a, *y = b;
    long bad = 0;
    for (size_t i = 0; i < n * elem; i += elem) {
        if (memcmp(x + i, y + i, elem)) {
            if (!bad) {
                uint32_t u = 0, v = 0;
                memcpy(&u, x + i, elem);
                memcpy(&v, y + i, elem);
                fprintf(stderr, "  %s %s: first difference at %zu: ours %08x, bnb %08x\n", cs, what, i / elem, u, v);
            }
            bad++;
        }
    }
    if (bad) fprintf(stderr, "  %s %s: %ld of %zu differ\n", cs, what, bad, n);
    return bad;
}

static float value_at(const void *p, int64_t i, st_dtype d) {
    uint16_t h;
    memcpy(&h, (const uint8_t *)p + 2 * i, 2);
    if (d == ST_BF16) return bf16_to_f32(h);
    if (d == ST_F16) return f16_to_f32(h);
    float f;
    memcpy(&f, (const uint8_t *)p + i * 4, 4);
    return f;
}

/* element values equal (so +0 == -0: bitsandbytes' native FP4 dequantization turns code 8 into
 * -0 while the stored quant_map, which we dequantize with, holds +0); NaN never expected */
static long diff_values(const char *what, const char *cs, const void *a, const void *b, int64_t n, st_dtype d) {
    long bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float x = value_at(a, i, d), y = value_at(b, i, d);
        if (x != y) {
            if (!bad) fprintf(stderr, "  %s %s: first difference at %lld: ours %.9g, bnb %.9g\n", cs, what, (long long)i, x, y);
            bad++;
        }
    }
    if (bad) fprintf(stderr, "  %s %s: %ld of %lld differ\n", cs, what, bad, (long long)n);
    return bad;
}

static int src_dtype_of(st_dtype d) {
    return d == ST_BF16 ? NF4_SRC_BF16 : d == ST_F16 ? NF4_SRC_F16 : NF4_SRC_F32;
}

/* f32 values to the input dtype's bytes */
static void to_dtype(void *dst, const float *x, int64_t n, st_dtype d) {
    for (int64_t i = 0; i < n; i++) {
        if (d == ST_BF16) ((uint16_t *)dst)[i] = f32_to_bf16(x[i]);
        else if (d == ST_F16) ((uint16_t *)dst)[i] = f32_to_f16(x[i]);
        else ((float *)dst)[i] = x[i];
    }
}

/* ---- fixture_case's steps; each adds the differences it finds to *bad ---- */

/* the fast and _ref quantizers agree on in, and the codes and quant_map equal bitsandbytes';
 * codes and absmax get the fast quantizer's output */
static void nf4_case_quantize(const char *key, const st_tensor *in, int bs, int quant_type, uint8_t *codes,
                              float *absmax, long *bad) {
    int64_t n = st_numel(in), nb = nf4_nblocks(n, bs), nbytes = nf4_packed_bytes(n);
    int sd = src_dtype_of(in->dtype);
    uint8_t *codes_ref = malloc((size_t)nbytes);
    float *absmax_ref = malloc((size_t)nb * 4);
    CHECK_EQ_INT(nf4_quantize(codes, absmax, in->data, sd, n, bs, quant_type, 2), -1);
    CHECK_EQ_INT(nf4_quantize_ref(codes_ref, absmax_ref, in->data, sd, n, bs, quant_type), -1);
    *bad += diff_bytes("codes (fast vs ref)", key, codes, codes_ref, (size_t)nbytes, 1);
    *bad += diff_bytes("absmax (fast vs ref)", key, absmax, absmax_ref, (size_t)nb, 4);

    const st_tensor *t = need("%s.cpu.%s", key, "codes");
    if (t && (int64_t)t->nbytes == nbytes) *bad += diff_bytes("codes", key, codes, t->data, (size_t)nbytes, 1);
    else (*bad)++;
    t = need("%s.cpu.%s", key, "quant_map");
    if (t) *bad += diff_bytes("quant_map", key, nf4_quant_map(quant_type), t->data, 16, 4);
    free(codes_ref);
    free(absmax_ref);
}

/* our own offset is within 1e-6 relative of bitsandbytes' (offset), and the absmax it de-nests to
 * within 1e-6 relative of the fixture's (absmax_codes qa, nested_absmax na); returns that absmax
 * (the caller frees it); q and nabs are scratch for nb blocks */
static float *nf4_case_own_offset(const char *key, const float *absmax, int64_t nb, float offset, const float *map,
                                  const st_tensor *qa, const st_tensor *na, uint8_t *q, float *nabs, long *bad) {
    float own = nf4_absmax_mean(absmax, nb);
    CHECK_NEAR(own, offset, fabs(offset) * 1e-6);
    nf4_double_quant(q, nabs, absmax, nb, own, map);
    float *own_absmax = malloc((size_t)nb * 4);
    nf4_double_dequant(own_absmax, q, nabs, map, nb, own);
    for (int64_t b = 0; b < nb; b++) {
        float nab;
        memcpy(&nab, (const uint8_t *)na->data + (b / 256) * 4, 4); /* fixture data may be unaligned */
        float want = map[((const uint8_t *)qa->data)[b]] * nab + offset;
        if (!(fabsf(own_absmax[b] - want) <= 1e-6f * fabsf(want) + 1e-7f)) {
            if (!*bad) fprintf(stderr, "  %s: own-offset absmax %lld: %.9g vs %.9g\n", key, (long long)b, own_absmax[b], want);
            (*bad)++;
            break;
        }
    }
    return own_absmax;
}

/* with double quant: the nested map, and absmax_codes and nested_absmax computed (fast == _ref)
 * from our absmax with the fixture's own offset, equal bitsandbytes'; *deq_absmax gets the absmax
 * they de-nest to, *own_absmax the one our own offset gives (the caller frees both); false when
 * the fixture lacks one of the pieces */
static bool nf4_case_nested(const char *key, const float *absmax, int64_t nb, float **deq_absmax, float **own_absmax,
                            long *bad) {
    const st_tensor *off = need("%s.cpu.%s", key, "offset");
    const st_tensor *qa = need("%s.cpu.%s", key, "absmax_codes");
    const st_tensor *na = need("%s.cpu.%s", key, "nested_absmax");
    const st_tensor *nm = need("%s.cpu.%s", key, "nested_quant_map");
    if (!off || !qa || !na || !nm) return false;
    float offset;
    memcpy(&offset, off->data, 4);
    float map[NF4_DYNAMIC_MAP_SIZE];
    nf4_dynamic_map(map);
    *bad += diff_bytes("nested_quant_map", key, map, nm->data, NF4_DYNAMIC_MAP_SIZE, 4);
    int64_t nn = nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE);
    uint8_t *q = malloc((size_t)nb), *q_ref = malloc((size_t)nb);
    float *nabs = malloc((size_t)nn * 4), *nabs_ref = malloc((size_t)nn * 4);
    nf4_double_quant(q, nabs, absmax, nb, offset, map);
    nf4_double_quant_ref(q_ref, nabs_ref, absmax, nb, offset, map);
    *bad += diff_bytes("absmax_codes (fast vs ref)", key, q, q_ref, (size_t)nb, 1);
    *bad += diff_bytes("absmax_codes", key, q, qa->data, (size_t)nb, 1);
    *bad += diff_bytes("nested_absmax", key, nabs, na->data, (size_t)nn, 4);
    *deq_absmax = malloc((size_t)nb * 4);
    nf4_double_dequant(*deq_absmax, q, nabs, map, nb, offset);
    *own_absmax = nf4_case_own_offset(key, absmax, nb, offset, map, qa, na, q, nabs, bad);
    free(q);
    free(q_ref);
    free(nabs);
    free(nabs_ref);
    return true;
}

/* the dequantized output (scaled by deq_absmax): fast == _ref, and cast to the input dtype like
 * bitsandbytes does, equal to its stored output; with own_absmax (double quant with our own
 * offset) within one unit in the last place of that dtype */
static void nf4_case_dequant(const char *key, const st_tensor *in, const uint8_t *codes, const float *deq_absmax,
                             const float *own_absmax, int bs, int quant_type, long *bad) {
    int64_t n = st_numel(in);
    size_t isz = st_dtype_size(in->dtype);
    char dname[256];
    snprintf(dname, sizeof dname, "%s.cpu.dequant", key);
    const st_tensor *t = st_find(cases, dname);
    float *deq = malloc((size_t)n * 4), *deq_ref = malloc((size_t)n * 4);
    void *cast = malloc((size_t)n * isz);
    nf4_dequantize(deq, codes, deq_absmax, nf4_quant_map(quant_type), bs, 0, n, 2);
    nf4_dequantize_ref(deq_ref, codes, deq_absmax, nf4_quant_map(quant_type), bs, 0, n);
    *bad += diff_bytes("dequant (fast vs ref)", key, deq, deq_ref, (size_t)n, 4);
    if (t) { /* the 512x1024 case has no stored dequant */
        to_dtype(cast, deq, n, in->dtype);
        *bad += diff_values("dequant", key, cast, t->data, n, in->dtype);
        if (own_absmax) { /* own offset: within one unit in the last place of the input dtype */
            nf4_dequantize(deq, codes, own_absmax, nf4_quant_map(quant_type), bs, 0, n, 1);
            for (int64_t i = 0; i < n; i++) {
                float want = value_at(t->data, i, in->dtype);
                float ulp = in->dtype == ST_F32 ? 1e-6f : in->dtype == ST_F16 ? 9.8e-4f : 7.9e-3f;
                if (!(fabsf(deq[i] - want) <= fabsf(want) * ulp + 1e-30f)) {
                    fprintf(stderr, "  %s: own-offset dequant %lld: %.9g vs %.9g\n", key, (long long)i, deq[i], want);
                    (*bad)++;
                    break;
                }
            }
        }
    }
    free(cast);
    free(deq);
    free(deq_ref);
}

/* one manifest case (key names input, quant type and dq/nodq): quantize, the absmax or its double
 * quant, dequantize; returns the number of differences from bitsandbytes' cpu path */
static long fixture_case(const char *key, json_t *info) {
    char input[128], qt[8], dq[8];
    int bs = (int)json_integer_value(json_object_get(info, "blocksize"));
    if (sscanf(key, "%127[^.].%7[^.].bs%*d.%7s", input, qt, dq) != 3) {
        fprintf(stderr, "bad manifest key %s\n", key);
        return 1;
    }
    int quant_type = strcmp(qt, "fp4") == 0 ? OPS_FP4 : OPS_NF4;
    bool nested = strcmp(dq, "dq") == 0;
    const st_tensor *in = need("%s%s.input", input, "");
    if (!in) return 1;
    int64_t n = st_numel(in), nb = nf4_nblocks(n, bs), nbytes = nf4_packed_bytes(n);
    long bad = 0;

    uint8_t *codes = malloc((size_t)nbytes);
    float *absmax = malloc((size_t)nb * 4);
    nf4_case_quantize(key, in, bs, quant_type, codes, absmax, &bad);
    float *deq_absmax = absmax; /* what the 4-bit dequantization scales by */
    float *own_absmax = NULL;
    if (!nested) {
        const st_tensor *t = need("%s.cpu.%s", key, "absmax");
        if (t && (int64_t)t->nbytes == nb * 4) bad += diff_bytes("absmax", key, absmax, t->data, (size_t)nb, 4);
        else bad++;
    } else if (!nf4_case_nested(key, absmax, nb, &deq_absmax, &own_absmax, &bad)) {
        return bad + 1;
    }
    nf4_case_dequant(key, in, codes, deq_absmax, own_absmax, bs, quant_type, &bad);
    if (deq_absmax != absmax) free(deq_absmax);
    free(own_absmax);
    free(codes);
    free(absmax);
    return bad;
}

TEST(fixtures_match_bitsandbytes_cpu) {
    char *text = NULL;
    size_t len = 0;
    CHECK_EQ_INT(fs_read_all("fixtures/bnb/MANIFEST.json", &text, &len), 0);
    json_t *man = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    CHECK(man != NULL);
    if (!man) return;
    int rc = st_open(&cases, "fixtures/bnb/nf4_cases.safetensors");
    CHECK_EQ_INT(rc, 0);
    if (rc) {
        fprintf(stderr, "%s\n", err_msg());
        json_decref(man);
        return;
    }
    const char *key;
    json_t *info;
    int ncases = 0, nbad = 0;
    json_object_foreach(man, key, info) {
        long bad = fixture_case(key, info);
        ncases++;
        if (bad) {
            nbad++;
            fprintf(stderr, "case %s: %ld mismatches\n", key, bad);
        }
    }
    CHECK_EQ_INT(ncases, 56);
    CHECK_EQ_INT(nbad, 0);
    st_close(&cases);
    json_decref(man);
}

TEST(dynamic_map_sha256) {
    float map[NF4_DYNAMIC_MAP_SIZE];
    nf4_dynamic_map(map);
    unsigned char md[32];
    SHA256((const unsigned char *)map, sizeof map, md);
    char hex[65];
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
    CHECK_EQ_STR(hex, "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c");
    CHECK(map[127] == 0.0f && map[255] == 1.0f);
    CHECK_NEAR(map[0], -0.99296874, 1e-8);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd_normal(void) { /* Box-Muller over a xorshift: good enough for test data */
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u1 = ((rng_state >> 11) + 1.0) / 9007199254740993.0;
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u2 = (rng_state >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

TEST(fast_equals_ref_all_blocksizes) {
    const int64_t ns[] = {1, 7, 63, 4097, 100003, 300000};
    for (int qt = 0; qt < 2; qt++)
        for (int bs = 32; bs <= 4096; bs *= 2)
            for (size_t k = 0; k < sizeof ns / sizeof *ns; k++)
                for (int sd = 0; sd < 3; sd++) {
                    int64_t n = ns[k], nb = nf4_nblocks(n, bs);
                    float *x = malloc((size_t)n * 4);
                    uint16_t *h = malloc((size_t)n * 2);
                    for (int64_t i = 0; i < n; i++) {
                        x[i] = rnd_normal() * 0.02f;
                        if (i % 977 == 5) x[i] = 0.0f;
                        if (sd == NF4_SRC_BF16) { h[i] = f32_to_bf16(x[i]); }
                        if (sd == NF4_SRC_F16) { h[i] = f32_to_f16(x[i]); }
                    }
                    const void *src = sd == NF4_SRC_F32 ? (const void *)x : (const void *)h;
                    uint8_t *c1 = malloc((size_t)nf4_packed_bytes(n)), *c2 = malloc((size_t)nf4_packed_bytes(n));
                    float *a1 = malloc((size_t)nb * 4), *a2 = malloc((size_t)nb * 4);
                    CHECK_EQ_INT(nf4_quantize(c1, a1, src, sd, n, bs, qt, 2), -1);
                    CHECK_EQ_INT(nf4_quantize_ref(c2, a2, src, sd, n, bs, qt), -1);
                    CHECK(memcmp(c1, c2, (size_t)nf4_packed_bytes(n)) == 0);
                    CHECK(memcmp(a1, a2, (size_t)nb * 4) == 0);
                    float *d1 = malloc((size_t)n * 4), *d2 = malloc((size_t)n * 4);
                    nf4_dequantize(d1, c1, a1, nf4_quant_map(qt), bs, 0, n, 2);
                    nf4_dequantize_ref(d2, c1, a1, nf4_quant_map(qt), bs, 0, n);
                    CHECK(memcmp(d1, d2, (size_t)n * 4) == 0);
                    /* an odd sub-range */
                    if (n > 10) {
                        nf4_dequantize(d1, c1, a1, nf4_quant_map(qt), bs, 3, n - 6, 1);
                        CHECK(memcmp(d1, d2 + 3, (size_t)(n - 6) * 4) == 0);
                    }
                    free(x); free(h); free(c1); free(c2); free(a1); free(a2); free(d1); free(d2);
                }
}

TEST(dequant_rows) {
    const int64_t rows = 37, cols = 65; /* odd cols: rows start on either nibble */
    int64_t n = rows * cols;
    float *x = malloc((size_t)n * 4), *full = malloc((size_t)n * 4), *part = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = rnd_normal();
    uint8_t *codes = malloc((size_t)nf4_packed_bytes(n));
    float *absmax = malloc((size_t)nf4_nblocks(n, 64) * 4);
    nf4_quantize(codes, absmax, x, NF4_SRC_F32, n, 64, OPS_NF4, 1);
    ops_nf4 W = {.codes = codes, .absmax = absmax, .quant_map = nf4_quant_map(OPS_NF4), .rows = rows, .cols = cols,
                 .blocksize = 64};
    nf4_dequantize_ref(full, codes, absmax, W.quant_map, 64, 0, n);
    for (int64_t r0 = 0; r0 < rows; r0 += 5) {
        int64_t nr = r0 + 7 <= rows ? 7 : rows - r0;
        ops_nf4_dequant_rows(&W, r0, nr, part);
        CHECK(memcmp(part, full + r0 * cols, (size_t)(nr * cols) * 4) == 0);
    }
    free(x); free(full); free(part); free(codes); free(absmax);
}

/* double-quantized absmax kept as stored: rows de-nest block by block to what de-nesting the
 * whole absmax first gives (over several nested groups of 256 blocks) */
TEST(dequant_rows_double_quant) {
    const int64_t rows = 301, cols = 129;
    int64_t n = rows * cols, nb = nf4_nblocks(n, 64), nn = nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE);
    float *x = malloc((size_t)n * 4), *full = malloc((size_t)n * 4), *part = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = rnd_normal() * (1.0f + (float)(i % 977) / 100.0f);
    uint8_t *codes = malloc((size_t)nf4_packed_bytes(n)), *aq = malloc((size_t)nb);
    float *absmax = malloc((size_t)nb * 4), *nested = malloc((size_t)nn * 4), map[NF4_DYNAMIC_MAP_SIZE];
    nf4_quantize(codes, absmax, x, NF4_SRC_F32, n, 64, OPS_NF4, 1);
    nf4_dynamic_map(map);
    float offset = nf4_absmax_mean(absmax, nb);
    nf4_double_quant(aq, nested, absmax, nb, offset, map);
    nf4_double_dequant(absmax, aq, nested, map, nb, offset);
    nf4_dequantize_ref(full, codes, absmax, nf4_quant_map(OPS_NF4), 64, 0, n);
    ops_nf4 W = {.codes = codes, .quant_map = nf4_quant_map(OPS_NF4), .rows = rows, .cols = cols, .blocksize = 64,
                 .absmax_q = aq, .nested_absmax = nested, .nested_map = map, .nested_offset = offset};
    for (int64_t r0 = 0; r0 < rows; r0 += 13) {
        int64_t nr = r0 + 40 <= rows ? 40 : rows - r0;
        ops_nf4_dequant_rows(&W, r0, nr, part);
        CHECK(memcmp(part, full + r0 * cols, (size_t)(nr * cols) * 4) == 0);
    }
    for (int64_t b = 0; b < nb; b += 97) CHECK(ops_nf4_block_scale(&W, b) == absmax[b]);
    free(x); free(full); free(part); free(codes); free(aq); free(absmax); free(nested);
}

TEST(nonfinite_reported_at_first_index) {
    int64_t n = 1000;
    float *x = malloc((size_t)n * 4);
    uint16_t *h = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f;
    x[700] = INFINITY;
    x[613] = NAN;
    for (int64_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
    uint8_t codes[500];
    float absmax[16];
    CHECK_EQ_INT(nf4_quantize(codes, absmax, x, NF4_SRC_F32, n, 64, OPS_NF4, 2), 613);
    CHECK_EQ_INT(nf4_quantize_ref(codes, absmax, x, NF4_SRC_F32, n, 64, OPS_NF4), 613);
    CHECK_EQ_INT(nf4_quantize(codes, absmax, h, NF4_SRC_BF16, n, 64, OPS_NF4, 1), 613);
    for (int64_t i = 0; i < n; i++) h[i] = f32_to_f16(x[i]);
    CHECK_EQ_INT(nf4_quantize(codes, absmax, h, NF4_SRC_F16, n, 64, OPS_FP4, 1), 613);
    free(x);
    free(h);
}

TEST(quantize_err_matches_dequantize) {
    int64_t n = 200003; /* a partial last block */
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = rnd_normal() * 0.02f;
    int64_t nb = nf4_nblocks(n, 64);
    uint8_t *c1 = malloc((size_t)nf4_packed_bytes(n)), *c2 = malloc((size_t)nf4_packed_bytes(n));
    float *a1 = malloc((size_t)nb * 4), *a2 = malloc((size_t)nb * 4), *rec = malloc((size_t)nb * 4);
    for (int qt = 0; qt < 2; qt++) {
        double err[2];
        nf4_quantize(c2, a2, x, NF4_SRC_F32, n, 64, qt, 1);
        for (int64_t b = 0; b < nb; b++) rec[b] = a2[b] * 1.001f; /* a stored absmax that differs */
        for (int with_rec = 0; with_rec < 2; with_rec++) {
            CHECK_EQ_INT(nf4_quantize_err(c1, a1, x, NF4_SRC_F32, n, 64, qt, 2, with_rec ? rec : NULL, err), -1);
            CHECK(memcmp(c1, c2, (size_t)nf4_packed_bytes(n)) == 0);
            nf4_dequantize_ref(y, c1, with_rec ? rec : a1, nf4_quant_map(qt), 64, 0, n);
            double e = 0, r = 0;
            for (int64_t i = 0; i < n; i++) {
                e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
                r += (double)x[i] * x[i];
            }
            CHECK_NEAR(err[0], e, e * 1e-5);
            CHECK_NEAR(err[1], r, r * 1e-5);
        }
    }
    free(x); free(y); free(c1); free(c2); free(a1); free(a2); free(rec);
}

TEST(blocksizes) {
    CHECK(nf4_blocksize_valid(32) && nf4_blocksize_valid(64) && nf4_blocksize_valid(4096));
    CHECK(!nf4_blocksize_valid(16) && !nf4_blocksize_valid(96) && !nf4_blocksize_valid(8192));
}

int main(void) {
    RUN(dynamic_map_sha256);
    RUN(fixtures_match_bitsandbytes_cpu);
    RUN(fast_equals_ref_all_blocksizes);
    RUN(dequant_rows);
    RUN(dequant_rows_double_quant);
    RUN(nonfinite_reported_at_first_index);
    RUN(quantize_err_matches_dequantize);
    RUN(blocksizes);
    return test_summary();
}
