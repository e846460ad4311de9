/* byte_tokenizer.h: the benchmarks' built-in byte tokenizer for dataset_build (id = byte; BOS 256,
 * EOS 257, 259 ids), when no tokenizer folder is given. A header of static functions: each bench
 * is one translation unit built by its run.sh. */
#ifndef QLORA_BENCH_BYTE_TOKENIZER_H
#define QLORA_BENCH_BYTE_TOKENIZER_H

#include <stdlib.h>

#include "core/err.h"
#include "train/dataset_build.h"

static int byte_encode(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)ud;
    int32_t *o = malloc((len + 1) * sizeof *o);
    if (!o) return err_set(ERR_STAGE, "out of memory");
    for (size_t i = 0; i < len; i++) o[i] = (unsigned char)text[i];
    *ids = o;
    *n = len;
    return 0;
}

static const dataset_tokenizer BYTE_TOKENIZER = {NULL, byte_encode, 256, 257, 259, "<s>", "</s>"};

#endif
