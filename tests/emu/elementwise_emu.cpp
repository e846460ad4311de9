/* elementwise_emu.cpp: the RMSNorm and RoPE kernels (kernels/cuda/elementwise_kernels.cuh) run on
 * the CPU through cuda_emu.h, launched as elementwise.cu's launchers launch them. The block-a-row
 * RMSNorm (forward and backward, Gemma's 1 + w too) against double-precision sums of the same bf16
 * operands, at widths that leave a thread fewer vectors than NORM_VPT or a warp short, beside the
 * warp-a-row kernel on the same rows; the block-a-token RoPE bit for bit against the thread-a-pair
 * kernel (the same arithmetic) and within bf16 rounding of a double-precision rotation, with the
 * dims past a partial rot untouched and heads that take the block more than one pass; the
 * launchers' choice of kernel by shape; fp32 -> bf16 over several arrays in one launch.
 * test_ops_gpu checks the same kernels on a GPU against the CPU op table. */
#include "tests/emu/cuda_emu.h"
#include "tests/emu/emu_check.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/elementwise_kernels.cuh"

/* uniform in [lo, hi) */
static float urand(float lo, float hi) { return lo + (hi - lo) * 0.5f * (emu_rnd() + 1.0f); }
static std::vector<bf16> rand_bf16(size_t n, float lo, float hi) {
    std::vector<bf16> v(n);
    for (auto &x : v) x = __float2bfloat16_rn(urand(lo, hi));
    return v;
}
static float f(bf16 h) { return __bfloat162float(h); }
/* |got - want| within k units of bf16's last place at want (and an absolute floor for values near 0) */
static bool near_bf16(float got, double want, double k, double floor_abs) {
    double ulp = std::ldexp(1.0, std::ilogb(std::fabs(want) > 1e-30 ? want : 1e-30) - 7);
    return std::fabs(got - want) <= k * ulp + floor_abs;
}

/* bf16 rows x[T, C] as a 16-byte aligned buffer (the vector path's loads) */
struct rows {
    std::vector<bf16x8> buf;
    bf16 *p;
    rows(const std::vector<bf16> &v) : buf((v.size() + 7) / 8 + 1) {
        p = reinterpret_cast<bf16 *>(buf.data());
        memcpy(p, v.data(), v.size() * sizeof(bf16));
    }
};

