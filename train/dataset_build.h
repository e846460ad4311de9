/* dataset_build.h: the dataset stage's machinery, callable without a recipe (tests, bench, the
 * `data show` command).
 *
 * dataset_build turns records (files or a Lua generator) into the dataset artifact that the
 * trainer reads, in this order: read -> format (alpaca, chat template, completion or a Lua
 * hook) -> tokenize (several threads) -> mask -> truncate or drop -> shuffle and split ->
 * pack -> write. The artifact, per split in {train, val}:
 *   <split>.ids.i32     int32 LE token ids, every row concatenated
 *   <split>.labels.i32  int32, same length: the id where trained, -100 where masked. Not
 *                       shifted (logits at t predict labels[t+1]); the first token of every
 *                       sequence is -100, so no loss crosses a packed sequence boundary
 *   <split>.rows.i64    int64 offsets, n_rows + 1: row r is [rows[r], rows[r+1]), at most
 *                       sequence_len tokens (one micro-batch row)
 *   <split>.seqs.i64    int64 offsets, n_seqs + 1, into the same stream: where each packed
 *                       sequence starts (positions restart there; attention never crosses it)
 *   meta.json           {"version":1, "sequence_len":N, "splits":{"train":{"rows","tokens","seqs"},
 *                        "val":{...}}, "stats":{...}, "tokenizer":{"bos","eos","vocab_size"}}
 *
 * Masking follows docs/alpaca.md: the prompt is tokenized alone and that many tokens
 * (after BOS) are masked in the tokenized prompt + response; EOS follows the response and is
 * trained. BOS is added once, by us, never by the templates. */
#ifndef TRAIN_DATASET_BUILD_H
#define TRAIN_DATASET_BUILD_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/hooks.h"
#include "data/dataset_read.h"
#include "train/chat_format.h"

#define DATASET_IGNORE_INDEX (-100)
#define DATASET_VERSION 1

/* The tokenizer as the builder needs it. encode must be thread-safe and add no special
 * tokens of its own (special tokens written as text, such as "</s>", may map to their ids). */
typedef struct dataset_tokenizer {
    void *ud;
    int (*encode)(void *ud, const char *text, size_t len, int32_t **ids, size_t *n); /* *ids malloc'd */
    int32_t bos, eos;        /* -1: none */
    int32_t vocab_size;
    const char *bos_token;   /* their text, for templates ("" if none) */
    const char *eos_token;
} dataset_tokenizer;
/* the dataset_tokenizer of a loaded tokenizer (encode without BOS; its BOS/EOS ids and texts) */
struct tokenizer;
void dataset_tokenizer_of(struct tokenizer *t, dataset_tokenizer *out);

typedef enum dataset_format {
    DATASET_FORMAT_ALPACA,
    DATASET_FORMAT_CHAT,
    DATASET_FORMAT_COMPLETION,
    DATASET_FORMAT_LUA
} dataset_format;

typedef enum dataset_chat_template {
    DATASET_CHAT_LLAMA2,
    DATASET_CHAT_LLAMA3,
    DATASET_CHAT_CHATML
} dataset_chat_template;

typedef struct dataset_opts {
    dataset_format format;
    dataset_chat_template chat_template;
    const char *chat_file;        /* the chat_template_file the Jinja template came from (NULL: the
                                     model's own); recorded in meta.json for evaluate */
    const chat_format_opts *chat; /* format: chat with a Jinja template (then chat_template is not
                                   * used): the text is exactly what the template renders, with no
                                   * BOS or EOS added (the template writes them); borrowed */
    int64_t sequence_len;
    bool drop_long;        /* truncation: drop (true) or truncate (false) */
    bool train_on_inputs;
    bool sample_packing;
    double val_set_size;   /* < 1: a fraction of the sequences; >= 1: a count */
    bool shuffle;
    uint64_t seed;
    bool skip_errors;      /* on_error: skip */
    int64_t max_records;   /* 0: all */
    int jobs;              /* tokenizer threads (>= 1) */
    json_t *hook_args;     /* ctx.args for the format / generate hooks (borrowed, may be NULL) */
} dataset_opts;

