/* test_hub_parse.c: the hub client's parsers (repo ids, URL quoting, ETags, path safety, patterns,
 * the API listing, HEAD headers, Retry-After, link targets).
 *
 * With arguments it is also a driver for tests/test_hub.sh, which runs the fetch_model stage
 * against its nginx hub without the runner:
 *   test_hub_parse --stage OUT_DIR 'PARAMS_JSON'   runs check + run, prints the stage report as JSON */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "hub/hub.h"
#include "stages/stage.h"
#include "test.h"

extern const stage_kind stage_kind_fetch_model;

TEST(test_repo_spec) {
    char *repo, *rev;
    CHECK_EQ_INT(hub_parse_repo_spec("meta-llama/Llama-2-7b-hf@main", &repo, &rev), 0);
    CHECK_EQ_STR(repo, "meta-llama/Llama-2-7b-hf");
    CHECK_EQ_STR(rev, "main");
    free(repo);
    free(rev);
    CHECK_EQ_INT(hub_parse_repo_spec("gpt2", &repo, &rev), 0);
    CHECK_EQ_STR(repo, "gpt2");
    CHECK(rev == NULL);
    free(repo);
    CHECK_EQ_INT(hub_parse_repo_spec("org/name@refs/pr/3", &repo, &rev), 0);
    CHECK_EQ_STR(rev, "refs/pr/3");
    free(repo);
    free(rev);
    CHECK_EQ_INT(hub_parse_repo_spec("org/name@", &repo, &rev), ERR_USAGE);
    CHECK_EQ_INT(hub_parse_repo_spec("a/b/c", &repo, &rev), ERR_USAGE);
    CHECK_EQ_INT(hub_parse_repo_spec("../x", &repo, &rev), ERR_USAGE);
    CHECK(!hub_repo_id_valid("org//x"));
    CHECK(!hub_repo_id_valid("org/x--y"));
    CHECK(!hub_repo_id_valid("org/.x"));
    CHECK(!hub_repo_id_valid("org/x y"));
    CHECK(!hub_repo_id_valid(""));
    CHECK(hub_repo_id_valid("yahma/alpaca-cleaned"));
    CHECK(hub_repo_id_valid("TinyLlama/TinyLlama-1.1B-Chat-v1.0"));
}

TEST(test_folder_and_quote) {
    char *f = hub_repo_folder(HUB_REPO_MODEL, "meta-llama/Llama-2-7b-hf");
    CHECK_EQ_STR(f, "models--meta-llama--Llama-2-7b-hf");
    free(f);
    f = hub_repo_folder(HUB_REPO_DATASET, "yahma/alpaca-cleaned");
    CHECK_EQ_STR(f, "datasets--yahma--alpaca-cleaned");
    free(f);
    char *q = hub_url_quote("refs/pr/1", false);
    CHECK_EQ_STR(q, "refs%2Fpr%2F1");
    free(q);
    q = hub_url_quote("sub dir/a+b.json", true);
    CHECK_EQ_STR(q, "sub%20dir/a%2Bb.json");
    free(q);
}

TEST(test_etag) {
    char e[130];
    CHECK(hub_etag_normalize("W/\"abc123\"", e, sizeof e));
    CHECK_EQ_STR(e, "abc123");
    CHECK(hub_etag_normalize("\"2d6c3f2b0c1a\"\r\n", e, sizeof e));
    CHECK_EQ_STR(e, "2d6c3f2b0c1a");
    CHECK(!hub_etag_normalize("\"../../etc\"", e, sizeof e)); /* a blob name cannot climb */
    CHECK(!hub_etag_normalize("\"a/b\"", e, sizeof e));
    CHECK(!hub_etag_normalize("\"\"", e, sizeof e));
    CHECK(!hub_etag_normalize(NULL, e, sizeof e));
}

TEST(test_path_safety) {
    CHECK(hub_path_safe("model.safetensors"));
    CHECK(hub_path_safe("original/params.json"));
    CHECK(!hub_path_safe("../escape"));
    CHECK(!hub_path_safe("a/../../b"));
    CHECK(!hub_path_safe("/etc/passwd"));
    CHECK(!hub_path_safe("a//b"));
    CHECK(!hub_path_safe("./a"));
    CHECK(!hub_path_safe("a/"));
    CHECK(!hub_path_safe("a\nb"));
    CHECK(!hub_path_safe("..\\win"));
    CHECK(!hub_path_safe(""));
    char *t = hub_blob_link_target("config.json", "abc");
    CHECK_EQ_STR(t, "../../blobs/abc");
    free(t);
    t = hub_blob_link_target("a/b/c.json", "abc");
    CHECK_EQ_STR(t, "../../../../blobs/abc");
    free(t);
}

