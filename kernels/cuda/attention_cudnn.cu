// attention_cudnn.cu: causal attention forward and backward on cuDNN's fused flash-attention
// engines, through the cuDNN 9 backend (graph) API.
//
// cuDNN is not linked: libcudnn.so.9 is opened with dlopen the first time attention asks for it
// (as cuBLAS is, cublas_lazy.cu), so a build with this file starts and runs without cuDNN
// installed; attention then runs on our own kernels (attention_mma.cu) and
// cuda_attention_name() says why. The graphs follow the operation pattern cuDNN's runtime
// fusion engine recognises as scaled dot-product attention (docs/cuda-attention.md lists the
// nodes): bf16 Q, K, V, O in the [b, h, s, d] view of our token-major rows, fp32 scores, a
// causal mask from generated row/column indices (and, for sliding-window layers, a second mask
// keeping keys less than the window behind the query), softmax statistics (natural-log
// log-sum-exp) written to our lse, and for the backward dQ through an fp32 accumulator. The score
// scale is a pass-by-value scalar, so Gemma's query_pre_attn_scalar costs no plan of its own.
// In deterministic mode (cuda_det()) the plans are built apart: their reductions are marked
// deterministic and only engines without cuDNN's nondeterministic note are taken.
// Two layouts: dense (b sequences of s tokens each) and ragged (b sequences of at most s tokens,
// packed back to back: per-sequence lengths bound the products, a padding mask hides the rest,
// and per-sequence offsets place each sequence's rows); attention.cu decides which. Plans are
// built once per shape and cached.
#include "attention_common.cuh"
#include "cuda_ext.h"

#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#define HAVE_CUDNN_HEADERS 1
#endif
#endif

#ifndef HAVE_CUDNN_HEADERS
extern "C" double cuda_attention_det_workspace_cap(void) { return 0; }
extern "C" void cuda_attention_det_workspace_cap_set(double) {}
extern "C" void cuda_attention_workspace_cap_set(double) {}
extern "C" double cuda_attention_cudnn_workspace(int, int, int, int, int, int, int, int, int) { return -1; }
extern "C" void cuda_attention_det_cudnn_bwd(int) {}
extern "C" void cuda_attention_det_cudnn_split(int) {}
extern "C" long cuda_attention_det_split_calls(void) { return 0; }
extern "C" int cuda_attention_cudnn_probe(char *msg, size_t cap) {
    snprintf(msg, cap, "built without the cuDNN headers (cudnn_graph.h)");
    return -1;
}
int attn_cudnn_fwd(bf16 *, float *, const bf16 *, const bf16 *, const bf16 *, const attn_cudnn_layout *, int, int,
                   int, attn_params) {
    return -1;
}
int attn_cudnn_bwd(bf16 *, bf16 *, bf16 *, const bf16 *, const bf16 *, const float *, const bf16 *, const bf16 *,
                   const bf16 *, const attn_cudnn_layout *, int, int, int, attn_params) {
    return -1;
}
#else

typedef cudnnBackendDescriptor_t Desc;

// the entry points used, resolved from the library at load time
static struct {
    size_t (*GetVersion)(void);
    cudnnStatus_t (*Create)(cudnnHandle_t *);
    cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t);
    const char *(*GetErrorString)(cudnnStatus_t);
    void (*GetLastErrorString)(char *, size_t);
    cudnnStatus_t (*CreateDescriptor)(cudnnBackendDescriptorType_t, Desc *);
    cudnnStatus_t (*DestroyDescriptor)(Desc);
    cudnnStatus_t (*SetAttribute)(Desc, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t,
                                  const void *);
    cudnnStatus_t (*GetAttribute)(Desc const, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t,
                                  int64_t *, void *);
    cudnnStatus_t (*Finalize)(Desc);
    cudnnStatus_t (*Execute)(cudnnHandle_t, Desc, Desc);
} F;

static void *g_lib;
static cudnnHandle_t g_handle;
static size_t g_version;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_err[512];

static void load(void) {
    const char *names[] = {"libcudnn.so.9", "libcudnn.so"};
    for (const char *n : names)
        if ((g_lib = dlopen(n, RTLD_NOW | RTLD_LOCAL))) break;
    if (!g_lib) {
        snprintf(g_err, sizeof g_err, "cannot load cuDNN (libcudnn.so.9): %s; add its directory (for example "
                 "site-packages/nvidia/cudnn/lib of the nvidia-cudnn pip package) to LD_LIBRARY_PATH", dlerror());
        return;
    }
    struct { void **slot; const char *name; } syms[] = {
        {(void **)&F.GetVersion, "cudnnGetVersion"},
        {(void **)&F.Create, "cudnnCreate"},
        {(void **)&F.SetStream, "cudnnSetStream"},
        {(void **)&F.GetErrorString, "cudnnGetErrorString"},
        {(void **)&F.GetLastErrorString, "cudnnGetLastErrorString"},
        {(void **)&F.CreateDescriptor, "cudnnBackendCreateDescriptor"},
        {(void **)&F.DestroyDescriptor, "cudnnBackendDestroyDescriptor"},
        {(void **)&F.SetAttribute, "cudnnBackendSetAttribute"},
        {(void **)&F.GetAttribute, "cudnnBackendGetAttribute"},
        {(void **)&F.Finalize, "cudnnBackendFinalize"},
        {(void **)&F.Execute, "cudnnBackendExecute"},
    };
    for (auto &s : syms) {
        *s.slot = dlsym(g_lib, s.name);
        if (!*s.slot) {
            snprintf(g_err, sizeof g_err, "cuDNN library lacks %s (need cuDNN 9)", s.name);
            g_lib = nullptr;
            return;
        }
    }
    g_version = F.GetVersion();
    if (g_version < 90000) {
        snprintf(g_err, sizeof g_err, "cuDNN %zu is too old (need 9.0 or newer)", g_version);
        g_lib = nullptr;
        return;
    }
    cudnnStatus_t st = F.Create(&g_handle);
    if (st != CUDNN_STATUS_SUCCESS) {
        snprintf(g_err, sizeof g_err, "cudnnCreate failed: %s", F.GetErrorString(st));
        g_lib = nullptr;
    }
}

