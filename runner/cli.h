/* cli.h: the command line of every qlora-run command, declared as tables (as git's
 * parse-options and jq's option table do): one cli_cmd per command names its usage lines, what it
 * does, its options and its positional arguments; cli_parse reads argv against it and
 * cli_print_help writes --help from it. The same tables give `qlora-run --help` (the command
 * table in commands.c), so help, parsing and the reference never disagree.
 *
 * Every command gets the same behaviour: `--opt value` and `--opt=value`, a short form where
 * the table gives one (`-j 4`), typed values checked against their bounds, repeatable options
 * (CLI_LIST), `--` ending the options, `-h`/`--help` on stdout with exit 0, and misuse on
 * stderr as one message with a did-you-mean and a pointer to --help, exit 2. */
#ifndef RUNNER_CLI_H
#define RUNNER_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum cli_type {
    CLI_FLAG, /* set to true */
    CLI_STR,  /* points into argv */
    CLI_INT,
    CLI_NUM,
    CLI_LIST  /* every occurrence appended (pointing into argv) */
} cli_type;

typedef struct cli_list {
    const char **v; /* malloc'd, NULL-terminated (NULL when empty); free with cli_list_free */
    int n;
} cli_list;

typedef struct cli_opt {
    const char *name;  /* long name without the dashes; NULL ends a table */
    char short_name;   /* 0: none */
    cli_type type;
    const char *arg;   /* the value's name in help ("DIR", "N"); NULL for flags */
    const char *help;  /* one line (may contain \n for more) */
    size_t off;        /* where the value goes: offsetof(the command's options struct, field);
                          CLI_FLAG: bool, CLI_STR: const char *, CLI_INT: int64_t,
                          CLI_NUM: double, CLI_LIST: cli_list */
    double min, max;   /* CLI_INT, CLI_NUM: accepted range when min < max */
} cli_opt;

typedef struct cli_cmd {
    const char *name;    /* "tokenize"; "" for the recipe runner itself */
    const char *usage;   /* usage lines after "qlora-run ", separated by \n */
    const char *summary; /* one line for `qlora-run --help` */
    const char *about;   /* paragraphs printed after the usage (may be NULL) */
    const char *args;    /* help for positional arguments, printed before the options (may be NULL) */
    const char *footer;  /* printed last (exit status, examples; may be NULL) */
    int min_pos, max_pos; /* how many positional arguments (max_pos < 0: any number) */
    const cli_opt *opts;  /* ended by an entry with name NULL; may be NULL */
} cli_cmd;

#define CLI_AT(type, field) offsetof(type, field)

#define CLI_HELP (-1) /* cli_parse printed the help: exit 0 */

/* Parse argv[1..argc) (argv[0] is the command's name) against c->opts, storing values into the
 * options struct at base. Positional arguments are stored in pos (capacity argc) and counted in
 * *n_pos. Returns 0, CLI_HELP (help printed), or ERR_USAGE after printing the error and the
 * pointer to --help on stderr. Free CLI_LIST fields with cli_list_free. */
int cli_parse(const cli_cmd *c, void *base, int argc, char **argv, const char **pos, int *n_pos);

/* A usage error of command c: prints "qlora-run: error: NAME: <msg>" and the --help pointer to
 * stderr; returns ERR_USAGE. For checks cli_parse cannot make (options that exclude each other). */
int cli_usage_error(const cli_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --help: usage lines, about, args, the options table (generated), footer. */
void cli_print_help(const cli_cmd *c, FILE *out);

void cli_list_free(cli_list *l);

#endif
