/* test_dataset_read.c: JSON / JSONL / CSV / text / Parquet readers and their error messages. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/utf8.h"
#include "core/fsutil.h"
#include "data/dataset_read.h"
#include "test.h"

static char tmpdir[] = "/tmp/qlora_dsread_XXXXXX";

/* write content to tmpdir/name; returns the path (static buffer) */
static const char *put(const char *name, const char *content, size_t len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    fwrite(content, 1, len, f);
    fclose(f);
    return path;
}
#define PUT(name, s) put(name, s, sizeof(s) - 1)

/* read all records; returns rc; *n the count; last record kept in *last (caller decrefs) */
static int read_all(const char *path, dataset_type t, size_t *n, json_t **last) {
    dataset_reader *r;
    int rc = dataset_reader_open(&r, path, t);
    *n = 0;
    if (last) *last = NULL;
    if (rc) return rc;
    json_t *rec;
    while (!(rc = dataset_reader_next(r, &rec)) && rec) {
        (*n)++;
        if (last) {
            json_decref(*last);
            *last = rec;
        } else {
            json_decref(rec);
        }
    }
    dataset_reader_close(&r);
    return rc;
}

static const char *sval(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

TEST(test_json_array) {
    const char *p = PUT("a.json", "\xEF\xBB\xBF[\n {\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n"
                                  " {\"instruction\": \"c\", \"output\": \"d\"}\n]\n");
    size_t n;
    json_t *last;
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_AUTO, &n, &last), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_STR(sval(last, "output"), "d");
    json_decref(last);
    p = PUT("empty.json", "[ ]");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), 0);
    CHECK_EQ_INT(n, 0);
}

TEST(test_json_errors) {
    size_t n;
    /* a missing comma inside record 1, line 3 */
    const char *p = PUT("bad.json", "[\n {\"a\": \"x\"},\n {\"a\": \"y\" \"b\": 1}\n]");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "bad.json:3:"));
    CHECK_EQ_INT(n, 1);
    char want[600];
    snprintf(want, sizeof want, "%s/bad.json:3:14: '}' expected near '\"b\"'", tmpdir);
    CHECK(!strncmp(err_msg(), want, strlen(want)));
    if (strncmp(err_msg(), want, strlen(want))) fprintf(stderr, "  got: %s\n", err_msg());

    p = PUT("unclosed.json", "[{\"a\": 1},\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "unclosed.json:2:1: unexpected end of file"));

    p = PUT("scalar.json", "[{\"a\": 1}, \"x\"]");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "scalar.json:1:12: record 1 is not a JSON object"));

    p = PUT("obj.json", "{\"a\": 1}");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "expected a JSON array"));

    p = PUT("trail.json", "[{\"a\": 1}] x");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "trail.json:1:12: unexpected text after the closing ']'"));

    p = PUT("latin1.json", "[{\"a\": \"caf\xE9\"}]");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "latin1.json:1:12: invalid UTF-8 (byte 0xe9)"));
}

