// cublas_lazy.cu: cuBLAS loaded on first use instead of at program start.
//
// Linking libcublas and libcublasLt costs every start of qlora-run about 0.1 s (the loader maps
// and relocates several hundred MB), also for `validate`, `plan` or a fully cached run on a
// machine without a GPU. The CUDA backend uses five cuBLAS entry points; this file defines them
// and forwards each to the real library, opened with dlopen the first time one is called (only
// once a GPU training step is being set up). If the library cannot be found, calls return
// CUBLAS_STATUS_NOT_INITIALIZED and cublasGetStatusString says what is missing.
#include <cublas_v2.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define STR2(x) #x
#define STR(x) STR2(x)
#define CUBLAS_SONAME "libcublas.so." STR(CUBLAS_VER_MAJOR)

static void *g_lib;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_err[512];

static void open_lib(void) {
    static const char *names[] = {CUBLAS_SONAME, "libcublas.so"};
    for (const char *n : names) {
        g_lib = dlopen(n, RTLD_NOW | RTLD_GLOBAL);
        if (g_lib) return;
    }
    snprintf(g_err, sizeof g_err, "cannot load cuBLAS (" CUBLAS_SONAME "): %s; add the CUDA "
             "library directory to LD_LIBRARY_PATH", dlerror());
}

static void *sym(const char *name) {
    pthread_once(&g_once, open_lib);
    return g_lib ? dlsym(g_lib, name) : nullptr;
}

extern "C" int cuda_cublas_probe(char *msg, size_t cap) {
    pthread_once(&g_once, open_lib);
    if (g_lib) return 0;
    snprintf(msg, cap, "%s", g_err);
    return -1;
}

#define FORWARD(ret, name, params, args)                              \
    extern "C" ret CUBLASWINAPI name params {                          \
        typedef ret(*fn_t) params;                                     \
        static fn_t fn;                                                \
        if (!fn) fn = (fn_t)sym(#name);                                \
        if (!fn) return CUBLAS_STATUS_NOT_INITIALIZED;                 \
        return fn args;                                                \
    }

FORWARD(cublasStatus_t, cublasCreate_v2, (cublasHandle_t * handle), (handle))
FORWARD(cublasStatus_t, cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
FORWARD(cublasStatus_t, cublasSetWorkspace_v2, (cublasHandle_t handle, void *ws, size_t bytes), (handle, ws, bytes))
FORWARD(cublasStatus_t, cublasGemmEx,
        (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
         const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B, cudaDataType Btype, int ldb,
         const void *beta, void *C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
         cublasGemmAlgo_t algo),
        (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo))

extern "C" const char *CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
    typedef const char *(*fn_t)(cublasStatus_t);
    static fn_t fn;
    if (!fn) fn = (fn_t)sym("cublasGetStatusString");
    if (fn) return fn(status);
    return g_err[0] ? g_err : "cuBLAS is not loaded";
}
