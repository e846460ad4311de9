/* ops_cpu.c: the plain C reference backend: the op table, memory, the thread helper and the
 * GEMM and vector helpers the ops share. The ops live in the files their CUDA kernels live in
 * (elementwise.c, attention.c, qlinear.c, xent.c, optim.c, nf4.c). Everything is fp32 and written for clarity first: this is the truth the CUDA
 * backend and the golden PyTorch dumps are checked against. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

/* ---- threads ---- */

typedef struct cpu_job {
    cpu_range_fn body;
    void *ctx;
    int64_t lo, hi;
} cpu_job;

static void *cpu_job_run(void *arg) {
    cpu_job *j = arg;
    j->body(j->ctx, j->lo, j->hi);
    return NULL;
}

int cpu_threads(void) {
    static int n = 0; /* a benign race: every thread computes the same answer */
    if (!n) {
        const char *e = getenv("QLORA_CPU_THREADS");
        int v = e ? atoi(e) : CPU_THREADS;
        n = v < 1 ? 1 : v > CPU_MAX_THREADS ? CPU_MAX_THREADS : v;
    }
    return n;
}

void cpu_parallel_for(int64_t n, double work, cpu_range_fn body, void *ctx) {
    if (n <= 0) return;
    int nt = cpu_threads();
    if (nt > n) nt = (int)n;
    if (nt < 2 || work < 2e5) {
        body(ctx, 0, n);
        return;
    }
    cpu_job jobs[CPU_MAX_THREADS];
    pthread_t th[CPU_MAX_THREADS];
    int started[CPU_MAX_THREADS] = {0};
    for (int i = 0; i < nt; i++) jobs[i] = (cpu_job){body, ctx, n * i / nt, n * (i + 1) / nt};
    /* thread 0's range runs here; if a thread cannot start, its range runs here too */
    for (int i = 1; i < nt; i++) started[i] = pthread_create(&th[i], NULL, cpu_job_run, &jobs[i]) == 0;
    body(ctx, jobs[0].lo, jobs[0].hi);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else body(ctx, jobs[i].lo, jobs[i].hi);
    }
}

/* ---- small vector helpers and the GEMM block ---- */

#define GEMM_MR 4
#define GEMM_NR 16
#define GEMM_KB 256

/* The 4x16 block of C in eight 8-float vector accumulators (GNU vector extensions: one AVX
 * register each), updated with a broadcast of A times a row strip of B. The project compiles for
 * the baseline ISA, so on x86-64 this is built for AVX2+FMA and used only when the CPU has them
 * (checked once); elsewhere, and on older CPUs, the plain loops of gemm_edge do the work. */
typedef float v8f __attribute__((vector_size(32)));

/* unaligned loads and stores as macros: a function taking or returning a v8f would change the ABI */
#define V8F_LOAD(v, p) memcpy(&(v), (p), sizeof(v8f))
#define V8F_STORE(p, v) memcpy((p), &(v), sizeof(v8f))

#if defined(__x86_64__) && defined(__GNUC__)
#define GEMM_HAVE_BLOCK 1
__attribute__((target("avx2,fma")))
static void gemm_block(float *restrict C, int64_t ldc, const float *restrict A, int64_t lda,
                       const float *restrict B, int64_t ldb, int64_t K) {
    v8f c00, c01, c10, c11, c20, c21, c30, c31, b0, b1;
    V8F_LOAD(c00, C), V8F_LOAD(c01, C + 8);
    V8F_LOAD(c10, C + ldc), V8F_LOAD(c11, C + ldc + 8);
    V8F_LOAD(c20, C + 2 * ldc), V8F_LOAD(c21, C + 2 * ldc + 8);
    V8F_LOAD(c30, C + 3 * ldc), V8F_LOAD(c31, C + 3 * ldc + 8);
    for (int64_t k = 0; k < K; k++) {
        V8F_LOAD(b0, B + k * ldb), V8F_LOAD(b1, B + k * ldb + 8);
        float a0 = A[k], a1 = A[lda + k], a2 = A[2 * lda + k], a3 = A[3 * lda + k];
        c00 += a0 * b0, c01 += a0 * b1;
        c10 += a1 * b0, c11 += a1 * b1;
        c20 += a2 * b0, c21 += a2 * b1;
        c30 += a3 * b0, c31 += a3 * b1;
    }
    V8F_STORE(C, c00), V8F_STORE(C + 8, c01);
    V8F_STORE(C + ldc, c10), V8F_STORE(C + ldc + 8, c11);
    V8F_STORE(C + 2 * ldc, c20), V8F_STORE(C + 2 * ldc + 8, c21);
    V8F_STORE(C + 3 * ldc, c30), V8F_STORE(C + 3 * ldc + 8, c31);
}