TEST(test_jsonl) {
    const char *p = PUT("a.jsonl", "{\"text\": \"one\"}\n\n  {\"text\": \"two\"}  \r\n{\"text\": \"three\"}");
    size_t n;
    json_t *last;
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_AUTO, &n, &last), 0);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_STR(sval(last, "text"), "three");
    json_decref(last);
    /* a .json file of objects one per line is read as JSON lines */
    p = PUT("lines.json", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_AUTO, &n, NULL), 0);
    CHECK_EQ_INT(n, 2);

    p = PUT("bad.jsonl", "{\"text\": \"one\"}\n{\"text\": tru}\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSONL, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "bad.jsonl:2:"));
    p = PUT("two.jsonl", "{\"a\": 1} {\"a\": 2}\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSONL, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "two.jsonl:1:10: unexpected text after the record"));
}

TEST(test_csv) {
    const char *p = PUT("a.csv", "instruction,input,output\r\n"
                                 "\"Say \"\"hi\"\"\",,\"line1\nline2\"\r\n"
                                 "\n"
                                 "plain,x,\"a,b\"\n");
    dataset_reader *r;
    CHECK_EQ_INT(dataset_reader_open(&r, p, DATASET_TYPE_AUTO), 0);
    json_t *rec;
    CHECK_EQ_INT(dataset_reader_next(r, &rec), 0);
    CHECK_EQ_STR(sval(rec, "instruction"), "Say \"hi\"");
    CHECK_EQ_STR(sval(rec, "input"), "");
    CHECK_EQ_STR(sval(rec, "output"), "line1\nline2");
    CHECK_EQ_INT(dataset_reader_line(r), 2);
    json_decref(rec);
    CHECK_EQ_INT(dataset_reader_next(r, &rec), 0);
    CHECK_EQ_STR(sval(rec, "output"), "a,b");
    CHECK_EQ_INT(dataset_reader_line(r), 5);
    CHECK_EQ_INT(dataset_reader_index(r), 1);
    json_decref(rec);
    CHECK_EQ_INT(dataset_reader_next(r, &rec), 0);
    CHECK(rec == NULL);
    dataset_reader_close(&r);

    size_t n;
    p = PUT("short.csv", "a,b,c\n1,2,3\n4,5\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_CSV, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "short.csv:3: row has 2 fields, the header has 3"));
    p = PUT("open.csv", "a,b\n1,\"never closed\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_CSV, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "open.csv:2:3: unterminated quoted field"));
    p = PUT("dup.csv", "a,a\n1,2\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_CSV, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "names field 'a' twice"));
    p = PUT("latin1.csv", "a\nok\nbad\xFF\n");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_CSV, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "latin1.csv:3:4: invalid UTF-8 (byte 0xff)"));
}

TEST(test_text) {
    const char *p = PUT("a.txt", "Once upon a time.\nThe end.\n");
    size_t n;
    json_t *last;
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_AUTO, &n, &last), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(sval(last, "text"), "Once upon a time.\nThe end.\n");
    json_decref(last);
    /* an overlong encoding and a lone surrogate are not UTF-8 */
    p = PUT("overlong.txt", "ok\n\xC0\xAF");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_TEXT, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "overlong.txt:2:1: invalid UTF-8"));
    p = PUT("surrogate.txt", "\xED\xA0\x80");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_TEXT, &n, NULL), ERR_DATA);
    p = put("nul.txt", "ab\0cd", 5);
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_TEXT, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "nul.txt:1:3: NUL byte"));
    p = PUT("nul.json", "[{\"a\": \"x\\u0000y\"}]");
    CHECK_EQ_INT(read_all(p, DATASET_TYPE_JSON, &n, NULL), ERR_DATA);
    CHECK(strstr(err_msg(), "nul.json:1:"));
    CHECK_EQ_INT(utf8_valid_prefix("h\xC3\xA9llo \xF0\x9F\x98\x80", 11), 11);
}

TEST(test_glob) {
    PUT("g1.jsonl", "{}\n");
    PUT("g2.jsonl", "{}\n");
    char pat[600], lit[600];
    snprintf(pat, sizeof pat, "%s/g*.jsonl", tmpdir);
    snprintf(lit, sizeof lit, "%s/g1.jsonl", tmpdir);
    const char *pats[] = {pat, lit};
    char **paths;
    size_t n;
    CHECK_EQ_INT(dataset_glob(pats, 2, &paths, &n), 0);
    CHECK_EQ_INT(n, 2);
    CHECK(strstr(paths[0], "g1.jsonl") && strstr(paths[1], "g2.jsonl"));
    dataset_paths_free(&paths, n);
    CHECK(paths == NULL);
    snprintf(pat, sizeof pat, "%s/nothing*.json", tmpdir);
    CHECK_EQ_INT(dataset_glob(pats, 1, &paths, &n), ERR_DATA);
    CHECK(strstr(err_msg(), "matches no files"));
    const char *dirs[] = {tmpdir};
    CHECK_EQ_INT(dataset_glob(dirs, 1, &paths, &n), ERR_DATA);
    CHECK(strstr(err_msg(), "is a directory"));
    dataset_type t;
    CHECK_EQ_INT(dataset_type_parse("xlsx", &t), ERR_RECIPE);
    CHECK_EQ_INT(dataset_type_parse("parquet", &t), 0);
    CHECK_EQ_INT(t, DATASET_TYPE_PARQUET);
}

