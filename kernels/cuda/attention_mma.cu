// attention_mma.cu: flash attention forward and backward on mma.sync (m16n8k16, bf16 in, fp32
// accumulate) with FlashAttention-2's work split and register-resident accumulators
// (CUDA_ATTN_MMA, the default). Fragment layouts (PTX ISA, mma.m16n8k16; g = lane/4, t = lane%4):
//   A 16x16 row-major: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8 (k x n):    b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C 16x8:            c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// so a C tile pair converts to an A fragment in registers (P after the softmax feeds P V without
// touching shared memory). Shared-memory operands come through ldmatrix (x4; .trans where the
// needed operand is the transpose of the stored tile); rows are padded by 8 elements so the
// eight 16-byte rows of each 8x8 matrix fall in distinct bank groups.
//
// Forward: a block of 4 warps takes 64 queries of one head; each warp owns 16 query rows with
// Q, the running max/sum and O (16 x HDP) in registers. Key/value tiles of 64 rows stream
// through shared memory, double-buffered with cp.async so the next tile loads during the math.
// Backward: a block takes 64 keys of one kv head (warp w: 16 keys, with dK and dV in registers)
// and walks the query heads of the group (or a share of them, when grouped-query attention
// leaves too few blocks) and the 32-query steps that can see those keys (their Q and dO tiles
// double-buffered with cp.async):
// S^T = K Q^T and dP^T = V dO^T per warp, P^T and dS^T in registers feed dV += P^T dO and
// dK += dS^T Q; dS^T goes through shared memory once for dQ += dS K, added to an fp32 buffer
// with atomics.
// Deterministic mode (cuda_det()): the same work, summed in a fixed order. The dQ of one
// (query head, 32-query step) gets one part from each key block that sees it, blocks lo..hi with
// hi = q0 / 64 (the diagonal block) and lo = seq_start[q0] / 64; they add their parts in the order
// hi, hi - 1, ..., lo, through a turn counter per (head, step): block kb waits until the counter
// says hi - kb (thread 0 polls before the barrier the step has anyway), starts its dQ accumulators
// from the stored sum, stores the new sum with plain stores, and passes the turn on after the next
// barrier (release/acquire at GPU scope). The kernel is compiled twice (DET), so the default mode
// runs the atomics code as it was. Blocks are numbered so that the block it waits for (kb + 1) has the lower linear
// index: blocks start in index order, so the lowest unfinished block never waits on an unstarted
// one and the hand-off cannot deadlock. The diagonal-first order means a block rarely waits: the
// block before it in the chain started earlier and walks the same query steps ahead of it. With
// the grouped-query head split, each share writes its dK, dV partial sums to a slice of its own
// and a second pass adds the slices in share order.
#include "attention_common.cuh"

#define MMA_THREADS 128
#define MMA_BR 64 // forward: queries a block
#define MMA_BC 64 // forward: keys a tile; backward: keys a block
#define MMA_BQ 32 // backward: queries a step

