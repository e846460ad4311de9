/* main.c: the qlora-run command line: dispatch to a command, print the one error, exit
 * with its code (README.md lists them). */
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "net/http.h"
#include "runner/commands.h"
#include "runner/version.h"

int main(int argc, char **argv) {
    net_init(); /* before any thread: libcurl asks for it */
    if (argc < 2) {
        commands_print_usage(stderr);
        return ERR_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        commands_print_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        version_print(stdout);
        return 0;
    }
    int rc = -1;
    const command *c = command_find(argv[1]);
    if (c) {
        err_clear();
        rc = c->fn(argc - 1, argv + 1);
    }
    if (rc < 0) {
        if (argv[1][0] == '-') {
            errorf("unknown option '%s' before the recipe (see qlora-run --help)", argv[1]);
            return ERR_USAGE;
        }
        size_t l = strlen(argv[1]);
        int looks_recipe = (l > 5 && !strcmp(argv[1] + l - 5, ".yaml")) || (l > 4 && !strcmp(argv[1] + l - 4, ".yml")) || strchr(argv[1], '/');
        if (!looks_recipe) {
            errorf("unknown command '%s' (see qlora-run --help)", argv[1]);
            return ERR_USAGE;
        }
        err_clear();
        rc = cmd_run(argc, argv);
    }
    if (rc && err_msg()[0]) errorf("%s", err_msg());
    return rc;
}
