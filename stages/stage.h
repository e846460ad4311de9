/* stage.h: the stage contract. Every stage kind is one file in stages/ that defines a
 * `const stage_kind stage_kind_<name>` and is listed once in stages/registry.c.
 *
 * A kind declares its parameters once (param_spec table: type, default, bounds, doc);
 * the runner validates a recipe against the table before anything runs, fills in the
 * defaults and hands the stage a resolved JSON object of every key. `check` adds
 * cross-field validation at load time; `run` reads its inputs' artifact directories and
 * writes its own output directory (a temp dir the runner renames into the cache when run
 * returns 0). A stage never prints: it reports through stage_logf / stage_metric /
 * stage_progress, and returns 0 or an ERR_* code with err_set() context. */
#ifndef STAGES_STAGE_H
#define STAGES_STAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

typedef enum param_type {
    PARAM_STRING,
    PARAM_INT,
    PARAM_FLOAT,
    PARAM_BOOL,
    PARAM_ENUM,    /* one of `choices` ("a|b|c") */
    PARAM_LIST,    /* list of strings (a single string is accepted as a list of one) */
    PARAM_REF,     /* the name of another stage; `choices` lists the allowed kinds ("init_model|fetch_model") */
    PARAM_FILE,    /* a path relative to the recipe; must exist; its content is part of the cache key */
    PARAM_FILES,   /* a list of paths or globs; likewise */
    PARAM_ANY,     /* any YAML value, kept as JSON (lists of prompts, maps) */
    PARAM_ENTRIES  /* a list of mappings whose keys are the kind's own PARAM_ENTRY params, each
                      validated by its own spec (files globbed and keyed as at the top); an entry
                      holds only the keys it sets: the rest come from the stage */
} param_type;

enum param_flags {
    PARAM_REQUIRED = 1 << 0, /* no default: the recipe must set it */
    PARAM_NOKEY = 1 << 1,    /* not part of the cache key (e.g. log_every) */
    PARAM_PATH_OR_WORD = 1 << 2, /* STRING: a keyword ("byte", listed in `choices` when the
                                   kind has a fixed set), or else a file or directory relative to
                                   the recipe, which must exist and whose content is part of the
                                   cache key */
    PARAM_ENTRY = 1 << 3,        /* may also be set per entry of the kind's PARAM_ENTRIES list */
    PARAM_ENTRY_ONLY = 1 << 4,   /* only in an entry (a dataset's weight), never at the top */
    PARAM_HOOK = 1 << 5 /* FILE: a Lua hook file serving the point named in `choices`: the
                           recipe loader opens it and checks the function as for a recipe-level
                           hook, and the files it loads enter this stage's key */
};

typedef struct param_spec {
    const char *name;
    param_type type;
    const char *def;     /* default as YAML text ("2e-4", "true", "[q_proj, v_proj]"); NULL: none (absent = null) */
    double min, max;     /* INT/FLOAT bounds, inclusive; min > max means unbounded */
    const char *choices; /* ENUM values or REF kinds, '|'-separated */
    const char *doc;     /* one line, for docs/recipes.md */
    unsigned flags;
} param_spec;

typedef struct stage_input {
    const char *role;  /* the parameter name that referenced it: "model", "data", ... */
    const char *stage; /* the referenced stage's name */
    const char *kind;  /* its kind */
    const char *dir;   /* its artifact directory (complete, read-only) */
    json_t *manifest;  /* its manifest.json */
} stage_input;

#define STAGE_MAX_INPUTS 8

typedef struct stage_ctx {
    const char *name;              /* the stage's name in the recipe */
    const struct stage_kind *kind;
    json_t *params;                /* resolved: every key of the kind, defaults filled */
    const char *out_dir;           /* write the artifact here */
    const char *recipe_path;       /* for messages */
    const char *recipe_dir;        /* relative paths in params resolve against this */
    const char *cache_dir;
    const char *work_dir;          /* persistent scratch for this stage key (checkpoints): it
                                      survives a killed run and is removed after success */
    uint64_t seed;                 /* the recipe's seed */
    const char *device;            /* "cpu" or "cuda" (auto already resolved) */
    json_t *hooks;                 /* the recipe's hooks: {point: abs path, "allow": [...], ...} */
    json_t *hook_files;            /* files the stage's hooks read while it ran (absolute paths,
                                      stage_note_hook_files fills it); the runner keeps their
                                      hashes in the manifest, and plan re-runs the stage when
                                      one changes */
    int n_inputs;
    stage_input inputs[STAGE_MAX_INPUTS];
    json_t *metrics;               /* stage_metric() fills it; saved in the manifest */
    json_t *report;                /* free-form JSON the stage keeps in its manifest (tables) */
    FILE *log;                     /* the stage's log file in the run directory (may be NULL) */
    void *events;                  /* core/events.h sink (may be NULL) */
    volatile int *interrupted;     /* set by SIGINT/SIGTERM; long stages poll it */
    int jobs;                      /* threads the stage may use */
} stage_ctx;

