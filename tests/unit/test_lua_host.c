/* test_lua_host.c: the hook sandbox (core/lua_host.h): what a hook may and may not do, the
 * memory cap, the instruction budget, error messages, JSON and the qlora module. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/lua_host.h"
#include "test.h"

#define SANDBOX "lua/sandbox.lua"

static lua_host *open_host(unsigned caps, size_t mem, uint64_t instr, const char *root) {
    lua_host_opts o = {.caps = caps, .memory_limit = mem, .instruction_limit = instr, .write_root = root};
    lua_host *h = NULL;
    if (lua_host_open(&h, SANDBOX, &o)) fprintf(stderr, "open: %s\n", err_msg());
    return h;
}

/* call fn(arg) with one string argument (or none); returns the rc */
static int call1(lua_host *h, const char *fn, const char *arg, int nres) {
    if (lua_host_push_function(h, fn)) return err_code();
    int n = 0;
    if (arg) {
        lua_pushstring(lua_host_state(h), arg);
        n = 1;
    }
    return lua_host_call(h, n, nres, ERR_DATA, fn, "record 7");
}

static bool field_true(lua_State *L, const char *k) {
    lua_getfield(L, -1, k);
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

TEST(test_safe_libraries_only) {
    lua_host *h = open_host(0, 0, 0, NULL);
    CHECK(h);
    if (!h) return;
    lua_State *L = lua_host_state(h);
    CHECK_EQ_INT(call1(h, "probe", NULL, 1), 0);
    CHECK(!field_true(L, "os_execute"));
    CHECK(!field_true(L, "os_exit"));
    CHECK(!field_true(L, "os_remove"));
    CHECK(!field_true(L, "os_getenv"));
    CHECK(!field_true(L, "io_popen"));
    CHECK(!field_true(L, "io_write"));
    CHECK(!field_true(L, "dofile"));
    CHECK(!field_true(L, "loadfile"));
    CHECK(!field_true(L, "package"));
    CHECK(!field_true(L, "debug"));
    CHECK(!field_true(L, "binary_chunk"));
    CHECK(field_true(L, "clock"));
    lua_getfield(L, -1, "text_chunk");
    CHECK_EQ_INT(lua_tointeger(L, -1), 2);
    lua_settop(L, 0);
    lua_host_free(&h);
    CHECK(h == NULL);
}

TEST(test_writes_need_allow_io) {
    char dir[] = "/tmp/qlora_lua_XXXXXX";
    CHECK(mkdtemp(dir));
    char *path = fs_join(dir, "out.txt");
    lua_host *h = open_host(0, 0, 0, NULL);
    lua_State *L = lua_host_state(h);
    CHECK(lua_host_push_function(h, "write_file") == 0);
    lua_pushstring(L, path);
    lua_pushstring(L, "x");
    CHECK_EQ_INT(lua_host_call(h, 2, 1, ERR_DATA, "write_file", NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "allow: [io]"));
    CHECK(strstr(err_msg(), "sandbox.lua:"));
    CHECK(!fs_exists(path));
    lua_host_free(&h);

    h = open_host(LUA_HOST_CAP_IO, 0, 0, NULL);
    L = lua_host_state(h);
    CHECK(lua_host_push_function(h, "write_file") == 0);
    lua_pushstring(L, path);
    lua_pushstring(L, "hello");
    CHECK_EQ_INT(lua_host_call(h, 2, 1, ERR_DATA, "write_file", NULL), 0);
    CHECK(fs_exists(path));
    lua_settop(L, 0);
    lua_host_free(&h);

    /* reading is allowed without the capability */
    h = open_host(0, 0, 0, NULL);
    L = lua_host_state(h);
    CHECK_EQ_INT(call1(h, "read_file", path, 1), 0);
    CHECK_EQ_STR(lua_tostring(L, -1), "hello");
    lua_host_free(&h);
    unlink(path);
    free(path);
    rmdir(dir);
}

TEST(test_write_root) {
    char dir[] = "/tmp/qlora_lua_XXXXXX";
    CHECK(mkdtemp(dir));
    lua_host *h = open_host(0, 0, 0, dir);
    lua_State *L = lua_host_state(h);
    /* relative paths land in the root */
    CHECK(lua_host_push_function(h, "write_file") == 0);
    lua_pushstring(L, "result.txt");
    lua_pushstring(L, "ok");
    CHECK_EQ_INT(lua_host_call(h, 2, 1, ERR_DATA, "write_file", NULL), 0);
    char *p = fs_join(dir, "result.txt");
    CHECK(fs_exists(p));
    unlink(p);
    free(p);
    const char *bad[] = {"/tmp/qlora_escape.txt", "../escape.txt", "sub/../../escape.txt"};
    for (int i = 0; i < 3; i++) {
        CHECK(lua_host_push_function(h, "write_file") == 0);
        lua_pushstring(L, bad[i]);
        lua_pushstring(L, "no");
        CHECK_EQ_INT(lua_host_call(h, 2, 1, ERR_DATA, "write_file", NULL), ERR_DATA);
    }
    CHECK(!fs_exists("/tmp/qlora_escape.txt"));
    lua_settop(L, 0);
    lua_host_free(&h);
    rmdir(dir);
}

TEST(test_memory_cap) {
    lua_host *h = open_host(0, 8u << 20, 0, NULL);
    CHECK_EQ_INT(call1(h, "hog_memory", NULL, 1), ERR_DATA);
    CHECK(strstr(err_msg(), "memory limit of 8 MiB exceeded"));
    CHECK(strstr(err_msg(), "hog_memory()"));
    CHECK(strstr(err_msg(), "record 7"));
    /* the state stays usable and its memory came back */
    CHECK(lua_host_memory_used(h) < (4u << 20));
    CHECK_EQ_INT(call1(h, "json_roundtrip", "[1,2]", 1), 0);
    CHECK_EQ_STR(lua_tostring(lua_host_state(h), -1), "[1,2]");
    lua_host_free(&h);
}

TEST(test_instruction_budget) {
    lua_host *h = open_host(0, 0, 200000, NULL);
    CHECK_EQ_INT(call1(h, "spin", NULL, 0), ERR_DATA);
    CHECK(strstr(err_msg(), "instruction budget of 200000 exceeded"));
    CHECK(strstr(err_msg(), "sandbox.lua:"));
    CHECK(strstr(err_msg(), "spin()"));
    /* the budget is per call: the next call starts from zero */
    CHECK_EQ_INT(call1(h, "json_roundtrip", "{}", 1), 0);
    lua_host_free(&h);
}

TEST(test_error_names_file_line_function_record) {
    lua_host *h = open_host(0, 0, 0, NULL);
    CHECK_EQ_INT(call1(h, "fail_here", NULL, 1), ERR_DATA);
    CHECK(strstr(err_msg(), "lua/sandbox.lua:50: attempt to index a nil value"));
    CHECK(strstr(err_msg(), "(in fail_here() for record 7)"));
    CHECK(strstr(err_msg(), "stack traceback:"));
    /* an error raised from C still names the Lua line that called it */
    CHECK_EQ_INT(call1(h, "bad_arg", NULL, 1), ERR_DATA);
    CHECK(strstr(err_msg(), "lua/sandbox.lua:54:"));
    CHECK(strstr(err_msg(), "bad argument #1 to 'count_tokens'"));
    CHECK_EQ_INT(lua_gettop(lua_host_state(h)), 0);
    lua_host_free(&h);
}

TEST(test_open_errors) {
    lua_host *h = NULL;
    CHECK_EQ_INT(lua_host_open(&h, "lua/no_such_hook.lua", NULL), ERR_RECIPE);
    CHECK(strstr(err_msg(), "cannot read hook 'lua/no_such_hook.lua'"));
    CHECK_EQ_INT(lua_host_open(&h, "lua/syntax_error.lua", NULL), ERR_RECIPE);
    CHECK(strstr(err_msg(), "lua/syntax_error.lua:3:"));
    CHECK(h == NULL);
}

static int fake_tokenize(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)ud;
    if (len && text[0] == '!') return err_set(ERR_DATA, "fake tokenizer refuses '!'");
    *ids = malloc((len + 1) * sizeof **ids);
    for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
    *n = len;
    return 0;
}

