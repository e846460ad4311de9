/* safetensors.h: read (mmap) and write (streaming) safetensors files and sharded checkpoints.
 *
 * Reader: st_open() takes a .safetensors file, a directory holding model.safetensors, or a
 * directory/index with model.safetensors.index.json (shards). Every header is validated
 * before use (JSON, dtypes, shape x itemsize == byte length, offsets contiguous, in bounds and
 * not overlapping); a bad file is an ERR_DATA naming the file and the tensor. The mapping
 * stays valid until st_close().
 *
 * Writer: declare every tensor first (st_writer_add), then st_writer_finish() lays each shard
 * out in the safetensors order (dtype descending, then name), writes the header and streams each
 * tensor's bytes from its fill callback (or the given pointer) into a temp file that is renamed
 * when complete. With max_shard_bytes > 0, tensors are assigned greedily in insertion order to
 * shards named <base>-00001-of-0000N.safetensors plus <base>.safetensors.index.json.
 * Ownership: st_open/st_close and st_writer_open/st_writer_finish|st_writer_free pair up. */
#ifndef FORMATS_SAFETENSORS_H
#define FORMATS_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    const uint8_t *data; /* points into the mapping */
    const char *file;    /* the file it lives in */
} st_tensor;

typedef struct st_model st_model;

int st_open(st_model **out, const char *path);
void st_close(st_model **m);
size_t st_count(const st_model *m);
const st_tensor *st_at(const st_model *m, size_t i);          /* sorted by name */
const st_tensor *st_find(const st_model *m, const char *name); /* NULL if absent */
const char *st_metadata(const st_model *m, const char *key);   /* __metadata__ of the first file */
int64_t st_numel(const st_tensor *t);

const char *st_dtype_name(st_dtype d);
int st_dtype_from_name(const char *s); /* -1 if unknown */
size_t st_dtype_size(st_dtype d);
/* a float dtype to write a model in, as users and config.json name it: bf16|bfloat16,
 * f16|float16|fp16, f32|float32|fp32 -> 0 and *d; -1 otherwise (the caller says what it expected) */
int st_float_dtype_parse(const char *name, st_dtype *d);
/* config.json's torch dtype of ST_F32 or ST_F16 ("float32", "float16"); "bfloat16" otherwise */
const char *st_float_dtype_torch_name(st_dtype d);

/* Drop the tensor's pages from this process's resident set once read (the mapping stays
 * valid: a later access reads them from the page cache again). Streaming converters call it
 * after each tensor so the RSS of reading a 13 GB checkpoint stays at one tensor. */
void st_release(const st_tensor *t);

/* Convert any float tensor (F32, F16, BF16, F64) element range to f32. */
int st_read_f32(const st_tensor *t, int64_t first, int64_t n, float *dst);

typedef struct st_writer st_writer;
/* fill: write exactly t->nbytes bytes of tensor `name` into dst; return 0 or an ERR_* code */
typedef int (*st_fill_fn)(void *arg, const char *name, void *dst, uint64_t nbytes);

int st_writer_open(st_writer **out, const char *dir, const char *base, uint64_t max_shard_bytes);
/* data: bytes to copy (kept by pointer until finish), or NULL with a fill callback */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data, st_fill_fn fill, void *arg);
/* extra __metadata__ entry (format=pt is always written) */
int st_writer_meta(st_writer *w, const char *key, const char *value);
int st_writer_finish(st_writer **w); /* writes everything, frees the writer */
void st_writer_free(st_writer **w);  /* abandon: nothing is written */

#endif
