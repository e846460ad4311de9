/* lora_emu.cpp: the fused LoRA kernels (kernels/cuda/lora_kernels.cuh) run on the CPU through
 * cuda_emu.h, against double-precision sums of the same bf16-rounded operands: xa = drop(x) A^T,
 * dA += g^T drop(x), dx (+)= (g A) * keep / (1-p). Covers the split reductions (the in dimension of
 * xa, the token dimension of dA, over several multiprocessor counts), columns off the 8- and
 * 64-wide tiles, ranks padded to 16, dx absent, dropout off; the same bits on a second call and the
 * split counters back at zero. The mask is ops_dropout_keep's, the one every backend draws.
 * test_ops_gpu checks the same kernels on a GPU against the CPU op table. */
#include "tests/emu/cuda_emu.h"
#include "tests/emu/emu_check.h"

#include "kernels/ops.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#define LORA_FUSED_MAX_R 64
#include "kernels/cuda/lora_kernels.cuh"

static std::vector<float> g_part;
static std::vector<int> g_cnt(1 << 16, 0);

/* the launchers of lora.cu, with the grid aiming at LORA_BLOCKS_PER_SM blocks a multiprocessor of `sms` */
static void down(float *xa, bf16 *xa16, const bf16 *x, const float *A, int T, int in, int r, float p, uint64_t seed,
                 int sms) {
    lora_down_shape s = lora_down_grid(T, in, r, LORA_BLOCKS_PER_SM * sms);
    int R16 = CEIL_DIV(r, 16);
    g_part.assign(s.part + 1, NAN); /* unwritten partials poison the sums */
    float inv = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    int vec = in % 8 == 0, vec4 = in % 4 == 0;
    float *part = g_part.data();
    int *cnt = g_cnt.data();
    dim3 grid((unsigned)s.rowtiles, (unsigned)s.ks);
#define DOWN(R) emu_launch(grid, LORA_THREADS, [&] { lora_down_kernel<R>(xa, xa16, part, cnt, x, A, T, in, r, s.kchunk, p, inv, seed, vec, vec4); })
    switch (R16) {
    case 1: DOWN(1); break;
    case 2: DOWN(2); break;
    case 3: DOWN(3); break;
    default: DOWN(4); break;
    }
#undef DOWN
}

static void up(float *dA, bf16 *dx, int acc, const bf16 *g, const bf16 *x, const float *A, int T, int in, int r,
               float p, uint64_t seed, int sms) {
    lora_up_shape s = lora_up_grid(T, in, r, LORA_BLOCKS_PER_SM * sms);
    int R16 = CEIL_DIV(r, 16);
    g_part.assign(s.part + 1, NAN);
    float inv = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    int vec = in % 8 == 0, vec4 = in % 4 == 0, gvec = r % 8 == 0;
    float *part = g_part.data();
    int *cnt = g_cnt.data();
    dim3 grid((unsigned)s.strips, (unsigned)s.ts);
#define UP(R) emu_launch(grid, LORA_THREADS, [&] { lora_up_bwd_kernel<R>(dA, dx, acc, part, cnt, g, x, A, T, in, r, s.tchunk, p, inv, seed, vec, vec4, gvec); })
    switch (R16) {
    case 1: UP(1); break;
    case 2: UP(2); break;
    case 3: UP(3); break;
    default: UP(4); break;
    }
#undef UP
}

static float bfr(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }

/* |got - ref| <= rel * (|ref| + rms(ref)) for every element */
static void check(const char *what, const float *got, const double *ref, size_t n, double rel) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += ref[i] * ref[i];
    double rms = std::sqrt(ss / (double)n) + 1e-30, worst_ratio = 0;
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)got[i] - ref[i]), lim = rel * (std::fabs(ref[i]) + rms);
        if (!(d <= lim)) {
            if (!bad || d / lim > worst_ratio) worst = i, worst_ratio = d / lim;
            bad++;
        }
    }
    emu_expect(!bad, "%s: %zu of %zu elements off (worst [%zu]: got %.6g, want %.6g)", what, bad, n, worst,
               (double)got[worst], ref[worst]);
}

static void expect(const char *what, bool ok) { emu_expect(ok, "%s", what); }

