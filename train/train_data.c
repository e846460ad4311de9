/* train_data.c: the dataset artifact reader and micro-batch builder (see train_data.h). */
#define _GNU_SOURCE
#include "train/train_data.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"

/* Read <dir>/<split>.<ext> as an array of `elem`-byte items. */
static int read_array(const char *dir, const char *split, const char *ext, size_t elem, void **out, int64_t *n) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", split, ext);
    char *path = fs_join(dir, name);
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_all(path, &buf, &len);
    if (rc) {
        free(path);
        return rc;
    }
    if (len % elem) {
        rc = err_set(ERR_DATA, "'%s': size %zu is not a multiple of %zu bytes: rebuild the dataset stage", path, len, elem);
        free(buf);
        free(path);
        return rc;
    }
    free(path);
    *out = buf;
    *n = (int64_t)(len / elem);
    return 0;
}

static int check_offsets(const int64_t *off, int64_t n, int64_t n_tokens, const char *dir, const char *what) {
    if (n < 1 || off[0] != 0 || off[n - 1] != n_tokens)
        return err_set(ERR_DATA, "'%s/%s': offsets must start at 0 and end at the token count %lld", dir, what,
                       (long long)n_tokens);
    for (int64_t i = 1; i < n; i++)
        if (off[i] < off[i - 1])
            return err_set(ERR_DATA, "'%s/%s': offset %lld decreases", dir, what, (long long)i);
    return 0;
}

int train_data_formatting(const char *dir, json_t **out) {
    *out = NULL;
    char *meta_path = fs_join(dir, "meta.json");
    json_error_t je;
    json_t *meta = json_load_file(meta_path, 0, &je);
    int rc = 0;
    json_t *f = json_object_get(meta, "formatting");
    if (!meta) {
        rc = err_set(ERR_DATA, "'%s': %s (line %d): rebuild the dataset stage", meta_path, je.text, je.line);
    } else if (!json_is_object(f) || !json_is_string(json_object_get(f, "format"))) {
        rc = err_set(ERR_DATA, "'%s' does not say how its records were formatted (an older qlora-run wrote it): "
                               "rebuild the dataset stage with --force", meta_path);
    } else {
        *out = json_deep_copy(f);
        json_object_set(*out, "sequence_len", json_object_get(meta, "sequence_len"));
    }
    json_decref(meta);
    free(meta_path);
    return rc;
}

int train_data_open(train_data *d, const char *dir, const char *split) {
    memset(d, 0, sizeof *d);
    char *meta_path = fs_join(dir, "meta.json");
    json_error_t je;
    json_t *meta = json_load_file(meta_path, 0, &je);
    int rc = 0;
    if (!meta) {
        rc = err_set(ERR_DATA, "'%s': %s (line %d): rebuild the dataset stage", meta_path, je.text, je.line);
        goto out;
    }
    if (json_integer_value(json_object_get(meta, "version")) != 1) {
        rc = err_set(ERR_DATA, "'%s': version %lld, expected 1: rebuild the dataset stage with this qlora-run",
                     meta_path, (long long)json_integer_value(json_object_get(meta, "version")));
        goto out;
    }
    d->sequence_len = json_integer_value(json_object_get(meta, "sequence_len"));
    if (!json_object_get(json_object_get(meta, "splits"), split)) {
        rc = err_set(ERR_DATA, "'%s': no split '%s'", meta_path, split);
        goto out;
    }
    d->split = strdup(split);
    int64_t n_lab = 0, n_rows1 = 0, n_seqs1 = 0;
    void *p;
    if ((rc = read_array(dir, split, "ids.i32", 4, &p, &d->n_tokens))) goto out;
    d->ids = p;
    if ((rc = read_array(dir, split, "labels.i32", 4, &p, &n_lab))) goto out;
    d->labels = p;
    if ((rc = read_array(dir, split, "rows.i64", 8, &p, &n_rows1))) goto out;
    d->rows = p;
    if ((rc = read_array(dir, split, "seqs.i64", 8, &p, &n_seqs1))) goto out;
    d->seqs = p;
    if (n_lab != d->n_tokens) {
        rc = err_set(ERR_DATA, "'%s': %s.labels.i32 has %lld entries but %s.ids.i32 has %lld", dir, split,
                     (long long)n_lab, split, (long long)d->n_tokens);
        goto out;
    }
    char what[64];
    snprintf(what, sizeof what, "%s.rows.i64", split);
    if ((rc = check_offsets(d->rows, n_rows1, d->n_tokens, dir, what))) goto out;
    snprintf(what, sizeof what, "%s.seqs.i64", split);
    if ((rc = check_offsets(d->seqs, n_seqs1, d->n_tokens, dir, what))) goto out;
    d->n_rows = n_rows1 - 1;
    d->n_seqs = n_seqs1 - 1;
    for (int64_t r = 0; r < d->n_rows; r++)
        if (d->rows[r + 1] - d->rows[r] > d->sequence_len && d->sequence_len > 0) {
            rc = err_set(ERR_DATA, "'%s': %s row %lld has %lld tokens, more than sequence_len %lld", dir, split,
                         (long long)r, (long long)(d->rows[r + 1] - d->rows[r]), (long long)d->sequence_len);
            goto out;
        }
out:
    json_decref(meta);
    free(meta_path);
    if (rc) train_data_free(d);
    return rc;
}

