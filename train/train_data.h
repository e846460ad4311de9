/* train_data.h: read one split of a dataset artifact (the format the `dataset` stage writes).
 *
 * For split S the artifact holds S.ids.i32 and S.labels.i32 (int32 LE, all rows
 * concatenated; labels are NOT shifted: the logits at t predict labels[t+1], -100 masks),
 * S.rows.i64 (n_rows+1 offsets into that stream) and S.seqs.i64 (n_seqs+1 offsets where a
 * packed sequence starts), plus meta.json {"version":1, "sequence_len":N, "splits":{...}}.
 *
 * train_data_batch gathers a micro-batch of rows into a flat token stream (no padding) and
 * builds what the model needs: targets already shifted (target[t] = label[t+1] inside one
 * sequence, -1 at a sequence's last token and where masked), pos[t] restarting at every
 * sequence start, seq_start[t] the index of the first token of t's sequence.
 * Ownership: train_data_open/train_data_free; a train_batch is reused across calls
 * (train_batch_free releases it). */
#ifndef MODEL_TRAIN_DATA_H
#define MODEL_TRAIN_DATA_H

#include <jansson.h>
#include <stdint.h>

typedef struct train_data {
    char *split;           /* "train" | "val" */
    int32_t *ids, *labels; /* [n_tokens] */
    int64_t *rows;         /* [n_rows + 1] */
    int64_t *seqs;         /* [n_seqs + 1] */
    int64_t n_tokens, n_rows, n_seqs;
    int64_t sequence_len;
} train_data;

typedef struct train_batch {
    int T;                 /* tokens in the batch */
    int32_t *ids;          /* [T] */
    int32_t *labels;       /* [T] the artifact's labels, unshifted (-100 masked) */
    int32_t *targets;      /* [T] shifted labels, -1 = no loss */
    int32_t *pos;          /* [T] position inside its sequence */
    int32_t *seq_start;    /* [T] batch index of the first token of t's sequence */
    int64_t n_targets;     /* tokens with targets >= 0 */
    int cap;
} train_batch;

/* dir: the dataset artifact directory. A missing split, a bad meta.json or inconsistent
 * offsets are ERR_DATA naming the file. */
int train_data_open(train_data *d, const char *dir, const char *split);
void train_data_free(train_data *d);
/* How the dataset stage formatted records (meta.json's "formatting": format, chat_template,
 * format_hook, train_on_inputs, hook_args) and its sequence_len, as one object *out (new
 * reference). ERR_DATA when meta.json lacks it (an artifact of an older build: rebuild it). */
int train_data_formatting(const char *dir, json_t **out);

/* target tokens of row r (labels >= 0 that a preceding token of the same sequence predicts) */
int64_t train_data_row_targets(const train_data *d, int64_t r);
/* fill b with rows idx[0..n): rows laid out one after another */
int train_data_batch(const train_data *d, const int64_t *idx, int n, train_batch *b);
void train_batch_free(train_batch *b);

#endif
