/* test_safetensors.c: reader against the transformers-written fixture, writer round trips,
 * sharding, and malformed files rejected with a message. */
#include <stdlib.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "test.h"

TEST(reads_transformers_checkpoint) {
    st_model *m = NULL;
    int rc = st_open(&m, "fixtures/bnb/tiny-llama-bf16");
    CHECK_EQ_INT(rc, 0);
    if (rc) { fprintf(stderr, "%s\n", err_msg()); return; }
    const st_tensor *t = st_find(m, "model.layers.0.self_attn.q_proj.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(t->dtype, ST_BF16);
        CHECK_EQ_INT(t->shape[0], 128);
        CHECK_EQ_INT(t->shape[1], 128);
    }
    CHECK_EQ_STR(st_metadata(m, "format"), "pt");
    st_close(&m);
    CHECK(m == NULL);
}

static int fill_ramp(void *arg, const char *name, void *dst, uint64_t nbytes) {
    float *f = dst;
    for (uint64_t i = 0; i < nbytes / 4; i++) f[i] = (float)i * *(float *)arg;
    return 0;
}

TEST(write_read_round_trip_and_layout) {
    char dir[] = "/tmp/qlora-st-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    st_writer *w;
    st_writer_open(&w, dir, "model", 0);
    float scale = 0.5f;
    int64_t s1[] = {1}, s3[] = {3}, s2[] = {2};
    float c = 7.0f;
    uint16_t bw[3] = {1, 2, 3};
    uint8_t aw[2] = {9, 8};
    st_writer_add(w, "c", ST_F32, 1, s1, &c, NULL, NULL);
    st_writer_add(w, "b.w", ST_BF16, 1, s3, bw, NULL, NULL);
    st_writer_add(w, "a.w", ST_U8, 1, s2, aw, NULL, NULL);
    int64_t s44[] = {4, 4};
    st_writer_add(w, "ramp", ST_F32, 2, s44, NULL, fill_ramp, &scale);
    CHECK_EQ_INT(st_writer_finish(&w), 0);
    char *p = fs_join(dir, "model.safetensors");
    char *bytes;
    size_t len;
    CHECK_EQ_INT(fs_read_all(p, &bytes, &len), 0);
    uint64_t hn;
    memcpy(&hn, bytes, 8);
    CHECK_EQ_INT(hn % 8, 0);
    /* safetensors order: F32 (name order) then BF16 then U8 */
    CHECK(strstr(bytes + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"ramp\"") != NULL);
    free(bytes);
    st_model *m;
    CHECK_EQ_INT(st_open(&m, p), 0);
    const st_tensor *r = st_find(m, "ramp");
    CHECK(r && r->nbytes == 64);
    float v[16];
    st_read_f32(r, 0, 16, v);
    CHECK_NEAR(v[15], 7.5, 0);
    st_close(&m);
    free(p);
    fs_rm_rf(dir);
}

TEST(sharded_round_trip) {
    char dir[] = "/tmp/qlora-st-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    st_writer *w;
    st_writer_open(&w, dir, "model", 100);
    float scale = 1.0f;
    int64_t s[] = {10};
    char name[16];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "t%d", i);
        st_writer_add(w, name, ST_F32, 1, s, NULL, fill_ramp, &scale);
    }
    CHECK_EQ_INT(st_writer_finish(&w), 0);
    char *p = fs_join(dir, "model-00003-of-00003.safetensors");
    CHECK(fs_exists(p));
    free(p);
    st_model *m;
    CHECK_EQ_INT(st_open(&m, dir), 0);
    CHECK_EQ_INT(st_count(m), 5);
    st_close(&m);
    fs_rm_rf(dir);
}

static void write_raw(const char *path, const char *hdr, size_t datalen, uint64_t hlen_override) {
    FILE *f = fopen(path, "wb");
    uint64_t hn = hlen_override ? hlen_override : strlen(hdr);
    fwrite(&hn, 8, 1, f);
    fwrite(hdr, 1, strlen(hdr), f);
    for (size_t i = 0; i < datalen; i++) fputc(0, f);
    fclose(f);
}

TEST(malformed_files_rejected) {
    const char *path = "/tmp/qlora-st-bad.safetensors";
    struct { const char *hdr; size_t data; uint64_t hl; const char *want; } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, 0, "truncated"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1ull << 40, "100 MB"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, 0, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,6]}}", 6, 0, "need 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]", 8, 0, "not valid JSON"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, "unsupported dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, 0, "after the last tensor"},
        {"[1,2]", 0, 0, "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(path, cases[i].hdr, cases[i].data, cases[i].hl);
        st_model *m = NULL;
        int rc = st_open(&m, path);
        CHECK_EQ_INT(rc, ERR_DATA);
        if (!strstr(err_msg(), cases[i].want)) {
            fprintf(stderr, "case %zu: '%s' lacks '%s'\n", i, err_msg(), cases[i].want);
            CHECK(0);
        }
        CHECK(m == NULL);
    }
    unlink(path);
}

int main(void) {
    RUN(reads_transformers_checkpoint);
    RUN(write_read_round_trip_and_layout);
    RUN(sharded_round_trip);
    RUN(malformed_files_rejected);
    return test_summary();
}