static void test_rmsnorm(int T, int C, float wadd) {
    const float eps = 1e-5f;
    std::vector<bf16> xv = rand_bf16((size_t)T * C, -1.5f, 1.5f), wv = rand_bf16(C, wadd ? -0.2f : 0.8f, wadd ? 0.2f : 1.2f);
    std::vector<bf16> dov = rand_bf16((size_t)T * C, -1.0f, 1.0f), dxv = rand_bf16((size_t)T * C, -1.0f, 1.0f);
    rows x(xv), w(wv), dout(dov), dx_row(dxv), dx_warp(dxv), out_row(std::vector<bf16>((size_t)T * C)),
        out_warp(std::vector<bf16>((size_t)T * C));
    std::vector<float> rstd_row(T), rstd_warp(T);
    emu_expect(norm_by_row(C, 1), "C=%d: the launcher would not take the block-a-row kernel", C);
    int threads = norm_row_threads(C);
    emu_expect(threads % 32 == 0 && threads <= NORM_ROW_MAX_THREADS && threads * NORM_VPT * 8 >= C &&
              (threads - 32) * NORM_VPT * 8 < C,
          "C=%d: %d threads", C, threads);
    emu_launch(dim3(T), threads, [&] { rmsnorm_fwd_row_kernel(out_row.p, rstd_row.data(), x.p, w.p, wadd, C, eps); });
    emu_launch(dim3((T + 7) / 8), 256,
               [&] { rmsnorm_fwd_kernel(out_warp.p, rstd_warp.data(), x.p, w.p, wadd, T, C, eps, 1); });
    int bad = 0, bad_bwd = 0, differ = 0;
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)f(x.p[t * C + c]) * f(x.p[t * C + c]);
        double r = 1.0 / std::sqrt(ss / C + eps);
        emu_expect(std::fabs(rstd_row[t] - r) <= 1e-5 * r, "C=%d row %d: rstd %.9g, want %.9g", C, t, rstd_row[t], r);
        for (int c = 0; c < C; c++) {
            double g = (double)f(w.p[c]) + wadd, xc = f(x.p[t * C + c]);
            bad += !near_bf16(f(out_row.p[t * C + c]), xc * r * g, 1.01, 1e-6);
            differ += f(out_row.p[t * C + c]) != f(out_warp.p[t * C + c]);
        }
    }
    emu_expect(bad == 0, "C=%d wadd=%g: %d outputs off the double-precision norm by more than a bf16 ulp", C, wadd, bad);
    /* another order of the squares may move an output by one ulp, rarely */
    emu_expect(differ <= T * C / 100, "C=%d: %d of %d outputs differ from the warp kernel's", C, differ, T * C);

    /* the backward from the same rstd on both kernels */
    emu_launch(dim3(T), threads, [&] { rmsnorm_bwd_row_kernel(dx_row.p, dout.p, x.p, w.p, wadd, rstd_row.data(), C); });
    emu_launch(dim3((T + 7) / 8), 256,
               [&] { rmsnorm_bwd_kernel(dx_warp.p, dout.p, x.p, w.p, wadd, rstd_row.data(), T, C, 1); });
    differ = 0;
    for (int t = 0; t < T; t++) {
        double r = rstd_row[t], s = 0;
        for (int c = 0; c < C; c++) s += (double)f(x.p[t * C + c]) * f(dout.p[t * C + c]) * ((double)f(w.p[c]) + wadd);
        double k = r * r * r * s / C;
        for (int c = 0; c < C; c++) {
            double g = (double)f(w.p[c]) + wadd;
            double want = (double)f(dxv[(size_t)t * C + c]) + r * g * f(dout.p[t * C + c]) - f(x.p[t * C + c]) * k;
            bad_bwd += !near_bf16(f(dx_row.p[t * C + c]), want, 1.01, 1e-5);
            differ += f(dx_row.p[t * C + c]) != f(dx_warp.p[t * C + c]);
        }
    }
    emu_expect(bad_bwd == 0, "C=%d wadd=%g: %d of dx off the double-precision backward by more than a bf16 ulp", C, wadd,
          bad_bwd);
    emu_expect(differ <= T * C / 100, "C=%d: %d of %d dx differ from the warp kernel's", C, differ, T * C);
}

static void test_rope(int T, int nh, int hd, int rot, float mscale, int inverse) {
    std::vector<bf16> qv = rand_bf16((size_t)T * nh * hd, -1.0f, 1.0f);
    std::vector<int32_t> pos(T);
    for (auto &p : pos) p = (int32_t)urand(0, 131071);
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; i++) inv[i] = (float)(1.0 / std::pow(500000.0, 2.0 * i / rot));
    rows q_row(qv), q_pair(qv);
    emu_expect(rope_by_row(hd, rot, true), "hd=%d rot=%d: the launcher would not take the block-a-token kernel", hd, rot);
    int threads = rope_row_threads(nh, rot);
    emu_launch(dim3(T), threads,
               [&] { rope_row_kernel(q_row.p, pos.data(), inv.data(), nh, hd, rot, mscale, inverse); });
    int64_t n = (int64_t)T * nh * (rot / 2);
    emu_launch(dim3((unsigned)((n + 255) / 256)), 256,
               [&] { rope_kernel(q_pair.p, pos.data(), inv.data(), T, nh, hd, rot, mscale, inverse); });
    int differ = 0, bad = 0, moved = 0, half = rot / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            size_t o = ((size_t)t * nh + h) * hd;
            for (int d = 0; d < hd; d++) differ += q_row.p[o + d].u != q_pair.p[o + d].u;
            for (int d = rot; d < hd; d++) moved += q_row.p[o + d].u != qv[o + d].u;
            for (int j = 0; j < half; j++) {
                double a = (double)pos[t] * (double)inv[j], c = std::cos(a) * mscale, s = std::sin(a) * mscale;
                if (inverse) s = -s;
                double x1 = f(qv[o + j]), x2 = f(qv[o + j + half]);
                /* the angle in fp32, as the reference takes it: at 1e5 radians its rounding moves the
                 * rotation by up to ~4e-3 */
                bad += !near_bf16(f(q_row.p[o + j]), x1 * c - x2 * s, 1.01, 1e-2);
                bad += !near_bf16(f(q_row.p[o + j + half]), x2 * c + x1 * s, 1.01, 1e-2);
            }
        }
    emu_expect(differ == 0, "T=%d nh=%d hd=%d rot=%d: %d values differ from the thread-a-pair kernel's", T, nh, hd, rot, differ);
    emu_expect(moved == 0, "hd=%d rot=%d: %d dims past rot changed", hd, rot, moved);
    emu_expect(bad == 0, "T=%d nh=%d hd=%d rot=%d: %d values off a double-precision rotation", T, nh, hd, rot, bad);
}