__device__ __forceinline__ void mma_bf16_16816(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void ldsm_x4(uint32_t *r, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (lo) in the low half: the lower column
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ int ld_acquire_gpu(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(int *p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void cp_async16(bf16 *dst, const bf16 *src, bool valid) {
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    int n = valid ? 16 : 0; // 0 source bytes: the 16 destination bytes are zero-filled
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait1(void) { asm volatile("cp.async.wait_group 1;\n" ::); }

// rows x HDP tile to shared memory without waiting (vec layouts only); src rows past rows_valid
// or columns past hd are zero-filled (their source address is clamped to the tile's first row)
template <int HDP>
__device__ __forceinline__ void load_tile_async(bf16 *dst, int ldd, const bf16 *src, int64_t lds, int rows,
                                                int rows_valid, int hd) {
    const int CH = HDP / 8;
    for (int i = threadIdx.x; i < rows * CH; i += blockDim.x) {
        int r = i / CH, c = (i % CH) * 8;
        bool ok = r < rows_valid && c < hd;
        cp_async16(dst + r * ldd + c, ok ? src + (int64_t)r * lds + c : src, ok);
    }
}

// ---------------------------------------------------------------------------------------------
// forward

template <int HDP>
__global__ void __launch_bounds__(MMA_THREADS)
    mma_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                   int Tq, int Tk, int q_off, int nh, int nkv, int hd, attn_params ap, int vec) {
    constexpr int LD = HDP + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *Qs = (bf16 *)smem;
    bf16 *KVs = Qs + MMA_BR * LD; // [2 buffers][K, V][MMA_BC][LD]

    const int h = blockIdx.y, kvh = h / (nh / nkv), q0 = blockIdx.x * MMA_BR;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int64_t ldq = (int64_t)nh * hd, ldk = (int64_t)nkv * hd;
    const int qvalid = min(MMA_BR, Tq - q0);
    const bf16 *kbase = k + (int64_t)kvh * hd, *vbase = v + (int64_t)kvh * hd;

    const int kbeg = attn_first_key(seq_start ? seq_start[q0] : 0, q_off + q0, ap.window), kend = q_off + q0 + qvalid;
    auto load_kv = [&](int buf, int k0) {
        bf16 *Kd = KVs + buf * 2 * MMA_BC * LD, *Vd = Kd + MMA_BC * LD;
        int kvalid = min(MMA_BC, Tk - k0);
        if (vec) {
            load_tile_async<HDP>(Kd, LD, kbase + (int64_t)k0 * ldk, ldk, MMA_BC, kvalid, hd);
            load_tile_async<HDP>(Vd, LD, vbase + (int64_t)k0 * ldk, ldk, MMA_BC, kvalid, hd);
        } else {
            load_tile<HDP>(Kd, LD, kbase + (int64_t)k0 * ldk, ldk, MMA_BC, kvalid, hd, false);
            load_tile<HDP>(Vd, LD, vbase + (int64_t)k0 * ldk, ldk, MMA_BC, kvalid, hd, false);
        }
    };
    load_kv(0, kbeg);
    cp_async_commit();
    load_tile<HDP>(Qs, LD, q + (int64_t)q0 * ldq + (int64_t)h * hd, ldq, MMA_BR, qvalid, hd, vec);
    __syncthreads();

    uint32_t qf[HDP / 16][4];
#pragma unroll
    for (int kk = 0; kk < HDP / 16; kk++)
        ldsm_x4(qf[kk], Qs + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + kk * 16 + 8 * (lane >> 4));

    // this thread's two rows (g and g + 8 of the warp's 16): index, key position, sequence start
    int trow[2], prow[2], ssrow[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        trow[r] = q0 + warp * 16 + g + 8 * r;
        prow[r] = q_off + trow[r];
        ssrow[r] = trow[r] < Tq ? (seq_start ? seq_start[trow[r]] : 0) : INT_MAX;
    }
    // the warp's own key range: nothing to do on tiles outside it
    const int wt0 = q0 + warp * 16, wt1 = min(wt0 + 15, Tq - 1);
    const int wkmin = wt0 < Tq ? attn_first_key(seq_start ? seq_start[wt0] : 0, q_off + wt0, ap.window) : INT_MAX,
              wkmax = q_off + wt1;

    float o[HDP / 8][4];
#pragma unroll
    for (int n = 0; n < HDP / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};

    int it = 0;
    for (int k0 = kbeg; k0 < kend; k0 += MMA_BC, it++) {
        const int buf = it & 1;
        if (k0 + MMA_BC < kend) load_kv(buf ^ 1, k0 + MMA_BC);
        cp_async_commit();
        cp_async_wait1(); // this tile's group is complete
        __syncthreads();
        const bf16 *Ks = KVs + buf * 2 * MMA_BC * LD, *Vs = Ks + MMA_BC * LD;
        if (k0 <= wkmax && k0 + MMA_BC - 1 >= wkmin) {
            float s[MMA_BC / 8][4];
#pragma unroll
            for (int j = 0; j < MMA_BC / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HDP / 16; kk++) {
#pragma unroll
                for (int np = 0; np < MMA_BC / 16; np++) {
                    uint32_t b[4];
                    ldsm_x4(b, Ks + (np * 16 + (lane & 7) + 8 * (lane >> 4)) * LD + kk * 16 + 8 * ((lane >> 3) & 1));
                    mma_bf16_16816(s[2 * np], qf[kk], b);
                    mma_bf16_16816(s[2 * np + 1], qf[kk], b + 2);
                }
            }
            // mask, scale into the log2 domain, row max over the quad (the 4 lanes of a row)
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < MMA_BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int r = e >> 1, key = k0 + 8 * j + 2 * tq + (e & 1);
                    bool ok = attn_visible(key, ssrow[r], prow[r], ap.window);
                    s[j][e] = ok ? attn_score_log2(s[j][e], ap) : -INFINITY;
                    mx[r] = fmaxf(mx[r], s[j][e]);
                }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                float m_new = fmaxf(m_r[r], mx[r]);
                float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_r[r] - m_new);
                m_r[r] = m_new;
                l_r[r] *= alpha;
#pragma unroll
                for (int n = 0; n < HDP / 8; n++) {
                    o[n][2 * r] *= alpha;
                    o[n][2 * r + 1] *= alpha;
                }
            }
#pragma unroll
            for (int j = 0; j < MMA_BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int r = e >> 1;
                    float p = s[j][e] == -INFINITY ? 0.0f : exp2f(s[j][e] - m_r[r]);
                    s[j][e] = p;
                    l_r[r] += p; // this lane's part of the row sum; the quad is summed at the end
                }
            // O += P V: P's C tiles become A fragments; V^T tiles come through ldmatrix.trans
#pragma unroll
            for (int kk = 0; kk < MMA_BC / 16; kk++) {
                uint32_t a[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                 pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                 pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int np = 0; np < HDP / 16; np++) {
                    uint32_t b[4];
                    ldsm_x4_t(b, Vs + (kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + np * 16 + 8 * (lane >> 4));
                    mma_bf16_16816(o[2 * np], a, b);
                    mma_bf16_16816(o[2 * np + 1], a, b + 2);
                }
            }
        }
        __syncthreads(); // every warp is done with this buffer before it is refilled
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
        l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
        int t = trow[r];
        if (t >= Tq) continue;
        float inv = l_r[r] > 0.0f ? 1.0f / l_r[r] : 0.0f;
        bf16 *orow = out + (int64_t)t * ldq + (int64_t)h * hd;
#pragma unroll
        for (int n = 0; n < HDP / 8; n++) {
            int d = n * 8 + 2 * tq;
            if (d + 1 < hd && !(hd & 1)) { // even hd: the pair is 4-byte aligned
                *reinterpret_cast<__nv_bfloat162 *>(orow + d) =
                    __floats2bfloat162_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            } else {
                if (d < hd) orow[d] = __float2bfloat16_rn(o[n][2 * r] * inv);
                if (d + 1 < hd) orow[d + 1] = __float2bfloat16_rn(o[n][2 * r + 1] * inv);
            }
        }
        if (lse && tq == 0) lse[(int64_t)h * Tq + t] = (m_r[r] + log2f(l_r[r])) * LN2;
    }
}

template <int HDP>
static void mma_fwd_launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                           const int32_t *seq_start, int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec,
                           attn_params ap) {
    size_t smem = (size_t)(MMA_BR + 4 * MMA_BC) * (HDP + 8) * sizeof(bf16);
    static bool attr_set = false;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(mma_fwd_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid(CEIL_DIV(Tq, MMA_BR), nh);
    mma_fwd_kernel<HDP><<<grid, MMA_THREADS, smem, cuda_stream()>>>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh,
                                                                     nkv, hd, ap, vec);
    CUDA_CHECK_LAUNCH();
}

void attn_mma_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                  int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec, attn_params ap) {
    if (hd <= 64)
        mma_fwd_launch<64>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
    else
        mma_fwd_launch<128>(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
}

// ---------------------------------------------------------------------------------------------
// backward

// one dQ element into the fp32 accumulator: stored (deterministic mode: the block holds the turn,
// so the value already includes the earlier blocks' parts) or added atomically (default)
template <bool DET> __device__ __forceinline__ void dq_put(float *p, float v) {
    if (DET) __stcg(p, v);
    else atomicAdd(p, v);
}

template <int HDP, bool DET>
__global__ void __launch_bounds__(MMA_THREADS)
    mma_bwd_kernel(float *dq_acc, bf16 *dk, bf16 *dv, float *dkv_acc, int *dq_turn, const bf16 *dout,
                   const float *lse, const float *Dv, const bf16 *q, const bf16 *k, const bf16 *v,
                   const int32_t *seq_start, int T, int nh, int nkv, int hd, attn_params ap, int vec) {
    constexpr int LD = HDP + 8, LDS = MMA_BQ + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *Ks = (bf16 *)smem;                     // [64][LD]
    bf16 *Vs = Ks + MMA_BC * LD;                 // [64][LD]
    bf16 *QdO = Vs + MMA_BC * LD;                // [2 buffers][Q, dO][32][LD]
    bf16 *dSs = QdO + 4 * MMA_BQ * LD;           // [64 keys][LDS]: dS^T
    float *side = (float *)(dSs + MMA_BC * LDS); // [2 buffers][lse * log2(e), D, seq_start][32]

    // blockIdx.z picks a share of the group's query heads (gridDim.z shares; then dK and dV are
    // partial sums, added in fp32 to dkv_acc). dq_turn (deterministic mode): the key blocks
    // are numbered from the end (see the top of the file) and each share has its own dkv slice.
    const int kb = DET ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    const int kvh = blockIdx.y, k0 = kb * MMA_BC, rep = nh / nkv / gridDim.z;
    const int h_first = kvh * (nh / nkv) + blockIdx.z * rep;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int64_t ldq = (int64_t)nh * hd, ldk = (int64_t)nkv * hd;
    const int kvalid = min(MMA_BC, T - k0), klast = k0 + kvalid - 1;

    load_tile<HDP>(Ks, LD, k + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, MMA_BC, kvalid, hd, vec);
    load_tile<HDP>(Vs, LD, v + (int64_t)k0 * ldk + (int64_t)kvh * hd, ldk, MMA_BC, kvalid, hd, vec);

    float dkf[HDP / 8][4], dvf[HDP / 8][4];
#pragma unroll
    for (int n = 0; n < HDP / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dkf[n][e] = dvf[n][e] = 0.0f;
    // rows of this thread in the warp's 16 keys
    const int key0 = k0 + warp * 16 + g, key1 = key0 + 8;
    // dQ split: warp w computes query rows 16 (w & 1) .. +15 and head dims [(w >> 1) HDP/2, +HDP/2)
    const int dq_m = warp & 1, dq_n0 = (warp >> 1) * (HDP / 16);

    // The query steps that can see these keys: from k0 (causal) up to the first query whose
    // sequence starts after the last key (seq_start never decreases) or that is past the sliding
    // window's reach; the same for every head.
    int nsteps = 0;
    for (int q0 = k0; q0 < T && seq_start[q0] <= klast && (ap.window <= 0 || q0 - klast < ap.window); q0 += MMA_BQ)
        nsteps++;
    const int total = rep * nsteps; // step i: head h_first + i / nsteps, queries k0 + (i % nsteps) * 32
    // step i's Q and dO tiles (cp.async, so they load while step i - 1 computes) and side values
    auto issue = [&](int i, int buf) {
        int hq = h_first + i / nsteps, q0 = k0 + (i % nsteps) * MMA_BQ, qvalid = min(MMA_BQ, T - q0);
        bf16 *Qd = QdO + buf * 2 * MMA_BQ * LD, *dOd = Qd + MMA_BQ * LD;
        const bf16 *qs = q + (int64_t)q0 * ldq + (int64_t)hq * hd, *ds = dout + (int64_t)q0 * ldq + (int64_t)hq * hd;
        if (vec) {
            load_tile_async<HDP>(Qd, LD, qs, ldq, MMA_BQ, qvalid, hd);
            load_tile_async<HDP>(dOd, LD, ds, ldq, MMA_BQ, qvalid, hd);
        } else {
            load_tile<HDP>(Qd, LD, qs, ldq, MMA_BQ, qvalid, hd, false);
            load_tile<HDP>(dOd, LD, ds, ldq, MMA_BQ, qvalid, hd, false);
        }
        if (threadIdx.x < MMA_BQ) {
            float *sd = side + buf * 3 * MMA_BQ;
            int t = q0 + threadIdx.x;
            bool in = t < T;
            sd[threadIdx.x] = in ? lse[(int64_t)hq * T + t] * LOG2E : 0.0f;
            sd[MMA_BQ + threadIdx.x] = in ? Dv[(int64_t)hq * T + t] : 0.0f;
            ((int *)sd)[2 * MMA_BQ + threadIdx.x] = in ? seq_start[t] : INT_MAX;
        }
    };
    issue(0, 0);
    cp_async_commit();
    // DET: the turn this block passes on once the barrier after its dQ stores is behind it (thread 0)
    int *pass_turn = NULL, pass_value = 0;

    for (int i = 0; i < total; i++) {
        {
            const int buf = i & 1, hq = h_first + i / nsteps, q0 = k0 + (i % nsteps) * MMA_BQ;
            // buffer buf ^ 1 was last read before the previous step's middle barrier
            if (i + 1 < total) issue(i + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait1(); // this step's tiles are in
            __syncthreads();  // ... for every thread; and the previous step's dQ readers of dSs are done
            // DET: every thread's dQ stores of the previous step are before this barrier: pass its turn on
            if (DET && threadIdx.x == 0 && pass_turn) st_release_gpu(pass_turn, pass_value);
            const bf16 *Qs = QdO + buf * 2 * MMA_BQ * LD, *dOs = Qs + MMA_BQ * LD;
            const float *lse_s = side + buf * 3 * MMA_BQ, *D_s = lse_s + MMA_BQ;
            const int *ss_s = (const int *)(D_s + MMA_BQ);

            // S^T = K_w Q^T and dP^T = V_w dO^T: [16 keys x 32 queries] each
            float st[MMA_BQ / 8][4], dpt[MMA_BQ / 8][4];
#pragma unroll
            for (int j = 0; j < MMA_BQ / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HDP / 16; kk++) {
                uint32_t ak[4], av[4];
                const int arow = warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1), acol = kk * 16 + 8 * (lane >> 4);
                ldsm_x4(ak, Ks + arow * LD + acol);
                ldsm_x4(av, Vs + arow * LD + acol);
#pragma unroll
                for (int np = 0; np < MMA_BQ / 16; np++) {
                    uint32_t b[4];
                    const int brow = np * 16 + (lane & 7) + 8 * (lane >> 4), bcol = kk * 16 + 8 * ((lane >> 3) & 1);
                    ldsm_x4(b, Qs + brow * LD + bcol);
                    mma_bf16_16816(st[2 * np], ak, b);
                    mma_bf16_16816(st[2 * np + 1], ak, b + 2);
                    ldsm_x4(b, dOs + brow * LD + bcol);
                    mma_bf16_16816(dpt[2 * np], av, b);
                    mma_bf16_16816(dpt[2 * np + 1], av, b + 2);
                }
            }
            // P^T and dS^T = P^T (dP^T - D) * scale, in place; dS^T also to shared memory
#pragma unroll
            for (int j = 0; j < MMA_BQ / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qi = 8 * j + 2 * tq + (e & 1), t = q0 + qi, key = (e >> 1) ? key1 : key0;
                    bool ok = t < T && key <= klast && attn_visible(key, ss_s[qi], t, ap.window);
                    float sl = ok ? attn_score_log2(st[j][e], ap) : 0.0f;
                    float p = ok ? exp2f(sl - lse_s[qi]) : 0.0f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - D_s[qi]) * ap.scale * attn_cap_grad(sl, ap);
                }
#pragma unroll
            for (int j = 0; j < MMA_BQ / 8; j++) {
                int col = 8 * j + 2 * tq;
                *reinterpret_cast<uint32_t *>(dSs + (warp * 16 + g) * LDS + col) = pack_bf16x2(dpt[j][0], dpt[j][1]);
                *reinterpret_cast<uint32_t *>(dSs + (warp * 16 + g + 8) * LDS + col) =
                    pack_bf16x2(dpt[j][2], dpt[j][3]);
            }
            // dV += P^T dO and dK += dS^T Q: the C tiles become A fragments (k = query)
#pragma unroll
            for (int kq = 0; kq < MMA_BQ / 16; kq++) {
                uint32_t ap[4] = {pack_bf16x2(st[2 * kq][0], st[2 * kq][1]), pack_bf16x2(st[2 * kq][2], st[2 * kq][3]),
                                  pack_bf16x2(st[2 * kq + 1][0], st[2 * kq + 1][1]),
                                  pack_bf16x2(st[2 * kq + 1][2], st[2 * kq + 1][3])};
                uint32_t as[4] = {pack_bf16x2(dpt[2 * kq][0], dpt[2 * kq][1]),
                                  pack_bf16x2(dpt[2 * kq][2], dpt[2 * kq][3]),
                                  pack_bf16x2(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                                  pack_bf16x2(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
#pragma unroll
                for (int np = 0; np < HDP / 16; np++) {
                    uint32_t b[4];
                    const int brow = kq * 16 + (lane & 7) + 8 * ((lane >> 3) & 1), bcol = np * 16 + 8 * (lane >> 4);
                    ldsm_x4_t(b, dOs + brow * LD + bcol);
                    mma_bf16_16816(dvf[2 * np], ap, b);
                    mma_bf16_16816(dvf[2 * np + 1], ap, b + 2);
                    ldsm_x4_t(b, Qs + brow * LD + bcol);
                    mma_bf16_16816(dkf[2 * np], as, b);
                    mma_bf16_16816(dkf[2 * np + 1], as, b + 2);
                }
            }
            if (DET && threadIdx.x == 0) {
                // wait for this block's turn at (hq, q0): the blocks from the diagonal one (hi =
                // q0 / 64) down to kb + 1 have added theirs (polled here, so the wait ends at the
                // barrier that is there anyway)
                int *turn = dq_turn + (int64_t)hq * CEIL_DIV(T, MMA_BQ) + q0 / MMA_BQ;
                const int want = q0 / MMA_BC - kb;
                while (ld_acquire_gpu(turn) != want) __nanosleep(32);
                pass_turn = turn;
                pass_value = want + 1;
            }
            __syncthreads(); // all of dS^T is in shared memory (DET: and it is this block's turn)

            // dQ[16 queries x HDP/2] += dS K; dS (query x key) is dS^T read through ldmatrix.trans.
            // DET: the accumulators start from dQ as the blocks before this one left it (L2 loads:
            // another multiprocessor wrote it), and the sum is stored back with plain stores.
            float dqf[HDP / 16][4];
#pragma unroll
            for (int n = 0; n < HDP / 16; n++) dqf[n][0] = dqf[n][1] = dqf[n][2] = dqf[n][3] = 0.0f;
            if (DET) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    int t = q0 + dq_m * 16 + g + 8 * r;
                    if (t >= T) continue;
                    const float *src = dq_acc + (int64_t)t * ldq + (int64_t)hq * hd;
#pragma unroll
                    for (int n = 0; n < HDP / 16; n++) {
                        int d = (dq_n0 + n) * 8 + 2 * tq;
                        if (d < hd) dqf[n][2 * r] = __ldcg(src + d);
                        if (d + 1 < hd) dqf[n][2 * r + 1] = __ldcg(src + d + 1);
                    }
                }
            }
#pragma unroll
            for (int kk = 0; kk < MMA_BC / 16; kk++) {
                uint32_t a[4];
                ldsm_x4_t(a, dSs + (kk * 16 + (lane & 7) + 8 * (lane >> 4)) * LDS + dq_m * 16 + 8 * ((lane >> 3) & 1));
#pragma unroll
                for (int np = 0; np < HDP / 32; np++) {
                    uint32_t b[4];
                    ldsm_x4_t(b, Ks + (kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + (dq_n0 + 2 * np) * 8 +
                                     8 * (lane >> 4));
                    mma_bf16_16816(dqf[2 * np], a, b);
                    mma_bf16_16816(dqf[2 * np + 1], a, b + 2);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int t = q0 + dq_m * 16 + g + 8 * r;
                if (t >= T) continue;
                float *dst = dq_acc + (int64_t)t * ldq + (int64_t)hq * hd;
#pragma unroll
                for (int n = 0; n < HDP / 16; n++) {
                    int d = (dq_n0 + n) * 8 + 2 * tq;
                    if (d < hd) dq_put<DET>(dst + d, dqf[n][2 * r]);
                    if (d + 1 < hd) dq_put<DET>(dst + d + 1, dqf[n][2 * r + 1]);
                }
            }
        }
    }

    if (DET) { // the last step's turn: after every thread's stores
        __syncthreads();
        if (threadIdx.x == 0 && pass_turn) st_release_gpu(pass_turn, pass_value);
    }

    // dK, dV of this warp's 16 keys, rows g and g + 8
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = r ? key1 : key0;
        if (key > klast) continue;
        if (DET && dkv_acc) { // this share's own slice: plain stores, added in share order later
            float *ka = dkv_acc + (int64_t)blockIdx.z * 2 * T * ldk + (int64_t)key * ldk + (int64_t)kvh * hd,
                  *va = ka + (int64_t)T * ldk;
#pragma unroll
            for (int n = 0; n < HDP / 8; n++) {
                int d = n * 8 + 2 * tq;
                if (d < hd) {
                    ka[d] = dkf[n][2 * r];
                    va[d] = dvf[n][2 * r];
                }
                if (d + 1 < hd) {
                    ka[d + 1] = dkf[n][2 * r + 1];
                    va[d + 1] = dvf[n][2 * r + 1];
                }
            }
            continue;
        }
        if (dkv_acc) {
            float *ka = dkv_acc + (int64_t)key * ldk + (int64_t)kvh * hd, *va = ka + (int64_t)T * ldk;
#pragma unroll
            for (int n = 0; n < HDP / 8; n++) {
                int d = n * 8 + 2 * tq;
                if (d < hd) {
                    atomicAdd(ka + d, dkf[n][2 * r]);
                    atomicAdd(va + d, dvf[n][2 * r]);
                }
                if (d + 1 < hd) {
                    atomicAdd(ka + d + 1, dkf[n][2 * r + 1]);
                    atomicAdd(va + d + 1, dvf[n][2 * r + 1]);
                }
            }
            continue;
        }
        bf16 *kr = dk + (int64_t)key * ldk + (int64_t)kvh * hd, *vr = dv + (int64_t)key * ldk + (int64_t)kvh * hd;
#pragma unroll
        for (int n = 0; n < HDP / 8; n++) {
            int d = n * 8 + 2 * tq;
            if (d < hd) {
                kr[d] = __float2bfloat16_rn(dkf[n][2 * r]);
                vr[d] = __float2bfloat16_rn(dvf[n][2 * r]);
            }
            if (d + 1 < hd) {
                kr[d + 1] = __float2bfloat16_rn(dkf[n][2 * r + 1]);
                vr[d + 1] = __float2bfloat16_rn(dvf[n][2 * r + 1]);
            }
        }
    }
}

template <int HDP>
static void mma_bwd_launch(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                           const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh,
                           int nkv, int hd, int vec, attn_params ap) {
    size_t smem = (size_t)(2 * MMA_BC + 4 * MMA_BQ) * (HDP + 8) * sizeof(bf16) +
                  (size_t)MMA_BC * (MMA_BQ + 8) * sizeof(bf16) + 2 * 3 * MMA_BQ * sizeof(float);
    static bool attr_set = false;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(mma_bwd_kernel<HDP, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        CUDA_CHECK(cudaFuncSetAttribute(mma_bwd_kernel<HDP, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_set = true;
    }
    // With grouped-query attention there are only T/64 * nkv (key tile, kv head) pairs: when that
    // is under ~6 blocks a multiprocessor, split each group's query heads over more blocks and
    // add their dK, dV partial sums in fp32.
    static int sms = 0;
    if (!sms) CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    int tiles = CEIL_DIV(T, MMA_BC), rep = nh / nkv, split = 1;
    while (rep % (2 * split) == 0 && (int64_t)tiles * nkv * split < 6 * sms) split *= 2;
    const bool det = cuda_det();
    float *dkv_acc = NULL;
    size_t nkvel = (size_t)T * nkv * hd;
    if (split > 1 && det) { // every element of every share's slice is written: no zeroing
        dkv_acc = (float *)cuda_scratch(SCRATCH_ATTN_DKV, (size_t)split * 2 * nkvel * sizeof(float));
    } else if (split > 1) {
        dkv_acc = (float *)cuda_scratch(SCRATCH_ATTN_DKV, 2 * nkvel * sizeof(float));
        CUDA_CHECK(cudaMemsetAsync(dkv_acc, 0, 2 * nkvel * sizeof(float), cuda_stream()));
    }
    int *dq_turn = NULL;
    if (det) {
        size_t nturn = (size_t)nh * CEIL_DIV(T, MMA_BQ);
        dq_turn = (int *)cuda_scratch(SCRATCH_ATTN_TURN, nturn * sizeof(int));
        CUDA_CHECK(cudaMemsetAsync(dq_turn, 0, nturn * sizeof(int), cuda_stream()));
    }
    dim3 grid(tiles, nkv, split);
    if (det)
        mma_bwd_kernel<HDP, true><<<grid, MMA_THREADS, smem, cuda_stream()>>>(dq_acc, dk, dv, dkv_acc, dq_turn, dout, lse,
                                                                           D, q, k, v, seq_start, T, nh, nkv, hd, ap, vec);
    else
        mma_bwd_kernel<HDP, false><<<grid, MMA_THREADS, smem, cuda_stream()>>>(dq_acc, dk, dv, dkv_acc, NULL, dout, lse,
                                                                            D, q, k, v, seq_start, T, nh, nkv, hd, ap, vec);
    CUDA_CHECK_LAUNCH();
    if (dkv_acc && det) {
        launch_sum_slices_bf16(dk, dkv_acc, split, 2 * (int64_t)nkvel, (int64_t)nkvel);
        launch_sum_slices_bf16(dv, dkv_acc + nkvel, split, 2 * (int64_t)nkvel, (int64_t)nkvel);
    } else if (dkv_acc) {
        launch_f32_to_bf16(dk, dkv_acc, (int64_t)nkvel);
        launch_f32_to_bf16(dv, dkv_acc + nkvel, (int64_t)nkvel);
    }
}

void attn_mma_bwd(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                  const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh, int nkv,
                  int hd, int vec, attn_params ap) {
    if (hd <= 64)
        mma_bwd_launch<64>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    else
        mma_bwd_launch<128>(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
}