extern "C" int cuda_attention_cudnn_probe(char *msg, size_t cap) {
    pthread_once(&g_once, load);
    if (g_lib) {
        if (msg && cap) snprintf(msg, cap, "cuDNN %zu.%zu.%zu", g_version / 10000, g_version / 100 % 100, g_version % 100);
        return 0;
    }
    if (msg && cap) snprintf(msg, cap, "%s", g_err);
    return -1;
}

// ---- graph building: every descriptor of one graph is kept until the plan is built ----

struct builder {
    Desc keep[224];
    int nkeep;
    int64_t uid;
    const char *fail; // the first step that failed, NULL while all is well
    cudnnStatus_t st;
};

static Desc mk(builder *b, cudnnBackendDescriptorType_t type) {
    Desc d = nullptr;
    if (b->fail) return nullptr;
    cudnnStatus_t st = F.CreateDescriptor(type, &d);
    if (st != CUDNN_STATUS_SUCCESS || b->nkeep == (int)(sizeof b->keep / sizeof *b->keep)) {
        b->fail = "create descriptor", b->st = st;
        if (d) F.DestroyDescriptor(d);
        return nullptr;
    }
    return b->keep[b->nkeep++] = d;
}

static void set(builder *b, Desc d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t n,
                const void *v, const char *what) {
    if (b->fail) return;
    cudnnStatus_t st = F.SetAttribute(d, a, t, n, v);
    if (st != CUDNN_STATUS_SUCCESS) b->fail = what, b->st = st;
}

static void fin(builder *b, Desc d, const char *what) {
    if (b->fail) return;
    cudnnStatus_t st = F.Finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) b->fail = what, b->st = st;
}

static void release(builder *b) {
    for (int i = b->nkeep - 1; i >= 0; i--) F.DestroyDescriptor(b->keep[i]);
    b->nkeep = 0;
}

struct tns {
    Desc d;
    int64_t uid;
    int64_t dim[4], str[4];
};

static tns tensor(builder *b, cudnnDataType_t dt, const int64_t dim[4], const int64_t str[4], bool virt,
                  bool by_value = false, const tns *ragged = nullptr) {
    tns t;
    t.uid = ++b->uid;
    memcpy(t.dim, dim, sizeof t.dim);
    memcpy(t.str, str, sizeof t.str);
    t.d = mk(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t align = 16;
    set(b, t.d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor type");
    set(b, t.d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim, "tensor dims");
    set(b, t.d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, str, "tensor strides");
    set(b, t.d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &t.uid, "tensor uid");
    set(b, t.d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    set(b, t.d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor virtual");
    if (by_value) set(b, t.d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    if (ragged)
        set(b, t.d, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged->d, "ragged offset");
    fin(b, t.d, "tensor");
    return t;
}

// a virtual fp32 (or dt) tensor shaped like t
static tns like(builder *b, const tns &t, cudnnDataType_t dt = CUDNN_DATA_FLOAT) {
    return tensor(b, dt, t.dim, t.str, true);
}

static tns scalar(builder *b, cudnnDataType_t dt = CUDNN_DATA_FLOAT) {
    const int64_t one[4] = {1, 1, 1, 1};
    return tensor(b, dt, one, one, false, true);
}

// y = mode(x[, b2[, t]]), computed in prec; axis >= 0 for GEN_INDEX
static Desc pw(builder *b, cudnnPointwiseMode_t mode, const tns &x, const tns *b2, const tns *t, const tns &y,
               cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc p = mk(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(b, p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(b, p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(b, p, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    fin(b, p, "pointwise descriptor");
    Desc op = mk(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p, "pointwise op");
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, "pointwise x");
    if (b2) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b2->d, "pointwise b");
    if (t) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t->d, "pointwise t");
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, "pointwise y");
    fin(b, op, "pointwise operation");
    return op;
}

static Desc reduce(builder *b, cudnnReduceTensorOp_t mode, const tns &x, const tns &y) {
    Desc r = mk(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    set(b, r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction mode");
    set(b, r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, "reduction precision");
    fin(b, r, "reduction descriptor");
    Desc op = mk(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r, "reduction op");
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, "reduction x");
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, "reduction y");
    fin(b, op, "reduction operation");
    return op;
}

// c = a bm; m, n, k: the per-sequence lengths that bound the product (ragged layouts), or NULL
static Desc matmul(builder *b, const tns &a, const tns &bm, const tns &c, const tns *m_ov = nullptr,
                   const tns *n_ov = nullptr, const tns *k_ov = nullptr) {
    Desc m = mk(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    set(b, m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, "matmul precision");
    fin(b, m, "matmul descriptor");
    Desc op = mk(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a.d, "matmul a");
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bm.d, "matmul b");
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c.d, "matmul c");
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m, "matmul op");
    if (m_ov) set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ov->d, "m");
    if (n_ov) set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ov->d, "n");
    if (k_ov) set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ov->d, "k");
    fin(b, op, "matmul operation");
    return op;
}

static Desc reshape(builder *b, const tns &x, const tns &y) {
    Desc op = mk(b, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, "reshape x");
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, "reshape y");
    fin(b, op, "reshape operation");
    return op;
}

// the causal mask on scores s: keep key col <= query row, -inf elsewhere
static tns causal(builder *b, Desc *ops, int *n, const tns &s, const tns &neg_inf) {
    tns row = like(b, s, CUDNN_DATA_INT32), col = like(b, s, CUDNN_DATA_INT32);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_FLOAT, 2);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_FLOAT, 3);
    tns keep = like(b, s, CUDNN_DATA_BOOLEAN);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
    tns out = like(b, s);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_BINARY_SELECT, s, &neg_inf, &keep, out);
    return out;
}

