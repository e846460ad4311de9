/* nf4.c: NF4/FP4 blockwise quantization, dequantization and double quantization on the CPU.
 *
 * The numerics are those of bitsandbytes' cpu path at the fixtures' commit (95f9af30), to the
 * bit (tests/unit/test_nf4.c checks every fixture case):
 *  - absmax in f32; a full block scales by one reciprocal, y = x * (1/max(absmax, 1e-38)), while
 *    the partial last block divides, y = x / max(absmax, 1e-38), and stores the clamped absmax;
 *  - code = torch.bucketize(y, midpoints of the sorted code values) mapped back to code order:
 *    the number of f32 midpoints strictly below y, so a tie goes to the lower value (for NF4 the
 *    midpoints equal the CUDA kernel's thresholds; for FP4 they differ from the CUDA literals,
 *    which is why the two paths disagree on some bytes);
 *  - the double quant goes through the cpu library's 65536-point lookup table (see lut_index).
 * Rounding must not be fused: the pragmas below stop FMA contraction where the compiler would
 * (aarch64, -march with FMA); the fmaf calls that bitsandbytes' own arithmetic needs are explicit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels/cpu/nf4.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* code values; built from bit patterns so no decimal rounding can creep in */
static const uint32_t nf4_bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};
/* FP4 codes in ascending order of value; the two zeros (codes 0 and 8, both stored as +0) keep
 * code 0 first, as torch.argsort ordered them when the fixtures were made */
static const uint8_t fp4_order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

typedef struct code_search {
    float bound[16]; /* bound[k] = f32 midpoint of sorted values k and k+1; bound[15] = +inf */
    uint8_t order[16]; /* sorted index -> code */
} code_search;

static float nf4_map[16], fp4_map[16];
static code_search search_nf4, search_fp4;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void search_init(code_search *cs, const float *map, const uint8_t *order) {
    for (int k = 0; k < 16; k++) cs->order[k] = order ? order[k] : (uint8_t)k;
    for (int k = 0; k < 15; k++) cs->bound[k] = (map[cs->order[k]] + map[cs->order[k + 1]]) / 2.0f;
    cs->bound[15] = INFINITY;
}

