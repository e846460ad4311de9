/* gguf_export.h: a merged model as one GGUF file that llama.cpp loads.
 *
 * Follows llama.cpp's convert_hf_to_gguf for these architectures (docs/gguf.md):
 * llama and mistral are written as arch "llama" with the q/k rows permuted from HF's
 * rotate_half layout back to interleaved pairs; qwen2 and qwen3 as arch "qwen2" / "qwen3",
 * unpermuted (NEOX rope), qwen3's q/k norms as attn_q_norm / attn_k_norm; gemma3 as "gemma3"
 * with its norms stored as 1 + w (as the converter does) and the sliding window key; gemma2 as
 * "gemma2" likewise, plus its attn_logit_softcapping and final_logit_softcapping keys. Norms and other 1-D tensors are F32; 2-D tensors take the requested type (a row
 * that q8_0 cannot hold falls back to f16, as the converter does). llama3 rope scaling
 * becomes the rope_freqs.weight tensor. The tokenizer (tokenizer.json of the base) becomes
 * the tokenizer.ggml.* keys: "gpt2" for byte-level BPE, "llama" with scores and token types
 * for SentencePiece-style BPE. */
#ifndef MODEL_GGUF_EXPORT_H
#define MODEL_GGUF_EXPORT_H

#include "formats/gguf.h"
#include "export/merge.h"

/* "f16"|"bf16"|"q8_0"|"f32" -> type; ERR_USAGE otherwise */
int gguf_export_type(const char *name, ggml_type *t);
/* the GGUF tensor name of an HF tensor name into out (NULL-terminated), ERR_STAGE if unknown */
int gguf_export_tensor_name(const char *hf, char *out, size_t n);
/* the same for c's family (gemma2 and gemma3 name their four norms their own way) */
int gguf_export_tensor_name_arch(const model_config *c, const char *hf, char *out, size_t n);
/* write path (atomic); name: general.name (NULL: the base directory's name) */
int gguf_export_write(merge_src *m, const char *path, ggml_type type, const char *name,
                      int (*progress)(void *arg, uint64_t done, uint64_t total), void *arg);
/* the llama q/k row permutation, HF -> GGUF, on rows of row_len elements (n_rows = n_head*d) */
void gguf_permute_qk(float *w, int n_head, int64_t n_rows, int64_t row_len);

#endif
