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

typedef struct fetch_args {
    cli_list inc, exc;
    const char *file;
    bool allow_pickle, verify, dataset, quiet;
} fetch_args;

static const cli_opt fetch_opts[] = {
    {"include", 0, CLI_LIST, "PATTERN", "fetch files matching PATTERN (repeatable; default: config.json,\n"
                                        "generation_config.json, *.safetensors and its index, tokenizer files)",
     CLI_AT(fetch_args, inc), 0, 0},
    {"exclude", 0, CLI_LIST, "PATTERN", "skip files matching PATTERN (repeatable)", CLI_AT(fetch_args, exc), 0, 0},
    {"allow-pickle", 0, CLI_FLAG, NULL, "allow PyTorch pickle weights (.bin/.pt/.pth/.ckpt: they can run code)",
     CLI_AT(fetch_args, allow_pickle), 0, 0},
    {"verify", 0, CLI_FLAG, NULL, "re-hash files already cached; a corrupt one is deleted and fetched again",
     CLI_AT(fetch_args, verify), 0, 0},
    {"dataset", 0, CLI_FLAG, NULL, "REPO is a dataset repo", CLI_AT(fetch_args, dataset), 0, 0},
    {"file", 0, CLI_STR, "PATH", "fetch only this file of the repo and print its path", CLI_AT(fetch_args, file), 0, 0},
    {"quiet", 'q', CLI_FLAG, NULL, "no progress or notes", CLI_AT(fetch_args, quiet), 0, 0},
    {0},
};

const cli_cmd cli_fetch = {
    .name = "fetch",
    .usage = "fetch REPO[@REVISION] [options]",
    .summary = "download from the Hugging Face hub into its cache",
    .about = "Download a model (or dataset) repo from the Hugging Face hub into the shared cache\n"
             "($HF_HUB_CACHE, else $HF_HOME/hub) and print the snapshot folder.",
    .footer = "Environment: HF_TOKEN (or $HF_HOME/token) for gated and private repos, HF_ENDPOINT,\n"
              "HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=1 (cache only), https_proxy, CURL_CA_BUNDLE.",
    .min_pos = 1, .max_pos = 1, .opts = fetch_opts,
};

static void on_progress(void *user, const hub_progress *p) {
    (void)user;
    progress_update("fetch", p->file ? p->file : "", (double)p->done / 1e6, (double)p->total / 1e6, "MB");
}

int cmd_fetch(int argc, char **argv) {
    fetch_args a = {0};
    const char *pos[2];
    int n_pos, rc = cli_parse(&cli_fetch, &a, argc, argv, pos, &n_pos);
    if (rc) {
        if (rc == CLI_HELP) rc = 0;
        goto out;
    }
    if (a.quiet) {
        log_set_quiet(true);
        log_set_tty(false);
    }
    const char *spec = pos[0], *file = a.file;
    bool allow_pickle = a.allow_pickle, dataset = a.dataset, verify = a.verify;
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
        hub_fetch_opts o = {.type = type, .repo = repo, .revision = rev, .include = a.inc.v,
                            .exclude = a.exc.v, .allow_pickle = allow_pickle, .verify = verify, .progress = on_progress};
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
    cli_list_free(&a.inc);
    cli_list_free(&a.exc);
    return rc;
}