static void tables_init(void) {
    for (int i = 0; i < 16; i++) nf4_map[i] = f32_from_bits(nf4_bits[i]);
    /* FP4 magnitudes by the low 3 bits, in twelfths; bit 3 is the sign */
    static const float mag12[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    for (int i = 0; i < 8; i++) {
        fp4_map[i] = mag12[i] / 12.0f;
        fp4_map[8 + i] = i == 0 ? 0.0f : -(mag12[i] / 12.0f); /* bitsandbytes stores +0 at code 8 */
    }
    search_init(&search_nf4, nf4_map, NULL);
    search_init(&search_fp4, fp4_map, fp4_order);
}

const float *nf4_quant_map(int quant_type) {
    pthread_once(&tables_once, tables_init);
    return quant_type == OPS_FP4 ? fp4_map : nf4_map;
}

bool nf4_blocksize_valid(int blocksize) {
    for (int b = 32; b <= 4096; b *= 2)
        if (b == blocksize) return true;
    return false;
}

/* ---- encoding one value ---- */

/* torch.bucketize(y, bounds, right=False) mapped through the order: the sorted index is the
 * number of bounds strictly below y (a y equal to a bound takes the lower code); four compares */
static inline uint8_t encode(const code_search *cs, float y) {
    unsigned c = (y > cs->bound[7]) ? 8u : 0u;
    c += (y > cs->bound[c + 3]) ? 4u : 0u;
    c += (y > cs->bound[c + 1]) ? 2u : 0u;
    c += (y > cs->bound[c]) ? 1u : 0u;
    return cs->order[c];
}

uint8_t nf4_encode(float y, int quant_type) {
    pthread_once(&tables_once, tables_init);
    return encode(quant_type == OPS_FP4 ? &search_fp4 : &search_nf4, y);
}

/* the partial last block's absmax is clamped to 1e-38 (as f32, a subnormal) and stored so */
#define NF4_TINY 1e-38f

/* Loads through memcpy: a safetensors file whose header length is not a multiple of 8 leaves
 * its tensors unaligned in the mapping (such files exist); the compiler makes these plain loads. */
static inline uint16_t load_u16(const void *p, int64_t i) {
    uint16_t v;
    memcpy(&v, (const uint8_t *)p + 2 * i, 2);
    return v;
}

static inline float src_at(const void *src, int src_dtype, int64_t i) {
    switch (src_dtype) {
    case NF4_SRC_F16: return f16_to_f32(load_u16(src, i));
    case NF4_SRC_BF16: return bf16_to_f32(load_u16(src, i));
    default: {
        float f;
        memcpy(&f, (const uint8_t *)src + 4 * i, 4);
        return f;
    }
    }
}

/* ---- quantization: the reference ---- */

int64_t nf4_quantize_blocks_ref(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                                int blocksize, int quant_type, int64_t b0, int64_t b1) {
    pthread_once(&tables_once, tables_init);
    int64_t bad = -1;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        bool partial = hi - lo < blocksize;
        float m = 0.0f;
        for (int64_t i = lo; i < hi; i++) {
            float a = fabsf(src_at(src, src_dtype, i));
            if (!isfinite(a) && bad < 0) bad = i;
            if (a > m) m = a;
        }
        /* bitsandbytes: full blocks scale by the reciprocal of max(absmax, 1e-38) and store the
         * plain absmax; the partial block divides by max(absmax, 1e-38) and stores that */
        float d = m > NF4_TINY ? m : NF4_TINY;
        absmax[b] = partial ? d : m;
        float inv = 1.0f / d;
        for (int64_t i = lo; i < hi; i++) {
            float x = src_at(src, src_dtype, i);
            uint8_t c = nf4_encode(partial ? x / d : x * inv, quant_type);
            if (i & 1) codes[i >> 1] = (uint8_t)((codes[i >> 1] & 0xf0) | c);
            else codes[i >> 1] = (uint8_t)(c << 4);
        }
        if (hi == n && (n & 1)) /* padding element: the code of 0.0 */
            codes[n >> 1] = (uint8_t)((codes[n >> 1] & 0xf0) | nf4_encode(0.0f, quant_type));
    }
    return bad;
}

int64_t nf4_quantize_ref(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                         int quant_type) {
    return nf4_quantize_blocks_ref(codes, absmax, src, src_dtype, n, blocksize, quant_type, 0,
                                   nf4_nblocks(n, blocksize));
}

/* ---- quantization: the fast path ---- */

/* widen one block to f32 and take its absmax; returns the offset of the first NaN or Inf, or -1.
 * Finiteness is tracked on the bit patterns (the largest |x| pattern) so the loop stays branch-free. */
static int64_t block_load(float *restrict buf, float *restrict amax, const void *src, int src_dtype, int64_t lo,
                          int64_t len) {
    int nonfinite;
    if (src_dtype == NF4_SRC_BF16) {
        const uint8_t *s = (const uint8_t *)src + 2 * lo;
        unsigned worst = 0;
        for (int64_t i = 0; i < len; i++) {
            uint16_t h = load_u16(s, i);
            unsigned a = h & 0x7fffu;
            worst = a > worst ? a : worst;
            buf[i] = bf16_to_f32(h);
        }
        nonfinite = worst >= 0x7f80u;
    } else if (src_dtype == NF4_SRC_F16) {
        const uint8_t *s = (const uint8_t *)src + 2 * lo;
        unsigned worst = 0;
        for (int64_t i = 0; i < len; i++) {
            uint16_t h = load_u16(s, i);
            unsigned a = h & 0x7fffu;
            worst = a > worst ? a : worst;
            buf[i] = f16_to_f32(h);
        }
        nonfinite = worst >= 0x7c00u;
    } else {
        memcpy(buf, (const uint8_t *)src + 4 * lo, (size_t)len * 4);
        uint32_t worst = 0;
        for (int64_t i = 0; i < len; i++) {
            uint32_t a;
            memcpy(&a, &buf[i], 4);
            a &= 0x7fffffffu;
            worst = a > worst ? a : worst;
        }
        nonfinite = worst >= 0x7f800000u;
    }
    if (nonfinite) {
        for (int64_t i = 0; i < len; i++)
            if (!isfinite(buf[i])) return i;
    }
    float m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        float a = fabsf(buf[i]);
        m = a > m ? a : m;
    }
    *amax = m;
    return -1;
}

