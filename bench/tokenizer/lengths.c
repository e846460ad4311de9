/* lengths.c: encode throughput against the length of one input string, to show it is linear.
 *
 *   bench/tokenizer/lengths.sh [BUILD_DIR]     (after bench.sh has laid out the vocabularies)
 *   lengths TOKENIZER_DIR TEXT_FILE
 *
 * The text's lines are joined with spaces into one stream, then about 1 MB of it is encoded as
 * strings of 1 KB, 16 KB and 256 KB (cut on character boundaries), once as is and once with
 * every space removed (one long word for SentencePiece-style vocabularies, which have no
 * pre-tokenizer). Each figure is the best of 4 passes in thread CPU time, and every pass starts
 * with an empty word cache, so it is the cost of text not seen before. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

/* MB/s of encoding text[0..n) as consecutive strings of about len bytes */
static double pass_rate(tokenizer *t, const char *text, size_t n, size_t len) {
    double best = 0;
    for (int pass = 0; pass < 4; pass++) {
        tok_cache_free(t);
        if (tok_cache_init(t)) return -1;
        double t0 = clock_thread_cpu_s();
        for (size_t a = 0; a < n;) {
            size_t e = a + len < n ? a + len : n;
            while (e < n && ((unsigned char)text[e] & 0xC0) == 0x80) e++; /* a whole character */
            int32_t *ids;
            size_t k;
            if (tokenizer_encode(t, text + a, e - a, false, &ids, &k)) return -1;
            free(ids);
            a = e;
        }
        double r = (double)n / (clock_thread_cpu_s() - t0) / 1e6;
        if (r > best) best = r;
    }
    return best;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: lengths TOKENIZER_DIR TEXT_FILE\n");
        return 2;
    }
    tokenizer *t;
    if (tokenizer_load(&t, argv[1])) {
        fprintf(stderr, "lengths: %s\n", err_msg());
        return 1;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    size_t cap = 1 << 20, n = 0, m = 0;
    char *text = malloc(cap), *nosp = malloc(cap);
    int c;
    while (text && nosp && n < cap && (c = fgetc(f)) != EOF) {
        text[n++] = c == '\n' ? ' ' : (char)c;
        if (c != ' ' && c != '\n') nosp[m++] = (char)c;
    }
    fclose(f);
    if (!text || !nosp) return 1;
    while (n > 0 && ((unsigned char)text[n - 1] & 0x80)) n--; /* no cut character at the end */
    while (m > 0 && ((unsigned char)nosp[m - 1] & 0x80)) m--;
    const char *name = strrchr(argv[1], '/') && strrchr(argv[1], '/')[1] ? strrchr(argv[1], '/') + 1 : argv[1];
    printf("%-28s %10s %10s %10s\n", name, "1 KB", "16 KB", "256 KB");
    const char *names[2] = {"with spaces (MB/s cpu)", "without spaces (MB/s cpu)"};
    for (int mode = 0; mode < 2; mode++) {
        printf("%-28s", names[mode]);
        for (size_t len = 1024; len <= 256 * 1024; len *= 16)
            printf(" %10.1f", mode ? pass_rate(t, nosp, m, len) : pass_rate(t, text, n, len));
        printf("\n");
    }
    free(text);
    free(nosp);
    tokenizer_free(&t);
    return 0;
}
