/* commands.h: the subcommands of qlora-run, in one table (commands.c) that main dispatches
 * from and that `qlora-run --help`, each command's --help and the docs are written from. Each
 * command is `int cmd_NAME(int argc, char **argv)` (argv[0] is the command's name) with its
 * command-line table `cli_NAME` (runner/cli.h); it returns an exit code (core/err.h), prints
 * --help to stdout with exit 0 and misuse to stderr with ERR_USAGE. A command shares its
 * implementation with the stage kind of the same job. */
#ifndef RUNNER_COMMANDS_H
#define RUNNER_COMMANDS_H

#include <stddef.h>
#include <stdio.h>

#include "runner/cli.h"

typedef struct command {
    const char *name;  /* what the user types; "" for `qlora-run RECIPE` */
    const char *group; /* the heading it is listed under in --help */
    int (*fn)(int argc, char **argv);
    const cli_cmd *cli;
} command;

extern const command commands[];
extern const size_t n_commands;

/* The command called name (NULL if none). */
const command *command_find(const char *name);
/* `qlora-run --help`: the usage lines, every command with its summary by group, the exit codes. */
void commands_print_usage(FILE *out);

#define CMD(n)                              \
    int cmd_##n(int argc, char **argv);     \
    extern const cli_cmd cli_##n;
CMD(run)
CMD(validate)
CMD(show)
CMD(plan)
CMD(cache)
CMD(runs)
CMD(data)
CMD(schema)
CMD(fetch)
CMD(init_model)
CMD(quantize)
CMD(inspect)
CMD(tokenize)
CMD(chat_template)
CMD(generate)
CMD(export)
CMD(doctor)
CMD(report)
CMD(push)
#undef CMD

/* The directory a command reads for `sub` ("model", "adapter"): dir/sub when dir is a stage
 * artifact or an export holding it (dir/sub/marker exists), dir itself otherwise. malloc'd.
 * generate --model/--adapter and export --base/--adapter accept the same forms through it. */
char *command_artifact_subdir(const char *dir, const char *sub, const char *marker);

#endif
