/* main.c: the qlora-run command line: dispatch to a command, print the one error, exit
 * with its code (README.md lists them). */
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/lua_host.h"
#include "net/http.h"
#include "runner/commands.h"

int cmd_schema(int argc, char **argv);

static const char usage[] =
    "usage: qlora-run RECIPE.yaml [--set KEY=VALUE] [--only|--until|--force STAGE] [--jobs N]\n"
    "                 [--dry-run] [--lock] [--json|--quiet]\n"
    "       qlora-run COMMAND [ARGS]\n"
    "\n"
    "recipes:\n"
    "  validate RECIPE        check the whole recipe without running anything\n"
    "  show RECIPE            print the resolved recipe with every default\n"
    "  plan RECIPE            print each stage: cached or will run, and why\n"
    "  cache ls|verify|gc     the artifact cache\n"
    "  runs ls                run records\n"
    "  data show RECIPE STAGE decoded training samples, masked spans marked\n"
    "  schema                 the recipe reference (docs/recipes.md)\n"
    "models:\n"
    "  fetch REPO[@REV]       download from the Hugging Face hub into its cache\n"
    "  init-model ...         generate an HF-format model (tests, demos, benchmarks)\n"
    "  quantize IN OUT        NF4/FP4 quantization in the bitsandbytes layout\n"
    "  inspect DIR            parameter count and weight memory per format\n"
    "  tokenize --model DIR   token ids of text on stdin (--decode for the reverse)\n"
    "  generate --model DIR   text generation (with --adapter DIR)\n"
    "  export ...             PEFT adapter, merged model or GGUF\n"
    "\n"
    "`qlora-run COMMAND --help` says more. Exit codes: 0 ok, 1 stage failed, 2 usage,\n"
    "3 invalid recipe, 4 invalid data, 5 training diverged, 6 locked, 7 interrupted,\n"
    "8 download failed.\n";

typedef struct command {
    const char *name;
    int (*fn)(int, char **);
} command;

int main(int argc, char **argv) {
    net_init(); /* before any thread: libcurl asks for it */
    lua_host_set_http_post(net_post);
    if (argc < 2) {
        fputs(usage, stderr);
        return ERR_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("qlora-run %s\n", QLORA_VERSION);
        return 0;
    }
    const command cmds[] = {
        {"run", cmd_run},           {"validate", cmd_validate}, {"show", cmd_show},
        {"plan", cmd_plan},         {"cache", cmd_cache},       {"runs", cmd_runs},
        {"fetch", cmd_fetch},       {"init-model", cmd_init_model}, {"quantize", cmd_quantize},
        {"inspect", cmd_inspect},   {"tokenize", cmd_tokenize}, {"data", cmd_data},
        {"generate", cmd_generate}, {"export", cmd_export},     {"schema", cmd_schema},
    };
    int rc = -1;
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(argv[1], cmds[i].name)) continue;
        if (!cmds[i].fn) {
            errorf("'%s' is not available in this build", argv[1]);
            return ERR_USAGE;
        }
        err_clear();
        rc = cmds[i].fn(argc - 1, argv + 1);
        break;
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