void train_data_free(train_data *d) {
    free(d->split);
    free(d->ids);
    free(d->labels);
    free(d->rows);
    free(d->seqs);
    memset(d, 0, sizeof *d);
}

/* index of the first sequence start > t (binary search over seqs) */
static int64_t next_seq_start(const train_data *d, int64_t t) {
    int64_t lo = 0, hi = d->n_seqs; /* seqs[hi] = n_tokens > t always */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (d->seqs[mid] > t) hi = mid;
        else lo = mid + 1;
    }
    return d->seqs[lo];
}

int64_t train_data_row_targets(const train_data *d, int64_t r) {
    int64_t a = d->rows[r], b = d->rows[r + 1], n = 0;
    int64_t next = a < b ? next_seq_start(d, a) : b;
    for (int64_t t = a; t < b; t++) {
        if (t + 1 == next) {
            next = next_seq_start(d, next);
            continue; /* the last token of a sequence predicts nothing */
        }
        if (t + 1 < b && d->labels[t + 1] >= 0) n++;
    }
    return n;
}

static int batch_reserve(train_batch *b, int need) {
    if (need <= b->cap) return 0;
    int cap = need > 2 * b->cap ? need : 2 * b->cap;
    int32_t *p[5];
    for (int k = 0; k < 5; k++) p[k] = malloc((size_t)cap * sizeof(int32_t));
    if (!p[0] || !p[1] || !p[2] || !p[3] || !p[4]) {
        for (int k = 0; k < 5; k++) free(p[k]);
        return err_set(ERR_STAGE, "out of memory for a batch of %d tokens", need);
    }
    train_batch_free(b);
    b->ids = p[0];
    b->targets = p[1];
    b->pos = p[2];
    b->seq_start = p[3];
    b->labels = p[4];
    b->cap = cap;
    return 0;
}

int train_data_batch(const train_data *d, const int64_t *idx, int n, train_batch *b) {
    int64_t T = 0;
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= d->n_rows)
            return err_set(ERR_STAGE, "row %lld out of range (split '%s' has %lld rows)", (long long)idx[i], d->split,
                           (long long)d->n_rows);
        T += d->rows[idx[i] + 1] - d->rows[idx[i]];
    }
    if (T > INT32_MAX / 2) return err_set(ERR_DATA, "micro-batch of %lld tokens is too large", (long long)T);
    int rc = batch_reserve(b, (int)T > 0 ? (int)T : 1);
    if (rc) return rc;
    int o = 0;
    b->n_targets = 0;
    for (int i = 0; i < n; i++) {
        int64_t a = d->rows[idx[i]], e = d->rows[idx[i] + 1];
        int64_t next = a < e ? next_seq_start(d, a) : e;
        int start = o;
        for (int64_t t = a; t < e; t++, o++) {
            if (t == a) start = o;
            b->ids[o] = d->ids[t];
            b->labels[o] = d->labels[t];
            b->seq_start[o] = start;
            b->pos[o] = o - start;
            bool last = t + 1 == next || t + 1 == e;
            int32_t tg = last ? -1 : d->labels[t + 1];
            b->targets[o] = tg >= 0 ? tg : -1;
            if (tg >= 0) b->n_targets++;
            if (t + 1 == next) {
                start = o + 1;
                next = next_seq_start(d, next);
            }
        }
    }
    b->T = o;
    return 0;
}

void train_batch_free(train_batch *b) {
    free(b->ids);
    free(b->targets);
    free(b->pos);
    free(b->seq_start);
    free(b->labels);
    memset(b, 0, sizeof *b);
}