// the sliding window on scores s (after the causal mask): keep key col when col + window > row
// (query row sees the window keys up to itself: row - col < window), -inf elsewhere; window is
// a pass-by-value scalar of type dt. cuDNN's SDPA engines recognise this pattern (cudnn-frontend
// builds it the same way) with the indices and window in fp32 (variant 0) or int32 (variant 1).
static tns windowed(builder *b, Desc *ops, int *n, const tns &s, const tns &window, const tns &neg_inf,
                    cudnnDataType_t dt) {
    tns row = like(b, s, dt), col = like(b, s, dt);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, dt, 2);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, dt, 3);
    tns reach = like(b, s, dt);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_ADD, col, &window, nullptr, reach, dt, 3);
    tns keep = like(b, s, CUDNN_DATA_BOOLEAN);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_CMP_GT, reach, &row, nullptr, keep, CUDNN_DATA_BOOLEAN);
    tns out = like(b, s);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_BINARY_SELECT, s, &neg_inf, &keep, out);
    return out;
}

// the padding mask of a ragged batch: keep row < seq_len[b] and col < seq_len[b], -inf elsewhere
static tns padding(builder *b, Desc *ops, int *n, const tns &s, const tns &seq_len, const tns &neg_inf) {
    tns row = like(b, s, CUDNN_DATA_INT32), col = like(b, s, CUDNN_DATA_INT32);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
    tns rin = like(b, s, CUDNN_DATA_BOOLEAN), cin = like(b, s, CUDNN_DATA_BOOLEAN), keep = like(b, s, CUDNN_DATA_BOOLEAN);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_CMP_LT, row, &seq_len, nullptr, rin, CUDNN_DATA_BOOLEAN);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_CMP_LT, col, &seq_len, nullptr, cin, CUDNN_DATA_BOOLEAN);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_LOGICAL_AND, rin, &cin, nullptr, keep, CUDNN_DATA_BOOLEAN);
    tns out = like(b, s);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_BINARY_SELECT, s, &neg_inf, &keep, out);
    return out;
}

// operation graph -> the first engine configuration the heuristics offer that builds a plan
// whether an engine configuration's engine carries cuDNN's "nondeterministic" numerical note
// (an engine whose notes cannot be read counts as nondeterministic)
static bool cfg_nondeterministic(Desc cfg) {
    Desc e = nullptr;
    if (F.CreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &e) != CUDNN_STATUS_SUCCESS) return true;
    int64_t n = 0;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    bool nd = F.GetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e) !=
                  CUDNN_STATUS_SUCCESS ||
              F.GetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                             CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) != CUDNN_STATUS_SUCCESS;
    for (int64_t i = 0; !nd && i < n; i++) nd = notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
    F.DestroyDescriptor(e);
    return nd;
}