static int gemm_block_usable(void) {
    static int usable = -1; /* a benign race: every thread computes the same answer */
    if (usable < 0) {
        __builtin_cpu_init();
        usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return usable;
}
#else
#define GEMM_HAVE_BLOCK 0
#endif

#if GEMM_HAVE_BLOCK
__attribute__((target("avx2,fma")))
static float dot_avx2(const float *restrict a, const float *restrict b, int64_t n) {
    v8f s0 = {0}, s1 = {0}, va, vb;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        V8F_LOAD(va, a + i), V8F_LOAD(vb, b + i), s0 += va * vb;
        V8F_LOAD(va, a + i + 8), V8F_LOAD(vb, b + i + 8), s1 += va * vb;
    }
    s0 += s1;
    float r = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

__attribute__((target("avx2,fma")))
static void axpy_avx2(float *restrict y, float a, const float *restrict x, int64_t n) {
    v8f vx, vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        V8F_LOAD(vx, x + i), V8F_LOAD(vy, y + i);
        vy += a * vx;
        V8F_STORE(y + i, vy);
    }
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

float cpu_dot(const float *a, const float *b, int64_t n) {
#if GEMM_HAVE_BLOCK
    if (gemm_block_usable()) return dot_avx2(a, b, n);
#endif
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

void cpu_axpy(float *y, float a, const float *x, int64_t n) {
#if GEMM_HAVE_BLOCK
    if (gemm_block_usable()) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* any shape: rows i, columns [j0, j1) */
static void gemm_edge(float *restrict C, int64_t ldc, const float *restrict A, int64_t lda, const float *restrict B,
                      int64_t ldb, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t K) {
    for (int64_t i = i0; i < i1; i++)
        for (int64_t k = 0; k < K; k++) {
            float a = A[i * lda + k];
            if (a == 0.0f) continue;
            const float *b = B + k * ldb;
            float *c = C + i * ldc;
            for (int64_t j = j0; j < j1; j++) c[j] += a * b[j];
        }
}

void cpu_gemm_acc(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t M,
                  int64_t N, int64_t K) {
#if GEMM_HAVE_BLOCK
    int64_t Mb = gemm_block_usable() ? M - M % GEMM_MR : 0, Nb = N - N % GEMM_NR;
#else
    int64_t Mb = 0, Nb = N - N % GEMM_NR;
#endif
    for (int64_t k0 = 0; k0 < K; k0 += GEMM_KB) {
        int64_t kb = K - k0 < GEMM_KB ? K - k0 : GEMM_KB;
        const float *Ak = A + k0, *Bk = B + k0 * ldb;
#if GEMM_HAVE_BLOCK
        for (int64_t j0 = 0; j0 < Nb; j0 += GEMM_NR)
            for (int64_t i0 = 0; i0 < Mb; i0 += GEMM_MR)
                gemm_block(C + i0 * ldc + j0, ldc, Ak + i0 * lda, lda, Bk + j0, ldb, kb);
#endif
        if (Nb < N) gemm_edge(C, ldc, Ak, lda, Bk, ldb, 0, Mb, Nb, N, kb);
        if (Mb < M) gemm_edge(C, ldc, Ak, lda, Bk, ldb, Mb, M, 0, N, kb);
    }
}

typedef struct gemm_job {
    float *C;
    const float *A, *B;
    int64_t ldc, lda, ldb, M, N, K;
    int by_cols;
} gemm_job;

/* rows [lo, hi) of C, or column blocks [lo, hi) of GEMM_NR columns */
static void gemm_range(void *ctx, int64_t lo, int64_t hi) {
    const gemm_job *j = ctx;
    if (j->by_cols) {
        int64_t c0 = lo * GEMM_NR, c1 = hi * GEMM_NR < j->N ? hi * GEMM_NR : j->N;
        cpu_gemm_acc(j->C + c0, j->ldc, j->A, j->lda, j->B + c0, j->ldb, j->M, c1 - c0, j->K);
    } else {
        cpu_gemm_acc(j->C + lo * j->ldc, j->ldc, j->A + lo * j->lda, j->lda, j->B, j->ldb, hi - lo, j->N, j->K);
    }
}

void cpu_gemm_acc_mt(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t M,
                     int64_t N, int64_t K) {
    gemm_job j = {C, A, B, ldc, lda, ldb, M, N, K, M < 4 * cpu_threads() * GEMM_MR};
    int64_t units = j.by_cols ? (N + GEMM_NR - 1) / GEMM_NR : M;
    cpu_parallel_for(units, (double)M * N * K, gemm_range, &j);
}

void cpu_transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
    for (int64_t r0 = 0; r0 < rows; r0 += 32) /* 32x32 tiles: both sides stay in cache */
        for (int64_t c0 = 0; c0 < cols; c0 += 32)
            for (int64_t r = r0; r < rows && r < r0 + 32; r++)
                for (int64_t c = c0; c < cols && c < c0 + 32; c++) dst[c * rows + r] = src[r * cols + c];
}

void cpu_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

/* ---- memory: plain host memory ---- */

static void *cpu_alloc(size_t bytes) { return calloc(1, bytes ? bytes : 1); }
static void cpu_free(void *p) { free(p); }
static void cpu_memcpy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
}
static void cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(void) {}
static void cpu_side_copy(int slot, void *dst, const void *src, size_t bytes) {
    (void)slot;
    memcpy(dst, src, bytes);
}
static void cpu_side_wait(int slot) { (void)slot; }
/* the tiles' own function over all the rows: the values qlinear reads, bit for bit */
static void cpu_nf4_dequant(void *dst, const ops_nf4 *W) { ops_nf4_dequant_rows(W, 0, W->rows, dst); }

static const ops_table cpu_table = {
    .name = "cpu",
    .act_dtype = OPS_F32,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .alloc_host = cpu_alloc, /* backend memory is host memory here: offloading changes nothing */
    .free_host = cpu_free,
    .embedding_fwd = cpu_embedding_fwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .add_inplace = cpu_add_inplace,
    .rope = cpu_rope,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .attention_cached = cpu_attention_cached,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .qlinear_fwd = cpu_qlinear_fwd,
    .qlinear_bwd = cpu_qlinear_bwd,
    .xent_fwd_bwd = cpu_xent_fwd_bwd,
    .logits = cpu_logits,
    .adamw = cpu_adamw,
    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .attention_ex_fwd = cpu_attention_ex_fwd,
    .attention_ex_bwd = cpu_attention_ex_bwd,
    .attention_ex_cached = cpu_attention_ex_cached,
    .geglu_fwd = cpu_geglu_fwd,
    .geglu_bwd = cpu_geglu_bwd,
    .act_scale = cpu_act_scale,
    .rope_ex = cpu_rope_ex,
    .own_memory = 0, /* no device: info and scratch_cap_set stay NULL */
    .side_copy = cpu_side_copy,
    .side_wait = cpu_side_wait,
    .nf4_dequant = cpu_nf4_dequant,
};

const ops_table *ops_cpu(void) { return &cpu_table; }

/* OPS_TABLE_OPS names every op, in order, and nothing else lies between its first and last */
#define OPS_COUNT_ONE(op) +1
_Static_assert(offsetof(ops_table, rope_ex) - offsetof(ops_table, embedding_fwd) ==
                   (0 OPS_TABLE_OPS(OPS_COUNT_ONE) - 1) * sizeof(void (*)(void)),
               "OPS_TABLE_OPS in kernels/ops.h must list every op of ops_table");
#undef OPS_COUNT_ONE

#ifndef QLORA_HAVE_CUDA
/* A build without the CUDA kernels has no device table; ops.h promises NULL rather than a
 * missing symbol, so callers need no #ifdef. */
const ops_table *ops_cuda(void) { return NULL; }
#endif
