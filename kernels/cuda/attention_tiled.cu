// attention_tiled.cu: the first, simpler flash-style attention kernels (CUDA_ATTN_TILED): WMMA
// 16x16x16 tensor-core tiles with the scores, probabilities and the output accumulator in
// shared memory. attention_mma.cu holds the faster register-resident kernels; these stay as an
// independent second implementation (test_ops_gpu checks both against the CPU reference).
//
// Forward (one block of 4 warps per 64 queries and one head; warp w owns 16 query rows; the
// same kernel serves generation, where queries sit at an offset into the cached keys):
//   for each key tile of BC keys from seq_start[first query] to the last query:
//     S = Q K^T (shared), online softmax per row (running max m, sum l; P in bf16),
//     O = O * exp2(m_old - m_new) + P V with O in fp32 shared memory.
// Backward (FlashAttention-2 order; one block per 64 keys and one kv head, looping over the
// query heads of its group and over 32-query tiles that can see those keys):
//   S^T = K Q^T, P^T = exp2(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D) * scale,
//   dV += P^T dO and dK += dS^T Q in registers (WMMA accumulators) for the whole loop,
//   dQ += dS K into an fp32 buffer with atomics.
#include "attention_common.cuh"

#include <mma.h>

using namespace nvcuda;

#define ATT_THREADS 128
#define ATT_BR 64 // forward: queries a block
#define ATT_BK 64 // backward: keys a block
#define ATT_BQ 32 // backward: queries a step

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_acc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> frag_a_row;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> frag_a_col;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> frag_b_col;

template <int HDP, int BC>
struct tiled_fwd_layout {
    static const int LDQ = HDP + 8; // bf16 tiles (padding keeps rows off one bank)
    static const int LDS = BC + 4;  // fp32 scores
    static const int LDP = BC + 8;  // bf16 probabilities
    static const int LDO = HDP + 4; // fp32 output accumulator
    static const size_t bytes = (size_t)ATT_BR * LDQ * 2 + 2 * (size_t)BC * LDQ * 2 + (size_t)ATT_BR * LDS * 4 +
                                (size_t)ATT_BR * LDP * 2 + (size_t)ATT_BR * LDO * 4 + 3 * ATT_BR * 4;
};

