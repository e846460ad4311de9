/* commands.c: the command table (see commands.h). A new command is a cmd_*.c file with its
 * cli_cmd table and one line here. */
#include "runner/commands.h"

#include <string.h>

const command commands[] = {
    {"", "recipes", cmd_run, &cli_run},
    {"validate", "recipes", cmd_validate, &cli_validate},
    {"show", "recipes", cmd_show, &cli_show},
    {"plan", "recipes", cmd_plan, &cli_plan},
    {"cache", "recipes", cmd_cache, &cli_cache},
    {"runs", "recipes", cmd_runs, &cli_runs},
    {"report", "recipes", cmd_report, &cli_report},
    {"data", "recipes", cmd_data, &cli_data},
    {"schema", "recipes", cmd_schema, &cli_schema},
    {"fetch", "models", cmd_fetch, &cli_fetch},
    {"init-model", "models", cmd_init_model, &cli_init_model},
    {"quantize", "models", cmd_quantize, &cli_quantize},
    {"inspect", "models", cmd_inspect, &cli_inspect},
    {"tokenize", "models", cmd_tokenize, &cli_tokenize},
    {"chat-template", "models", cmd_chat_template, &cli_chat_template},
    {"generate", "models", cmd_generate, &cli_generate},
    {"export", "models", cmd_export, &cli_export},
    {"push", "models", cmd_push, &cli_push},
    {"doctor", "setup", cmd_doctor, &cli_doctor},
};
const size_t n_commands = sizeof commands / sizeof commands[0];

const command *command_find(const char *name) {
    if (!strcmp(name, "run")) return &commands[0]; /* `qlora-run run RECIPE` works too */
    for (size_t i = 0; i < n_commands; i++)
        if (commands[i].name[0] && !strcmp(commands[i].name, name)) return &commands[i];
    return NULL;
}

void commands_print_usage(FILE *out) {
    fprintf(out, "usage: qlora-run %s\n", cli_run.usage);
    fprintf(out, "       qlora-run COMMAND [ARGS]\n");
    const char *groups[] = {"recipes", "models", "setup"};
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        fprintf(out, "\n%s:\n", groups[g]);
        for (size_t i = 0; i < n_commands; i++) {
            const command *c = &commands[i];
            if (!c->name[0] || strcmp(c->group, groups[g])) continue;
            fprintf(out, "  %-12s %s\n", c->name, c->cli->summary);
        }
    }
    fputs("\n`qlora-run COMMAND --help` says more. Exit codes: 0 ok, 1 stage failed, 2 usage,\n"
          "3 invalid recipe, 4 invalid data, 5 training diverged, 6 locked, 7 interrupted,\n"
          "8 download or upload failed, 9 a quality gate failed.\n", out);
}
