/* test_json_in.c: outside JSON with integers beyond int64 (transformers' int(1e30)) and the
 * typed getters' messages (core/json_in.h). */
#include <stdint.h>
#include <stdlib.h>

#include "core/err.h"
#include "core/json_in.h"
#include "test.h"

static json_t *parse(const char *s) {
    json_t *j = NULL;
    int rc = json_in_loadb(s, strlen(s), JSON_REJECT_DUPLICATES, "t.json", &j);
    if (rc) fprintf(stderr, "  %s\n", err_msg());
    return j;
}

TEST(big_integers_read_as_reals) {
    json_t *j = parse("{\"model_max_length\": 1000000000000000019884624838656, \"neg\": -99999999999999999999,"
                      " \"max\": 9223372036854775807, \"min\": -9223372036854775808, \"over\": 9223372036854775808,"
                      " \"s\": \"12345678901234567890123\", \"r\": 1.5e300, \"e\": 123456789012345678901e2}");
    CHECK(j != NULL);
    json_t *v = json_object_get(j, "model_max_length");
    CHECK(json_is_real(v));
    CHECK_NEAR(json_real_value(v), 1e30, 1e15);
    CHECK(json_is_real(json_object_get(j, "neg")));
    CHECK_NEAR(json_real_value(json_object_get(j, "neg")), -1e20, 1e5);
    CHECK(json_is_integer(json_object_get(j, "max")));
    CHECK(json_integer_value(json_object_get(j, "max")) == INT64_MAX);
    CHECK(json_is_integer(json_object_get(j, "min")));
    CHECK(json_integer_value(json_object_get(j, "min")) == INT64_MIN);
    CHECK(json_is_real(json_object_get(j, "over")));
    CHECK_EQ_STR(json_string_value(json_object_get(j, "s")), "12345678901234567890123");
    CHECK_NEAR(json_real_value(json_object_get(j, "e")), 1.23456789012345678901e22, 1e8);
    int64_t lim = 0;
    CHECK_EQ_INT(json_in_limit(j, "model_max_length", "t.json", 7, &lim), 0);
    CHECK(lim == INT64_MAX);
    CHECK_EQ_INT(json_in_limit(j, "absent", "t.json", 7, &lim), 0);
    CHECK_EQ_INT(lim, 7);
    CHECK_EQ_INT(json_in_limit(j, "neg", "t.json", 7, &lim), ERR_DATA);
    /* a count must not silently become a huge real */
    CHECK_EQ_INT(json_in_int(j, "model_max_length", "t.json", 0, 1, INT64_MAX, &lim), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "t.json: \"model_max_length\" must be an integer >= 1 (got 1e+30)");
    json_decref(j);
}

TEST(syntax_error_keeps_its_column) {
    /* the rewrite keeps the literal's length: the error after it is still at column 52 */
    const char *s = "{\"a\": 100000000000000000000000000000000000000, \"b\" 1}";
    json_t *j = NULL;
    CHECK_EQ_INT(json_in_loadb(s, strlen(s), 0, "x.json", &j), ERR_DATA);
    CHECK(j == NULL);
    CHECK(strstr(err_msg(), "x.json:1:52: invalid JSON") != NULL);
    fprintf(stderr, "  %s\n", err_msg());
}

TEST(wrong_types_name_file_key_expectation) {
    json_t *j = parse("{\"n\": \"32\", \"b\": 1, \"x\": [1], \"f\": 2.5, \"ok\": 12, \"nul\": null}");
    int64_t i;
    bool b;
    double d;
    const char *s;
    CHECK_EQ_INT(json_in_int(j, "n", "config.json", 0, 1, INT64_MAX, &i), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "config.json: \"n\" must be an integer >= 1 (got a string)");
    CHECK_EQ_INT(json_in_int(j, "f", "config.json", 0, 0, 10, &i), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "config.json: \"f\" must be an integer in [0, 10] (got 2.5)");
    CHECK_EQ_INT(json_in_int(j, "ok", "config.json", 0, 0, 10, &i), ERR_DATA);
    CHECK_EQ_INT(json_in_bool(j, "b", "tokenizer_config.json", false, &b), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "tokenizer_config.json: \"b\" must be true or false (got 1)");
    CHECK_EQ_INT(json_in_num(j, "x", "c.json", 0, &d), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "c.json: \"x\" must be a number (got an array)");
    CHECK_EQ_INT(json_in_str(j, "ok", "c.json", NULL, &s), ERR_DATA);
    CHECK_EQ_INT(json_in_int(j, "nul", "c.json", 5, 0, 10, &i), 0);
    CHECK_EQ_INT(i, 5);
    CHECK_EQ_INT(json_in_int(j, "ok", "c.json", 5, 0, 100, &i), 0);
    CHECK_EQ_INT(i, 12);
    json_decref(j);
}

int main(void) {
    RUN(big_integers_read_as_reals);
    RUN(syntax_error_keeps_its_column);
    RUN(wrong_types_name_file_key_expectation);
    return test_summary();
}