// det: only engine configurations without the nondeterministic note
static Desc build_plan(builder *b, Desc *ops, int n, int64_t *ws, bool det) {
    if (b->fail) return nullptr;
    Desc g = mk(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(b, g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle, "graph handle");
    set(b, g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, ops, "graph ops");
    fin(b, g, "operation graph");
    Desc h = mk(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    set(b, h, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g, "heuristics graph");
    set(b, h, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    fin(b, h, "heuristics");
    if (b->fail) return nullptr;
    int64_t count = 0;
    cudnnStatus_t st = F.GetAttribute(h, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
    if (st != CUDNN_STATUS_SUCCESS || count <= 0) {
        b->fail = "heuristics results (no engine for this graph)", b->st = st;
        return nullptr;
    }
    if (count > 8) count = 8;
    Desc cfg[8];
    for (int64_t i = 0; i < count; i++) cfg[i] = mk(b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    if (b->fail) return nullptr;
    int64_t got = 0;
    st = F.GetAttribute(h, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfg);
    if (st != CUDNN_STATUS_SUCCESS || got <= 0) {
        b->fail = "heuristics results", b->st = st;
        return nullptr;
    }
    for (int64_t i = 0; i < got; i++) {
        Desc p = nullptr;
        if (det && cfg_nondeterministic(cfg[i])) {
            b->fail = "execution plan (only engines marked nondeterministic)", b->st = CUDNN_STATUS_NOT_SUPPORTED;
            continue;
        }
        if (F.CreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p) != CUDNN_STATUS_SUCCESS) continue;
        if (F.SetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle) == CUDNN_STATUS_SUCCESS &&
            F.SetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg[i]) ==
                CUDNN_STATUS_SUCCESS &&
            (st = F.Finalize(p)) == CUDNN_STATUS_SUCCESS) {
            int64_t n_ws = 0, w = 0;
            if (F.GetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n_ws, &w) !=
                CUDNN_STATUS_SUCCESS)
                w = 0;
            *ws = w;
            return p; // the plan holds what it needs; the graph's descriptors can go
        }
        F.DestroyDescriptor(p);
    }
    b->fail = "execution plan (no engine configuration finalized)", b->st = st;
    return nullptr;
}

// ---- the two graphs ----

enum {
    U_Q, U_K, U_V, U_O, U_LSE, U_SCALE, U_NEGINF, U_DO, U_DQ, U_DK, U_DV, U_D, U_DQACC, U_ONE,
    U_SEQ, U_OFFQ, U_OFFKV, U_OFFST, U_WIN, U_COUNT
};

struct plan {
    int bwd, ragged, b, s, T, nh, nkv, hd;
    int hsq, hskv; // the heads a token's row holds (q-, kv-shaped): nh, nkv, or more for a head group
    int det; // built for deterministic mode (cuda_det()): deterministic reductions and engines
    int said_cap; // told once that its workspace is over the cap
    int windowed, variant; // a sliding-window mask in the graph; its encoding (windowed())
    Desc p;
    int64_t ws;
    int64_t uid[U_COUNT];
    int failed;
};

static plan g_plans[64];

// The deterministic backward keeps dS for a whole [b, h, s, s] batch in a bf16 workspace
// (2 b h s^2 bytes and a little more: 256 MiB for 32 heads of 2048 tokens). A plan that needs
// more than the cap is not used: the backward is split into rows and head groups under it
// (det_split_bwd), or, where no group fits, the mma kernels' fixed-order backward runs. The
// memory plan counts up to the cap (ops_backend_info.det_attn_workspace_cap, model/llama_plan.c)
// and lowers it when a budget leaves less room (cuda_attention_det_workspace_cap_set).
#define DET_WS_CAP (320.0 * 1048576.0)
static double g_det_cap = DET_WS_CAP;

// Whether deterministic mode runs the backward on cuDNN's deterministic plans. On unless
// QLORA_CUDA_DET_CUDNN_BWD=0 or cuda_attention_det_cudnn_bwd(0): those plans match the CPU
// reference on the H200 (test_ops_gpu), and two 7B runs gave one checksum there
// (bench/gpu-determinism.sh, 2026-12-05) at 0.3% below the default mode's speed, where the mma
// kernels' fixed-order backward (which runs for shapes over the cap) costs 19%.
static int g_det_bwd = -1;

// a switch set by its setter, else read once from the environment: on unless name=0
static bool env_switch(int *g, const char *name) {
    if (*g < 0) {
        const char *e = getenv(name);
        *g = !(e && !strcmp(e, "0"));
    }
    return *g == 1;
}

static bool det_bwd_on(void) { return env_switch(&g_det_bwd, "QLORA_CUDA_DET_CUDNN_BWD"); }

extern "C" void cuda_attention_det_cudnn_bwd(int on) { g_det_bwd = on ? 1 : 0; }

extern "C" double cuda_attention_det_workspace_cap(void) {
    return det_bwd_on() && cuda_attention_cudnn_probe(nullptr, 0) == 0 ? g_det_cap : 0;
}

extern "C" void cuda_attention_det_workspace_cap_set(double bytes) {
    g_det_cap = bytes > 0 && bytes < DET_WS_CAP ? bytes : DET_WS_CAP;
}

// The other plans' workspace (grouped-query heads: cuDNN's backward keeps dK and dV for every q
// head, 4 h d bytes a token, where our kernels take 8 h_kv d of fp32 partial sums) is counted by
// the memory plan for one sequence of its tokens (cuda_attention_workspace), and a ragged batch's
// plan is built for its padded shape, which may take more: the plan sets this cap (0: none) to
// what it counted and left free, and a plan over it is not used (that layout runs on the mma
// kernels), so no batch takes more device memory than the plan said.
static double g_ws_cap;

extern "C" void cuda_attention_workspace_cap_set(double bytes) { g_ws_cap = bytes > 0 ? bytes : 0; }

static int g_nplans, g_evict;

// the [b, h, s, d] view of token-major rows [b*s, hs*d] (h of the row's hs heads: a head group)
static void bshd(int64_t out_dim[4], int64_t out_str[4], int b, int h, int s, int d, int hs) {
    int64_t dim[4] = {b, h, s, d}, str[4] = {(int64_t)s * hs * d, d, (int64_t)hs * d, 1};
    memcpy(out_dim, dim, sizeof dim), memcpy(out_str, str, sizeof str);
}

static void transposed(int64_t dim[4], int64_t str[4]) { // [.., s, d] -> [.., d, s] (a view)
    int64_t t = dim[2];
    dim[2] = dim[3], dim[3] = t;
    t = str[2];
    str[2] = str[3], str[3] = t;
}

static void report(const plan *pl, builder *b) {
    char last[512] = "";
    F.GetLastErrorString(last, sizeof last);
    fprintf(stderr, "cuDNN attention %s%s (%s b=%d s=%d T=%d heads=%d/%d hd=%d%s): %s failed (%s)%s%s; that shape "
            "runs on our kernels\n", pl->bwd ? "backward" : "forward", pl->det ? ", deterministic" : "",
            pl->ragged ? "ragged" : "dense", pl->b, pl->s, pl->T, pl->nh, pl->nkv, pl->hd,
            pl->windowed ? (pl->variant ? " window int32" : " window fp32") : "", b->fail, F.GetErrorString(b->st),
            last[0] ? ": " : "", last);
}

// what both graphs share: the ragged layout's tensors (sequence lengths; element offsets of
// each sequence's first row in q-shaped, kv-shaped and lse-shaped tensors), the scalars
struct common {
    const tns *seq, *offq, *offkv, *offst; // all NULL for a dense batch
    tns seq_t, offq_t, offkv_t, offst_t, scale, neg_inf;
    tns window; // a sliding-window layer's window (pl->windowed)
};

static void make_common(builder *b, const plan *pl, common *c) {
    memset(c, 0, sizeof *c);
    if (pl->ragged) {
        int64_t sd[4] = {pl->b, 1, 1, 1}, od[4] = {pl->b + 1, 1, 1, 1}, one[4] = {1, 1, 1, 1};
        c->seq_t = tensor(b, CUDNN_DATA_INT32, sd, one, false);
        c->offq_t = tensor(b, CUDNN_DATA_INT32, od, one, false);
        c->offkv_t = tensor(b, CUDNN_DATA_INT32, od, one, false);
        c->offst_t = tensor(b, CUDNN_DATA_INT32, od, one, false);
        c->seq = &c->seq_t, c->offq = &c->offq_t, c->offkv = &c->offkv_t, c->offst = &c->offst_t;
    }
    c->scale = scalar(b), c->neg_inf = scalar(b);
    if (pl->windowed) c->window = scalar(b, pl->variant ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT);
}

// scale * Q K^T with the padding (ragged) and causal masks
static tns masked_scores(builder *b, Desc *ops, int *n, const plan *pl, common *c, const tns &Q, const tns &KT) {
    int bs = pl->b, s = pl->s, h = pl->nh;
    int64_t sdim[4] = {bs, h, s, s}, sstr[4] = {(int64_t)h * s * s, (int64_t)s * s, s, 1};
    tns S = tensor(b, CUDNN_DATA_FLOAT, sdim, sstr, true);
    ops[(*n)++] = matmul(b, Q, KT, S, c->seq, c->seq);
    tns S1 = like(b, S);
    ops[(*n)++] = pw(b, CUDNN_POINTWISE_MUL, S, &c->scale, nullptr, S1);
    if (c->seq) S1 = padding(b, ops, n, S1, *c->seq, c->neg_inf);
    tns S2 = causal(b, ops, n, S1, c->neg_inf);
    if (!pl->windowed) return S2;
    return windowed(b, ops, n, S2, c->window, c->neg_inf, pl->variant ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT);
}

static void build_fwd(plan *pl) {
    builder B = {};
    builder *b = &B;
    int bs = pl->b, s = pl->s, h = pl->nh, hk = pl->nkv, d = pl->hd;
    common c;
    make_common(b, pl, &c);
    int64_t dim[4], str[4];
    bshd(dim, str, bs, h, s, d, pl->hsq);
    tns Q = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    tns O = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    bshd(dim, str, bs, hk, s, d, pl->hskv);
    tns V = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    transposed(dim, str);
    tns KT = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    int64_t rdim[4] = {bs, h, s, 1}, rstr[4] = {(int64_t)h * s, s, 1, 1};
    int64_t lstr[4] = {s, pl->T, 1, 1}; // our lse [nh, T]
    tns LSE = tensor(b, CUDNN_DATA_FLOAT, rdim, lstr, false, false, c.offst);
    Desc ops[56];
    int n = 0;
    tns S2 = masked_scores(b, ops, &n, pl, &c, Q, KT);
    tns M = tensor(b, CUDNN_DATA_FLOAT, rdim, rstr, true);
    ops[n++] = reduce(b, CUDNN_REDUCE_TENSOR_MAX, S2, M);
    tns S3 = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_SUB, S2, &M, nullptr, S3);
    tns E = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_EXP, S3, nullptr, nullptr, E);
    tns Z = tensor(b, CUDNN_DATA_FLOAT, rdim, rstr, true);
    ops[n++] = reduce(b, CUDNN_REDUCE_TENSOR_ADD, E, Z);
    tns LZ = tensor(b, CUDNN_DATA_FLOAT, rdim, rstr, true);
    ops[n++] = pw(b, CUDNN_POINTWISE_LOG, Z, nullptr, nullptr, LZ);
    ops[n++] = pw(b, CUDNN_POINTWISE_ADD, M, &LZ, nullptr, LSE);
    tns P = like(b, S2, CUDNN_DATA_BFLOAT16);
    ops[n++] = pw(b, CUDNN_POINTWISE_DIV, E, &Z, nullptr, P);
    ops[n++] = matmul(b, P, V, O, c.seq, nullptr, c.seq);
    pl->uid[U_Q] = Q.uid, pl->uid[U_K] = KT.uid, pl->uid[U_V] = V.uid, pl->uid[U_O] = O.uid;
    pl->uid[U_LSE] = LSE.uid, pl->uid[U_SCALE] = c.scale.uid, pl->uid[U_NEGINF] = c.neg_inf.uid;
    pl->uid[U_WIN] = pl->windowed ? c.window.uid : 0;
    if (c.seq)
        pl->uid[U_SEQ] = c.seq->uid, pl->uid[U_OFFQ] = c.offq->uid, pl->uid[U_OFFKV] = c.offkv->uid,
        pl->uid[U_OFFST] = c.offst->uid;
    pl->p = build_plan(b, ops, n, &pl->ws, pl->det);
    if (!pl->p) report(pl, b), pl->failed = 1;
    release(b);
}

