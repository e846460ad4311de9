/* dataset_show.c: `qlora-run data show`: rows of a dataset artifact decoded with its tokenizer,
 * masked spans marked, each packed sequence on its own paragraph. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset_build.h"

static int read_array(const char *dir, const char *name, void **out, size_t elem, size_t *n) {
    char *p = fs_join(dir, name);
    char *buf;
    size_t len;
    int rc = fs_read_all(p, &buf, &len);
    if (!rc && len % elem) rc = err_set(ERR_DATA, "'%s' is truncated (%zu bytes)", p, len);
    free(p);
    if (rc) return rc;
    *out = buf;
    *n = len / elem;
    return 0;
}

static void show_span(const tokenizer *t, const int32_t *ids, size_t n, bool masked, FILE *out) {
    char *text = NULL;
    size_t len = 0;
    if (tokenizer_decode(t, ids, n, false, &text, &len)) {
        fprintf(out, "<cannot decode: %s>", err_msg());
        return;
    }
    fprintf(out, "%s%.*s%s", masked ? "[[" : "", (int)len, text, masked ? "]]" : "");
    free(text);
}

int dataset_show(const char *artifact_dir, const char *tokenizer_dir, int n, FILE *out) {
    return dataset_show_split(artifact_dir, tokenizer_dir, "train", n, out);
}

int dataset_show_split(const char *artifact_dir, const char *tokenizer_dir, const char *split, int n, FILE *out) {
    char f_ids[64], f_labels[64], f_rows[64], f_seqs[64];
    snprintf(f_ids, sizeof f_ids, "%s.ids.i32", split);
    snprintf(f_labels, sizeof f_labels, "%s.labels.i32", split);
    snprintf(f_rows, sizeof f_rows, "%s.rows.i64", split);
    snprintf(f_seqs, sizeof f_seqs, "%s.seqs.i64", split);
    int32_t *ids = NULL, *labels = NULL;
    int64_t *rows = NULL, *seqs = NULL;
    size_t n_ids, n_labels, n_rows, n_seqs;
    tokenizer *t = NULL;
    int rc = read_array(artifact_dir, f_ids, (void **)&ids, 4, &n_ids);
    if (!rc) rc = read_array(artifact_dir, f_labels, (void **)&labels, 4, &n_labels);
    if (!rc) rc = read_array(artifact_dir, f_rows, (void **)&rows, 8, &n_rows);
    if (!rc) rc = read_array(artifact_dir, f_seqs, (void **)&seqs, 8, &n_seqs);
    if (!rc && (n_ids != n_labels || n_rows < 1 || n_seqs < 1 || rows[n_rows - 1] != (int64_t)n_ids ||
                seqs[n_seqs - 1] != (int64_t)n_ids))
        rc = err_set(ERR_DATA, "'%s' is not a consistent dataset artifact (sizes disagree)", artifact_dir);
    if (!rc) rc = tokenizer_load(&t, tokenizer_dir);
    if (!rc) {
        fprintf(out, "%zu %s rows; masked spans (not trained) are shown in [[...]]\n", n_rows - 1,
                strcmp(split, "train") ? split : "training");
        size_t s = 0;
        for (size_t r = 0; r + 1 < n_rows && (int)r < n; r++) {
            size_t trained = 0;
            for (int64_t k = rows[r]; k < rows[r + 1]; k++) trained += labels[k] != DATASET_IGNORE_INDEX;
            fprintf(out, "\n=== row %zu: %lld tokens, %zu trained ===\n", r, (long long)(rows[r + 1] - rows[r]), trained);
            while (s + 1 < n_seqs && seqs[s] < rows[r]) s++;
            for (; s + 1 < n_seqs && seqs[s] < rows[r + 1]; s++) {
                if (seqs[s] != rows[r]) fprintf(out, "\n--- next sequence ---\n");
                int64_t a = seqs[s], e = seqs[s + 1];
                while (a < e) {
                    bool m = labels[a] == DATASET_IGNORE_INDEX;
                    int64_t b = a;
                    while (b < e && (labels[b] == DATASET_IGNORE_INDEX) == m) b++;
                    show_span(t, ids + a, (size_t)(b - a), m, out);
                    a = b;
                }
                fputc('\n', out);
            }
        }
    }
    tokenizer_free(&t);
    free(ids);
    free(labels);
    free(rows);
    free(seqs);
    return rc;
}