/* One dataset of a mix (the stage's `datasets:` list): its files, how its records are read and
 * formatted, and its share. The field names rename a record's fields to the format's own
 * (axolotl's field_instruction, field_input, field_output, field); NULL keeps them. */
typedef struct dataset_part {
    const char *name;        /* in the counts and messages */
    char *const *paths;
    size_t n_paths;
    dataset_type type;
    dataset_format format;
    dataset_chat_template chat_template;
    bool chat_builtin;       /* the entry names a built-in template: the stage's Jinja one is not used */
    const char *field_instruction, *field_input, *field_output, *field_text;
    int64_t max_records;     /* 0: all; the first ones of its files */
    double weight;           /* >= 0; its share of the mix is weight / the sum of the weights */
} dataset_part;

/* Where records come from: files (with a type), or the parts of a mix, or, when both are
 * empty, hooks' generate.
 * A mix: with equal weights every part gives all its records; otherwise each part gives
 * round(share * T) records, T the largest mix in which no part repeats a record (so the part
 * that runs out first gives all of its records), chosen without replacement by a generator
 * seeded with the seed and the part's position. The counts go to the log and to the stats
 * ("mix": [{name, available, used, weight, share}]). */
typedef struct dataset_source {
    char *const *paths;
    size_t n_paths;
    dataset_type type;
    hooks *hooks; /* format (DATASET_FORMAT_LUA) and generate; may be NULL */
    const dataset_part *parts;
    size_t n_parts;
} dataset_source;

/* What the builder reports while it runs, given by its caller (the dataset stage passes its
 * stage context through these; tests and the benchmark pass NULL). Every member may be NULL. */
typedef struct dataset_callbacks {
    void *ud;
    void (*log)(void *ud, const char *line);                        /* one log line */
    void (*metric)(void *ud, const char *name, double value);       /* recorded in the manifest */
    void (*progress)(void *ud, const char *what, double done, const char *unit);
    void (*progress_done)(void *ud);
    bool (*interrupted)(void *ud);                                  /* true: stop now */
} dataset_callbacks;

/* Build the artifact into out_dir (which must exist). *stats (may be NULL) receives the stats
 * object also written into meta.json. cb (may be NULL) receives log lines, metrics,
 * progress and interruption checks. Errors: ERR_DATA for bad records (with file and record index),
 * ERR_INTERRUPTED, ERR_STAGE for I/O. */
int dataset_build(const dataset_opts *o, const dataset_source *src, const dataset_tokenizer *tok, const char *out_dir,
                  const dataset_callbacks *cb, json_t **stats);

/* The special tokens a built-in template writes as text and means as one token each
 * (NULL-terminated): a tokenizer without them would split them into ordinary pieces. */
const char *const *dataset_chat_special_tokens(dataset_chat_template tpl);
/* "llama-2" | "llama-3" | "chatml" -> the template; ERR_RECIPE naming the choices otherwise */
int dataset_chat_template_from_name(const char *name, dataset_chat_template *out);
/* The prompt of a chat record ({messages} or ShareGPT {conversations}) as format: chat renders
 * it, ready for generation: every turn before the last assistant one (which is left out, or
 * absent) and the assistant header. No BOS (the caller adds it); malloc'd. ERR_DATA as the
 * dataset stage reports a bad record. */
int dataset_chat_prompt(const json_t *rec, const char *what, dataset_chat_template tpl, const dataset_tokenizer *tok,
                        char **out);

/* The alpaca prompt of a record (docs/alpaca.md, exact strings); malloc'd. */
char *dataset_alpaca_prompt(const char *instruction, const char *input);

/* Print n rows of a dataset artifact decoded with the tokenizer in tokenizer_dir, masked
 * spans between "[[" and "]]" and each packed sequence on its own paragraph. */
int dataset_show(const char *artifact_dir, const char *tokenizer_dir, int n, FILE *out);
/* The same for a split by name ("train" or "val"). */
int dataset_show_split(const char *artifact_dir, const char *tokenizer_dir, const char *split, int n, FILE *out);

#endif