/* A metric a kind records in its manifest (stage_metric), and which way is better: what a
 * `gates:` entry may name, and how max_regression reads "worse". A kind whose metrics come
 * from the user (a Lua stage, score hooks) lists {"*", METRIC_ANY}: any name is accepted and
 * the gate says which way is better. */
typedef enum metric_better {
    METRIC_NEITHER = 0, /* informative (counts, sizes): min/max only */
    METRIC_LOWER,       /* a loss: higher is worse */
    METRIC_HIGHER,      /* a score: lower is worse */
    METRIC_ANY          /* "*" only: a name and direction the recipe gives */
} metric_better;

typedef struct metric_spec {
    const char *name;
    metric_better better;
    const char *doc;
} metric_spec;

enum stage_kind_flags {
    STAGE_KIND_PUBLISHES = 1 << 0, /* exports or publishes: starts only after every gate of the
                                      recipe passed, and is ordered after the gated stages */
    STAGE_KIND_EXPORTS = 1 << 1 /* its artifact holds exports (adapter/, model/, model-*.gguf, nf4/):
                                   copied to the recipe's output_dir when complete */
};

typedef enum stage_key_path { STAGE_KEY_FILE, STAGE_KEY_DIR } stage_key_path;

/* The model an artifact will hold, as far as it is known before anything runs (a kind's
 * model_preview): its config, and the config.json it was read from. */
struct model_config;
typedef struct stage_model_preview {
    struct model_config *config; /* NULL: not known before the stage runs (a hub model not fetched yet) */
    char *from;                  /* the config.json it came from; NULL: the stage's own params */
} stage_model_preview;
/* out as a copy of in (nothing when in is NULL or unknown) */
int stage_model_preview_copy(stage_model_preview *out, const stage_model_preview *in);
void stage_model_preview_free(stage_model_preview *p);

typedef struct stage_kind {
    const char *name;
    int version; /* bump when the output changes meaning: old artifacts stop matching */
    const char *doc;
    const param_spec *params; /* terminated by {0} */
    /* optional: cross-field checks at load time; return 0 or err_set(ERR_RECIPE, ...) naming the key */
    int (*check)(const json_t *params);
    int (*run)(stage_ctx *ctx);
    /* Everything else the runner knows about the kind, so that no runner code asks for a kind
     * by name:
     * key_hooks: the hook points ('|'-separated, from core/hooks.h) whose files shape the
     *   output, so their content enters this kind's cache key (and no other kind's); NULL: none.
     * device_dependent: the output differs between cpu and cuda, so the resolved device enters
     *   the key.
     * key_paths: optional; files or folders whose content the key hashes beyond the PARAM_FILE,
     *   PARAM_FILES and PARAM_PATH_OR_WORD parameters (evaluate's tasks[].path, fetch_model's
     *   linked local folder). Call add once a path, as written in the recipe: the loader resolves
     *   it against the recipe's folder. A STAGE_KEY_FILE that is not a file is a recipe error at
     *   the stage, naming it; a STAGE_KEY_DIR that is not a folder is left out (the stage says so
     *   when it runs). params are resolved and valid. */
    const char *key_hooks;
    bool device_dependent;
    void (*key_paths)(const json_t *params, void (*add)(void *ud, const char *path, stage_key_path what), void *ud);
    /* optional: what the params name but do not pin, resolved when the plan is made (a hub
     * dataset's branch -> its commit and file list); *out becomes part of the cache key, so a
     * new commit re-runs the stage and the same one does not. An error leaves the reason in
     * the key instead (the run then reports it). */
    int (*resolve)(const json_t *params, json_t **out);
    /* optional, for a kind whose artifact holds a model: what that model will be, as far as it is
     * known before anything runs, into *out (zeroed): built from the params (init_model), read
     * from a local folder's config.json as a stage would read it (fetch_model; a relative path is
     * against recipe_dir), or its model input's, in (quantize_nf4; in is NULL when not known). An
     * error is the config's own, naming the file and the key: the recipe is refused before any
     * stage runs or writes to the cache. */
    int (*model_preview)(const json_t *params, const char *recipe_dir, const stage_model_preview *in,
                         stage_model_preview *out);
    /* optional: the params checked against the model its "model" input will hold (that input's
     * preview), before anything runs: attach_lora's targets against the family's modules. *key:
     * the param at fault. */
    int (*check_model)(const json_t *params, const struct model_config *c, const char **key);
    /* Data parallel (docs/multi-gpu.md): every rank runs it together (the others run a stage
     * once, on rank 0, and read its artifact from the shared cache). ranks_in_key: its result
     * depends on the number of ranks (train's global batch grows with them), so its key holds
     * that number when it is over one. */
    bool data_parallel, ranks_in_key;
    const metric_spec *metrics; /* terminated by {0}; NULL: records none */
    unsigned flags;             /* enum stage_kind_flags */
} stage_kind;

