/* upload.h: publishing a folder to the Hugging Face Hub over its HTTP API, the way
 * huggingface_hub's create_commit does it (docs/hub-upload.md has the protocol):
 *   1. POST /api/repos/create                      create the repo when missing (409: exists)
 *   2. POST /api/{type}s/{repo}/branch/{rev}       create the branch when it is not main
 *   3. POST /api/{type}s/{repo}/preupload/{rev}    each file's upload mode: regular or lfs
 *   4. POST /{prefix}{repo}.git/info/lfs/objects/batch   where LFS files go; each object is
 *      already there (no actions), or uploaded with one PUT ("basic", then the verify action)
 *      or in parts ("multipart": a presigned URL per chunk_size bytes, then a completion POST
 *      with every part's ETag)
 *   5. POST /api/{type}s/{repo}/commit/{rev}       NDJSON: a header line, then one line per
 *      file (regular files inline in base64, LFS files by sha256 oid)
 * The commit is the last request: a failure before it leaves nothing committed (uploaded LFS
 * objects are only referenced by a commit). Transient failures (transport, 429, 5xx) are
 * retried with exponential backoff, each multipart part on its own (a cut costs one part, not
 * the file), and the parts sent are remembered in state_dir (a killed run resumes with the
 * parts missing, when the hub hands out the same upload again); an LFS object the hub already holds is not sent again, so a run that failed
 * before its commit re-sends only what is missing. The token (HF_TOKEN) goes only to the endpoint's origin, never to
 * presigned storage URLs, and never into a message or log.
 *
 * Errors: 0, or ERR_NETWORK with what to do (401 token, 403 write access, 404 repo or branch,
 * 409 branch conflict, 413 too large, 5xx after retries), ERR_DATA (a malformed answer),
 * ERR_STAGE (local I/O), ERR_INTERRUPTED. */
#ifndef HUB_UPLOAD_H
#define HUB_UPLOAD_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "hub/hub.h"

typedef struct hub_push_file {
    const char *local; /* the file on disk */
    const char *path;  /* its path in the repo */
} hub_push_file;

typedef struct hub_push_opts {
    hub_repo_type type;
    const char *repo;          /* "org/name" */
    const char *revision;      /* branch; NULL: main */
    bool private_repo;         /* when the repo is created */
    const char *commit_message;
    const char *commit_description; /* may be NULL */
    const hub_push_file *files;
    int n_files;
    hub_progress_fn progress;
    void *progress_user;
    volatile int *interrupted;
    const char *state_dir;     /* where a multipart upload's sent parts are remembered, so that a
                                  killed run resumes with the parts missing; NULL: not kept */
} hub_push_opts;

typedef struct hub_push_result {
    char *commit_oid;  /* malloc'd */
    char *commit_url;  /* malloc'd */
    bool created_repo, created_branch;
    int n_regular, n_lfs, n_lfs_skipped; /* skipped: already on the hub */
    int64_t bytes_uploaded;
} hub_push_result;

int hub_push(const hub_config *cfg, const hub_push_opts *o, hub_push_result *res);
void hub_push_result_free(hub_push_result *r);

/* ---- pieces exposed for tests ---- */

/* The NDJSON commit body for files whose modes are known (lfs[i]: by oid). malloc'd. */
char *hub_commit_ndjson(const char *summary, const char *description, const hub_push_file *files,
                        const bool *lfs, const char (*sha256)[65], int n);

/* A model card (README.md): HF metadata in YAML front matter, then what a reader needs.
 * Every field may be NULL. malloc'd. */
typedef struct hub_card {
    const char *repo, *base_model, *library; /* library: "peft" for an adapter, else "transformers" */
    const json_t *datasets;    /* strings */
    const json_t *metrics;     /* {"eval.val_loss": 0.75, ...} */
    const json_t *params;      /* the training parameters, shown as a table */
    const char *recipe, *program_version;
    const json_t *files;       /* repo paths uploaded */
} hub_card;
char *hub_model_card(const hub_card *c);

/* Every regular file under dir (symlinks followed; hidden files and a top-level manifest.json,
 * an artifact's own, left out), sorted, as {local, path_in_repo/relative path}; both strings
 * malloc'd: free with hub_push_files_free. */
int hub_push_list_folder(const char *dir, const char *path_in_repo, hub_push_file **files, int *n);
void hub_push_files_free(hub_push_file **files, int *n);

#endif
