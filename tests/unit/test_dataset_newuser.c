/* test_dataset_newuser.c: what a new user tripped over in the dataset builder (issue 14):
 * ChatML's end of turn with a tokenizer whose EOS is <|im_end|> (item 14), the counts of
 * truncated and dropped records (item 10), the prompt of a chat record for evaluate (item 6).
 *
 * The tokenizer here is Qwen-shaped: id = byte, 300 <|im_start|>, 301 <|im_end|> (also EOS),
 * 302 <|endoftext|> (BOS for the test), special tokens matched in text. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "train/dataset_build.h"
#include "test.h"

#define IM_START 300
#define IM_END 301
#define ENDTEXT 302
#define IGN DATASET_IGNORE_INDEX

static int qwen_encode(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)ud;
    static const char *sp[3] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
    int32_t *out = malloc((len + 1) * sizeof *out);
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        int hit = -1;
        for (int s = 0; s < 3; s++)
            if (len - i >= strlen(sp[s]) && !memcmp(text + i, sp[s], strlen(sp[s]))) hit = s;
        if (hit >= 0) {
            out[k++] = IM_START + hit;
            i += strlen(sp[hit]);
        } else {
            out[k++] = (unsigned char)text[i++];
        }
    }
    *ids = out;
    *n = k;
    return 0;
}

static dataset_tokenizer tok_qwen = {NULL, qwen_encode, ENDTEXT, IM_END, 303, "<|endoftext|>", "<|im_end|>"};
static char tmp[] = "/tmp/qlora_nu_XXXXXX";
static int case_no;

static char *write_data(const char *name, const char *content) {
    char *p = fs_join(tmp, name);
    fs_write_atomic(p, content, strlen(content));
    return p;
}

static int build(const dataset_opts *o, const char *data, char **out, json_t **stats) {
    char *paths[1] = {(char *)data};
    dataset_source src = {.paths = paths, .n_paths = 1, .type = DATASET_TYPE_AUTO};
    char name[32];
    snprintf(name, sizeof name, "out%d", case_no++);
    *out = fs_join(tmp, name);
    fs_mkdir_p(*out);
    return dataset_build(o, &src, &tok_qwen, *out, NULL, stats);
}

static int32_t *load_i32(const char *dir, const char *name, size_t *n) {
    char *p = fs_join(dir, name), *buf = NULL;
    size_t len = 0;
    if (fs_read_all(p, &buf, &len)) buf = NULL;
    free(p);
    *n = len / 4;
    return (int32_t *)buf;
}

static dataset_opts opts(void) {
    dataset_opts o = {0};
    o.format = DATASET_FORMAT_CHAT;
    o.chat_template = DATASET_CHAT_CHATML;
    o.sequence_len = 512;
    o.seed = 1;
    o.jobs = 1;
    return o;
}

TEST(test_chatml_one_end_of_turn) {
    /* <|im_end|> closes the assistant turn and is trained; the "\n" after it is masked; no second
     * <|im_end|> is appended as EOS */
    char *data = write_data("cm.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"},"
                                        " {\"role\": \"assistant\", \"content\": \"Yo\"}]}\n");
    dataset_opts o = opts();
    char *out;
    CHECK_EQ_INT(build(&o, data, &out, NULL), 0);
    size_t n, nl;
    int32_t *ids = load_i32(out, "train.ids.i32", &n), *labels = load_i32(out, "train.labels.i32", &nl);
    CHECK(ids && labels && n == nl && n > 4);
    size_t ends = 0;
    for (size_t i = 0; i < n; i++) ends += ids[i] == IM_END;
    CHECK_EQ_INT(ends, 2); /* the user's turn and the assistant's */
    CHECK_EQ_INT(ids[n - 1], '\n');
    CHECK_EQ_INT(labels[n - 1], IGN);
    CHECK_EQ_INT(ids[n - 2], IM_END);
    CHECK_EQ_INT(labels[n - 2], IM_END);
    CHECK_EQ_INT(labels[n - 3], 'o');
    free(ids);
    free(labels);
    free(out);
    free(data);
}

TEST(test_chat_prompt_for_generation) {
    char *p = NULL;
    json_t *rec = json_loads("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}", 0, NULL);
    CHECK_EQ_INT(dataset_chat_prompt(rec, "prompts[0]", DATASET_CHAT_CHATML, &tok_qwen, &p), 0);
    CHECK_EQ_STR(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    json_decref(rec);
    /* a conversation that ends with the answer: the answer is left out */
    rec = json_loads("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": "
                     "\"Yo\"}]}", 0, NULL);
    CHECK_EQ_INT(dataset_chat_prompt(rec, "prompts[1]", DATASET_CHAT_LLAMA3, &tok_qwen, &p), 0);
    CHECK_EQ_STR(p, "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(p);
    json_decref(rec);
}

int main(void) {
    if (!mkdtemp(tmp)) return 1;
    RUN(test_chatml_one_end_of_turn);
    RUN(test_chat_prompt_for_generation);
    fs_rm_rf(tmp);
    return test_summary();
}
