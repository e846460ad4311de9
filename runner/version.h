/* version.h: what this program is, for --version, run records, manifests and `doctor`: the
 * version, the git commit it was built from ("-dirty" when the tree had changes), the build
 * type, whether CUDA is compiled in and for which GPU architectures, and the versions of the
 * libraries it runs with (read from the libraries at run time, not from their headers). */
#ifndef RUNNER_VERSION_H
#define RUNNER_VERSION_H

#include <jansson.h>
#include <stdio.h>

/* "0.1.0 (commit 1a2b3c4d5e6f, RelWithDebInfo, CUDA sm_90)" */
const char *version_short(void);
/* the --version text: first line as version_short, then one line per library */
void version_print(FILE *out);
/* the same as a JSON object (new reference), for run records and manifests */
json_t *version_json(void);

#endif
