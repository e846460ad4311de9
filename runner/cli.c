/* cli.c: see cli.h. */
#define _GNU_SOURCE
#include "runner/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "runner/recipe.h"

static const char *cmd_label(const cli_cmd *c) { return c->name[0] ? c->name : "run"; }

int cli_usage_error(const cli_cmd *c, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errorf("%s: %s", cmd_label(c), msg);
    fprintf(stderr, "try 'qlora-run %s%s--help'\n", c->name, c->name[0] ? " " : "");
    return ERR_USAGE;
}

void cli_list_free(cli_list *l) {
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static const cli_opt *find_long(const cli_opt *opts, const char *name, size_t len) {
    for (const cli_opt *o = opts; o && o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len)) return o;
    return NULL;
}

static const cli_opt *find_short(const cli_opt *opts, char ch) {
    for (const cli_opt *o = opts; o && o->name; o++)
        if (o->short_name && o->short_name == ch) return o;
    return NULL;
}

static int unknown_option(const cli_cmd *c, const cli_opt *opts, const char *arg) {
    const char *names[128];
    size_t n = 0;
    for (const cli_opt *o = opts; o && o->name && n < 128; o++) names[n++] = o->name;
    char word[128];
    const char *a = arg + strspn(arg, "-");
    snprintf(word, sizeof word, "%.*s", (int)strcspn(a, "="), a);
    const char *s = recipe_suggest(word, names, n);
    if (s) return cli_usage_error(c, "unknown option '%s' (did you mean '--%s'?)", arg, s);
    return cli_usage_error(c, "unknown option '%s'", arg);
}

/* store value v (the text after --name, or the next argument) into o's destination */
static int store(const cli_cmd *c, const cli_opt *o, void *base, const char *v) {
    char *end;
    char *dst = (char *)base + o->off;
    switch (o->type) {
    case CLI_FLAG:
        *(bool *)dst = true;
        return 0;
    case CLI_STR:
        *(const char **)dst = v;
        return 0;
    case CLI_LIST: {
        cli_list *l = (cli_list *)dst;
        const char **nv = realloc(l->v, (size_t)(l->n + 2) * sizeof *nv);
        if (!nv) return cli_usage_error(c, "out of memory");
        l->v = nv;
        l->v[l->n++] = v;
        l->v[l->n] = NULL;
        return 0;
    }
    case CLI_INT: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno) return cli_usage_error(c, "--%s needs a whole number, not '%s'", o->name, v);
        if (o->min < o->max && (x < o->min || x > o->max))
            return cli_usage_error(c, "--%s must be between %.15g and %.15g, not %lld", o->name, o->min, o->max, x);
        *(int64_t *)dst = x;
        return 0;
    }
    case CLI_NUM: {
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x)) return cli_usage_error(c, "--%s needs a number, not '%s'", o->name, v);
        if (o->min < o->max && (x < o->min || x > o->max))
            return cli_usage_error(c, "--%s must be between %.15g and %.15g, not %s", o->name, o->min, o->max, v);
        *(double *)dst = x;
        return 0;
    }
    }
    return 0;
}

int cli_parse(const cli_cmd *c, void *base, int argc, char **argv, const char **pos, int *n_pos) {
    const cli_opt *opts = c->opts;
    *n_pos = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) break;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            cli_print_help(c, stdout);
            return CLI_HELP;
        }
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || !a[1]) {
            if (c->max_pos >= 0 && *n_pos >= c->max_pos) {
                if (c->max_pos == 0) return cli_usage_error(c, "unexpected argument '%s'", a);
                return cli_usage_error(c, "unexpected argument '%s' (after '%s')", a, pos[*n_pos - 1]);
            }
            pos[(*n_pos)++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = true;
            continue;
        }
        const cli_opt *o;
        const char *v = NULL;
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            o = find_long(opts, name, eq ? (size_t)(eq - name) : strlen(name));
            if (!o) return unknown_option(c, opts, a);
            if (eq) {
                if (o->type == CLI_FLAG) return cli_usage_error(c, "--%s takes no value", o->name);
                v = eq + 1;
            }
        } else {
            o = a[2] ? NULL : find_short(opts, a[1]);
            if (!o) return unknown_option(c, opts, a);
        }
        if (o->type != CLI_FLAG && !v) {
            if (i + 1 >= argc)
                return cli_usage_error(c, "--%s needs a value (%s)", o->name, o->arg ? o->arg : "a value");
            v = argv[++i];
        }
        int rc = store(c, o, base, v);
        if (rc) return rc;
    }
    if (*n_pos < c->min_pos) {
        const char *u = c->usage, *nl = strchr(u, '\n');
        return cli_usage_error(c, "missing arguments (usage: qlora-run %.*s)", nl ? (int)(nl - u) : (int)strlen(u), u);
    }
    return 0;
}

void cli_print_help(const cli_cmd *c, FILE *out) {
    const cli_opt *opts = c->opts;
    const char *u = c->usage;
    for (bool first = true; *u; first = false) {
        size_t n = strcspn(u, "\n");
        if (*u == ' ') /* a continuation of the line above, aligned under its first argument */
            fprintf(out, "%16s %.*s\n", "", (int)(n - strspn(u, " ")), u + strspn(u, " "));
        else
            fprintf(out, "%s qlora-run %.*s\n", first ? "usage:" : "      ", (int)n, u);
        u += n + (u[n] == '\n');
    }
    if (c->about) fprintf(out, "\n%s\n", c->about);
    if (c->args) fprintf(out, "\n%s\n", c->args);
    if (opts && opts->name) {
        fputc('\n', out);
        for (const cli_opt *o = opts; o->name; o++) {
            char left[96];
            int k;
            if (o->short_name)
                k = snprintf(left, sizeof left, "  -%c, --%s%s%s", o->short_name, o->name, o->arg ? " " : "",
                             o->arg ? o->arg : "");
            else
                k = snprintf(left, sizeof left, "      --%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
            fputs(left, out);
            const char *h = o->help ? o->help : "";
            int col = 26;
            if (k >= col) fprintf(out, "\n%*s", col, "");
            else fprintf(out, "%*s", col - k, "");
            for (;;) {
                size_t n = strcspn(h, "\n");
                fprintf(out, "%.*s\n", (int)n, h);
                if (!h[n]) break;
                h += n + 1;
                fprintf(out, "%*s", col, "");
            }
        }
        fprintf(out, "  -h, --help              this text\n");
    }
    if (c->footer) fprintf(out, "\n%s\n", c->footer);
}