/* Parquet (fixtures written by pyarrow, tests/golden/parquet/): every prefix fails with ERR_DATA
 * naming the file (the footer sits at the end); a byte changed anywhere reads, or fails with
 * ERR_DATA naming the file, never worse (the sanitizer build checks memory on the way) */
TEST(test_parquet_damaged) {
    const char *const fixtures[] = {"golden/parquet/types_v2.parquet", "golden/parquet/nested.parquet",
                                    "golden/parquet/delta_v1.parquet", "golden/parquet/chat_item.parquet"};
    for (size_t k = 0; k < sizeof fixtures / sizeof fixtures[0]; k++) {
        char *buf;
        size_t len, full_n = 0, n;
        CHECK_EQ_INT(fs_read_all(fixtures[k], &buf, &len), 0);
        CHECK_EQ_INT(read_all(put("d.parquet", buf, len), DATASET_TYPE_AUTO, &full_n, NULL), 0);
        CHECK(full_n > 0);
        for (size_t cut = 0; cut < len; cut += 1 + cut / 8) {
            int rc = read_all(put("d.parquet", buf, cut), DATASET_TYPE_PARQUET, &n, NULL);
            CHECK_EQ_INT(rc, ERR_DATA);
            CHECK(strstr(err_msg(), "d.parquet") != NULL);
        }
        for (size_t at = 4; at + 8 < len; at += 13) {
            char keep = buf[at];
            buf[at] = (char)(buf[at] ^ 0x5a);
            int rc = read_all(put("d.parquet", buf, len), DATASET_TYPE_PARQUET, &n, NULL);
            if (rc) {
                CHECK_EQ_INT(rc, ERR_DATA);
                CHECK(strstr(err_msg(), "d.parquet") != NULL);
            }
            buf[at] = keep;
        }
        free(buf);
    }
}

/* every prefix of a good file reads cleanly or fails with ERR_DATA naming the file: never a
 * crash, a hang or a silent partial record */
TEST(test_truncated_files) {
    static const struct {
        const char *name, *text;
    } good[] = {
        {"t.json", "[\n {\"instruction\": \"caf\u00e9 \\\"q\\\"\", \"output\": \"\u65e5\u672c\"},\n {\"a\": [1, {\"b\": null}]}\n]\n"},
        {"t.jsonl", "{\"text\": \"one\"}\n{\"text\": \"t\u00e9o\"}\n"},
        {"t.csv", "a,b\r\n\"x,\"\"y\"\"\",\"multi\nline\"\r\nplain,\u00e9\n"},
    };
    for (size_t g = 0; g < sizeof good / sizeof good[0]; g++) {
        size_t len = strlen(good[g].text), full_n = 0;
        CHECK_EQ_INT(read_all(put(good[g].name, good[g].text, len), DATASET_TYPE_AUTO, &full_n, NULL), 0);
        for (size_t cut = 0; cut < len; cut++) {
            size_t n;
            const char *p = put(good[g].name, good[g].text, cut);
            int rc = read_all(p, DATASET_TYPE_AUTO, &n, NULL);
            if (rc) {
                CHECK_EQ_INT(rc, ERR_DATA);
                CHECK(strstr(err_msg(), good[g].name) != NULL);
            }
            CHECK(n <= full_n);
        }
    }
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    RUN(test_json_array);
    RUN(test_json_errors);
    RUN(test_jsonl);
    RUN(test_csv);
    RUN(test_text);
    RUN(test_glob);
    RUN(test_truncated_files);
    RUN(test_parquet_damaged);
    fs_rm_rf(tmpdir);
    return test_summary();
}
