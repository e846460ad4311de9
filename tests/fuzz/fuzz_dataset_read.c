/* fuzz_dataset_read.c: libFuzzer target for the dataset readers (formats/dataset_read.h).
 * The input is written to a file and read as JSON, JSONL, CSV and text in turn; every record
 * must be an object and every failure an ERR_DATA with a message naming the file.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. $(pkg-config --cflags jansson) \
 *     tests/fuzz/fuzz_dataset_read.c formats/dataset_read.c core/err.c \
 *     $(pkg-config --libs jansson) -o fuzz_dataset_read
 *   ./fuzz_dataset_read -max_total_time=600 corpus/ tests/fuzz/corpus/fuzz_dataset_read/ (or: tests/fuzz/run.sh fuzz_dataset_read 600) */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "data/dataset_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_dataset_read.%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    const dataset_type types[] = {DATASET_TYPE_JSON, DATASET_TYPE_JSONL, DATASET_TYPE_CSV, DATASET_TYPE_TEXT};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        dataset_reader *r;
        int rc = dataset_reader_open(&r, path, types[t]);
        if (!rc) {
            json_t *rec;
            /* go on after errors where the reader says it can (on_error: skip); each call must
             * consume input, so more calls than bytes means a reader that stopped moving */
            for (size_t calls = 0;; calls++) {
                if (calls > size + 2) abort();
                rc = dataset_reader_next(r, &rec);
                if (rc) {
                    if (rc != ERR_DATA || !strstr(err_msg(), path)) abort();
                    if (dataset_reader_can_go_on(r)) continue;
                    break;
                }
                if (!rec) break;
                if (!json_is_object(rec)) abort();
                json_decref(rec);
            }
            dataset_reader_close(&r);
        }
        if (rc && (rc != ERR_DATA || !strstr(err_msg(), path))) abort();
    }
    return 0;
}