/* The block loop of the fast quantizer. With err != NULL it also sums, in double, the squared
 * reconstruction error (x - quant_map[code] * scale)^2 and x^2, where scale is recon[b] when
 * given (the absmax a checkpoint really stores, e.g. de-nested) and the computed absmax
 * otherwise: the error report then costs no second pass over the weights. */
static int64_t quantize_range(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                              int quant_type, int64_t b0, int64_t b1, const float *recon, double err[2]) {
    pthread_once(&tables_once, tables_init);
    const code_search *cs = quant_type == OPS_FP4 ? &search_fp4 : &search_nf4;
    const float *qmap = quant_type == OPS_FP4 ? fp4_map : nf4_map;
    const uint8_t zero_code = encode(cs, 0.0f);
    float buf[4096];
    int64_t bad = -1;
    double e2 = 0.0, r2 = 0.0;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b * blocksize, len = lo + blocksize < n ? blocksize : n - lo;
        float m = 0.0f;
        int64_t off = block_load(buf, &m, src, src_dtype, lo, len);
        uint8_t *out = codes + (lo >> 1);
        int64_t pairs = len >> 1;
        if (off >= 0) { /* the caller reports it; keep the output defined */
            if (bad < 0) bad = lo + off;
            absmax[b] = NAN;
            memset(out, zero_code * 0x11, (size_t)((len + 1) >> 1));
            continue;
        }
        float d = m > NF4_TINY ? m : NF4_TINY;
        if (len == blocksize) {
            absmax[b] = m;
            float inv = 1.0f / d;
            for (int64_t p = 0; p < pairs; p++)
                out[p] = (uint8_t)(encode(cs, buf[2 * p] * inv) << 4 | encode(cs, buf[2 * p + 1] * inv));
        } else { /* the tensor's partial last block divides (see the _ref) */
            absmax[b] = d;
            for (int64_t p = 0; p < pairs; p++)
                out[p] = (uint8_t)(encode(cs, buf[2 * p] / d) << 4 | encode(cs, buf[2 * p + 1] / d));
            if (len & 1) out[pairs] = (uint8_t)(encode(cs, buf[len - 1] / d) << 4 | zero_code);
        }
        if (err) {
            float sc = recon ? recon[b] : absmax[b];
            float be = 0.0f, br = 0.0f; /* one block in f32, the sum over blocks in double */
            for (int64_t i = 0; i < len; i++) {
                uint8_t c = (i & 1) ? out[i >> 1] & 0x0f : out[i >> 1] >> 4;
                float dlt = buf[i] - qmap[c] * sc;
                be += dlt * dlt;
                br += buf[i] * buf[i];
            }
            e2 += be;
            r2 += br;
        }
    }
    if (err) {
        err[0] += e2;
        err[1] += r2;
    }
    return bad;
}

int64_t nf4_quantize_blocks(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                            int blocksize, int quant_type, int64_t b0, int64_t b1) {
    return quantize_range(codes, absmax, src, src_dtype, n, blocksize, quant_type, b0, b1, NULL, NULL);
}

/* absmax only (the first pass of a streaming writer): same values as the quantizer stores */
static int64_t absmax_blocks(float *absmax, const void *src, int src_dtype, int64_t n, int blocksize, int64_t b0,
                             int64_t b1) {
    float buf[4096];
    int64_t bad = -1;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b * blocksize, len = lo + blocksize < n ? blocksize : n - lo;
        float m = 0.0f;
        int64_t off = block_load(buf, &m, src, src_dtype, lo, len);
        if (off >= 0) {
            if (bad < 0) bad = lo + off;
            m = NAN;
        } else if (len < blocksize && m < NF4_TINY) {
            m = NF4_TINY;
        }
        absmax[b] = m;
    }
    return bad;
}

typedef struct quant_job {
    uint8_t *codes;
    float *absmax;
    const void *src;
    int src_dtype, blocksize, quant_type;
    int64_t n, b0, b1, bad;
    const float *recon;
    double *err; /* NULL, or this job's own [2] */
    double err_own[2];
} quant_job;