static void build_bwd(plan *pl) {
    builder B = {};
    builder *b = &B;
    int bs = pl->b, s = pl->s, h = pl->nh, hk = pl->nkv, d = pl->hd;
    common c;
    make_common(b, pl, &c);
    int64_t dim[4], str[4];
    bshd(dim, str, bs, h, s, d, pl->hsq);
    tns Q = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    tns O = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    tns dO = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    tns dQ = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offq);
    bshd(dim, str, bs, hk, s, d, pl->hskv);
    tns dK = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    tns dV = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    transposed(dim, str);
    tns KT = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    tns VT = tensor(b, CUDNN_DATA_BFLOAT16, dim, str, false, false, c.offkv);
    int64_t tdim[4] = {bs, h, s, s}, tstr[4] = {(int64_t)h * s * s, (int64_t)s * s, 1, s}; // [.., kv, q] views
    int64_t rdim[4] = {bs, h, s, 1}, rstr[4] = {(int64_t)h * s, s, 1, 1};
    int64_t lstr[4] = {s, pl->T, 1, 1};
    int64_t fdim[4] = {bs, h, s, d}, fstr[4] = {(int64_t)h * s * d, (int64_t)s * d, d, 1};
    tns LSE = tensor(b, CUDNN_DATA_FLOAT, rdim, lstr, false, false, c.offst);
    // rowsum(dO * O) and the fp32 dQ accumulator (SCRATCH_ATTN_D, SCRATCH_ATTN_DQ): dense
    // [b, h, s, 1] and [b, h, s, d]; ragged in the layouts of lse and dq (T rows, not b*s)
    tns Dsum = c.seq ? tensor(b, CUDNN_DATA_FLOAT, rdim, lstr, false, false, c.offst)
                     : tensor(b, CUDNN_DATA_FLOAT, rdim, rstr, false);
    bshd(dim, str, bs, h, s, d, pl->hsq);
    tns dQacc = c.seq ? tensor(b, CUDNN_DATA_FLOAT, dim, str, false, false, c.offq)
                      : tensor(b, CUDNN_DATA_FLOAT, fdim, fstr, false);
    tns one = scalar(b);
    Desc ops[72];
    int n = 0;
    // D = rowsum(dO * O)
    int64_t pdim[4] = {bs, h, s, d}, pstr[4] = {(int64_t)h * s * d, (int64_t)s * d, (int64_t)h * d, 1};
    tns DO = tensor(b, CUDNN_DATA_FLOAT, pdim, pstr, true);
    ops[n++] = pw(b, CUDNN_POINTWISE_MUL, dO, &O, nullptr, DO);
    tns Dr = tensor(b, CUDNN_DATA_FLOAT, rdim, rstr, true);
    ops[n++] = reduce(b, CUDNN_REDUCE_TENSOR_ADD, DO, Dr);
    ops[n++] = pw(b, CUDNN_POINTWISE_MUL, Dr, &one, nullptr, Dsum);
    // P = exp(mask(scale * Q K^T) - lse)
    tns S2 = masked_scores(b, ops, &n, pl, &c, Q, KT);
    tns S3 = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_SUB, S2, &LSE, nullptr, S3);
    tns P = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_EXP, S3, nullptr, nullptr, P);
    // dV = P^T dO
    tns PT = tensor(b, CUDNN_DATA_BFLOAT16, tdim, tstr, true);
    ops[n++] = reshape(b, P, PT);
    if (h == hk) {
        ops[n++] = matmul(b, PT, dO, dV, c.seq, nullptr, c.seq);
    } else {
        tns dVf = tensor(b, CUDNN_DATA_BFLOAT16, fdim, fstr, true);
        ops[n++] = matmul(b, PT, dO, dVf, c.seq, nullptr, c.seq);
        ops[n++] = reduce(b, CUDNN_REDUCE_TENSOR_ADD, dVf, dV);
    }
    // dS = P * (dO V^T - D) * scale
    tns dP = like(b, S2);
    ops[n++] = matmul(b, dO, VT, dP, c.seq, c.seq);
    tns dP1 = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_SUB, dP, &Dsum, nullptr, dP1);
    tns dP2 = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_MUL, dP1, &P, nullptr, dP2);
    tns dS = like(b, S2);
    ops[n++] = pw(b, CUDNN_POINTWISE_MUL, dP2, &c.scale, nullptr, dS);
    // dK = dS^T Q
    tns dST = tensor(b, CUDNN_DATA_BFLOAT16, tdim, tstr, true);
    ops[n++] = reshape(b, dS, dST);
    if (h == hk) {
        ops[n++] = matmul(b, dST, Q, dK, c.seq, nullptr, c.seq);
    } else {
        tns dKf = tensor(b, CUDNN_DATA_BFLOAT16, fdim, fstr, true);
        ops[n++] = matmul(b, dST, Q, dKf, c.seq, nullptr, c.seq);
        ops[n++] = reduce(b, CUDNN_REDUCE_TENSOR_ADD, dKf, dK);
    }
    // dQ = dS K: through the fp32 accumulator, or (deterministic) straight into dQ, which is the
    // graph that makes cuDNN's Hopper engines keep dS in a [b, h, s, s] bf16 workspace and sum
    // dQ in a fixed order instead of adding blocks' parts atomically
    int64_t kdim[4], kstr[4];
    memcpy(kdim, KT.dim, sizeof kdim), memcpy(kstr, KT.str, sizeof kstr);
    transposed(kdim, kstr);
    tns K = tensor(b, CUDNN_DATA_BFLOAT16, kdim, kstr, true, false, c.offkv);
    ops[n++] = reshape(b, KT, K);
    if (pl->det) {
        ops[n++] = matmul(b, dS, K, dQ, c.seq, nullptr, c.seq);
    } else {
        ops[n++] = matmul(b, dS, K, dQacc, c.seq, nullptr, c.seq);
        ops[n++] = pw(b, CUDNN_POINTWISE_IDENTITY, dQacc, nullptr, nullptr, dQ);
    }
    pl->uid[U_Q] = Q.uid, pl->uid[U_K] = KT.uid, pl->uid[U_V] = VT.uid, pl->uid[U_O] = O.uid;
    pl->uid[U_LSE] = LSE.uid, pl->uid[U_SCALE] = c.scale.uid, pl->uid[U_NEGINF] = c.neg_inf.uid;
    pl->uid[U_WIN] = pl->windowed ? c.window.uid : 0;
    pl->uid[U_DO] = dO.uid, pl->uid[U_DQ] = dQ.uid, pl->uid[U_DK] = dK.uid, pl->uid[U_DV] = dV.uid;
    pl->uid[U_D] = Dsum.uid, pl->uid[U_DQACC] = pl->det ? -1 : dQacc.uid, pl->uid[U_ONE] = one.uid;
    if (c.seq)
        pl->uid[U_SEQ] = c.seq->uid, pl->uid[U_OFFQ] = c.offq->uid, pl->uid[U_OFFKV] = c.offkv->uid,
        pl->uid[U_OFFST] = c.offst->uid;
    pl->p = build_plan(b, ops, n, &pl->ws, pl->det);
    if (!pl->p) report(pl, b), pl->failed = 1;
    release(b);
}

