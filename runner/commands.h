/* commands.h: the subcommands of qlora-run. Each is `int cmd_NAME(int argc, char **argv)`
 * (argv[0] is the command's name), returns an exit code (core/err.h), prints --help to
 * stdout with exit 0 and misuse to stderr with ERR_USAGE. A command shares its
 * implementation with the stage kind of the same job. Declared weak: a command whose
 * file is not built yet is reported as unavailable. */
#ifndef RUNNER_COMMANDS_H
#define RUNNER_COMMANDS_H

#define CMD(n) int cmd_##n(int argc, char **argv) __attribute__((weak));
CMD(run)        /* qlora-run RECIPE ... */
CMD(validate)
CMD(show)
CMD(plan)
CMD(cache)
CMD(runs)
CMD(fetch)
CMD(init_model)
CMD(quantize)
CMD(inspect)
CMD(tokenize)
CMD(data)
CMD(generate)
CMD(export)
#undef CMD

#endif