static double last_metric;
static char last_log[256];
static void fake_metric(void *ud, const char *name, double v) {
    (void)ud;
    if (!strcmp(name, "acc")) last_metric = v;
}
static void fake_log(void *ud, const char *level, const char *msg) {
    (void)ud;
    snprintf(last_log, sizeof last_log, "%s: %s", level, msg);
}

TEST(test_qlora_module) {
    lua_host *h = open_host(0, 0, 0, NULL);
    lua_State *L = lua_host_state(h);
    /* no tokenizer slot: a clear error */
    CHECK_EQ_INT(call1(h, "tokens", "ab", 2), ERR_DATA);
    CHECK(strstr(err_msg(), "no tokenizer here"));
    lua_host_callbacks cb = {.tokenize = fake_tokenize, .metric = fake_metric, .log = fake_log};
    lua_host_set_callbacks(h, &cb);
    CHECK_EQ_INT(call1(h, "tokens", "ab", 2), 0);
    CHECK_EQ_INT(lua_tointeger(L, -1), 2);
    lua_rawgeti(L, -2, 2);
    CHECK_EQ_INT(lua_tointeger(L, -1), 'b');
    lua_settop(L, 0);
    CHECK_EQ_INT(call1(h, "tokens", "!x", 2), ERR_DATA);
    CHECK(strstr(err_msg(), "fake tokenizer refuses"));

    CHECK_EQ_INT(call1(h, "json_roundtrip", "{\"b\":[1,2.5,\"x\",null,true],\"a\":{}}", 1), 0);
    CHECK_EQ_STR(lua_tostring(L, -1), "{\"a\":{},\"b\":[1,2.5,\"x\",null,true]}");
    lua_settop(L, 0);
    CHECK_EQ_INT(call1(h, "json_roundtrip", "{\"a\":", 1), ERR_DATA);
    CHECK(strstr(err_msg(), "json.decode: line 1"));

    CHECK(lua_host_push_function(h, "report") == 0);
    lua_pushstring(L, "acc");
    lua_pushnumber(L, 0.75);
    CHECK_EQ_INT(lua_host_call(h, 2, 0, ERR_STAGE, "report", NULL), 0);
    CHECK_NEAR(last_metric, 0.75, 0);
    CHECK_EQ_STR(last_log, "info: printed 1");

    /* network needs allow http; credentials are never readable */
    CHECK_EQ_INT(call1(h, "post", "http://127.0.0.1:9/x", 2), ERR_DATA);
    CHECK(strstr(err_msg(), "allow: [http]"));
    setenv("HF_TOKEN", "hf_secret", 1);
    CHECK_EQ_INT(call1(h, "env", "HF_TOKEN", 1), ERR_DATA);
    CHECK(!strstr(err_msg(), "hf_secret"));
    setenv("QLORA_TEST_ENV", "v1", 1);
    CHECK_EQ_INT(call1(h, "env", "QLORA_TEST_ENV", 1), 0);
    CHECK_EQ_STR(lua_tostring(L, -1), "v1");
    lua_settop(L, 0);
    lua_host_free(&h);

    /* with http allowed, a refused connection is a nil, message result, not an error */
    h = open_host(LUA_HOST_CAP_HTTP, 0, 0, NULL);
    L = lua_host_state(h);
    CHECK_EQ_INT(call1(h, "post", "http://127.0.0.1:9/x", 2), 0);
    CHECK(lua_isnil(L, -2));
    CHECK(strstr(lua_tostring(L, -1), "http_post http://127.0.0.1:9/x"));
    lua_host_free(&h);
}

