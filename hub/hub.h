/* hub.h: a Hugging Face Hub client on libcurl that reads and writes the hub cache.
 *
 * Files land in the layout the Python tools use (docs/hub-protocol.md), so a model that
 * transformers already downloaded is reused, and the other way round:
 *   $HF_HUB_CACHE/models--org--name/blobs/<etag>               the bytes
 *   $HF_HUB_CACHE/models--org--name/snapshots/<commit>/<path>  relative symlink to the blob
 *   $HF_HUB_CACHE/models--org--name/refs/<revision>            the commit, no newline
 *   $HF_HUB_CACHE/models--org--name/.no_exist/<commit>/<path>  "this file does not exist"
 *
 * The protocol: the API listing resolves a revision to a commit and names the files; for
 * each wanted file a HEAD on resolve/<commit>/<path> gives its ETag (git SHA-1, or SHA-256
 * for LFS files), size and download URL; a GET writes blobs/<etag>.incomplete (resumed
 * with Range after a cut), which is checked (size, hash) and renamed into place. Transfers
 * run in parallel on one curl multi handle; timeouts, 429 and 5xx are retried with backoff.
 *
 * Security: the token goes only to the endpoint's host (a redirect elsewhere, such as the
 * CDN, loses it) and never into a message; TLS verification is always on; file names from
 * listings must be safe relative paths; pickle weights are refused unless allowed.
 *
 * Errors: 0 or ERR_NETWORK (unreachable, auth, gated, not found, retries exhausted),
 * ERR_DATA (a listing or file the server sent is wrong: bad name, checksum mismatch,
 * pickle refused), ERR_STAGE (local I/O), ERR_INTERRUPTED; message via core/err.h. */
#ifndef FORMATS_HUB_H
#define FORMATS_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/transfer.h"

typedef enum hub_repo_type { HUB_REPO_MODEL, HUB_REPO_DATASET, HUB_REPO_SPACE } hub_repo_type;

/* Settings, normally from the environment: HF_ENDPOINT, HF_TOKEN (else $HF_HOME/token),
 * HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_HUB_DOWNLOAD_TIMEOUT, CURL_CA_BUNDLE or
 * REQUESTS_CA_BUNDLE (an extra CA file; verification itself is never off). Proxies come
 * from libcurl's own http_proxy/https_proxy/no_proxy handling. All strings are owned. */
typedef struct hub_config {
    char *endpoint;    /* "https://huggingface.co", no trailing slash */
    char *token;       /* NULL if none; never printed */
    char *home;        /* HF_HOME */
    char *cache_dir;   /* HF_HUB_CACHE */
    char *url_cache;   /* plain-URL downloads: $HF_HOME/qlora/urls */
    char *ca_file;     /* NULL: the system store */
    bool offline;
    int parallel;      /* concurrent transfers (8) */
    int max_retries;   /* per file, for transient failures (5) */
    double retry_base_s; /* first backoff; doubles each time, capped at 30 s (1.0) */
    long timeout_s;    /* connect timeout and longest stall of a transfer (10) */
} hub_config;

int hub_config_from_env(hub_config *cfg);
void hub_config_free(hub_config *cfg);

/* Progress over all files of one call (net/transfer.h): called at most ~10 times a second and
 * once at the end; file is a repo path or a URL basename. */
typedef net_progress hub_progress;
typedef net_progress_fn hub_progress_fn;

/* The default allow list: what a model stage needs, nothing else. */
extern const char *const hub_default_include[]; /* NULL-terminated */

/* Picks the wanted files from a revision's whole listing (sorted repo paths), instead of the
 * include/exclude patterns: sets want[i]. Returns 0 or an error (with err_set) that ends the call.
 * Picking none ends the call after the listing: out->commit is set, nothing is downloaded. */
typedef int (*hub_select_fn)(void *user, const char *commit, char *const *files, int n, bool *want);

