/* bench_dataset.c: 52,000 Alpaca-sized records formatted, tokenized, masked, packed and
 * written by dataset_build, timed end to end (reading the JSON included).
 *
 *   bench/dataset/run.sh [--records N] [--jobs N] [--tokenizer DIR] [--format-hook FILE] [--chat-template]
 *
 * The records are generated from a seed with the shape of alpaca_data.json (instruction
 * ~10 words, input empty 60% of the time, output ~45 words; ~22 MB for 52K records). The
 * tokenizer is model/tokenizer.h's when --tokenizer is given (and the build has one),
 * otherwise the byte layout of the generated tokenizer (id = byte, <s> 256, </s> 257).
 *
 * --chat-template writes the same records as chat (a user turn with the instruction and input,
 * an assistant turn with the output) and runs format: chat with the Jinja template of the
 * --tokenizer directory (tokenizer_config.json), masks by the placeholder diff, the end of
 * each assistant turn trained: the issue-16 benchmark with Llama-3.1's tokenizer and template. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/rng.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/chat_template.h"
#include "bench/byte_tokenizer.h"
#include "train/dataset_build.h"

static const char *words[] = {
    "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "for", "on", "are", "with", "as", "be", "this",
    "can", "data", "model", "write", "describe", "explain", "list", "generate", "story", "poem", "sentence", "word",
    "example", "following", "given", "text", "create", "summary", "article", "three", "five", "reasons", "benefits",
    "important", "different", "between", "health", "water", "energy", "climate", "computer", "learning", "people",
    "city", "history", "science", "music", "food", "travel", "business", "customer", "product", "research", "time",
    "because", "which", "their", "would", "about", "could", "should", "other", "these", "first", "new", "good",
    "improve", "design", "analysis", "system", "process", "information", "technology", "environment", "education",
    "Café", "naïve", "über", "résumé", "日本", "数据", "😀"};
#define N_WORDS (sizeof words / sizeof words[0])

static void put_words(FILE *f, rng_state *r, int lo, int hi, const char *end) {
    int n = lo + (int)rng_next_below(r, (uint64_t)(hi - lo + 1));
    for (int i = 0; i < n; i++) {
        const char *w = words[rng_next_below(r, N_WORDS)];
        fputs(w, f);
        if (i + 1 < n) fputs(rng_next_below(r, 12) ? " " : rng_next_below(r, 2) ? ", " : "\\n", f); /* a JSON \n */
    }
    fputs(end, f);
}

static bool chat;

static int write_records(const char *path, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return err_errno(ERR_STAGE, "cannot write '%s'", path);
    rng_state r;
    rng_seed(&r, 52002);
    fputs("[\n", f);
    for (int i = 0; i < n; i++) {
        fputs(chat ? "    {\"messages\": [{\"role\": \"user\", \"content\": \"" : "    {\n        \"instruction\": \"", f);
        put_words(f, &r, 5, 18, ".");
        fputs(chat ? "\\n\\n" : "\",\n        \"input\": \"", f);
        if (rng_next_below(&r, 10) < 4) put_words(f, &r, 3, 40, "");
        fputs(chat ? "\"}, {\"role\": \"assistant\", \"content\": \"" : "\",\n        \"output\": \"", f);
        put_words(f, &r, 5, 90, ".");
        fprintf(f, chat ? "\"}]}%s\n" : "\"\n    }%s\n", i + 1 < n ? "," : "");
    }
    fputs("]\n", f);
    return fclose(f) ? err_errno(ERR_STAGE, "cannot write '%s'", path) : 0;
}

int main(int argc, char **argv) {
    int n = 52000, jobs = 2;
    const char *tokdir = NULL, *hook = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--records") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokdir = argv[++i];
        else if (!strcmp(argv[i], "--format-hook") && i + 1 < argc) hook = argv[++i];
        else if (!strcmp(argv[i], "--chat-template")) chat = true;
        else {
            fprintf(stderr, "usage: bench_dataset [--records N] [--jobs N] [--tokenizer DIR] [--format-hook FILE] [--chat-template]\n");
            return 2;
        }
    }
    if (chat && !tokdir) {
        fprintf(stderr, "--chat-template needs --tokenizer DIR (its tokenizer_config.json holds the template)\n");
        return 2;
    }
    char dir[] = "/tmp/qlora_bench_ds_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char *data = fs_join(dir, "alpaca_like.json"), *out = fs_join(dir, "out");
    fs_mkdir_p(out);
    if (write_records(data, n)) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    dataset_tokenizer tok = BYTE_TOKENIZER;
    const char *tok_name = "byte (built-in, id = byte)";
    tokenizer *t = NULL;
    if (tokdir) {
        if (tokenizer_load(&t, tokdir)) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        dataset_tokenizer_of(t, &tok);
        tok_name = tokdir;
    }
    dataset_opts o = {.format = DATASET_FORMAT_ALPACA, .sequence_len = 512, .sample_packing = true,
                      .val_set_size = 0.02, .shuffle = true, .seed = 1, .jobs = jobs};
    char *paths[1] = {data};
    dataset_source src = {paths, 1, DATASET_TYPE_AUTO, NULL, NULL, 0};
    if (hook) {
        json_t *spec = json_pack("{s:s}", "format", hook);
        int hrc = hooks_open(&src.hooks, spec);
        json_decref(spec);
        if (hrc) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        o.format = DATASET_FORMAT_LUA;
    }
    chat_template *ct = NULL;
    static const char *eot[2];
    chat_format_opts co = {0};
    if (chat) {
        if (chat_template_load(&ct, tokdir, NULL)) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        eot[0] = tok.eos_token;
        co = (chat_format_opts){.tpl = ct, .eot = eot, .n_eot = 1};
        o.format = DATASET_FORMAT_CHAT;
        o.chat = &co;
    }
    json_t *stats = NULL;
    log_set_quiet(true);
    double t0 = clock_now_s(), c0 = clock_process_cpu_s();
    int rc = dataset_build(&o, &src, &tok, out, NULL, &stats);
    double dt = clock_now_s() - t0, cpu = clock_process_cpu_s() - c0;
    if (rc) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    int64_t sz = fs_size(data);
    long long tokens = (long long)json_integer_value(json_object_get(stats, "tokens"));
    printf("records            %d (%.1f MB of JSON)\n", n, (double)sz / 1e6);
    printf("tokenizer          %s, %d threads\n", tok_name, jobs);
    printf("format             %s\n", hook ? hook : chat ? ct->source : "alpaca (C)");
    printf("sequence_len       %lld, packing on, val 2%%\n", (long long)o.sequence_len);
    printf("tokens             %lld (%.1f%% masked)\n", tokens,
           100 * json_number_value(json_object_get(stats, "masked_share")));
    printf("packing efficiency %.2f%%\n", 100 * json_number_value(json_object_get(stats, "packing_efficiency")));
    printf("time               %.2f s (%.0f records/s, %.1f M tokens/s)\n", dt, n / dt, tokens / dt / 1e6);
    /* CPU seconds of all threads: on a busy shared machine the steadier figure */
    printf("cpu                %.2f s over %d threads\n", cpu, jobs);
    json_decref(stats);
    hooks_free(&src.hooks);
    chat_template_free(&ct);
    fs_rm_rf(dir);
    free(data);
    free(out);
    return dt <= 5.0 ? 0 : 3;
}