static void *quant_job_run(void *arg) {
    quant_job *j = arg;
    if (!j->codes) {
        j->bad = absmax_blocks(j->absmax, j->src, j->src_dtype, j->n, j->blocksize, j->b0, j->b1);
        return NULL;
    }
    j->bad = quantize_range(j->codes, j->absmax, j->src, j->src_dtype, j->n, j->blocksize, j->quant_type, j->b0, j->b1,
                            j->recon, j->err);
    return NULL;
}

#define NF4_MAX_THREADS 16
/* below this many elements a thread costs more than it saves */
#define NF4_THREAD_MIN_ELEMS (1 << 16)

int64_t nf4_absmax(float *absmax, const void *src, int src_dtype, int64_t n, int blocksize, int nthreads) {
    return nf4_quantize_err(NULL, absmax, src, src_dtype, n, blocksize, OPS_NF4, nthreads, NULL, NULL);
}

int64_t nf4_quantize(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                     int quant_type, int nthreads) {
    return nf4_quantize_err(codes, absmax, src, src_dtype, n, blocksize, quant_type, nthreads, NULL, NULL);
}

int64_t nf4_quantize_err(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                         int quant_type, int nthreads, const float *recon_absmax, double err[2]) {
    int64_t nb = nf4_nblocks(n, blocksize);
    if (err) err[0] = err[1] = 0.0;
    if (nthreads > NF4_MAX_THREADS) nthreads = NF4_MAX_THREADS;
    if (nthreads < 2 || n < NF4_THREAD_MIN_ELEMS || nb < nthreads) nthreads = 1;
    quant_job jobs[NF4_MAX_THREADS];
    pthread_t th[NF4_MAX_THREADS];
    int started[NF4_MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++) {
        jobs[t] = (quant_job){codes, absmax, src, src_dtype, blocksize, quant_type, n,
                              nb * t / nthreads, nb * (t + 1) / nthreads, -1, recon_absmax, NULL, {0, 0}};
        if (err) jobs[t].err = jobs[t].err_own;
        if (t > 0) started[t] = pthread_create(&th[t], NULL, quant_job_run, &jobs[t]) == 0;
    }
    quant_job_run(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else quant_job_run(&jobs[t]); /* no thread available: do it here */
    }
    int64_t bad = -1;
    for (int t = 0; t < nthreads; t++) { /* the first bad index in tensor order */
        if (bad < 0) bad = jobs[t].bad;
        if (err) {
            err[0] += jobs[t].err_own[0];
            err[1] += jobs[t].err_own[1];
        }
    }
    return bad;
}

/* ---- dequantization ---- */

void nf4_dequantize_ref(float *dst, const uint8_t *codes, const float *absmax, const float *quant_map,
                        int blocksize, int64_t first, int64_t count) {
    for (int64_t k = 0; k < count; k++) {
        int64_t i = first + k;
        uint8_t byte = codes[i >> 1];
        uint8_t c = (i & 1) ? (byte & 0x0f) : (byte >> 4);
        dst[k] = quant_map[c] * absmax[i / blocksize];
    }
}

static void dequant_range(float *restrict dst, const uint8_t *restrict codes, const float *restrict absmax,
                          const float *restrict quant_map, int blocksize, int64_t first, int64_t count) {
    int64_t i = first, end = first + count;
    float *d = dst;
    if (i < end && (i & 1)) { /* leading odd element: low nibble */
        *d++ = quant_map[codes[i >> 1] & 0x0f] * absmax[i / blocksize];
        i++;
    }
    while (i + 1 < end) {
        int64_t b = i / blocksize, bend = (b + 1) * (int64_t)blocksize;
        if (bend > end) bend = end;
        float s = absmax[b];
        /* i is even here and blocksize is even, so pairs never straddle a block */
        for (; i + 1 < bend; i += 2) {
            uint8_t byte = codes[i >> 1];
            d[0] = quant_map[byte >> 4] * s;
            d[1] = quant_map[byte & 0x0f] * s;
            d += 2;
        }
        if (i < bend) break; /* one element left at the end of the range */
    }
    if (i < end) *d = quant_map[codes[i >> 1] >> 4] * absmax[i / blocksize];
}

