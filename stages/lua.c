/* lua.c: the `lua` stage kind: a user's stage written in Lua.
 *
 *   stages:
 *     stats:
 *       kind: lua
 *       script: scripts/token_stats.lua
 *       input: data          # any stage; its artifact directory is ctx.inputs.input
 *       args: {top: 20}
 *
 * The script defines run(ctx) with ctx = {name, out_dir, seed, device, args,
 * inputs = {input = dir, input2 = dir}, input_stages = {input = name, ...}}. It runs in the
 * hook sandbox (core/lua_host.h) with one difference: io.open may write, but only below
 * ctx.out_dir (relative paths land there), so the stage cannot touch anything but its own
 * artifact. Reading is allowed anywhere, inputs included. qlora.metric() values become the
 * stage's metrics; a table returned by run() is kept in the manifest as "result".
 * `allow: [http]` in the recipe's hooks enables qlora.http_post. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/lua_host.h"
#include "stage.h"

static const param_spec lua_params[] = {
    {"script", PARAM_FILE, NULL, 1, 0, NULL, "the Lua file defining run(ctx)", PARAM_REQUIRED},
    {"input", PARAM_REF, NULL, 1, 0, NULL, "a stage whose artifact the script reads (ctx.inputs.input)", 0},
    {"input2", PARAM_REF, NULL, 1, 0, NULL, "a second input stage (ctx.inputs.input2)", 0},
    {"args", PARAM_ANY, NULL, 1, 0, NULL, "any value, passed as ctx.args", 0},
    {"memory_mb", PARAM_INT, "1024", 1, 1048576, NULL, "memory cap of the script's Lua state", PARAM_NOKEY},
    {"instructions", PARAM_INT, "10000000000", 1000, 1e15, NULL, "instruction budget of run(ctx)", PARAM_NOKEY},
    {0},
};

static void cb_metric(void *ud, const char *name, double v) { stage_metric(ud, name, v); }

static void cb_log(void *ud, const char *level, const char *msg) {
    if (strcmp(level, "debug")) stage_logf(ud, "%s%s%s", strcmp(level, "info") ? level : "", strcmp(level, "info") ? ": " : "", msg);
}

static int lua_stage_run(stage_ctx *c) {
    lua_host_opts o;
    int rc = lua_host_opts_from_json(&o, c->hooks);
    if (rc) return rc;
    o.caps &= LUA_HOST_CAP_HTTP; /* file writes go through write_root instead */
    o.write_root = c->out_dir;
    o.memory_limit = (size_t)stage_int(c, "memory_mb") << 20;
    o.instruction_limit = (uint64_t)stage_int(c, "instructions");
    char *script = stage_path(c, "script");
    lua_host *h = NULL;
    rc = lua_host_open(&h, script, &o);
    free(script);
    if (rc) return rc;
    lua_host_callbacks cb = {.ud = c, .metric = cb_metric, .log = cb_log};
    lua_host_set_callbacks(h, &cb);

    json_t *ctx = json_pack("{s:s, s:s, s:I, s:s, s:O}", "name", c->name, "out_dir", c->out_dir, "seed",
                            (json_int_t)c->seed, "device", c->device ? c->device : "cpu", "args",
                            stage_json(c, "args") ? stage_json(c, "args") : json_null());
    json_t *inputs = json_object(), *names = json_object();
    for (int i = 0; i < c->n_inputs; i++) {
        json_object_set_new(inputs, c->inputs[i].role, json_string(c->inputs[i].dir));
        json_object_set_new(names, c->inputs[i].role, json_string(c->inputs[i].stage));
    }
    json_object_set_new(ctx, "inputs", inputs);
    json_object_set_new(ctx, "input_stages", names);

    lua_State *L = lua_host_state(h);
    rc = lua_host_push_function(h, "run");
    if (!rc) rc = lua_host_push_json(h, ctx);
    json_decref(ctx);
    char what[160];
    snprintf(what, sizeof what, "stage '%s'", c->name);
    if (!rc) rc = lua_host_call(h, 1, 1, ERR_STAGE, "run", what);
    if (!rc && lua_istable(L, -1)) {
        json_t *result;
        rc = lua_host_to_json(h, L, -1, &result);
        if (rc) err_wrap("run() result");
        else {
            if (!c->report) c->report = json_object();
            json_object_set_new(c->report, "result", result);
        }
    }
    if (!rc) stage_note_files(c, lua_host_loaded_files(h));
    lua_host_free(&h);
    return rc;
}

static const metric_spec lua_metrics[] = {
    {"*", METRIC_ANY, "whatever run(ctx) records with qlora.metric: the gate says which way is better"},
    {0}};

const stage_kind stage_kind_lua = {
    .name = "lua",
    .version = 1,
    .doc = "a user's stage in Lua: run(ctx) reads its inputs and writes files into its output directory",
    .params = lua_params,
    .check = NULL,
    .run = lua_stage_run,
    .metrics = lua_metrics,
};