TEST(test_json_conversion) {
    lua_host *h = open_host(0, 0, 0, NULL);
    lua_State *L = lua_host_state(h);
    json_t *in = json_loads("{\"s\":\"t\",\"n\":3,\"f\":0.5,\"arr\":[1,null,3],\"gone\":null,\"o\":{\"k\":false}}", 0, NULL);
    CHECK_EQ_INT(lua_host_push_json(h, in), 0);
    json_t *out = NULL;
    CHECK_EQ_INT(lua_host_to_json(h, L, -1, &out), 0);
    char *s = json_dumps(out, JSON_SORT_KEYS | JSON_COMPACT);
    CHECK_EQ_STR(s, "{\"arr\":[1,null,3],\"f\":0.5,\"n\":3,\"o\":{\"k\":false},\"s\":\"t\"}");
    free(s);
    json_decref(out);
    json_decref(in);
    /* a cycle is an error, not a crash */
    luaL_dostring(L, "cyc = {}; cyc.self = cyc");
    lua_getglobal(L, "cyc");
    CHECK_EQ_INT(lua_host_to_json(h, L, -1, &out), ERR_DATA);
    CHECK(strstr(err_msg(), "nested deeper"));
    lua_settop(L, 0);
    lua_host_free(&h);
}

TEST(test_opts_from_json) {
    lua_host_opts o;
    json_t *j = json_loads("{\"allow\":[\"io\",\"http\"],\"memory_mb\":64,\"instructions\":5000}", 0, NULL);
    CHECK_EQ_INT(lua_host_opts_from_json(&o, j), 0);
    CHECK_EQ_INT(o.caps, LUA_HOST_CAP_IO | LUA_HOST_CAP_HTTP);
    CHECK_EQ_INT(o.memory_limit, 64u << 20);
    CHECK_EQ_INT(o.instruction_limit, 5000);
    json_decref(j);
    j = json_loads("{\"allow\":[\"exec\"]}", 0, NULL);
    CHECK_EQ_INT(lua_host_opts_from_json(&o, j), ERR_RECIPE);
    CHECK(strstr(err_msg(), "unknown capability 'exec'"));
    json_decref(j);
}

int main(void) {
    RUN(test_safe_libraries_only);
    RUN(test_writes_need_allow_io);
    RUN(test_write_root);
    RUN(test_memory_cap);
    RUN(test_instruction_budget);
    RUN(test_error_names_file_line_function_record);
    RUN(test_open_errors);
    RUN(test_qlora_module);
    RUN(test_json_conversion);
    RUN(test_opts_from_json);
    return test_summary();
}
