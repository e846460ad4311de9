/* nf4.c: NF4/FP4 blockwise quantization, dequantization and double quantization on the CPU.
 *
 * The numerics follow bitsandbytes' cpu path to the bit (formats.md sections 1-2, checked by
 * tests/unit/test_nf4.c against tests/fixtures/bnb): absmax in f32, one reciprocal per block,
 * y = x * inv, code = number of decision thresholds strictly below y (the float32 midpoints of
 * adjacent codes, so a tie goes to the lower code). This file must not be compiled with FMA
 * contraction of the dequantization (x86-64 baseline has no FMA; the dynamic map's fmaf calls
 * are explicit because torch's linspace uses a fused multiply-add). */
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
/* t[k] separates code k from k+1 (f32 midpoints); t[15] = +inf pads the search to 16 */
static const uint32_t nf4_thr_bits[16] = {
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau, 0x7f800000u,
};

static float nf4_map[16], fp4_map[16], nf4_thr[16];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_init(void) {
    for (int i = 0; i < 16; i++) {
        nf4_map[i] = f32_from_bits(nf4_bits[i]);
        nf4_thr[i] = f32_from_bits(nf4_thr_bits[i]);
    }
    /* FP4 magnitudes by the low 3 bits, in twelfths; bit 3 is the sign */
    static const float mag12[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    for (int i = 0; i < 8; i++) {
        fp4_map[i] = mag12[i] / 12.0f;
        fp4_map[8 + i] = -(mag12[i] / 12.0f);
    }
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

static inline uint8_t encode_nf4(float y) {
    /* branch-light lower bound over the 15 sorted thresholds: count of t[k] < y */
    unsigned c = (y > nf4_thr[7]) ? 8u : 0u;
    c += (y > nf4_thr[c + 3]) ? 4u : 0u;
    c += (y > nf4_thr[c + 1]) ? 2u : 0u;
    c += (y > nf4_thr[c]) ? 1u : 0u;
    return (uint8_t)c;
}

static inline uint8_t encode_fp4(float y) {
    /* sign when strictly negative; magnitude by the midpoint tree of dQuantizeFP4 */
    uint8_t sign = (y < 0.0f) ? 8 : 0;
    float a = fabsf(y);
    uint8_t m;
    if (a > 0.29166667f) {
        if (a > 0.583333f) m = (a > 0.8333333f) ? 3 : 2;
        else m = (a > 0.4166667f) ? 5 : 4;
    } else {
        if (a > 0.0859375f) m = (a > 0.20833333f) ? 7 : 6;
        else m = (a > 0.00260417f) ? 1 : 0;
    }
    return (uint8_t)(sign | m);
}

uint8_t nf4_encode(float y, int quant_type) {
    pthread_once(&tables_once, tables_init);
    return quant_type == OPS_FP4 ? encode_fp4(y) : encode_nf4(y);
}

static inline float src_at(const void *src, int src_dtype, int64_t i) {
    switch (src_dtype) {
    case NF4_SRC_F16: return f16_to_f32(((const uint16_t *)src)[i]);
    case NF4_SRC_BF16: return bf16_to_f32(((const uint16_t *)src)[i]);
    default: return ((const float *)src)[i];
    }
}

/* ---- quantization: the reference ---- */

int64_t nf4_quantize_blocks_ref(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                                int blocksize, int quant_type, int64_t b0, int64_t b1) {
    pthread_once(&tables_once, tables_init);
    const uint8_t zero_code = quant_type == OPS_FP4 ? 0 : 7;
    int64_t bad = -1;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        float m = 0.0f;
        for (int64_t i = lo; i < hi; i++) {
            float a = fabsf(src_at(src, src_dtype, i));
            if (!isfinite(a) && bad < 0) bad = i;
            if (a > m) m = a;
        }
        absmax[b] = m;
        float inv = 1.0f / m;
        for (int64_t i = lo; i < hi; i++) {
            uint8_t c = m == 0.0f ? zero_code : nf4_encode(src_at(src, src_dtype, i) * inv, quant_type);
            if (i & 1) codes[i >> 1] = (uint8_t)((codes[i >> 1] & 0xf0) | c);
            else codes[i >> 1] = (uint8_t)(c << 4);
        }
        if (hi == n && (n & 1)) codes[n >> 1] = (uint8_t)((codes[n >> 1] & 0xf0) | (quant_type == OPS_FP4 ? 0 : 7));
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
        const uint16_t *s = (const uint16_t *)src + lo;
        unsigned worst = 0;
        for (int64_t i = 0; i < len; i++) {
            unsigned a = s[i] & 0x7fffu;
            worst = a > worst ? a : worst;
            buf[i] = bf16_to_f32(s[i]);
        }
        nonfinite = worst >= 0x7f80u;
    } else if (src_dtype == NF4_SRC_F16) {
        const uint16_t *s = (const uint16_t *)src + lo;
        unsigned worst = 0;
        for (int64_t i = 0; i < len; i++) {
            unsigned a = s[i] & 0x7fffu;
            worst = a > worst ? a : worst;
            buf[i] = f16_to_f32(s[i]);
        }
        nonfinite = worst >= 0x7c00u;
    } else {
        const uint32_t *s = (const uint32_t *)src + lo;
        uint32_t worst = 0;
        for (int64_t i = 0; i < len; i++) {
            uint32_t a = s[i] & 0x7fffffffu;
            worst = a > worst ? a : worst;
        }
        memcpy(buf, s, (size_t)len * 4);
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

int64_t nf4_quantize_blocks(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                            int blocksize, int quant_type, int64_t b0, int64_t b1) {
    pthread_once(&tables_once, tables_init);
    float buf[4096];
    const uint8_t zero_code = quant_type == OPS_FP4 ? 0 : 7;
    int64_t bad = -1;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b * blocksize, len = lo + blocksize < n ? blocksize : n - lo;
        float m = 0.0f;
        int64_t off = block_load(buf, &m, src, src_dtype, lo, len);
        if (off >= 0) {
            if (bad < 0) bad = lo + off;
            m = NAN;
        }
        absmax[b] = m;
        uint8_t *out = codes + (lo >> 1);
        int64_t pairs = len >> 1;
        if (m == 0.0f || m != m) {
            memset(out, zero_code * 0x11, (size_t)((len + 1) >> 1));
            continue;
        }
        float inv = 1.0f / m;
        if (quant_type == OPS_FP4) {
            for (int64_t p = 0; p < pairs; p++)
                out[p] = (uint8_t)(encode_fp4(buf[2 * p] * inv) << 4 | encode_fp4(buf[2 * p + 1] * inv));
        } else {
            for (int64_t p = 0; p < pairs; p++)
                out[p] = (uint8_t)(encode_nf4(buf[2 * p] * inv) << 4 | encode_nf4(buf[2 * p + 1] * inv));
        }
        if (len & 1) /* only the tensor's last block can be odd: pad with the code of 0.0 */
            out[pairs] = (uint8_t)((quant_type == OPS_FP4 ? encode_fp4(buf[len - 1] * inv) : encode_nf4(buf[len - 1] * inv)) << 4 | zero_code);
    }
    return bad;
}

typedef struct quant_job {
    uint8_t *codes;
    float *absmax;
    const void *src;
    int src_dtype, blocksize, quant_type;
    int64_t n, b0, b1, bad;
} quant_job;

static void *quant_job_run(void *arg) {
    quant_job *j = arg;
    j->bad = nf4_quantize_blocks(j->codes, j->absmax, j->src, j->src_dtype, j->n, j->blocksize, j->quant_type,
                                 j->b0, j->b1);
    return NULL;
}

#define NF4_MAX_THREADS 16
/* below this many elements a thread costs more than it saves */
#define NF4_THREAD_MIN_ELEMS (1 << 16)

int64_t nf4_quantize(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                     int quant_type, int nthreads) {
    int64_t nb = nf4_nblocks(n, blocksize);
    if (nthreads > NF4_MAX_THREADS) nthreads = NF4_MAX_THREADS;
    if (nthreads < 2 || n < NF4_THREAD_MIN_ELEMS || nb < nthreads)
        return nf4_quantize_blocks(codes, absmax, src, src_dtype, n, blocksize, quant_type, 0, nb);
    quant_job jobs[NF4_MAX_THREADS];
    pthread_t th[NF4_MAX_THREADS];
    int started[NF4_MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++) {
        jobs[t] = (quant_job){codes, absmax, src, src_dtype, blocksize, quant_type, n,
                              nb * t / nthreads, nb * (t + 1) / nthreads, -1};
        if (t > 0) started[t] = pthread_create(&th[t], NULL, quant_job_run, &jobs[t]) == 0;
    }
    quant_job_run(&jobs[0]);
    int64_t bad = jobs[0].bad;
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else quant_job_run(&jobs[t]); /* no thread available: do it here */
        if (bad < 0) bad = jobs[t].bad;
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
    dequant_range(dst, W->codes, W->absmax, W->quant_map, W->blocksize, r0 * W->cols, nr * W->cols);
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

void nf4_dynamic_map_cpu(float map[NF4_DYNAMIC_MAP_SIZE]) {
    nf4_dynamic_map(map);
    map[0] = -1.0f;
}

float nf4_absmax_mean(const float *absmax, int64_t nb) {
    double s = 0.0;
    for (int64_t i = 0; i < nb; i++) s += absmax[i];
    return nb > 0 ? (float)(s / (double)nb) : 0.0f;
}

/* index of the map entry nearest to y: the entry at or below y, moved up when the next one is
 * strictly closer (a tie keeps the lower index). NaN and y below map[0] give 0. */
static inline uint8_t dynamic_nearest(float y, const float *map) {
    int lo = 0;
    for (int step = 128; step > 0; step >>= 1)
        if (lo + step < NF4_DYNAMIC_MAP_SIZE && map[lo + step] <= y) lo += step;
    if (lo < NF4_DYNAMIC_MAP_SIZE - 1 && fabsf(y - map[lo + 1]) < fabsf(y - map[lo])) lo++;
    return (uint8_t)lo;
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
        for (int64_t b = lo; b < hi; b++) {
            /* every whole, linear scan: the plain statement of "nearest, lower on ties" */
            float y = m == 0.0f ? 0.0f : (absmax[b] - offset) / m;
            int best = 0;
            float bd = fabsf(y - map[0]);
            for (int k = 1; k < NF4_DYNAMIC_MAP_SIZE; k++) {
                float d = fabsf(y - map[k]);
                if (d < bd) { bd = d; best = k; }
            }
            q[b] = (uint8_t)best;
        }
    }
}

void nf4_double_quant(uint8_t *q, float *nested_absmax, const float *absmax, int64_t nb, float offset,
                      const float *map) {
    for (int64_t j = 0; j * NF4_NESTED_BLOCKSIZE < nb; j++) {
        int64_t lo = j * NF4_NESTED_BLOCKSIZE, hi = lo + NF4_NESTED_BLOCKSIZE < nb ? lo + NF4_NESTED_BLOCKSIZE : nb;
        float m = 0.0f;
        for (int64_t b = lo; b < hi; b++) {
            float a = fabsf(absmax[b] - offset);
            m = a > m ? a : m;
        }
        nested_absmax[j] = m;
        for (int64_t b = lo; b < hi; b++)
            q[b] = dynamic_nearest(m == 0.0f ? 0.0f : (absmax[b] - offset) / m, map);
    }
}

void nf4_double_dequant(float *absmax, const uint8_t *q, const float *nested_absmax, const float *map, int64_t nb,
                        float offset) {
    for (int64_t b = 0; b < nb; b++) {
        float v = map[q[b]] * nested_absmax[b / NF4_NESTED_BLOCKSIZE];
        absmax[b] = v + offset;
    }
}
