/* cmd_push.c: `qlora-run push DIR REPO`: upload a folder to the hub (hub/upload.c, what
 * push_to_hub stages do), with a generated model card when the folder has no README.md. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "hub/upload.h"
#include "runner/cli.h"
#include "runner/cache.h"
#include "runner/commands.h"

typedef struct push_args {
    const char *revision, *message, *path_in_repo, *repo_type;
    bool public_repo, no_card;
} push_args;

static const cli_opt push_opts[] = {
    {"revision", 0, CLI_STR, "BRANCH", "the branch to commit to, created from main when missing (main)", CLI_AT(push_args, revision), 0, 0},
    {"public", 0, CLI_FLAG, NULL, "create the repo public (a new repo is private by default)", CLI_AT(push_args, public_repo), 0, 0},
    {"message", 0, CLI_STR, "TEXT", "the commit's summary line", CLI_AT(push_args, message), 0, 0},
    {"path-in-repo", 0, CLI_STR, "DIR", "a folder in the repo to put the files in (the root)", CLI_AT(push_args, path_in_repo), 0, 0},
    {"repo-type", 0, CLI_STR, "TYPE", "model or dataset (model)", CLI_AT(push_args, repo_type), 0, 0},
    {"no-card", 0, CLI_FLAG, NULL, "do not generate a README.md model card", CLI_AT(push_args, no_card), 0, 0},
    {0},
};

const cli_cmd cli_push = {
    .name = "push",
    .usage = "push DIR REPO [--revision BRANCH] [--public] [--message TEXT] [--path-in-repo DIR]\n"
             "     [--repo-type model|dataset] [--no-card]",
    .summary = "upload a folder to the hub (what push_to_hub stages do)",
    .about = "Uploads every file under DIR (an export's adapter/ or model/ folder, or any folder) to the\n"
             "hub repo REPO (org/name) in one commit, creating the repo (private unless --public) and the\n"
             "branch when missing. Files the hub wants in LFS go through its LFS batch API (multipart for\n"
             "large ones); the commit is the last request, so a failure commits nothing. Without a\n"
             "README.md in DIR a model card is generated. HF_TOKEN (a write token) and HF_ENDPOINT come\n"
             "from the environment (docs/hub-upload.md).",
    .footer = "Exit 8 when the hub refuses or cannot be reached, with what to do.",
    .min_pos = 2, .max_pos = 2, .opts = push_opts,
};

int cmd_push(int argc, char **argv) {
    push_args a = {.revision = "main", .message = "Upload from qlora-run", .path_in_repo = "", .repo_type = "model"};
    const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int n_pos, prc = cli_parse(&cli_push, &a, argc, argv, pos, &n_pos);
    const char *dir = n_pos > 0 ? pos[0] : NULL, *repo = n_pos > 1 ? pos[1] : NULL;
    free(pos);
    if (prc) return prc == CLI_HELP ? 0 : prc;
    const char *rev = a.revision, *msg = a.message, *pir = a.path_in_repo, *type = a.repo_type;
    bool pub = a.public_repo, card = !a.no_card;
    if (!dir || !repo) return err_set(ERR_USAGE, "push: which folder and which repo? (qlora-run push DIR REPO)");
    if (strcmp(type, "model") && strcmp(type, "dataset")) return err_set(ERR_USAGE, "push: --repo-type is model or dataset, not '%s'", type);
    if (!fs_is_dir(dir)) return err_set(ERR_USAGE, "push: '%s' is not a folder", dir);
    if (!hub_repo_id_valid(repo)) return err_set(ERR_USAGE, "push: '%s' is not a hub repo id (org/name)", repo);
    if (*pir && !hub_path_safe(pir)) return err_set(ERR_USAGE, "push: --path-in-repo '%s' must be a relative path", pir);
    hub_push_file *files = NULL;
    int n = 0;
    int rc = hub_push_list_folder(dir, pir, &files, &n);
    if (!rc && !n) rc = err_set(ERR_USAGE, "push: nothing to upload in '%s'", dir);
    char tmpl[] = "/tmp/qlora-push-XXXXXX", *tmpdir = NULL, *card_path = NULL;
    bool readme = false, adapter = false;
    json_t *paths = json_array();
    for (int i = 0; i < n; i++) {
        const char *b = strrchr(files[i].path, '/');
        b = b ? b + 1 : files[i].path;
        readme |= !strcmp(b, "README.md") && strlen(files[i].path) == strlen(pir) + (*pir ? 1 : 0) + 9;
        adapter |= !strcmp(b, "adapter_config.json");
        json_array_append_new(paths, json_string(files[i].path));
    }
    if (!rc && card && !readme) {
        /* an artifact folder (or its parent) says what it is in manifest.json */
        char *mp = fs_join(dir, "manifest.json"), *parent = fs_dirname(dir), *mp2 = fs_join(parent, "manifest.json");
        json_t *man = json_load_file(mp, 0, NULL);
        if (!man) man = json_load_file(mp2, 0, NULL);
        hub_card c = {.repo = repo, .library = adapter ? "peft" : "transformers", .params = json_object_get(man, "params"),
                      .metrics = json_object_get(man, "metrics"), .recipe = json_string_value(json_object_get(man, "recipe")),
                      .program_version = QLORA_VERSION, .files = paths};
        char *text = hub_model_card(&c);
        tmpdir = mkdtemp(tmpl);
        if (!tmpdir) rc = err_errno(ERR_STAGE, "push: cannot make a temporary folder for the model card");
        else {
            card_path = fs_join(tmpdir, "README.md");
            rc = fs_write_atomic(card_path, text, strlen(text));
            files = realloc(files, (size_t)(n + 1) * sizeof *files);
            files[n++] = (hub_push_file){strdup(card_path), *pir ? fs_join(pir, "README.md") : strdup("README.md")};
        }
        free(text);
        json_decref(man);
        free(mp);
        free(mp2);
        free(parent);
    }
    hub_config cfg = {0};
    if (!rc) rc = hub_config_from_env(&cfg);
    hub_push_result res = {0};
    if (!rc) {
        /* a multipart upload's sent parts, remembered in the artifact cache's work folder so that
         * a killed push resumes (hub/upload.h) */
        cache ca = {0};
        char *state = cache_open(&ca, NULL) ? NULL : cache_work_dir(&ca, "push");
        err_clear();
        hub_push_opts o = {.type = !strcmp(type, "dataset") ? HUB_REPO_DATASET : HUB_REPO_MODEL, .repo = repo, .revision = rev,
                           .private_repo = !pub, .commit_message = msg, .files = files, .n_files = n, .state_dir = state};
        rc = hub_push(&cfg, &o, &res);
        free(state);
        cache_close(&ca);
    }
    if (!rc) {
        outf("%s@%s: commit %s (%d files: %d regular, %d LFS, %d already there; %.1f MB sent)%s", repo, rev, res.commit_oid, n,
             res.n_regular, res.n_lfs, res.n_lfs_skipped, res.bytes_uploaded / 1e6, res.created_repo ? "; created the repo" : "");
        if (res.commit_url) outf("%s", res.commit_url);
    }
    if (card_path) unlink(card_path);
    if (tmpdir) rmdir(tmpdir);
    free(card_path);
    hub_push_result_free(&res);
    hub_config_free(&cfg);
    hub_push_files_free(&files, &n);
    json_decref(paths);
    return rc;
}
