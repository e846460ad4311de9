/* cmd_inspect.c: qlora-run inspect: a model directory's parameter count and what its weights
 * take in bf16, NF4 and NF4 + double quant, per module type (model/bnb.c bnb_inspect). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "formats/bnb.h"
#include "runner/commands.h"

const cli_cmd cli_inspect = {
    .name = "inspect",
    .usage = "inspect DIR",
    .summary = "parameter count and weight memory per format",
    .about = "Prints the parameter count of the model in DIR and the memory its weights take in bf16,\n"
             "NF4 (blocksize 64, f32 absmax) and NF4 with double quantization, per module type, with bits\n"
             "per parameter; 'stored' is what the files hold now (a quantized DIR is read as such).",
    .min_pos = 1, .max_pos = 1,
};

int cmd_inspect(int argc, char **argv) {
    const char *pos[2];
    int n_pos, rc = cli_parse(&cli_inspect, NULL, argc, argv, pos, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    const char *dir = pos[0];
    bnb_inspect_row *rows = NULL;
    size_t n = 0;
    rc = bnb_inspect(dir, &rows, &n);
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