// p when it built and, in deterministic mode, its workspace is within the cap as it is now (the
// plan stays cached: a later, larger cap takes it); quiet: over the cap without a word (the
// caller tries a split)
static plan *under_cap(plan *p, int quiet) {
    if (p->failed) return nullptr;
    double cap = p->det ? g_det_cap : g_ws_cap;
    if ((!p->det && cap <= 0) || p->ws <= cap) return p;
    if (!quiet && !p->said_cap)
        fprintf(stderr, "cuDNN attention %s%s (%s b=%d s=%d heads=%d/%d hd=%d): workspace %.0f MiB is over the "
                "%.0f MiB cap; that shape runs on the mma kernels\n", p->bwd ? "backward" : "forward",
                p->det ? ", deterministic" : "", p->ragged ? "ragged" : "dense", p->b, p->s, p->nh, p->nkv, p->hd,
                p->ws / 1048576.0, cap / 1048576.0);
    p->said_cap |= !quiet;
    return nullptr;
}

// the cached plan of this graph, built on first use; a windowed graph whose fp32 encoding no engine
// takes is built again in the int32 one before the shape is given up. hsq, hskv: the heads of a
// token's row (nh, nkv but for a head group's plan); quiet_cap: a deterministic plan over the
// workspace cap fails without a word (the caller tries a split)
static plan *find_plan(int bwd, const attn_cudnn_layout *L, int nh, int nkv, int hd, int windowed, int hsq,
                       int hskv) {
    int ragged = L->dev != nullptr, T = L->T, det = cuda_det() ? 1 : 0;
    for (int i = 0; i < g_nplans; i++) {
        plan *p = &g_plans[i];
        if (p->bwd == bwd && p->det == det && p->ragged == ragged && p->b == L->b && p->s == L->s && p->T == T &&
            p->nh == nh && p->nkv == nkv && p->hd == hd && p->windowed == windowed && p->hsq == hsq &&
            p->hskv == hskv)
            return p;
    }
    const int cap = (int)(sizeof g_plans / sizeof *g_plans);
    plan *p = &g_plans[g_nplans < cap ? g_nplans++ : g_evict++ % cap]; // then oldest first
    if (p->p) F.DestroyDescriptor(p->p);
    for (int variant = 0; variant < (windowed ? 2 : 1); variant++) {
        memset(p, 0, sizeof *p);
        p->bwd = bwd, p->det = det, p->ragged = ragged, p->b = L->b, p->s = L->s, p->T = T, p->nh = nh, p->nkv = nkv,
        p->hd = hd, p->hsq = hsq, p->hskv = hskv;
        p->windowed = windowed, p->variant = variant;
        if (bwd)
            build_bwd(p);
        else
            build_fwd(p);
        if (!p->failed) break;
    }
    return p;
}