typedef struct dequant_job {
    float *dst;
    const uint8_t *codes;
    const float *absmax, *quant_map;
    int blocksize;
    int64_t first, count;
} dequant_job;

static void *dequant_job_run(void *arg) {
    dequant_job *j = arg;
    dequant_range(j->dst, j->codes, j->absmax, j->quant_map, j->blocksize, j->first, j->count);
    return NULL;
}

void nf4_dequantize(float *dst, const uint8_t *codes, const float *absmax, const float *quant_map, int blocksize,
                    int64_t first, int64_t count, int nthreads) {
    if (nthreads > NF4_MAX_THREADS) nthreads = NF4_MAX_THREADS;
    if (nthreads < 2 || count < NF4_THREAD_MIN_ELEMS) {
        dequant_range(dst, codes, absmax, quant_map, blocksize, first, count);
        return;
    }
    dequant_job jobs[NF4_MAX_THREADS];
    pthread_t th[NF4_MAX_THREADS];
    int started[NF4_MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++) {
        int64_t a = count * t / nthreads & ~(int64_t)1, e = t + 1 == nthreads ? count : count * (t + 1) / nthreads & ~(int64_t)1;
        jobs[t] = (dequant_job){dst + a, codes, absmax, quant_map, blocksize, first + a, e - a};
        if (t > 0) started[t] = pthread_create(&th[t], NULL, dequant_job_run, &jobs[t]) == 0;
    }
    dequant_job_run(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else dequant_job_run(&jobs[t]);
    }
}

void ops_nf4_dequant_rows(const ops_nf4 *W, int64_t r0, int64_t nr, float *dst) {
    int64_t first = r0 * W->cols, count = nr * W->cols;
    if (W->dense) { /* fp32 on the cpu backend, whose memory this is */
        if (count > 0) memcpy(dst, (const float *)W->dense + first, sizeof(float) * (size_t)count);
        return;
    }
    if (!W->absmax_q) {
        dequant_range(dst, W->codes, W->absmax, W->quant_map, W->blocksize, first, count);
        return;
    }
    if (count <= 0) return;
    /* double quant: de-nest the blocks this range touches into a small table, then dequantize
     * relative to the first of them (b0 * blocksize is even, so nibble parity is unchanged) */
    int64_t b0 = first / W->blocksize, b1 = (first + count - 1) / W->blocksize, nb = b1 - b0 + 1;
    float local[256] = {0}, *scales = nb <= 256 ? local : malloc(sizeof(float) * (size_t)nb);
    if (!scales) abort(); /* a few KB for any tile the ops ask for */
    for (int64_t b = 0; b < nb; b++) scales[b] = ops_nf4_block_scale(W, b0 + b);
    int64_t e0 = b0 * W->blocksize;
    dequant_range(dst, W->codes + e0 / 2, scales, W->quant_map, W->blocksize, first - e0, count);
    if (scales != local) free(scales);
}

/* ---- double quantization ---- */

/* torch.linspace(start, end, steps) on the CPU, float32: the first half steps up from start, the
 * second half steps down from end, each element one fused multiply-add */
static void linspace_f32(float *out, float start, float end, int steps) {
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - 1 - i), end);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void nf4_dynamic_map(float map[NF4_DYNAMIC_MAP_SIZE]) {
    int k = 0;
    for (int i = 0; i < 7; i++) {
        int steps = (1 << i) + 1;
        float pts[65];
        linspace_f32(pts, 0.1f, 1.0f, steps);
        float scale = (float)pow(10.0, i - 6); /* the Python float 10**(i-6), rounded to f32 */
        for (int j = 0; j + 1 < steps; j++) {
            float mid = (pts[j] + pts[j + 1]) / 2.0f;
            map[k++] = scale * mid;
            map[k++] = -(scale * mid);
        }
    }
    map[k++] = 0.0f;
    map[k++] = 1.0f;
    qsort(map, NF4_DYNAMIC_MAP_SIZE, sizeof(float), cmp_float);
}

float nf4_absmax_mean(const float *absmax, int64_t nb) {
    double s = 0.0;
    for (int64_t i = 0; i < nb; i++) s += absmax[i];
    return nb > 0 ? (float)(s / (double)nb) : 0.0f;
}