typedef struct hub_fetch_opts {
    hub_repo_type type;
    const char *repo;              /* "org/name" */
    const char *revision;          /* branch, tag, commit (full or short), "refs/pr/N"; NULL: main */
    const char *const *include;    /* fnmatch patterns, NULL-terminated; NULL: hub_default_include */
    const char *const *exclude;    /* NULL-terminated or NULL */
    bool allow_pickle;             /* .bin/.pt/.pth/.ckpt/.pkl weights (they can run code) */
    bool verify;                   /* re-hash cached files; a corrupt blob is deleted and fetched again */
    hub_progress_fn progress;
    void *progress_user;
    volatile int *interrupted;     /* polled; may be NULL */
    hub_select_fn select;          /* NULL: include/exclude pick the files */
    void *select_user;
} hub_fetch_opts;

typedef struct hub_snapshot {
    char *commit;       /* 40 hex */
    char *dir;          /* absolute: <cache>/<folder>/snapshots/<commit> */
    char **files;       /* repo paths of the wanted files, sorted */
    int n_files;
    int64_t bytes_total;      /* of the wanted files */
    int64_t bytes_downloaded; /* by this call (0 when all were cached) */
    bool offline;             /* answered from the cache without network */
    int n_corrupt;            /* cached blobs that failed verify (and were fetched again) */
} hub_snapshot;

/* Resolve, list, filter and download; out->dir then holds every wanted file. */
int hub_snapshot_download(const hub_config *cfg, const hub_fetch_opts *o, hub_snapshot *out);
void hub_snapshot_free(hub_snapshot *s);

/* One file of a repo (the dataset stage: a JSON file of a dataset repo). *local_path is the
 * snapshot path (malloc'd). */
int hub_file_download(const hub_config *cfg, hub_repo_type type, const char *repo, const char *revision,
                      const char *path, hub_progress_fn progress, void *user, char **local_path);

/* One plain URL, cached under cfg->url_cache/<sha256(url)[:16]>/<basename> and revalidated with a
 * HEAD (ETag, size) when online. No token is sent. *local_path is malloc'd. */
int hub_url_download(const hub_config *cfg, const char *url, hub_progress_fn progress, void *user,
                     char **local_path);

/* Download into a directory, for `source: url` (a base URL holding an HF model directory):
 * names[i] is fetched from base/names[i] into dir/names[i]; optional[i] files may be missing
 * (404). found[i] says which arrived. No token is sent. */
int hub_url_fetch_files(const hub_config *cfg, const char *base_url, const char *const *names,
                        const bool *optional, int n, const char *dir, hub_progress_fn progress, void *user,
                        bool *found);

/* ---- pieces exposed for tests and fuzzing ---- */

/* "org/name@rev" -> repo, rev (rev NULL if no '@'); both malloc'd. ERR_USAGE if malformed. */
int hub_parse_repo_spec(const char *spec, char **repo, char **rev);
bool hub_repo_id_valid(const char *repo);
/* "models--org--name" (malloc'd) */
char *hub_repo_folder(hub_repo_type type, const char *repo);
/* percent-encode; '/' kept when keep_slash (malloc'd) */
char *hub_url_quote(const char *s, bool keep_slash);
/* strip W/ and quotes; false if what is left is not a safe blob name */
bool hub_etag_normalize(const char *raw, char *out, size_t cap);
/* a file name from a listing that may become a path under the snapshot directory */
bool hub_path_safe(const char *rel);
/* fnmatch without FNM_PATHNAME, as huggingface_hub does; a pattern ending in '/' means the folder */
bool hub_pattern_match(const char *pattern, const char *path);
bool hub_path_is_pickle(const char *path);
/* Parse the API answer: {"sha": "...", "siblings": [{"rfilename": ...}]}; *files malloc'd
 * (free each and the array). ERR_DATA on a malformed listing or an unsafe name. */
int hub_listing_parse(const char *json, size_t len, char **commit, char ***files, int *n_files);
/* What the HEAD's raw header block ("HTTP/1.1 302 Found\r\nX-Repo-Commit: ...") says about a
 * file: commit, ETag (X-Linked-Etag first), size (X-Linked-Size, else Content-Length unless a
 * redirect). ERR_DATA if one is missing or unusable. */
typedef struct hub_file_meta {
    long status;
    char commit[41];
    char etag[130];
    int64_t size;
} hub_file_meta;
int hub_file_meta_parse(const char *raw, size_t len, hub_file_meta *m);
/* the relative symlink target for a snapshot file: "../../blobs/<etag>" plus one "../" per subfolder */
char *hub_blob_link_target(const char *rel_path, const char *etag);

#endif