static plan *get_plan(int bwd, const attn_cudnn_layout *L, int nh, int nkv, int hd, int windowed, int hsq, int hskv,
                      int quiet_cap) {
    return under_cap(find_plan(bwd, L, nh, nkv, hd, windowed, hsq, hskv), quiet_cap);
}

// the workspace of the plan of this layout (built and cached on first use; cap or no cap), in
// the current mode; -1 when cuDNN is missing or no plan builds. ragged: b sequences of at most s
// tokens, T in all (the pointer a ragged plan's call passes is not needed to build it)
extern "C" double cuda_attention_cudnn_workspace(int bwd, int b, int s, int T, int ragged, int nh, int nkv, int hd,
                                                 int windowed) {
    static const int32_t any = 0;
    if (cuda_attention_cudnn_probe(nullptr, 0) || (ragged && g_version < 91000)) return -1;
    attn_cudnn_layout L = {b, s, T, ragged ? &any : nullptr};
    plan *p = find_plan(bwd, &L, nh, nkv, hd, windowed, nh, nkv);
    return p->failed ? -1 : (double)p->ws;
}

// the variant pack of the first n (uid, pointer) pairs, leaving out a tensor the plan's graph does
// not have (uid -1: the deterministic backward's missing dQ accumulator)
static int run(plan *pl, int n, const int64_t *all_uids, void *const *all_ptrs) {
    int64_t uids[U_COUNT];
    void *ptrs[U_COUNT];
    int k = 0;
    for (int i = 0; i < n && k < U_COUNT; i++)
        if (all_uids[i] >= 0) uids[k] = all_uids[i], ptrs[k++] = all_ptrs[i];
    n = k;
    void *ws = pl->ws > 0 ? cuda_scratch(SCRATCH_CUDNN_WS, (size_t)pl->ws) : nullptr;
    builder B = {};
    Desc vp = mk(&B, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    set(&B, vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids, "variant uids");
    set(&B, vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs, "variant pointers");
    set(&B, vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "variant workspace");
    fin(&B, vp, "variant pack");
    if (!B.fail) {
        F.SetStream(g_handle, cuda_stream());
        cudnnStatus_t st = F.Execute(g_handle, pl->p, vp);
        if (st != CUDNN_STATUS_SUCCESS) B.fail = "execute", B.st = st;
    }
    int rc = 0;
    if (B.fail) { // a plan that built but does not run: say so once and keep that shape on mma
        report(pl, &B);
        pl->failed = 1;
        rc = -1;
    }
    release(&B);
    return rc;
}

// the score of a masked position: cuDNN before 9.10 wants the lowest finite float there
static float mask_value(void) { return g_version < 91000 ? -FLT_MAX : -INFINITY; }

// the ragged layout's device arrays: sequence lengths [b], then offsets [b+1] for q-, kv- and
// lse-shaped tensors (attention.cu fills them)
static void ragged_ptrs(const attn_cudnn_layout *L, void **ptrs) {
    int32_t *p = (int32_t *)L->dev;
    ptrs[0] = p, ptrs[1] = p + L->b, ptrs[2] = p + 2 * L->b + 1, ptrs[3] = p + 3 * L->b + 2;
}

// the window as the graph's scalar takes it (the plan's encoding) at ptrs[i], uids[i]
static int window_arg(const plan *pl, const attn_params &ap, int64_t *uids, void **ptrs, int i, float *wf,
                      int32_t *wi) {
    if (!pl->windowed) return i;
    *wf = (float)ap.window, *wi = ap.window;
    uids[i] = pl->uid[U_WIN];
    ptrs[i] = pl->variant ? (void *)wi : (void *)wf;
    return i + 1;
}

int attn_cudnn_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const attn_cudnn_layout *L,
                   int nh, int nkv, int hd, attn_params ap) {
    if (ap.softcap != 0.0f || cuda_attention_cudnn_probe(nullptr, 0) || (L->dev && g_version < 91000)) return -1;
    plan *pl = get_plan(0, L, nh, nkv, hd, ap.window > 0, nh, nkv, 0);
    if (!pl) return -1;
    float scale = ap.scale, neg_inf = mask_value(), wf;
    int32_t wi;
    int64_t uids[12] = {pl->uid[U_Q], pl->uid[U_K], pl->uid[U_V], pl->uid[U_O], pl->uid[U_LSE], pl->uid[U_SCALE],
                        pl->uid[U_NEGINF], pl->uid[U_SEQ], pl->uid[U_OFFQ], pl->uid[U_OFFKV], pl->uid[U_OFFST]};
    void *ptrs[12] = {(void *)q, (void *)k, (void *)v, out, lse, &scale, &neg_inf};
    int n = 7;
    if (L->dev) ragged_ptrs(L, ptrs + 7), n = 11;
    n = window_arg(pl, ap, uids, ptrs, n, &wf, &wi);
    return run(pl, n, uids, ptrs);
}