/* registry.c */
const stage_kind *stage_kind_find(const char *name);
const stage_kind *const *stage_kind_all(void); /* NULL-terminated */
const param_spec *stage_param_find(const stage_kind *k, const char *name);
/* the kind's declaration of metric `name` (or its "*" entry), NULL if it records no such metric */
const metric_spec *stage_metric_find(const stage_kind *k, const char *name);

/* Accessors for resolved params (stage.c). Absent or null values give the fallback. */
const char *stage_str(const stage_ctx *c, const char *key);          /* NULL if null */
int64_t stage_int(const stage_ctx *c, const char *key);
double stage_float(const stage_ctx *c, const char *key);
bool stage_bool(const stage_ctx *c, const char *key);
json_t *stage_json(const stage_ctx *c, const char *key);             /* borrowed */
/* a path param resolved against the recipe dir: malloc'd, NULL if unset */
char *stage_path(const stage_ctx *c, const char *key);
/* a path as written in the recipe (in a structured param, say), resolved against its folder;
 * malloc'd, NULL for NULL */
char *stage_recipe_path(const stage_ctx *c, const char *path);
/* the same against a recipe folder, where no stage runs yet (a kind's model_preview) */
char *stage_path_in(const char *recipe_dir, const char *path);
/* the artifact dir of the input referenced by param `role`, NULL if none */
const stage_input *stage_input_get(const stage_ctx *c, const char *role);
/* The name users know an input's model by (its manifest's report "model_name", written by
 * fetch_model and carried on by quantize_nf4): the hub repo id, or the local folder or URL it
 * came from. NULL for a generated model. Borrowed from the input's manifest. */
const char *stage_model_name(const stage_input *in);

void stage_logf(stage_ctx *c, const char *fmt, ...) ERR_PRINTF(2, 3);   /* log file + notef */
/* a warning: stderr (even with --quiet), the log file and a "warning" event */
void stage_warnf(stage_ctx *c, const char *fmt, ...) ERR_PRINTF(2, 3);
void stage_metric(stage_ctx *c, const char *name, double value);
/* a progress bar on a terminal, an event otherwise; total <= 0: unknown */
void stage_progress(stage_ctx *c, const char *what, double done, double total, const char *unit);
void stage_progress_done(stage_ctx *c);
/* a JSON event into events.jsonl (steals ev) */
void stage_event(stage_ctx *c, const char *type, json_t *ev);
bool stage_interrupted(const stage_ctx *c);
/* Note the files read by the hook states serving `points` ('|'-separated): call it after the
 * hooks ran (a failed run records nothing). */
struct hooks;
void stage_note_hook_files(stage_ctx *c, struct hooks *h, const char *points);
/* The same for a list of absolute paths (a `kind: lua` script's lua_host_loaded_files); paths
 * inside the cache are skipped (the inputs' keys cover them). */
void stage_note_files(stage_ctx *c, const json_t *paths);
/* What produced the artifact, for reproducing it (docs/determinism.md), into the report's
 * "environment" (so into the manifest and the run's summary, where `runs diff` compares it):
 * deterministic (as the backend applied it), device, driver, cuda_driver, cuda_runtime (""
 * on cpu), program_version and ranks. Nothing when the context has no report. */
struct ops_table;
void stage_note_environment(stage_ctx *c, const struct ops_table *ops);
json_t *stage_environment(const struct ops_table *ops); /* the object itself (new reference) */
/* memory_budget (train, evaluate): "8GB" / "512MB" (GiB and MiB alike: powers of 1024) to bytes;
 * 0 when s is NULL. ERR_RECIPE for anything else (a bare number too: it used to mean MB). The one
 * parser, for check() at load time and for the run. */
int stage_parse_budget(const char *s, double *bytes);
/* dense_weights (evaluate, train): the stage's "auto|on|off" applied to m (llama_dense_auto) within
 * its memory_budget, after everything else the stage holds on the device is allocated (the plan,
 * a KV cache), and the choice logged; *kept (may be NULL) says whether the linears are kept
 * dequantized. An error says what to set. */
struct llama_model;
int stage_dense_weights(stage_ctx *c, struct llama_model *m, bool *kept);
/* For a kind's check(): helpers shared with the commands report ERR_USAGE; in a recipe the
 * same mistake is an invalid recipe. Re-labels the current error as ERR_RECIPE. */
int stage_error_as_recipe(void);

#endif