template <int HDP, int BC>
__global__ void __launch_bounds__(ATT_THREADS)
    tiled_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                    int Tq, int Tk, int q_off, int nh, int nkv, int hd, attn_params ap, int vec) {
    typedef tiled_fwd_layout<HDP, BC> L;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *Qs = (bf16 *)smem;
    bf16 *Ks = Qs + ATT_BR * L::LDQ;
    bf16 *Vs = Ks + BC * L::LDQ;
    float *Ss = (float *)(Vs + BC * L::LDQ);
    bf16 *Ps = (bf16 *)(Ss + ATT_BR * L::LDS);
    float *Os = (float *)(Ps + ATT_BR * L::LDP);
    float *m_s = Os + ATT_BR * L::LDO, *l_s = m_s + ATT_BR, *a_s = l_s + ATT_BR;

    const int h = blockIdx.y, kvh = h / (nh / nkv), q0 = blockIdx.x * ATT_BR;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t ldq = (int64_t)nh * hd, ldk = (int64_t)nkv * hd;
    const int qvalid = min(ATT_BR, Tq - q0);

    load_tile<HDP>(Qs, L::LDQ, q + (int64_t)q0 * ldq + (int64_t)h * hd, ldq, ATT_BR, qvalid, hd, vec);
    for (int i = threadIdx.x; i < ATT_BR * L::LDO; i += ATT_THREADS) Os[i] = 0.0f;
    if (threadIdx.x < ATT_BR) {
        m_s[threadIdx.x] = -INFINITY;
        l_s[threadIdx.x] = 0.0f;
    }
    // query i sits at key position q_off + i; keys [kbeg, kend) can matter to this tile (the
    // first query sees the earliest key)
    const int kbeg = attn_first_key(seq_start ? seq_start[q0] : 0, q_off + q0, ap.window), kend = q_off + q0 + qvalid;

    // this lane's row for the softmax (two lanes a row), its key position and sequence start
    const int srow = warp * 16 + lane / 2, half = lane & 1, t_row = q0 + srow, p_row = q_off + t_row;
    const int ss_row = t_row < Tq ? (seq_start ? seq_start[t_row] : 0) : INT_MAX;

    for (int k0 = kbeg; k0 < kend; k0 += BC) {
        __syncthreads(); // the previous tile's readers are done
        int kvalid = min(BC, Tk - k0);
        load_tile<HDP>(Ks, L::LDQ, k + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, BC, kvalid, hd, vec);
        load_tile<HDP>(Vs, L::LDQ, v + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, BC, kvalid, hd, vec);
        __syncthreads();

        // S = Q K^T for this warp's 16 rows
#pragma unroll
        for (int n = 0; n < BC / 16; n++) {
            frag_acc acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HDP / 16; kk++) {
                frag_a_row a;
                frag_b_col b;
                wmma::load_matrix_sync(a, Qs + warp * 16 * L::LDQ + kk * 16, L::LDQ);
                wmma::load_matrix_sync(b, Ks + n * 16 * L::LDQ + kk * 16, L::LDQ);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Ss + warp * 16 * L::LDS + n * 16, acc, L::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax over this tile, masked to [seq_start[t], t]
        {
            float *sr = Ss + srow * L::LDS;
            bf16 *pr = Ps + srow * L::LDP;
            float mloc = -INFINITY;
            for (int j = half; j < BC; j += 2) {
                int key = k0 + j;
                bool ok = attn_visible(key, ss_row, p_row, ap.window); // ss_row > every key past Tq
                float sv = ok ? attn_score_log2(sr[j], ap) : -INFINITY;
                sr[j] = sv;
                mloc = fmaxf(mloc, sv);
            }
            mloc = fmaxf(mloc, __shfl_xor_sync(0xffffffffu, mloc, 1));
            float m_old = m_s[srow], m_new = fmaxf(m_old, mloc);
            float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
            float lsum = 0.0f;
            for (int j = half; j < BC; j += 2) {
                float p = sr[j] == -INFINITY ? 0.0f : exp2f(sr[j] - m_new);
                pr[j] = __float2bfloat16_rn(p);
                lsum += p;
            }
            lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
            __syncwarp();
            if (!half) {
                m_s[srow] = m_new;
                l_s[srow] = l_s[srow] * alpha + lsum;
                a_s[srow] = alpha;
            }
        }
        __syncwarp();
        for (int i = lane; i < 16 * HDP; i += 32) {
            int r = warp * 16 + i / HDP;
            Os[r * L::LDO + i % HDP] *= a_s[r];
        }
        __syncwarp();

        // O += P V
#pragma unroll
        for (int n = 0; n < HDP / 16; n++) {
            frag_acc acc;
            wmma::load_matrix_sync(acc, Os + warp * 16 * L::LDO + n * 16, L::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                frag_a_row a;
                frag_b_row b;
                wmma::load_matrix_sync(a, Ps + warp * 16 * L::LDP + kk * 16, L::LDP);
                wmma::load_matrix_sync(b, Vs + kk * 16 * L::LDQ + n * 16, L::LDQ);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Os + warp * 16 * L::LDO + n * 16, acc, L::LDO, wmma::mem_row_major);
        }
    }
    __syncthreads();

    for (int i = threadIdx.x; i < ATT_BR * HDP; i += ATT_THREADS) {
        int r = i / HDP, c = i % HDP, t = q0 + r;
        if (t < Tq && c < hd)
            out[(int64_t)t * ldq + (int64_t)h * hd + c] = __float2bfloat16_rn(Os[r * L::LDO + c] / l_s[r]);
    }
    if (lse && threadIdx.x < ATT_BR && q0 + (int)threadIdx.x < Tq)
        lse[(int64_t)h * Tq + q0 + threadIdx.x] = (m_s[threadIdx.x] + log2f(l_s[threadIdx.x])) * LN2;
}

template <int HDP, int BC>
static void tiled_fwd_launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                            const int32_t *seq_start, int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec,
                            attn_params ap) {
    size_t smem = tiled_fwd_layout<HDP, BC>::bytes;
    static bool attr_set = false;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(tiled_fwd_kernel<HDP, BC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_set = true;
    }
    dim3 grid(CEIL_DIV(Tq, ATT_BR), nh);
    tiled_fwd_kernel<HDP, BC><<<grid, ATT_THREADS, smem, cuda_stream()>>>(out, lse, q, k, v, seq_start, Tq, Tk, q_off,
                                                                          nh, nkv, hd, ap, vec);
    CUDA_CHECK_LAUNCH();
}

void attn_tiled_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                    int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec, attn_params ap) {
    if (hd <= 64)
        tiled_fwd_launch<64, 64>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
    else if (hd <= 128)
        tiled_fwd_launch<128, 32>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
    else
        tiled_fwd_launch<256, 32>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
}

// ---------------------------------------------------------------------------------------------
// backward

template <int HDP>
struct tiled_bwd_layout {
    static const int LDQ = HDP + 8;
    static const int LDT = ATT_BQ + 4; // fp32 [key][query]
    static const int LDB = ATT_BQ + 8; // bf16 [key][query]
    static const size_t bytes = 2 * (size_t)ATT_BK * LDQ * 2 + 2 * (size_t)ATT_BQ * LDQ * 2 +
                                2 * (size_t)ATT_BK * LDT * 4 + 2 * (size_t)ATT_BK * LDB * 2 +
                                4 * 256 * 4 + 3 * ATT_BQ * 4;
};

