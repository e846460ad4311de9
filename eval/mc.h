/* mc.h: multiple-choice benchmark tasks scored as lm-evaluation-harness scores them (MMLU, ARC,
 * HellaSwag), so the numbers compare with the harness's (docs/evaluate.md says how).
 *
 * A task is a file of records in the hub's schema (JSON, JSONL, CSV, or what data/ reads). Each
 * record becomes a doc: the text the model is asked (the harness's doc_to_text), the choices and
 * the index of the right one. Its context is the task description (MMLU: "The following are
 * multiple choice questions (with answers) about {subject}.\n\n"), then k solved examples from
 * the few-shot source (the first k, of the same subject for MMLU, the doc itself left out), each
 * "text + ' ' + answer" and "\n\n" after it, then the doc's text. Each choice is scored by the
 * log-likelihood of " " + choice after the context, the pair encoded as the harness encodes it:
 * trailing spaces of the context move to the continuation, context + continuation is encoded as
 * a whole and split where the context alone ends; a sequence longer than the model's limit is
 * cut from the left (counted). acc: the best log-likelihood is the right choice; acc_norm: the
 * best log-likelihood per character of the choice. Results: micro-averaged, and per subject.
 *
 * The model is reached through a scorer callback (the evaluate stage binds it to the model; the
 * tests to a fake), so this file knows nothing of devices. */
#ifndef EVAL_MC_H
#define EVAL_MC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum mc_format { MC_MMLU, MC_ARC, MC_HELLASWAG, MC_LUA } mc_format;

/* "mmlu", "arc", "hellaswag", "lua" -> the format; ERR_RECIPE naming the choices otherwise.
 * MC_LUA: a hook (core/hooks.h, task(record, ctx)) turns each record into the fields
 * {text: the question as asked (doc_to_text), choices: [strings] (each scored as " " + choice),
 *  gold: the right one (an index from 0, or the choice's text), subject: optional}; the doc is then
 * built from that table as from a record (mc_load_docs' transform). Few-shot examples are
 * "text + ' ' + choices[gold]", as for ARC and HellaSwag. */
int mc_format_parse(const char *name, mc_format *out);

/* One question, as the harness sees it. */
typedef struct mc_doc {
    char *text;     /* doc_to_text */
    char **choices; /* doc_to_choice (without the leading space) */
    int n_choices;
    int gold;       /* index into choices */
    char *subject;  /* MMLU's subject ("" otherwise) */
    size_t record;  /* its record's index in the task file (mc_load_docs) */
} mc_doc;

/* record -> doc; ERR_DATA naming `what` (file and record) when a field is missing, the answer
 * is not among the choices or its index is out of range. */
int mc_doc_from_record(mc_format f, const json_t *rec, const char *what, mc_doc *out);
void mc_doc_free(mc_doc *d);

/* The text before the doc's own (description and solved examples), "" when there is none;
 * malloc'd. shots: the few-shot docs to take from (the first k that fit are used), self: the doc's
 * index in shots when shots is the doc's own split (it is skipped), else -1. ERR_DATA when fewer
 * than k examples are available. */
int mc_fewshot_prefix(mc_format f, const mc_doc *doc, const mc_doc *shots, size_t n_shots, long self, int k,
                      char **out);

/* The harness's encoding of a (context, continuation) pair (see the top of this file). encode adds
 * no special tokens; bos >= 0 is put in front of the context (add_bos_token). */
typedef int (*mc_encode_fn)(void *ud, const char *text, size_t len, int32_t **ids, size_t *n);
int mc_encode_pair(mc_encode_fn encode, void *ud, int32_t bos, const char *context, const char *continuation,
                   int32_t **ids, size_t *n_ids, size_t *cont_start);

/* The model: for n sequences, the sum of log p(seq[t] | seq[<t]) over t in [cont_start, len). mc_run
 * hands the requests over sorted by their tokens (shared contexts next to each other). */
typedef struct mc_seq {
    const int32_t *ids;
    size_t len, cont_start;
    size_t shared; /* leading tokens it has in common with the requests before and after it in
                    * that order (the most of the two): what a scorer may compute once for both */
} mc_seq;
typedef int (*mc_score_fn)(void *ud, const mc_seq *seqs, size_t n, double *loglik);

typedef struct mc_task {
    const char *name;
    mc_format format;
    const mc_doc *docs;
    size_t n_docs;
    const mc_doc *shots; /* few-shot source; NULL: the docs themselves */
    size_t n_shots;
    int num_fewshot;
    size_t max_len;      /* the model's longest sequence (0: no limit) */
    int32_t bos;         /* -1: none (the harness's default for causal models) */
} mc_task;

typedef struct mc_result {
    double acc, acc_norm; /* micro-averaged over the docs */
    size_t n, truncated;  /* docs scored; sequences cut from the left */
    json_t *subjects;     /* {subject: {acc, acc_norm, n}} (new reference; empty object if none) */
    json_t *per_doc;      /* [{record, loglik: [...], pred, pred_norm, gold}] (new reference) */
} mc_result;

/* Build every request, score them through score (batches of up to batch sequences), and fill r.
 * progress (may be NULL) is called after each batch with (done, total) docs. */
int mc_run(const mc_task *t, mc_encode_fn encode, void *enc_ud, mc_score_fn score, void *score_ud, size_t batch,
           void (*progress)(void *ud, size_t done, size_t total), void *progress_ud, mc_result *r);
void mc_result_free(mc_result *r);

/* What a record becomes before mc_doc_from_record (MC_LUA: the task hook's table): *out a new
 * reference, or NULL to leave the record out. */
typedef int (*mc_record_fn)(void *ud, const json_t *record, const char *what, json_t **out);

/* Read task files (any format data/dataset_read.h reads; several: one split in shards, read in
 * order, records numbered across them) into docs; at most limit docs (0: all), a seeded random
 * subset in file order when there are more. transform (may be NULL) is applied to each record. */
int mc_load_docs(mc_format f, char *const *paths, size_t n_paths, mc_record_fn transform, void *transform_ud,
                 int64_t limit, uint64_t seed, mc_doc **docs, size_t *n);
void mc_docs_free(mc_doc **docs, size_t n);

#endif
