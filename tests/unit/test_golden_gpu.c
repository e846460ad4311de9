/* test_golden_gpu.c: the golden PyTorch dumps of test_golden, run through ops_cuda() (bf16
 * activations): the same model code on the GPU backend, within bf16 tolerances. The dumps are fp32
 * torch; bf16 keeps ~3 significant digits, so logits and loss are held to 2e-2 and gradients to
 * 5e-2 (relative to each tensor's largest value). The 10-step AdamW curve is compared step by step,
 * each loss relative to torch's loss at that step: the bf16 differences compound as qwen2's loss
 * falls 10.5 -> 0.045, and the last steps measured (H200, this commit) 0.11 (qwen2), 0.063 (qwen2
 * packed), 0.0058 and 0.0028 (llama, packed): the limit is 0.2. The old limit, 5e-2 of the
 * first step's loss, allowed the last step to be off by 11 times its value.
 * Skipped without a device. */
#include "golden_check.h"

static const ops_table *gpu;
static const golden_tol tol_bf16 = {1e-6, 2e-2, 2e-2, 5e-2, 2e-1};

TEST(golden_llama_gpu) { check_case(&models[0], false, gpu, tol_bf16); }
TEST(golden_llama_packed_gpu) { check_case(&models[0], true, gpu, tol_bf16); }
TEST(golden_qwen2_gpu) { check_case(&models[1], false, gpu, tol_bf16); }
TEST(golden_qwen2_packed_gpu) { check_case(&models[1], true, gpu, tol_bf16); }
/* qwen3's q/k norms run through the same rmsnorm kernels (rows of head_dim) */
TEST(golden_qwen3_gpu) { check_case(&models[2], false, gpu, tol_bf16); }
TEST(golden_qwen3_packed_gpu) { check_case(&models[2], true, gpu, tol_bf16); }
/* mistral's sliding window (6 tokens, shorter than the dumps' sequences) and gemma3 (GeGLU, the
 * embedding scale, query_pre_attn_scalar, four norms of (1 + w), interleaved local and global
 * layers with their own rotary bases) through the _ex attention ops */
TEST(golden_mistral_gpu) { check_case(&models[3], false, gpu, tol_bf16); }
TEST(golden_mistral_packed_gpu) { check_case(&models[3], true, gpu, tol_bf16); }
TEST(golden_gemma3_gpu) { check_case(&models[4], false, gpu, tol_bf16); }
TEST(golden_gemma3_packed_gpu) { check_case(&models[4], true, gpu, tol_bf16); }
/* gemma2: the soft-capped scores through the mma / tiled kernels (never cuDNN) and the soft-capped
 * final logits through the chunked cross-entropy */
TEST(golden_gemma2_gpu) { check_case(&models[6], false, gpu, tol_bf16); }
TEST(golden_gemma2_packed_gpu) { check_case(&models[6], true, gpu, tol_bf16); }
/* phi3: fused qkv_proj and gate_up_proj with one LoRA each, rotary on 8 of each head's 16 dims
 * times longrope's attention factor (rope_ex), a window of 10; the whole row (24 tokens, past the
 * original context of 16) takes the long factors, the packed sequences the short ones */
TEST(golden_phi3_gpu) { check_case(&models[5], false, gpu, tol_bf16); }
TEST(golden_phi3_packed_gpu) { check_case(&models[5], true, gpu, tol_bf16); }
/* the linears kept dequantized (evaluate's dense_weights): the GEMMs read the kept bf16 copy instead
 * of the per-op scratch, bit for bit the same results, every family */
TEST(dense_weights_same_bits_gpu) {
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) check_dense_bits(&models[i], gpu);
}

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
    RUN(golden_qwen3_gpu);
    RUN(golden_qwen3_packed_gpu);
    RUN(golden_mistral_gpu);
    RUN(golden_mistral_packed_gpu);
    RUN(golden_gemma3_gpu);
    RUN(golden_gemma3_packed_gpu);
    RUN(golden_gemma2_gpu);
    RUN(golden_gemma2_packed_gpu);
    RUN(golden_phi3_gpu);
    RUN(golden_phi3_packed_gpu);
    RUN(dense_weights_same_bits_gpu);
    return test_summary();
}