template <int HDP>
__global__ void __launch_bounds__(ATT_THREADS)
    tiled_bwd_kernel(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *Dv,
                    const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh, int nkv,
                    int hd, attn_params ap, int vec) {
    typedef tiled_bwd_layout<HDP> L;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *Ks = (bf16 *)smem;
    bf16 *Vs = Ks + ATT_BK * L::LDQ;
    bf16 *Qs = Vs + ATT_BK * L::LDQ;
    bf16 *dOs = Qs + ATT_BQ * L::LDQ;
    float *St = (float *)(dOs + ATT_BQ * L::LDQ);
    float *dPt = St + ATT_BK * L::LDT;
    bf16 *Pt = (bf16 *)(dPt + ATT_BK * L::LDT);
    bf16 *dSt = Pt + ATT_BK * L::LDB;
    float *scratch = (float *)(dSt + ATT_BK * L::LDB);
    float *lse_s = scratch + 4 * 256, *D_s = lse_s + ATT_BQ;
    int *ss_s = (int *)(D_s + ATT_BQ);

    const int kvh = blockIdx.y, k0 = blockIdx.x * ATT_BK, rep = nh / nkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t ldq = (int64_t)nh * hd, ldk = (int64_t)nkv * hd;
    const int kvalid = min(ATT_BK, T - k0), klast = k0 + kvalid - 1;
    float *wscr = scratch + warp * 256;

    load_tile<HDP>(Ks, L::LDQ, k + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, ATT_BK, kvalid, hd, vec);
    load_tile<HDP>(Vs, L::LDQ, v + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, ATT_BK, kvalid, hd, vec);

    frag_acc dKf[HDP / 16], dVf[HDP / 16];
#pragma unroll
    for (int n = 0; n < HDP / 16; n++) {
        wmma::fill_fragment(dKf[n], 0.0f);
        wmma::fill_fragment(dVf[n], 0.0f);
    }

    for (int hq = kvh * rep; hq < (kvh + 1) * rep; hq++) {
        // queries before k0 cannot see these keys; past the first query whose sequence starts
        // after the last key, none can (seq_start never decreases), nor past the window's reach
        for (int q0 = k0; q0 < T && seq_start[q0] <= klast && (ap.window <= 0 || q0 - klast < ap.window);
             q0 += ATT_BQ) {
            __syncthreads(); // the previous step's readers of Qs, dOs, dSt are done
            int qvalid = min(ATT_BQ, T - q0);
            load_tile<HDP>(Qs, L::LDQ, q + (int64_t)q0 * ldq + (int64_t)hq * hd, ldq, ATT_BQ, qvalid, hd, vec);
            load_tile<HDP>(dOs, L::LDQ, dout + (int64_t)q0 * ldq + (int64_t)hq * hd, ldq, ATT_BQ, qvalid, hd, vec);
            if (threadIdx.x < ATT_BQ) {
                int t = q0 + threadIdx.x;
                bool in = t < T;
                lse_s[threadIdx.x] = in ? lse[(int64_t)hq * T + t] * LOG2E : 0.0f;
                D_s[threadIdx.x] = in ? Dv[(int64_t)hq * T + t] : 0.0f;
                ss_s[threadIdx.x] = in ? seq_start[t] : INT_MAX;
            }
            __syncthreads();

            // S^T = K_w Q^T and dP^T = V_w dO^T, each [16 keys x 32 queries]
#pragma unroll
            for (int n = 0; n < ATT_BQ / 16; n++) {
                frag_acc s, dp;
                wmma::fill_fragment(s, 0.0f);
                wmma::fill_fragment(dp, 0.0f);
#pragma unroll
                for (int kk = 0; kk < HDP / 16; kk++) {
                    frag_a_row a;
                    frag_b_col b;
                    wmma::load_matrix_sync(a, Ks + warp * 16 * L::LDQ + kk * 16, L::LDQ);
                    wmma::load_matrix_sync(b, Qs + n * 16 * L::LDQ + kk * 16, L::LDQ);
                    wmma::mma_sync(s, a, b, s);
                    wmma::load_matrix_sync(a, Vs + warp * 16 * L::LDQ + kk * 16, L::LDQ);
                    wmma::load_matrix_sync(b, dOs + n * 16 * L::LDQ + kk * 16, L::LDQ);
                    wmma::mma_sync(dp, a, b, dp);
                }
                wmma::store_matrix_sync(St + warp * 16 * L::LDT + n * 16, s, L::LDT, wmma::mem_row_major);
                wmma::store_matrix_sync(dPt + warp * 16 * L::LDT + n * 16, dp, L::LDT, wmma::mem_row_major);
            }
            __syncwarp();
            // P^T and dS^T = P^T (dP^T - D) * scale; lane = query column
            for (int r = 0; r < 16; r++) {
                int kr = warp * 16 + r, key = k0 + kr, c = lane, t = q0 + c;
                bool ok = t < T && key <= klast && attn_visible(key, ss_s[c], t, ap.window);
                float sl = ok ? attn_score_log2(St[kr * L::LDT + c], ap) : 0.0f;
                float p = ok ? exp2f(sl - lse_s[c]) : 0.0f;
                float ds = p * (dPt[kr * L::LDT + c] - D_s[c]) * ap.scale * attn_cap_grad(sl, ap);
                Pt[kr * L::LDB + c] = __float2bfloat16_rn(p);
                dSt[kr * L::LDB + c] = __float2bfloat16_rn(ds);
            }
            __syncwarp();
            // dV += P^T dO, dK += dS^T Q
#pragma unroll
            for (int n = 0; n < HDP / 16; n++) {
#pragma unroll
                for (int kk = 0; kk < ATT_BQ / 16; kk++) {
                    frag_a_row a;
                    frag_b_row b;
                    wmma::load_matrix_sync(a, Pt + warp * 16 * L::LDB + kk * 16, L::LDB);
                    wmma::load_matrix_sync(b, dOs + kk * 16 * L::LDQ + n * 16, L::LDQ);
                    wmma::mma_sync(dVf[n], a, b, dVf[n]);
                    wmma::load_matrix_sync(a, dSt + warp * 16 * L::LDB + kk * 16, L::LDB);
                    wmma::load_matrix_sync(b, Qs + kk * 16 * L::LDQ + n * 16, L::LDQ);
                    wmma::mma_sync(dKf[n], a, b, dKf[n]);
                }
            }
            __syncthreads(); // every warp's dS^T rows are in place

            // dQ [32 x HDP] += dS K; dS[q][key] = dSt[key][q] read as a column-major A
            for (int f = warp; f < (ATT_BQ / 16) * (HDP / 16); f += 4) {
                int qb = f % (ATT_BQ / 16), n = f / (ATT_BQ / 16);
                frag_acc acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < ATT_BK / 16; kk++) {
                    frag_a_col a;
                    frag_b_row b;
                    wmma::load_matrix_sync(a, dSt + kk * 16 * L::LDB + qb * 16, L::LDB);
                    wmma::load_matrix_sync(b, Ks + kk * 16 * L::LDQ + n * 16, L::LDQ);
                    wmma::mma_sync(acc, a, b, acc);
                }
                wmma::store_matrix_sync(wscr, acc, 16, wmma::mem_row_major);
                __syncwarp();
                for (int i = lane; i < 256; i += 32) {
                    int t = q0 + qb * 16 + i / 16, d = n * 16 + i % 16;
                    if (t < T && d < hd) atomicAdd(dq_acc + (int64_t)t * ldq + (int64_t)hq * hd + d, wscr[i]);
                }
                __syncwarp();
            }
        }
    }

    // dK, dV of this warp's 16 keys
