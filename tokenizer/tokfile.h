/* tokfile.h: a tokenizer directory read as data (not as an encoder).
 *
 * What exporting and generating models needs to know about a tokenizer, without running
 * it: every token string by id (holes left NULL), the merges in rank order ("a b"), which
 * tokens are added/special, the BOS/EOS/PAD/UNK ids and add_bos/add_eos from
 * tokenizer_config.json, the chat template, and the style (byte-level BPE in the GPT-2
 * alphabet, or SentencePiece-style BPE with "▁" and <0xXX> byte fallback).
 * Ownership: tokfile_load fills a caller-owned struct; tokfile_free releases it. */
#ifndef MODEL_TOKFILE_H
#define MODEL_TOKFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum tokfile_style { TOKFILE_BYTE_LEVEL, TOKFILE_SENTENCEPIECE } tokfile_style;

typedef struct tokfile {
    tokfile_style style;
    int32_t n_vocab;        /* highest id + 1 over the BPE vocab and the added tokens */
    char **tokens;          /* [n_vocab]: the vocab string, NULL for a hole */
    uint8_t *added;         /* [n_vocab]: 1 for added tokens */
    uint8_t *special;       /* [n_vocab]: 1 for special added tokens */
    char **merges;          /* [n_merges]: "left right", rank order */
    size_t n_merges;
    int32_t bos, eos, pad, unk; /* -1 when none */
    bool add_bos, add_eos;
    char *chat_template;    /* NULL when none */
    char *pre;              /* llama.cpp pre-tokenizer name: "default", "llama-bpe", "qwen2", "gpt-2" */
} tokfile;

int tokfile_load(tokfile *t, const char *dir);
void tokfile_free(tokfile *t);
int32_t tokfile_id(const tokfile *t, const char *token); /* -1 if absent (linear scan) */

/* The "type" of tokenizer.json's top-level "model" object ("BPE", "Unigram", "WordPiece") into
 * out, found by scanning the file's text (strings and nesting stepped over, nothing parsed or
 * kept): a check before anything runs that costs one read of the file, where loading a
 * 262k-token vocabulary takes a second or more. "" when the model object has no type (old files
 * omit it) or is not there. the error of reading the file when it cannot be. */
int tokfile_model_type(const char *path, char *out, size_t cap);

/* the files a tokenizer directory may hold (NULL-terminated), copied along with a model */
extern const char *const tokfile_names[];

#endif
