/* bench_parquet.c: the Parquet reader on an Alpaca-shaped file, three ways.
 *
 *   bench/parquet/run.sh FILE.parquet [--jobs N] [--tokenizer DIR] [--repeat N]
 *
 *   decode    the projected columns (instruction, input, output) of every row group decoded
 *             into value arrays on one thread (pq_decode_row_group): MB/s of string bytes
 *   records   every row assembled into a JSON object (pq_next), one thread
 *   dataset   dataset_build end to end from the file, as the dataset stage runs it: read,
 *             Alpaca formatting, tokenizing (N threads), masking, packing into 512-token rows,
 *             2% validation split, writing the artifact
 * The file: tests/golden/make_parquet.py --bench writes alpaca_52k.parquet (52,002 rows, snappy,
 * pyarrow's defaults). The tokenizer is the byte layout of the generated tokenizer unless
 * --tokenizer names a directory with a tokenizer.json. Prints the best of --repeat runs. */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "data/parquet.h"
#include "tokenizer/tokenizer.h"
#include "bench/byte_tokenizer.h"
#include "train/dataset_build.h"


static const char *const cols[] = {"instruction", "input", "output"};

static int open_projected(pq_file **f, const char *path) {
    int rc = pq_open(f, path);
    if (!rc) rc = pq_project(*f, cols, NULL, 3);
    return rc;
}

/* decode: every row group's projected columns into value arrays, one thread */
static int bench_decode(const char *path, int repeat, bool run) {
    pq_file *f;
    if (open_projected(&f, path)) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    printf("file               %s (%.1f MB, %lld rows, %d row groups)\n", path, (double)fs_size(path) / 1e6,
           (long long)pq_num_rows(f), pq_num_row_groups(f));
    double best = 1e9, best_cpu = 1e9, first = 0, first_cpu = 0;
    size_t bytes = 0;
    for (int r = 0; r < repeat && run; r++) {
        double t0 = clock_now_s(), c0 = clock_thread_cpu_s();
        bytes = 0;
        for (int g = 0; g < pq_num_row_groups(f); g++) {
            size_t b;
            if (pq_decode_row_group(f, g, &b)) {
                fprintf(stderr, "%s\n", err_msg());
                return 1;
            }
            bytes += b;
        }
        double dt = clock_now_s() - t0, dc = clock_thread_cpu_s() - c0;
        if (r == 0) first = dt, first_cpu = dc;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    pq_close(&f);
    double mb = (double)bytes / 1e6;
    printf("decode             %.1f MB of strings, 1 thread: first pass %.3f s wall (%.3f s CPU, %.0f MB/s); "
           "best of %d %.3f s wall, %.3f s CPU: %.0f MB/s of CPU time\n", mb, first, first_cpu, mb / first_cpu, repeat,
           best, best_cpu, mb / best_cpu);
    return 0;
}

/* records: every row assembled into a JSON object, one thread */
static int bench_records(const char *path, int repeat, bool run) {
    pq_file *f;
    double best = 1e9, best_cpu = 1e9;
    long long rows = 0;
    for (int r = 0; r < repeat && run; r++) {
        if (open_projected(&f, path)) return 1;
        double t0 = clock_now_s(), c0 = clock_thread_cpu_s();
        json_t *rec;
        rows = 0;
        while (!pq_next(f, &rec) && rec) {
            json_decref(rec);
            rows++;
        }
        double dt = clock_now_s() - t0, dc = clock_thread_cpu_s() - c0;
        if (err_code()) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        pq_close(&f);
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    printf("records            %lld JSON objects, 1 thread, best of %d: %.3f s wall, %.3f s CPU (%.0f K rows/s)\n", rows,
           repeat, best, best_cpu, rows / best_cpu / 1e3);
    return 0;
}

/* dataset: dataset_build end to end from the file, as the dataset stage runs it */
static int bench_dataset(const char *path, const char *tokdir, int jobs, int repeat, bool run) {
    dataset_tokenizer tok = BYTE_TOKENIZER;
    tokenizer *t = NULL;
    if (tokdir) {
        if (tokenizer_load(&t, tokdir)) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        dataset_tokenizer_of(t, &tok);
    }
    dataset_opts o = {.format = DATASET_FORMAT_ALPACA, .sequence_len = 512, .sample_packing = true,
                      .val_set_size = 0.02, .shuffle = true, .seed = 1, .jobs = jobs};
    char *paths[1] = {(char *)path};
    dataset_source src = {paths, 1, DATASET_TYPE_AUTO, NULL, NULL, 0};
    log_set_quiet(true);
    double best = 1e9;
    long long tokens = 0;
    double p0 = clock_process_cpu_s();
    for (int r = 0; r < repeat && run; r++) {
        char dir[] = "/tmp/qlora_bench_pq_XXXXXX";
        if (!mkdtemp(dir)) return 1;
        json_t *stats = NULL;
        double t0 = clock_now_s();
        int rc = dataset_build(&o, &src, &tok, dir, NULL, &stats);
        double dt = clock_now_s() - t0;
        fs_rm_rf(dir);
        if (rc) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        tokens = (long long)json_integer_value(json_object_get(stats, "tokens"));
        json_decref(stats);
        if (dt < best) best = dt;
    }
    double cpu = clock_process_cpu_s() - p0;
    printf("dataset            read + format + tokenize (%s, %d threads) + pack + write: best of %d %.2f s wall "
           "(%.2f s CPU a run), %lld tokens\n", tokdir ? tokdir : "byte tokenizer", jobs, repeat, best, cpu / repeat, tokens);
    tokenizer_free(&t);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *tokdir = NULL;
    int jobs = 2, repeat = 3;
    const char *only = NULL; /* --only decode|records|dataset (profiling) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokdir = argv[++i];
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench_parquet FILE.parquet [--jobs N] [--tokenizer DIR] [--repeat N] [--only decode|records|dataset]\n");
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: bench_parquet FILE.parquet [--jobs N] [--tokenizer DIR] [--repeat N] [--only decode|records|dataset]\n");
        return 2;
    }
    if (bench_decode(path, repeat, !only || !strcmp(only, "decode"))) return 1;
    if (bench_records(path, repeat, !only || !strcmp(only, "records"))) return 1;
    return bench_dataset(path, tokdir, jobs, repeat, !only || !strcmp(only, "dataset"));
}
