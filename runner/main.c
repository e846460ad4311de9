/* main.c: the qlora-run command line. Dispatches to the run/validate/... commands. */
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"

static const char usage[] =
    "usage: qlora-run RECIPE.yaml [options]\n"
    "       qlora-run COMMAND [args]\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? ERR_USAGE : 0;
    }
    errorf("not implemented yet: '%s'", argv[1]);
    return ERR_USAGE;
}