/* The cpu path's 8-bit blockwise quantizer (csrc/cpu_ops.cpp, quantize_cpu_impl) does not
 * search the map: it rounds y to one of 65536 evenly spaced points of [-1, 1] and reads a table
 * that holds, for point i (value -1 + 2i/65535), the number of map midpoints strictly below it.
 * That is "nearest entry" up to the grid's resolution, and it is what we must reproduce. The
 * index arithmetic is contracted into one fma there (the library is built with -mfma). */
#define NF4_LUT_SIZE 65536

static inline uint16_t lut_index(float y) {
    y = y < -1.0f ? -1.0f : y > 1.0f ? 1.0f : y;
    return (uint16_t)fmaf((y + 1.0f) * 0.5f, (float)(NF4_LUT_SIZE - 1), 0.5f);
}

static inline float lut_point(int i) { return -1.0f + (2.0f * (float)i) / (float)(NF4_LUT_SIZE - 1); }

static void lut_build(uint8_t *lut, const float *map) {
    float mid[NF4_DYNAMIC_MAP_SIZE - 1];
    for (int k = 0; k < NF4_DYNAMIC_MAP_SIZE - 1; k++) mid[k] = 0.5f * (map[k] + map[k + 1]);
    int code = 0;
    for (int i = 0; i < NF4_LUT_SIZE; i++) {
        float v = lut_point(i);
        while (code < NF4_DYNAMIC_MAP_SIZE - 1 && mid[code] < v) code++;
        lut[i] = (uint8_t)code;
    }
}

void nf4_double_quant_ref(uint8_t *q, float *nested_absmax, const float *absmax, int64_t nb, float offset,
                          const float *map) {
    for (int64_t j = 0; j * NF4_NESTED_BLOCKSIZE < nb; j++) {
        int64_t lo = j * NF4_NESTED_BLOCKSIZE, hi = lo + NF4_NESTED_BLOCKSIZE < nb ? lo + NF4_NESTED_BLOCKSIZE : nb;
        float m = 0.0f;
        for (int64_t b = lo; b < hi; b++) {
            float a = fabsf(absmax[b] - offset);
            if (a > m) m = a;
        }
        nested_absmax[j] = m;
        float inv = 1.0f / m;
        for (int64_t b = lo; b < hi; b++) {
            if (m == 0.0f) { /* an all-zero nested block gets index 0 */
                q[b] = 0;
                continue;
            }
            /* the grid point, then a linear count of midpoints below it */
            float v = lut_point(lut_index((absmax[b] - offset) * inv));
            int code = 0;
            for (int k = 0; k < NF4_DYNAMIC_MAP_SIZE - 1; k++)
                if (0.5f * (map[k] + map[k + 1]) < v) code = k + 1;
            q[b] = (uint8_t)code;
        }
    }
}

void nf4_double_quant(uint8_t *q, float *nested_absmax, const float *absmax, int64_t nb, float offset,
                      const float *map) {
    uint8_t *lut = malloc(NF4_LUT_SIZE);
    if (!lut) { /* 64 KiB unavailable: the reference needs none */
        nf4_double_quant_ref(q, nested_absmax, absmax, nb, offset, map);
        return;
    }
    lut_build(lut, map);
    for (int64_t j = 0; j * NF4_NESTED_BLOCKSIZE < nb; j++) {
        int64_t lo = j * NF4_NESTED_BLOCKSIZE, hi = lo + NF4_NESTED_BLOCKSIZE < nb ? lo + NF4_NESTED_BLOCKSIZE : nb;
        float m = 0.0f;
        for (int64_t b = lo; b < hi; b++) {
            float a = fabsf(absmax[b] - offset);
            m = a > m ? a : m;
        }
        nested_absmax[j] = m;
        float inv = 1.0f / m;
        for (int64_t b = lo; b < hi; b++) q[b] = m == 0.0f ? 0 : lut[lut_index((absmax[b] - offset) * inv)];
    }
    free(lut);
}

void nf4_double_dequant(float *absmax, const uint8_t *q, const float *nested_absmax, const float *map, int64_t nb,
                        float offset) {
    for (int64_t b = 0; b < nb; b++) {
        float v = map[q[b]] * nested_absmax[b / NF4_NESTED_BLOCKSIZE];
        absmax[b] = v + offset;
    }
}
