/* test_chat_format.c: what format: chat trains with a Jinja template (train/chat_format.h).
 *
 * The record is rendered and cut into pieces; the trained pieces must be exactly the assistant
 * contents found by the placeholder diff (or the {% generation %} spans) plus the end-of-turn
 * markers train_on_eos asks for. Templates here are small ones in the shape of Llama-3's and
 * ChatML's, written for the test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "test.h"
#include "train/chat_format.h"

static const char LLAMA3[] =
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
    "<|end_header_id|>\n\n{% endif %}";
static const char GEN[] =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}";
static const char ALTERNATE[] =
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}{{ m.content }}{% endfor %}";

static chat_template *load(const char *src) {
    char dir[] = "/tmp/test_chat_format_XXXXXX";
    if (!mkdtemp(dir)) return NULL;
    char *cfg = fs_join(dir, "tokenizer_config.json");
    json_t *j = json_pack("{s:s, s:s, s:s}", "chat_template", src, "bos_token", "<|begin_of_text|>", "eos_token", "<|eot_id|>");
    json_dump_file(j, cfg, 0);
    json_decref(j);
    chat_template *ct = NULL;
    if (chat_template_load(&ct, dir, NULL)) fprintf(stderr, "load: %s\n", err_msg());
    unlink(cfg);
    rmdir(dir);
    free(cfg);
    return ct;
}

static const char *const EOT[] = {"<|eot_id|>", "<|im_end|>"};

/* the pieces as "text|" for untrained and "[text]" for trained, concatenated */
static char *pieces(const chat_format_opts *o, const char *rec_json) {
    json_t *rec = json_loads(rec_json, 0, NULL);
    hooks_format_result f = {0};
    int rc = chat_format_record(o, rec, &f);
    json_decref(rec);
    if (rc) {
        hooks_format_result_free(&f);
        return NULL;
    }
    size_t n = 1;
    for (int i = 0; i < f.n; i++) n += f.seg[i].len + 2;
    char *s = calloc(1, n);
    for (int i = 0; i < f.n; i++) {
        if (f.seg[i].train) strcat(s, "[");
        strcat(s, f.seg[i].text);
        strcat(s, f.seg[i].train ? "]" : "|");
    }
    hooks_format_result_free(&f);
    return s;
}

static const char CONV[] = "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \" Hi \"},"
                           "{\"role\": \"assistant\", \"content\": \" Yo \"}, {\"role\": \"user\", \"content\": \"Q\"},"
                           "{\"role\": \"assistant\", \"content\": \"A\"}]}";

#define H(r) "<|start_header_id|>" r "<|end_header_id|>\n\n"

TEST(llama3_turns_and_eos) {
    chat_template *ct = load(LLAMA3);
    CHECK(ct != NULL);
    chat_format_opts o = {.tpl = ct, .eot = EOT, .n_eot = 2};
    char *s = pieces(&o, CONV);
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("system") "S<|eot_id|>" H("user") "Hi<|eot_id|>" H("assistant") "|[Yo<|eot_id|>]"
                    H("user") "Q<|eot_id|>" H("assistant") "|[A<|eot_id|>]");
    free(s);
    o.train_on_eos = CHAT_EOS_NONE;
    s = pieces(&o, CONV);
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("system") "S<|eot_id|>" H("user") "Hi<|eot_id|>" H("assistant") "|[Yo]<|eot_id|>"
                    H("user") "Q<|eot_id|>" H("assistant") "|[A]<|eot_id|>|");
    free(s);
    o.train_on_eos = CHAT_EOS_LAST;
    s = pieces(&o, CONV);
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("system") "S<|eot_id|>" H("user") "Hi<|eot_id|>" H("assistant") "|[Yo]<|eot_id|>"
                    H("user") "Q<|eot_id|>" H("assistant") "|[A<|eot_id|>]");
    free(s);
    o.train_on_eos = CHAT_EOS_ALL;
    s = pieces(&o, CONV);
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("system") "S|[<|eot_id|>]" H("user") "Hi|[<|eot_id|>]" H("assistant") "|[Yo<|eot_id|>]"
                    H("user") "Q|[<|eot_id|>]" H("assistant") "|[A<|eot_id|>]");
    free(s);
    chat_template_free(&ct);
}

