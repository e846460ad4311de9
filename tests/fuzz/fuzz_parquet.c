/* fuzz_parquet.c: libFuzzer target for the Parquet reader (data/parquet.h) through the dataset
 * reader (data/dataset_read.h), as the dataset stage calls it. The input is written to a file
 * and read twice: every column, then only the first top-level field (a projection, as format
 * alpaca or chat asks for). Every record must be an object; every failure an ERR_DATA whose
 * message names the file (out of memory, ERR_STAGE, is allowed too). The seeds are small
 * pyarrow-written files (tests/golden/parquet/).
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DQLORA_FUZZ=ON -DQLORA_CUDA=OFF
 *   cmake --build build-fuzz --target fuzz_parquet && tests/fuzz/run.sh fuzz_parquet 600 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "data/dataset_read.h"
#include "data/parquet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_rc(int rc, const char *path) {
    if (rc == ERR_STAGE) return; /* out of memory under the fuzzer's allocation limit */
    if (rc != ERR_DATA || !strstr(err_msg(), path)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_parquet.%d.parquet", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    for (int pass = 0; pass < 2; pass++) {
        dataset_reader *r;
        int rc = dataset_reader_open(&r, path, DATASET_TYPE_PARQUET);
        if (rc) {
            check_rc(rc, path);
            return 0;
        }
        if (pass == 1) {
            pq_file *pq;
            char name[256] = "";
            if (!pq_open(&pq, path)) { /* the first field's name, for the projection */
                if (pq_num_fields(pq)) snprintf(name, sizeof name, "%s", pq_field_name(pq, 0));
                pq_close(&pq);
            }
            const char *names[] = {name};
            const int req[] = {1};
            rc = dataset_reader_columns(r, names, req, 1);
        }
        json_t *rec = NULL;
        while (!rc) {
            rc = dataset_reader_next(r, &rec);
            if (rc || !rec) break;
            if (!json_is_object(rec)) abort();
            char *s = json_dumps(rec, JSON_COMPACT); /* every string must be valid to write out */
            if (!s) abort();
            free(s);
            json_decref(rec);
        }
        if (rc) check_rc(rc, path);
        dataset_reader_close(&r);
    }
    return 0;
}
