/* fuzz_dataset.c: the JSON array, JSONL, CSV and text readers on arbitrary bytes (the first
 * byte picks the type). */
#include "data/dataset_read.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    static const char *names[] = {"d.json", "d.jsonl", "d.csv", "d.txt"};
    static const char *types[] = {"json", "jsonl", "csv", "text"};
    int k = data[0] % 4;
    const char *p = fuzz_write(names[k], data + 1, size - 1);
    dataset_type t;
    if (dataset_type_parse(types[k], &t)) abort();
    dataset_reader *r = NULL;
    if (dataset_reader_open(&r, p, t) == 0) {
        json_t *rec;
        for (int i = 0; i < 100000; i++) {
            rec = NULL;
            int rc = dataset_reader_next(r, &rec);
            json_decref(rec);
            if (rc || !rec) break;
        }
        dataset_reader_close(&r);
    }
    err_clear();
    return 0;
}