// one backward call of a plan (L: its layout) on the tensors at these pointers
static int bwd_call(plan *pl, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                    const bf16 *q, const bf16 *k, const bf16 *v, const attn_cudnn_layout *L, int nh, int hd,
                    attn_params ap) {
    size_t T = (size_t)L->T;
    float *D = (float *)cuda_scratch(SCRATCH_ATTN_D, T * nh * sizeof(float));
    float *dq_acc = nullptr;
    if (!pl->det) {
        dq_acc = (float *)cuda_scratch(SCRATCH_ATTN_DQ, T * nh * hd * sizeof(float));
        if (g_version < 90600) CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, T * nh * hd * sizeof(float), cuda_stream()));
    }
    float scale = ap.scale, neg_inf = mask_value(), one = 1.0f, wf;
    int32_t wi;
    int64_t uids[19] = {pl->uid[U_Q],  pl->uid[U_K],  pl->uid[U_V],     pl->uid[U_O],     pl->uid[U_LSE],
                        pl->uid[U_DO], pl->uid[U_DQ], pl->uid[U_DK],    pl->uid[U_DV],    pl->uid[U_D],
                        pl->uid[U_DQACC], pl->uid[U_SCALE], pl->uid[U_NEGINF], pl->uid[U_ONE], pl->uid[U_SEQ],
                        pl->uid[U_OFFQ], pl->uid[U_OFFKV], pl->uid[U_OFFST]};
    void *ptrs[19] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)lse, (void *)dout, dq, dk, dv, D, dq_acc,
                      &scale, &neg_inf, &one};
    int n = 14;
    if (L->dev) ragged_ptrs(L, ptrs + 14), n = 18;
    n = window_arg(pl, ap, uids, ptrs, n, &wf, &wi);
    return run(pl, n, uids, ptrs);
}

// Deterministic mode, a dense batch whose backward plan needs more dS workspace than the cap
// (32 heads of 2048 tokens x 2, or of 4096 x 1): one call per row and per group of kv heads (with
// their q heads), each plan under the cap, issued one after another on the stream, so the bits
// stay fixed. On unless QLORA_CUDA_DET_CUDNN_SPLIT=0 (then the mma form runs): on the H100 of
// 2026-12-05 (bench/gpu-next.sh H) test_ops_gpu's split shapes matched the mma kernels and gave the
// same bits twice, and the rows over the cap trained 18-33% faster than on the mma form.
static int g_det_split = -1;

static bool det_split_on(void) { return env_switch(&g_det_split, "QLORA_CUDA_DET_CUDNN_SPLIT"); }

extern "C" void cuda_attention_det_cudnn_split(int on) { g_det_split = on ? 1 : 0; }

static long g_det_split_calls; // cuDNN calls made by det_split_bwd, one a row and head group

extern "C" long cuda_attention_det_split_calls(void) { return g_det_split_calls; }

static int det_split_bwd(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                         const bf16 *q, const bf16 *k, const bf16 *v, const attn_cudnn_layout *L, int nh, int nkv,
                         int hd, attn_params ap) {
    int group = nh / nkv, s = L->s, hk;
    attn_cudnn_layout row = {1, s, L->T, nullptr};
    plan *pl = nullptr;
    for (hk = nkv; hk >= 1 && !pl; hk--) // the most kv heads a call whose plan fits
        if (nkv % hk == 0 && (L->b > 1 || hk < nkv))
            pl = get_plan(1, &row, hk * group, hk, hd, ap.window > 0, nh, nkv, 1);
    if (!pl) { // the whole batch's plan (cached, over the cap) says so, once
        get_plan(1, L, nh, nkv, hd, ap.window > 0, nh, nkv, 0);
        return -1;
    }
    hk++;
    for (int r = 0; r < L->b; r++)
        for (int g = 0; g < nkv / hk; g++) {
            size_t oq = ((size_t)r * s * nh + (size_t)g * hk * group) * hd;
            size_t okv = ((size_t)r * s * nkv + (size_t)g * hk) * hd;
            size_t ol = (size_t)g * hk * group * L->T + (size_t)r * s; // lse [nh, T]
            int rc = bwd_call(pl, dq + oq, dk + okv, dv + okv, dout + oq, out + oq, lse + ol, q + oq, k + okv,
                              v + okv, &row, hk * group, hd, ap);
            if (rc) return rc; // the caller's mma backward then writes all of dq, dk and dv again
            g_det_split_calls++;
        }
    return 0;
}

int attn_cudnn_bwd(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse, const bf16 *q,
                   const bf16 *k, const bf16 *v, const attn_cudnn_layout *L, int nh, int nkv, int hd, attn_params ap) {
    // cuDNN up to 9.15 needs a padding-mask workaround when s is not a multiple of 128
    if (ap.softcap != 0.0f || cuda_attention_cudnn_probe(nullptr, 0) || (L->dev && g_version < 91000) ||
        (!L->dev && g_version <= 91500 && L->s % 128) || (cuda_det() && !det_bwd_on()))
        return -1;
    bool split = cuda_det() && !L->dev && det_split_on();
    plan *pl = get_plan(1, L, nh, nkv, hd, ap.window > 0, nh, nkv, split);
    if (!pl) return split ? det_split_bwd(dq, dk, dv, dout, out, lse, q, k, v, L, nh, nkv, hd, ap) : -1;
    return bwd_call(pl, dq, dk, dv, dout, out, lse, q, k, v, L, nh, hd, ap);
}

#endif