TEST(roles_train_false_and_mappings) {
    chat_template *ct = load(LLAMA3);
    static const char *const users[] = {"user"};
    chat_format_opts o = {.tpl = ct, .eot = EOT, .n_eot = 2, .roles_to_train = users, .n_roles = 1};
    char *s = pieces(&o, CONV);
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("system") "S<|eot_id|>" H("user") "|[Hi<|eot_id|>]" H("assistant") "Yo<|eot_id|>"
                    H("user") "|[Q<|eot_id|>]" H("assistant") "A<|eot_id|>|");
    free(s);
    /* ShareGPT with human/gpt, a per-turn train: false, a custom messages key */
    chat_format_opts o2 = {.tpl = ct, .eot = EOT, .n_eot = 2, .field_messages = "dialog", .role_key = "from", .content_key = "value"};
    s = pieces(&o2, "{\"dialog\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\", \"train\": false},"
                    "{\"from\": \"human\", \"value\": \"Q\"}, {\"from\": \"gpt\", \"value\": \"A\"}]}");
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("user") "Hi<|eot_id|>" H("assistant") "Yo<|eot_id|>" H("user") "Q<|eot_id|>"
                    H("assistant") "|[A<|eot_id|>]");
    free(s);
    /* default keys: ShareGPT conversations are found when messages is absent */
    chat_format_opts o3 = {.tpl = ct, .eot = EOT, .n_eot = 2};
    s = pieces(&o3, "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]}");
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("user") "Hi<|eot_id|>" H("assistant") "|[Yo<|eot_id|>]");
    free(s);
    CHECK(pieces(&o2, "{\"messages\": []}") == NULL);
    CHECK(strstr(err_msg(), "missing 'dialog' (field_messages)") != NULL);
    chat_template_free(&ct);
}

/* content that begins or ends with the placeholder's characters, or repeats the text around it */
TEST(placeholder_edges) {
    chat_template *ct = load(LLAMA3);
    chat_format_opts o = {.tpl = ct, .eot = EOT, .n_eot = 2};
    char *s = pieces(&o, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"\\u0001a\\u0003\"}]}");
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("user") "x<|eot_id|>" H("assistant") "|[\x01" "a\x03<|eot_id|>]");
    free(s);
    s = pieces(&o, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"<|eot_id|>x\"}]}");
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("user") "x<|eot_id|>" H("assistant") "|[<|eot_id|>x<|eot_id|>]");
    free(s);
    /* empty content: only the end of the turn is trained */
    s = pieces(&o, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"  \"}]}");
    CHECK_EQ_STR(s, "<|begin_of_text|>" H("user") "x<|eot_id|>" H("assistant") "|[<|eot_id|>]");
    free(s);
    chat_template_free(&ct);
}

TEST(generation_tags) {
    chat_template *ct = load(GEN);
    chat_format_opts o = {.tpl = ct, .eot = EOT, .n_eot = 2};
    char *s = pieces(&o, CONV);
    /* trim_blocks eats the newline after {% endif %} */
    CHECK_EQ_STR(s, "<|im_start|>system\nS<|im_end|><|im_start|>user\n Hi <|im_end|><|im_start|>assistant\n|"
                    "[ Yo <|im_end|>]<|im_start|>user\nQ<|im_end|><|im_start|>assistant\n|[A<|im_end|>]");
    free(s);
    chat_template_free(&ct);
}

TEST(template_errors_name_the_position) {
    chat_template *ct = load(ALTERNATE);
    chat_format_opts o = {.tpl = ct, .eot = EOT, .n_eot = 2};
    CHECK(pieces(&o, "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}") == NULL);
    CHECK_EQ_INT(err_code(), ERR_DATA);
    CHECK(strstr(err_msg(), "tokenizer_config.json:1:") != NULL);
    CHECK(strstr(err_msg(), "template error: roles must alternate") != NULL);
    chat_template_free(&ct);
}

int main(void) {
    RUN(llama3_turns_and_eos);
    RUN(roles_train_false_and_mappings);
    RUN(placeholder_edges);
    RUN(generation_tags);
    RUN(template_errors_name_the_position);
    return test_summary();
}
