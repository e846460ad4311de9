/* test_golden_gpu.c: the golden PyTorch dumps of test_golden, run through ops_cuda() (bf16
 * activations): the same model code on the GPU backend, within bf16 tolerances. The dumps are fp32
 * torch; bf16 keeps ~3 significant digits, so logits and loss are held to 2e-2 and gradients and
 * the 10-step curve to 5e-2 (relative to each tensor's largest value). Skipped without a device. */
#include "golden_check.h"

static const ops_table *gpu;
static const golden_tol tol_bf16 = {1e-6, 2e-2, 2e-2, 5e-2, 5e-2};

TEST(golden_llama_gpu) { check_case(&models[0], false, gpu, tol_bf16); }
TEST(golden_llama_packed_gpu) { check_case(&models[0], true, gpu, tol_bf16); }
TEST(golden_qwen2_gpu) { check_case(&models[1], false, gpu, tol_bf16); }
TEST(golden_qwen2_packed_gpu) { check_case(&models[1], true, gpu, tol_bf16); }

int main(void) {
    gpu = ops_cuda();
    if (!gpu) {
        printf("no CUDA device: GPU golden tests skipped\n");
        return 0;
    }
    RUN(golden_llama_gpu);
    RUN(golden_llama_packed_gpu);
    RUN(golden_qwen2_gpu);
    RUN(golden_qwen2_packed_gpu);
    return test_summary();
}
