/* cmd_fetch.c: `qlora-run fetch REPO[@REV]`: a hub download into the shared HF cache, outside
 * any recipe. Prints the snapshot folder (or, with --file, the one file's path) on stdout, so
 * `cd $(qlora-run fetch org/name)` works; progress and notes go to stderr, and an error stays
 * in err_msg() for main to print. The work is the fetch_model stage's: formats/hub.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/progress.h"
#include "hub/hub.h"
#include "runner/commands.h"

static const char fetch_usage[] =
    "usage: qlora-run fetch REPO[@REVISION] [options]\n"
    "\n"
    "Download a model (or dataset) repo from the Hugging Face hub into the shared cache\n"
    "($HF_HUB_CACHE, else $HF_HOME/hub) and print the snapshot folder.\n"
    "\n"
    "  --include PATTERN   fetch files matching PATTERN (repeatable; default: config.json,\n"
    "                      generation_config.json, *.safetensors and its index, tokenizer files)\n"
    "  --exclude PATTERN   skip files matching PATTERN (repeatable)\n"
    "  --allow-pickle      allow PyTorch pickle weights (.bin/.pt/.pth/.ckpt: they can run code)\n"
    "  --verify            re-hash files already cached; a corrupt one is deleted and fetched again\n"
    "  --dataset           REPO is a dataset repo\n"
    "  --file PATH         fetch only this file of the repo and print its path\n"
    "  -q, --quiet         no progress or notes\n"
    "\n"
    "Environment: HF_TOKEN (or $HF_HOME/token) for gated and private repos, HF_ENDPOINT,\n"
    "HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=1 (cache only), https_proxy, CURL_CA_BUNDLE.\n";

static void on_progress(void *user, const hub_progress *p) {
    (void)user;
    progress_update("fetch", p->file ? p->file : "", (double)p->done / 1e6, (double)p->total / 1e6, "MB");
}

int cmd_fetch(int argc, char **argv) {
    const char **inc = calloc((size_t)argc + 1, sizeof *inc), **exc = calloc((size_t)argc + 1, sizeof *exc);
    int n_inc = 0, n_exc = 0, rc = 0;
    const char *spec = NULL, *file = NULL;
    bool allow_pickle = false, dataset = false, verify = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **val = NULL;
        const char *tmp = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(fetch_usage, stdout);
            goto out;
        } else if (!strcmp(a, "--include") || !strncmp(a, "--include=", 10)) {
            val = &inc[n_inc++];
        } else if (!strcmp(a, "--exclude") || !strncmp(a, "--exclude=", 10)) {
            val = &exc[n_exc++];
        } else if (!strcmp(a, "--file") || !strncmp(a, "--file=", 7)) {
            val = &tmp;
        } else if (!strcmp(a, "--allow-pickle")) {
            allow_pickle = true;
        } else if (!strcmp(a, "--verify")) {
            verify = true;
        } else if (!strcmp(a, "--dataset")) {
            dataset = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            log_set_quiet(true);
            log_set_tty(false);
        } else if (a[0] == '-' && a[1]) {
            errorf("unknown option '%s' (see 'qlora-run fetch --help')", a);
            rc = ERR_USAGE;
            goto out;
        } else if (!spec) {
            spec = a;
        } else {
            errorf("one repo at a time: unexpected '%s' (see 'qlora-run fetch --help')", a);
            rc = ERR_USAGE;
            goto out;
        }
        if (val) {
            const char *eq = strchr(a, '=');
            if (eq) *val = eq + 1;
            else if (i + 1 < argc) *val = argv[++i];
            else {
                errorf("'%s' needs a value (see 'qlora-run fetch --help')", a);
                rc = ERR_USAGE;
                goto out;
            }
            if (tmp) file = tmp;
        }
    }
    if (!spec) {
        errorf("which repo? usage: qlora-run fetch REPO[@REVISION] (see 'qlora-run fetch --help')");
        rc = ERR_USAGE;
        goto out;
    }
    char *repo = NULL, *rev = NULL;
    if ((rc = hub_parse_repo_spec(spec, &repo, &rev))) goto out; /* main prints err_msg() */
    hub_config cfg;
    if ((rc = hub_config_from_env(&cfg))) {
        free(repo);
        free(rev);
        goto out;
    }
    hub_repo_type type = dataset ? HUB_REPO_DATASET : HUB_REPO_MODEL;
    if (file) {
        char *local = NULL;
        rc = hub_file_download(&cfg, type, repo, rev, file, on_progress, NULL, &local);
        progress_finish();
        if (!rc) printf("%s\n", local);
        free(local);
    } else {
        hub_fetch_opts o = {.type = type, .repo = repo, .revision = rev, .include = n_inc ? inc : NULL,
                            .exclude = n_exc ? exc : NULL, .allow_pickle = allow_pickle, .verify = verify, .progress = on_progress};
        hub_snapshot s;
        rc = hub_snapshot_download(&cfg, &o, &s);
        progress_finish();
        if (!rc) {
            if (s.offline && !cfg.offline) warnf("the hub is unreachable: using the cached snapshot");
            if (s.n_corrupt) warnf("%d cached file(s) failed their checksum and were fetched again", s.n_corrupt);
            notef("%s@%s is commit %s: %d files, %.1f MB, %.1f MB downloaded", repo, rev ? rev : "main", s.commit,
                  s.n_files, (double)s.bytes_total / 1e6, (double)s.bytes_downloaded / 1e6);
            printf("%s\n", s.dir);
        }
        hub_snapshot_free(&s);
    }
    hub_config_free(&cfg);
    free(repo);
    free(rev);
out:
    free((void *)inc);
    free((void *)exc);
    return rc;
}
