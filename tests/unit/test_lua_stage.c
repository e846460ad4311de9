/* test_lua_stage.c: the `lua` stage kind: run(ctx) reads an input artifact and writes only
 * into its own output directory. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "stages/stage.h"
#include "test.h"

extern const stage_kind stage_kind_lua;

TEST(test_lua_stage_reads_input_writes_output) {
    char tmp[] = "/tmp/qlora_luastage_XXXXXX";
    CHECK(mkdtemp(tmp));
    char *in = fs_join(tmp, "in"), *out = fs_join(tmp, "out");
    fs_mkdir_p(in);
    fs_mkdir_p(out);
    char *data = fs_join(in, "data.txt");
    fs_write_atomic(data, "hello", 5);
    stage_ctx c = {0};
    c.name = "copy";
    c.kind = &stage_kind_lua;
    c.params = json_pack("{s:s, s:s, s:n, s:n, s:I, s:I}", "script", "lua/stage_copy.lua", "input", "prep", "input2",
                         "args", "memory_mb", (json_int_t)64, "instructions", (json_int_t)100000000);
    c.out_dir = out;
    c.recipe_dir = ".";
    c.seed = 7;
    c.n_inputs = 1;
    c.inputs[0] = (stage_input){"input", "prep", "test_echo", in, NULL};
    log_set_quiet(true);
    CHECK_EQ_INT(stage_kind_lua.run(&c), 0);
    char *copy = fs_join(out, "copy.txt"), *text = NULL;
    size_t len;
    CHECK_EQ_INT(fs_read_all(copy, &text, &len), 0);
    CHECK_EQ_STR(text, "HELLO");
    CHECK_NEAR(json_number_value(json_object_get(c.metrics, "bytes")), 5, 0);
    json_t *res = json_object_get(c.report, "result");
    CHECK_EQ_INT(json_integer_value(json_object_get(res, "copied")), 5);
    CHECK_EQ_STR(json_string_value(json_object_get(res, "from")), "prep");

    /* writing next to the input is refused, and named */
    json_object_set_new(c.params, "args", json_pack("{s:b}", "escape", 1));
    CHECK_EQ_INT(stage_kind_lua.run(&c), ERR_STAGE);
    CHECK(strstr(err_msg(), "may write only below its output directory"));
    CHECK(strstr(err_msg(), "stage_copy.lua:13:"));
    CHECK(strstr(err_msg(), "(in run() for stage 'copy')"));
    char *evil = fs_join(in, "evil.txt");
    CHECK(!fs_exists(evil));

    free(evil);
    free(text);
    free(copy);
    json_decref(c.params);
    { json_decref(c.metrics); json_decref(c.hook_files); }
    json_decref(c.report);
    fs_rm_rf(tmp);
    free(data);
    free(in);
    free(out);
}

int main(void) {
    RUN(test_lua_stage_reads_input_writes_output);
    return test_summary();
}