static void run(int T, int in, int r, float p, int acc, int want_dx, int sms) {
    printf("T=%d in=%d r=%d p=%.2f accumulate=%d dx=%d sms=%d\n", T, in, r, p, acc, want_dx, sms);
    uint64_t seed = 0x51ed270b0a1bull ^ (uint64_t)T * 977u ^ (uint64_t)in;
    size_t nx = (size_t)T * in, na = (size_t)r * in, ng = (size_t)T * r;
    std::vector<bf16> x(nx), g(ng), dx0(nx);
    std::vector<float> A(na), dA0(na);
    for (auto &v : x) v = __float2bfloat16_rn(emu_rnd());
    for (auto &v : g) v = __float2bfloat16_rn(0.1f * emu_rnd());
    for (auto &v : dx0) v = __float2bfloat16_rn(emu_rnd());
    for (auto &v : A) v = 0.05f * emu_rnd();
    for (auto &v : dA0) v = 0.01f * emu_rnd();
    /* the reference, in double over the operands as the kernels round them */
    float inv = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    std::vector<float> xd(nx), A16(na);
    std::vector<char> keep(nx);
    for (size_t i = 0; i < nx; i++) {
        keep[i] = p > 0 ? (char)ops_dropout_keep(seed, i, p) : 1;
        xd[i] = keep[i] ? bfr(__bfloat162float(x[i]) * inv) : 0.0f;
    }
    for (size_t i = 0; i < na; i++) A16[i] = bfr(A[i]);
    std::vector<double> xa_ref(ng), dA_ref(na), dx_ref(nx);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < r; j++) {
            double s = 0;
            for (int c = 0; c < in; c++) s += (double)xd[(size_t)t * in + c] * A16[(size_t)j * in + c];
            xa_ref[(size_t)t * r + j] = s;
        }
    for (int j = 0; j < r; j++)
        for (int c = 0; c < in; c++) {
            double s = dA0[(size_t)j * in + c];
            for (int t = 0; t < T; t++) s += (double)__bfloat162float(g[(size_t)t * r + j]) * xd[(size_t)t * in + c];
            dA_ref[(size_t)j * in + c] = s;
        }
    for (int t = 0; t < T; t++)
        for (int c = 0; c < in; c++) {
            size_t i = (size_t)t * in + c;
            double s = 0;
            for (int j = 0; j < r; j++) s += (double)__bfloat162float(g[(size_t)t * r + j]) * A16[(size_t)j * in + c];
            dx_ref[i] = (acc ? __bfloat162float(dx0[i]) : 0.0) + (keep[i] ? s * inv : 0.0);
        }
    std::vector<float> xa_first, dA_first;
    std::vector<uint16_t> dx_first;
    for (int rep = 0; rep < 2; rep++) {
        std::vector<float> xa(ng, NAN), dA = dA0;
        std::vector<bf16> xa16(ng, bf16{0x7fc0});
        std::vector<bf16> dx = acc ? dx0 : std::vector<bf16>(nx, bf16{0x7fc0}); /* NaN: an unwritten element fails */
        down(xa.data(), xa16.data(), x.data(), A.data(), T, in, r, p, seed, sms);
        up(dA.data(), want_dx ? dx.data() : nullptr, acc, g.data(), x.data(), A.data(), T, in, r, p, seed, sms);
        bool zero = true;
        for (int c : g_cnt) zero = zero && c == 0;
        expect("the split counters are back at zero", zero);
        std::vector<float> dxf(nx);
        std::vector<uint16_t> dxb(nx);
        for (size_t i = 0; i < nx; i++) dxf[i] = __bfloat162float(dx[i]), dxb[i] = dx[i].u;
        if (rep == 0) {
            check("xa", xa.data(), xa_ref.data(), ng, 1e-4);
            bool same = true;
            for (size_t i = 0; i < ng; i++) same = same && xa16[i].u == __float2bfloat16_rn(xa[i]).u;
            expect("xa16 is xa rounded to bf16", same);
            check("dA", dA.data(), dA_ref.data(), na, 1e-4);
            if (want_dx) check("dx", dxf.data(), dx_ref.data(), nx, 8e-3);
            else expect("dx untouched without dx", !memcmp(dx.data(), dx0.data(), acc ? nx * 2 : 0));
            xa_first = xa, dA_first = dA, dx_first = dxb;
        } else {
            expect("xa: the same bits twice", !memcmp(xa.data(), xa_first.data(), ng * 4));
            expect("dA: the same bits twice", !memcmp(dA.data(), dA_first.data(), na * 4));
            expect("dx: the same bits twice", dxb == dx_first);
        }
    }
}

int main(int argc, char **argv) {
    /* T, in, r, dropout x100, accumulate, dx, multiprocessors */
    const int cfgs[][7] = {{300, 1024, 16, 5, 1, 1, 132}, {700, 200, 24, 10, 0, 1, 132}, {129, 512, 64, 5, 1, 1, 132},
                           {33, 1000, 33, 25, 1, 1, 132}, {2, 4096, 16, 50, 1, 1, 132}, {1, 64, 8, 0, 0, 1, 132},
                           {37, 256, 16, 10, 1, 0, 132},  {300, 1024, 16, 5, 0, 1, 8},   {77, 136, 4, 0, 1, 1, 3}};
    for (const auto &c : cfgs) run(c[0], c[1], c[2], (float)c[3] / 100.0f, c[4], c[5], c[6]);
    if (argc > 1 && !strcmp(argv[1], "--big")) /* the 7B shapes' tilings (minutes) */
        run(512, 4096, 16, 0.05f, 1, 1, 132), run(256, 11008, 64, 0.05f, 0, 1, 132);
    return emu_summary();
}
