/* cmd_tokenize.c: `qlora-run tokenize`, text <-> token ids with a model's tokenizer.json.
 *
 * Line by line, so that a shell pipeline can pair input and output lines: each input line
 * (without its newline) is encoded on its own and gives one output line. --stats times the
 * encode calls alone (load and I/O excluded), in wall time and in the thread's CPU time (the
 * steadier figure on a shared machine): what bench/tokenizer reports. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "tokenizer/tokenizer.h"
#include "runner/commands.h"

typedef struct tokenize_args {
    const char *model;
    bool ids, tokens, no_special, decode, stats;
} tokenize_args;

static const cli_opt tokenize_opts[] = {
    {"model", 0, CLI_STR, "DIR", "a model directory, or one holding tokenizer.json (and optionally\n"
                                 "tokenizer_config.json, special_tokens_map.json)", CLI_AT(tokenize_args, model), 0, 0},
    {"ids", 0, CLI_FLAG, NULL, "print token ids (the default)", CLI_AT(tokenize_args, ids), 0, 0},
    {"tokens", 0, CLI_FLAG, NULL, "print the tokens' vocabulary strings instead of ids", CLI_AT(tokenize_args, tokens), 0, 0},
    {"no-special", 0, CLI_FLAG, NULL, "encoding: add no BOS/EOS; decoding: leave special tokens out",
     CLI_AT(tokenize_args, no_special), 0, 0},
    {"decode", 0, CLI_FLAG, NULL, "ids to text", CLI_AT(tokenize_args, decode), 0, 0},
    {"stats", 0, CLI_FLAG, NULL, "at the end, print bytes, tokens and encode throughput to stderr", CLI_AT(tokenize_args, stats), 0, 0},
    {0},
};

const cli_cmd cli_tokenize = {
    .name = "tokenize",
    .usage = "tokenize --model DIR [--ids | --tokens] [--no-special] [--stats]\n"
             "tokenize --model DIR --decode [--no-special]",
    .summary = "token ids of text on stdin (--decode for the reverse)",
    .about = "Reads UTF-8 text on stdin and prints, for each input line, its token ids separated by\n"
             "spaces (or its tokens with --tokens). With --decode, reads lines of ids and prints the text.",
    .footer = "Exit status: 0 ok, 2 usage, 4 invalid tokenizer files or input (invalid UTF-8, bad ids).",
    .max_pos = 0, .opts = tokenize_opts,
};

/* ids are most of the output: format them without printf */
static void put_id(int32_t v) {
    char b[12], *p = b + sizeof b;
    uint32_t u = (uint32_t)v;
    do *--p = (char)('0' + u % 10); while (u /= 10);
    fwrite(p, 1, (size_t)(b + sizeof b - p), stdout);
}

static int decode_lines(const tokenizer *t, bool skip_special) {
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int32_t *ids = NULL;
    size_t ids_cap = 0;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t nid = 0;
        char *p = line;
        for (;;) {
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
            if (!*p) break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
                char *tokend = p;
                while (*tokend && *tokend != ' ' && *tokend != '\t' && *tokend != '\n') tokend++;
                *tokend = 0;
                rc = err_set(ERR_DATA, "stdin: line %zu: '%s' is not a token id", lineno, p);
                break;
            }
            if (nid == ids_cap) {
                ids_cap = ids_cap ? ids_cap * 2 : 256;
                int32_t *np = realloc(ids, ids_cap * sizeof *ids);
                if (!np) { rc = err_set(ERR_STAGE, "out of memory"); break; }
                ids = np;
            }
            ids[nid++] = (int32_t)v;
            p = end;
        }
        if (rc) break;
        char *text;
        size_t len;
        if ((rc = tokenizer_decode(t, ids, nid, skip_special, &text, &len))) {
            err_wrap("stdin: line %zu", lineno);
            break;
        }
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
        free(text);
    }
    free(line);
    free(ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    tokenize_args a = {0};
    int n_pos, rc = cli_parse(&cli_tokenize, &a, argc, argv, NULL, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (!a.model) return cli_usage_error(&cli_tokenize, "--model DIR is required");
    if (a.ids && a.tokens) return cli_usage_error(&cli_tokenize, "--ids and --tokens do not go together");
    if (a.decode && a.tokens) return cli_usage_error(&cli_tokenize, "--decode and --tokens do not go together");
    const char *model = a.model;
    bool tokens = a.tokens, no_special = a.no_special, decode = a.decode, stats = a.stats;

    tokenizer *t;
    rc = tokenizer_load(&t, model);
    if (rc) return rc; /* main prints the message */
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    if (decode) {
        rc = decode_lines(t, no_special);
    } else {
        char *line = NULL;
        size_t cap = 0, lineno = 0, bytes = 0, ntok = 0;
        ssize_t n;
        double secs = 0, cpu = 0;
        while ((n = getline(&line, &cap, stdin)) >= 0) {
            lineno++;
            size_t len = (size_t)n;
            if (len && line[len - 1] == '\n') len--;
            int32_t *ids;
            size_t nid;
            double t0 = stats ? clock_now_s() : 0, c0 = stats ? clock_thread_cpu_s() : 0;
            rc = tokenizer_encode(t, line, len, !no_special, &ids, &nid);
            if (stats) {
                secs += clock_now_s() - t0;
                cpu += clock_thread_cpu_s() - c0;
            }
            if (rc) {
                err_wrap("stdin: line %zu", lineno);
                break;
            }
            bytes += len;
            ntok += nid;
            for (size_t k = 0; k < nid; k++) {
                if (k) fputc(' ', stdout);
                if (tokens) fputs(tokenizer_token(t, ids[k]), stdout);
                else put_id(ids[k]);
            }
            fputc('\n', stdout);
            free(ids);
        }
        free(line);
        if (!rc && stats)
            fprintf(stderr, "tokenize: %zu lines, %zu bytes, %zu tokens, encode %.3f s (cpu %.3f s), %.2f MB/s (cpu %.2f MB/s)\n",
                    lineno, bytes, ntok, secs, cpu, secs > 0 ? (double)bytes / 1e6 / secs : 0.0, cpu > 0 ? (double)bytes / 1e6 / cpu : 0.0);
    }
    if (fflush(stdout) && !rc) {
        errorf("cannot write to stdout: %s", strerror(errno));
        rc = ERR_STAGE;
    }
    tokenizer_free(&t);
    return rc;
}
