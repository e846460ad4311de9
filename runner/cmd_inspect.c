/* cmd_inspect.c: qlora-run inspect: a model directory's parameter count and what its weights
 * take in bf16, NF4 and NF4 + double quant, per module type (model/bnb.c bnb_inspect). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "formats/bnb.h"
#include "runner/commands.h"

static const char inspect_help[] =
    "usage: qlora-run inspect DIR\n"
    "\n"
    "Prints the parameter count of the model in DIR and the memory its weights take in bf16,\n"
    "NF4 (blocksize 64, f32 absmax) and NF4 with double quantization, per module type, with bits\n"
    "per parameter; 'stored' is what the files hold now (a quantized DIR is read as such).\n";

int cmd_inspect(int argc, char **argv) {
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(inspect_help, stdout);
            return 0;
        }
        if (argv[i][0] == '-' || dir)
            return err_set(ERR_USAGE, "unexpected argument '%s' (see qlora-run inspect --help)", argv[i]);
        dir = argv[i];
    }
    if (!dir) return err_set(ERR_USAGE, "inspect needs a model directory (see qlora-run inspect --help)");
    bnb_inspect_row *rows = NULL;
    size_t n = 0;
    int rc = bnb_inspect(dir, &rows, &n);
    if (rc) return err_wrap("inspecting '%s'", dir);
    outf("%-32s %7s %14s %10s %10s %10s %10s %8s", "module", "tensors", "params", "bf16 MB", "nf4 MB", "nf4+dq MB",
         "stored MB", "dq bits");
    for (size_t i = 0; i < n; i++) {
        const bnb_inspect_row *r = &rows[i];
        char name[48];
        snprintf(name, sizeof name, "%s%s", r->module_type, i + 1 < n && !r->quantizable ? " (kept)" : "");
        if (i + 1 == n) outf("%s", "");
        outf("%-32s %7d %14lld %10.1f %10.1f %10.1f %10.1f %8.3f", name, r->tensors, (long long)r->params,
             r->bytes_bf16 / 1e6, r->bytes_nf4 / 1e6, r->bytes_nf4_dq / 1e6, r->bytes_stored / 1e6,
             r->params ? 8.0 * r->bytes_nf4_dq / (double)r->params : 0.0);
    }
    const bnb_inspect_row *t = &rows[n - 1];
    outf("%s", "");
    outf("%.4g M parameters: bf16 %.3f GB, nf4 %.3f GB (%.3f bits/param), nf4+double quant %.3f GB (%.3f bits/param)",
         t->params / 1e6, t->bytes_bf16 / 1e9, t->bytes_nf4 / 1e9, 8.0 * t->bytes_nf4 / (double)t->params,
         t->bytes_nf4_dq / 1e9, 8.0 * t->bytes_nf4_dq / (double)t->params);
    free(rows);
    return 0;
}
