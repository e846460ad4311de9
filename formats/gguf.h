/* gguf.h: a GGUF v3 writer (the file format llama.cpp loads), streaming tensor data.
 *
 * Layout (docs/gguf.md): "GGUF", u32 version 3, u64 tensor count, u64 KV count;
 * the KV pairs (u64-length strings, u32 value type, value); the tensor infos (name, u32
 * n_dims, u64 ne[] in ggml order = the PyTorch shape reversed, u32 ggml type, u64 offset into
 * the data section); zero padding to the alignment (32); the tensor data, each tensor padded
 * to the alignment. KV pairs and tensors are written in the order they were added.
 *
 * Tensors are declared with a fill callback that writes one tensor's encoded bytes when the
 * file is written, so a model is exported one tensor at a time (memory: the largest tensor).
 * The file is written under a temp name and renamed when complete.
 * Ownership: gguf_writer_open / gguf_writer_write (which frees) or gguf_writer_free. */
#ifndef FORMATS_GGUF_H
#define FORMATS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32

typedef enum gguf_value_type {
    GGUF_VALUE_U8 = 0, GGUF_VALUE_I8 = 1, GGUF_VALUE_U16 = 2, GGUF_VALUE_I16 = 3, GGUF_VALUE_U32 = 4,
    GGUF_VALUE_I32 = 5, GGUF_VALUE_F32 = 6, GGUF_VALUE_BOOL = 7, GGUF_VALUE_STRING = 8, GGUF_VALUE_ARRAY = 9,
    GGUF_VALUE_U64 = 10, GGUF_VALUE_I64 = 11, GGUF_VALUE_F64 = 12
} gguf_value_type;

/* the ggml tensor types we write */
typedef enum ggml_type { GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q8_0 = 8, GGML_TYPE_BF16 = 30 } ggml_type;

#define GGML_Q8_0_BLOCK 32      /* elements per q8_0 block */
#define GGML_Q8_0_BYTES 34      /* f16 scale + 32 int8 */

/* bytes of a row of ne0 elements; 0 if ne0 is not a multiple of the block size */
uint64_t ggml_row_bytes(ggml_type t, int64_t ne0);
const char *ggml_type_name(ggml_type t);
/* f32 -> type, n elements (n a multiple of 32 for q8_0); dst holds ggml_row_bytes(t, n) */
void ggml_encode(ggml_type t, const float *src, void *dst, int64_t n);
/* q8_0 as ggml's reference quantizer: d = max|x| / 127 (stored f16), q = round(x / d) */
void ggml_quantize_q8_0(const float *src, void *dst, int64_t n);
void ggml_dequantize_q8_0(const void *src, float *dst, int64_t n);

typedef struct gguf_writer gguf_writer;
/* fill: write exactly nbytes (the tensor's encoded size) into dst; 0 or an ERR_* code */
typedef int (*gguf_fill_fn)(void *arg, const char *name, void *dst, uint64_t nbytes);

int gguf_writer_open(gguf_writer **w);
void gguf_writer_free(gguf_writer **w);

/* scalars; a key set twice keeps the last value in the first position */
int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_set_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_set_f32(gguf_writer *w, const char *key, float v);
int gguf_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_set_str(gguf_writer *w, const char *key, const char *v);
/* any scalar type from raw little-endian bytes (size of the type) */
int gguf_set_scalar(gguf_writer *w, const char *key, gguf_value_type type, const void *v);
/* arrays: elements of a fixed-size type, or strings */
int gguf_set_array(gguf_writer *w, const char *key, gguf_value_type elem, const void *data, uint64_t n);
int gguf_set_str_array(gguf_writer *w, const char *key, const char *const *v, uint64_t n);

/* ne: ggml order (ne[0] is the contiguous dimension); 1 to 4 dims */
int gguf_add_tensor(gguf_writer *w, const char *name, ggml_type type, int n_dims, const int64_t *ne, gguf_fill_fn fill, void *arg);

/* write the file atomically and free the writer (also on failure) */
int gguf_writer_write(gguf_writer **w, const char *path);

#endif