TEST(test_patterns) {
    CHECK(hub_pattern_match("*.safetensors", "model-00001-of-00002.safetensors"));
    CHECK(hub_pattern_match("*.safetensors", "sub/x.safetensors")); /* '*' crosses '/', as fnmatch in Python */
    CHECK(!hub_pattern_match("config.json", "sub/config.json"));
    CHECK(hub_pattern_match("original/", "original/consolidated.00.pth"));
    CHECK(hub_pattern_match("tokenizer*", "tokenizer_config.json"));
    CHECK(hub_path_is_pickle("pytorch_model-00001-of-00002.bin"));
    CHECK(hub_path_is_pickle("original/consolidated.00.PTH"));
    CHECK(hub_path_is_pickle("x.ckpt"));
    CHECK(!hub_path_is_pickle("model.safetensors"));
    CHECK(!hub_path_is_pickle("bin"));
}

TEST(test_listing) {
    const char *good = "{\"id\":\"o/n\",\"sha\":\"0123456789abcdef0123456789abcdef01234567\","
                       "\"siblings\":[{\"rfilename\":\"z.json\"},{\"rfilename\":\"a/b.safetensors\"}]}";
    char *commit, **files;
    int n;
    CHECK_EQ_INT(hub_listing_parse(good, strlen(good), &commit, &files, &n), 0);
    CHECK_EQ_STR(commit, "0123456789abcdef0123456789abcdef01234567");
    CHECK_EQ_INT(n, 2);
    if (n == 2) {
        CHECK_EQ_STR(files[0], "a/b.safetensors"); /* sorted */
        CHECK_EQ_STR(files[1], "z.json");
    }
    for (int i = 0; i < n; i++) free(files[i]);
    free(files);
    free(commit);
    const char *bad[] = {
        "not json",
        "{\"sha\":\"abc\",\"siblings\":[]}",
        "{\"sha\":\"0123456789abcdef0123456789abcdef01234567\"}",
        "{\"sha\":\"0123456789abcdef0123456789abcdef01234567\",\"siblings\":[{\"rfilename\":\"../x\"}]}",
        "{\"sha\":\"0123456789abcdef0123456789abcdef01234567\",\"siblings\":[{\"rfilename\":\"/abs\"}]}",
        "{\"sha\":\"0123456789abcdef0123456789abcdef01234567\",\"siblings\":[{\"name\":\"x\"}]}",
        "{\"sha\":\"0123456789abcdef0123456789abcdef01234567\",\"siblings\":[7]}",
        "[]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(hub_listing_parse(bad[i], strlen(bad[i]), &commit, &files, &n), ERR_DATA);
        CHECK(commit == NULL && files == NULL && n == 0);
    }
}