/* three arrays in one launch: a tail short of 8, an aligned run of whole vectors, and one whose
 * destination starts off 16 bytes (elements one by one); nothing past each n written */
static void test_f32_to_bf16_pieces(void) {
    const int64_t n[3] = {37, 1024, 1000};
    std::vector<float> src[3];
    std::vector<bf16x8> dbuf[3];
    bf16 *dst[3];
    const float *srcp[3];
    for (int i = 0; i < 3; i++) {
        src[i].resize(n[i] + 8);
        for (auto &v : src[i]) v = urand(-3.0f, 3.0f);
        dbuf[i].assign(n[i] / 8 + 4, bf16x8{});
        dst[i] = reinterpret_cast<bf16 *>(dbuf[i].data()) + (i == 2 ? 1 : 0);
        for (int64_t e = 0; e < n[i] + 8; e++) dst[i][e] = bf16{0x7fc1}; /* a NaN no conversion makes */
        srcp[i] = src[i].data() + (i == 0 ? 4 : 0);
    }
    unsigned blocks;
    cvt_pieces p = cvt_pieces_make(3, dst, srcp, n, 64, &blocks);
    emu_expect(blocks == 1 + 2 + 2 && p.vec[1] && !p.vec[2], "%u blocks, vec %d %d", blocks, p.vec[1], p.vec[2]);
    emu_launch(dim3(blocks), 64, [&] { f32_to_bf16_pieces_kernel(p); });
    int bad = 0, past = 0;
    for (int i = 0; i < 3; i++) {
        for (int64_t e = 0; e < n[i]; e++) bad += dst[i][e].u != __float2bfloat16_rn(srcp[i][e]).u;
        for (int64_t e = n[i]; e < n[i] + 8; e++) past += dst[i][e].u != 0x7fc1;
    }
    emu_expect(bad == 0 && past == 0, "f32_to_bf16_pieces: %d wrong, %d written past n", bad, past);
}

int main(void) {
    test_f32_to_bf16_pieces();
    /* widths: 1024 (one vector a thread short of a warp's four), Llama-2's 4096, 2056 (257
     * vectors: the last warp nearly idle), 5120 (14B), 8192 (70B), 16384 (the most) */
    const int widths[] = {1024, 4096, 2056, 5120, 8192, NORM_ROW_MAX_C};
    for (int C : widths) {
        test_rmsnorm(3, C, 0.0f);
        test_rmsnorm(2, C, 1.0f);
    }
    emu_expect(!norm_by_row(1016, 1) && !norm_by_row(4096, 0) && !norm_by_row(NORM_ROW_MAX_C + 8, 1),
          "narrow, unaligned and over-wide rows take the warp kernel");
    /* T, nh, hd, rot, mscale: Llama's 128-dim heads, 64, phi3's partial rotary (96 of which 48;
     * 80), a block's heads in more than one pass (64 x 128: 512 > 256 threads), head dim 256 */
    const int shapes[][4] = {{5, 4, 128, 128}, {3, 3, 64, 64}, {4, 2, 96, 48}, {3, 2, 80, 80}, {2, 64, 128, 128},
                             {2, 2, 256, 256}};
    for (auto &s : shapes)
        for (int inverse = 0; inverse < 2; inverse++) test_rope(s[0], s[1], s[2], s[3], inverse ? 1.0f : 1.19f, inverse);
    emu_expect(!rope_by_row(64, 8, true) && !rope_by_row(100, 100, true) && !rope_by_row(128, 128, false),
          "rot / 2 off 8, hd off 8 and unaligned q take the thread-a-pair kernel");
    emu_expect(rope_row_threads(32, 128) == 256 && rope_row_threads(8, 128) == 64 && rope_row_threads(64, 128) == 256 &&
              rope_row_threads(3, 48) == 32,
          "rope_row_threads");
    printf("elementwise_emu: RMSNorm (block a row, %zu widths, forward and backward), RoPE (block a token, %zu "
           "shapes) and fp32 -> bf16 in pieces\n",
           sizeof widths / sizeof *widths, sizeof shapes / sizeof *shapes);
    return emu_summary();
}
