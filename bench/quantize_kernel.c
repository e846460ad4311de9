/* quantize_kernel.c: MB/s of the CPU NF4 kernels (kernels/cpu/nf4.c) on a 4096x11008 bf16 weight
 * (a Llama-7B MLP matrix): quantize with 1 and 2 threads, the double quant, and dequantize.
 * Built and run by bench/quantize.sh; prints one line per measurement. */
#include <stdio.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/half.h"
#include "kernels/cpu/nf4.h"

int main(void) {
    const int64_t n = 4096LL * 11008;
    uint16_t *x = malloc((size_t)n * 2);
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < n; i++) { /* roughly normal(0, 0.02): a sum of 4 uniforms */
        float u = 0;
        for (int k = 0; k < 4; k++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            u += (float)(s >> 40) / 16777216.0f - 0.5f;
        }
        x[i] = f32_to_bf16(u * 0.0346f);
    }
    int64_t nb = nf4_nblocks(n, 64);
    uint8_t *codes = malloc((size_t)nf4_packed_bytes(n)), *q = malloc((size_t)nb);
    float *absmax = malloc((size_t)nb * 4), *nabs = malloc((size_t)(nb / 256 + 1) * 4), *out = malloc((size_t)n * 4);
    float map[256];
    nf4_dynamic_map(map);
    double mb = n * 2 / 1e6;
    for (int th = 1; th <= 2; th++) {
        double best = 1e9;
        for (int r = 0; r < 3; r++) {
            double t0 = clock_now_s();
            nf4_quantize(codes, absmax, x, NF4_SRC_BF16, n, 64, OPS_NF4, th);
            double t = clock_now_s() - t0;
            best = t < best ? t : best;
        }
        printf("nf4_quantize bf16 %lldx%lld, %d thread(s): %.0f MB/s of bf16 (%.1f ms)\n", 4096LL, 11008LL, th,
               mb / best, best * 1e3);
    }
    double t0 = clock_now_s();
    nf4_quantize_ref(codes, absmax, x, NF4_SRC_BF16, n, 64, OPS_NF4);
    printf("nf4_quantize_ref (scalar reference): %.0f MB/s\n", mb / (clock_now_s() - t0));
    t0 = clock_now_s();
    nf4_absmax(absmax, x, NF4_SRC_BF16, n, 64, 2);
    printf("nf4_absmax, 2 threads: %.0f MB/s\n", mb / (clock_now_s() - t0));
    t0 = clock_now_s();
    nf4_double_quant(q, nabs, absmax, nb, nf4_absmax_mean(absmax, nb), map);
    printf("nf4_double_quant (%lld absmax): %.1f ms\n", (long long)nb, (clock_now_s() - t0) * 1e3);
    for (int th = 1; th <= 2; th++) {
        t0 = clock_now_s();
        nf4_dequantize(out, codes, absmax, nf4_quant_map(OPS_NF4), 64, 0, n, th);
        double t = clock_now_s() - t0;
        printf("nf4_dequantize to f32, %d thread(s): %.0f M elements/s (%.0f MB/s of f32 out)\n", th, n / t / 1e6,
               n * 4 / t / 1e6);
    }
    free(x); free(codes); free(q); free(absmax); free(nabs); free(out);
    return 0;
}