TEST(test_head_headers) {
    const char *lfs = "HTTP/1.1 302 Found\r\n"
                      "X-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                      "ETag: \"git-sha-of-pointer\"\r\n"
                      "x-linked-etag: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\r\n"
                      "X-Linked-Size: 13476839424\r\n"
                      "Content-Length: 1234\r\n"
                      "Location: https://cdn-lfs.example/x?sig=1\r\n\r\n";
    hub_file_meta m;
    CHECK_EQ_INT(hub_file_meta_parse(lfs, strlen(lfs), &m), 0);
    CHECK_EQ_INT(m.status, 302);
    CHECK_EQ_STR(m.etag, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK_EQ_INT(m.size, 13476839424LL);
    CHECK_EQ_STR(m.commit, "0123456789abcdef0123456789abcdef01234567");
    /* a small file: the ETag and Content-Length of a 200 */
    const char *small = "HTTP/1.1 200 OK\r\nx-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                        "etag: W/\"1111111111111111111111111111111111111111\"\r\ncontent-length: 42\r\n\r\n";
    CHECK_EQ_INT(hub_file_meta_parse(small, strlen(small), &m), 0);
    CHECK_EQ_STR(m.etag, "1111111111111111111111111111111111111111");
    CHECK_EQ_INT(m.size, 42);
    /* a redirect without X-Linked-Size has no size; a missing commit is refused */
    const char *nosize = "HTTP/1.1 302 Found\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                         "ETag: \"ab\"\r\nContent-Length: 10\r\n\r\n";
    CHECK_EQ_INT(hub_file_meta_parse(nosize, strlen(nosize), &m), ERR_DATA);
    const char *nocommit = "HTTP/1.1 200 OK\r\nETag: \"ab\"\r\nContent-Length: 10\r\n\r\n";
    CHECK_EQ_INT(hub_file_meta_parse(nocommit, strlen(nocommit), &m), ERR_DATA);
    const char *badsize = "HTTP/1.1 200 OK\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                          "ETag: \"ab\"\r\nContent-Length: -5\r\n\r\n";
    CHECK_EQ_INT(hub_file_meta_parse(badsize, strlen(badsize), &m), ERR_DATA);
    /* headers of an interim answer do not leak into the final one */
    const char *two = "HTTP/1.1 100 Continue\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n\r\n"
                      "HTTP/1.1 200 OK\r\nETag: \"ab\"\r\nContent-Length: 1\r\n\r\n";
    CHECK_EQ_INT(hub_file_meta_parse(two, strlen(two), &m), ERR_DATA);
}

TEST(test_retry_after) {
    CHECK_NEAR(net_retry_after_parse("2", 0), 2.0, 1e-9);
    CHECK_NEAR(net_retry_after_parse(" 30\r\n", 0), 30.0, 1e-9);
    CHECK_NEAR(net_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412475.0), 5.0, 1e-9);
    CHECK_NEAR(net_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0), 0.0, 1e-9);
    CHECK(net_retry_after_parse("soon", 0) < 0);
    CHECK(net_retry_after_parse("-3", 0) < 0);
    CHECK(net_retry_after_parse(NULL, 0) < 0);
}

TEST(test_config_env) {
    setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);
    setenv("HF_HOME", "/tmp/qlora-test-hf-home", 1);
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_TOKEN");
    setenv("HF_HUB_OFFLINE", "1", 1);
    hub_config c;
    CHECK_EQ_INT(hub_config_from_env(&c), 0);
    CHECK_EQ_STR(c.endpoint, "http://127.0.0.1:9");
    CHECK_EQ_STR(c.cache_dir, "/tmp/qlora-test-hf-home/hub");
    CHECK(c.offline);
    CHECK(c.token == NULL);
    hub_config_free(&c);
    setenv("HF_TOKEN", "hf_bad token", 1); /* a space would split the header */
    CHECK_EQ_INT(hub_config_from_env(&c), ERR_USAGE);
    CHECK(!strstr(err_msg(), "hf_bad"));
    unsetenv("HF_TOKEN");
    setenv("HF_ENDPOINT", "not a url", 1);
    CHECK_EQ_INT(hub_config_from_env(&c), ERR_USAGE);
    unsetenv("HF_ENDPOINT");
    unsetenv("HF_HUB_OFFLINE");
}

/* the stage, run the way the runner does (params complete, defaults filled) */
static int drive_stage(const char *out_dir, const char *params_json) {
    json_error_t je;
    json_t *params = json_loads(params_json, 0, &je);
    if (!params) {
        fprintf(stderr, "bad params: %s\n", je.text);
        return 2;
    }
    const char *defaults = "{\"source\":\"hub\",\"revision\":\"main\",\"allow_pickle\":false}";
    json_t *d = json_loads(defaults, 0, NULL);
    json_object_update_missing(params, d);
    json_decref(d);
    int rc = stage_kind_fetch_model.check(params);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return 1;
    stage_ctx c = {.name = "base", .kind = &stage_kind_fetch_model, .params = params, .out_dir = out_dir,
                   .recipe_dir = cwd, .device = "cpu", .jobs = 1};
    if (!rc) rc = fs_mkdir_p(out_dir);
    if (!rc) rc = stage_kind_fetch_model.run(&c);
    if (rc) fprintf(stderr, "error: %s\n", err_msg());
    else {
        char *s = json_dumps(c.report, JSON_SORT_KEYS);
        printf("%s\n", s);
        free(s);
    }
    json_decref(c.report);
    { json_decref(c.metrics); json_decref(c.hook_files); }
    json_decref(params);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--stage")) return drive_stage(argv[2], argv[3]);
    RUN(test_repo_spec);
    RUN(test_folder_and_quote);
    RUN(test_etag);
    RUN(test_path_safety);
    RUN(test_patterns);
    RUN(test_listing);
    RUN(test_head_headers);
    RUN(test_retry_after);
    RUN(test_config_env);
    return test_summary();
}