#pragma unroll
    for (int n = 0; n < HDP / 16; n++) {
#pragma unroll
        for (int which = 0; which < 2; which++) {
            wmma::store_matrix_sync(wscr, which ? dVf[n] : dKf[n], 16, wmma::mem_row_major);
            __syncwarp();
            bf16 *dst = which ? dv : dk;
            for (int i = lane; i < 256; i += 32) {
                int key = k0 + warp * 16 + i / 16, d = n * 16 + i % 16;
                if (key <= klast && d < hd)
                    dst[(int64_t)key * ldk + (int64_t)kvh * hd + d] = __float2bfloat16_rn(wscr[i]);
            }
            __syncwarp();
        }
    }
}

template <int HDP>
static void tiled_bwd_launch(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                            const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh,
                            int nkv, int hd, int vec, attn_params ap) {
    size_t smem = tiled_bwd_layout<HDP>::bytes;
    static bool attr_set = false;
    if (!attr_set) {
        CUDA_CHECK(
            cudaFuncSetAttribute(tiled_bwd_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid(CEIL_DIV(T, ATT_BK), nkv);
    tiled_bwd_kernel<HDP><<<grid, ATT_THREADS, smem, cuda_stream()>>>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start,
                                                                      T, nh, nkv, hd, ap, vec);
    CUDA_CHECK_LAUNCH();
}

void attn_tiled_bwd(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                    const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh, int nkv,
                    int hd, int vec, attn_params ap) {
    if (hd <= 64)
        tiled_bwd_launch<64>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    else if (hd <= 128)
        tiled_bwd_launch<128>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    else
        tiled_bwd_launch<256>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
}
