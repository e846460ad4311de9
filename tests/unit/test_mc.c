/* test_mc.c: multiple-choice tasks as lm-evaluation-harness builds and scores them (eval/mc.c):
 * the exact prompt strings of MMLU, ARC and HellaSwag, few-shot contexts, the encoding of a
 * (context, continuation) pair, left truncation, acc and acc_norm, and bad records. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "eval/mc.h"
#include "test.h"

static mc_doc doc_of(mc_format f, const char *json) {
    json_t *rec = json_loads(json, 0, NULL);
    mc_doc d;
    int rc = mc_doc_from_record(f, rec, "t.jsonl: record 0", &d);
    json_decref(rec);
    if (rc) fprintf(stderr, "%s\n", err_msg());
    return d;
}

TEST(test_mmlu_prompt) {
    mc_doc d = doc_of(MC_MMLU, "{\"question\":\"  What is 2+2?\\n\",\"subject\":\"high_school_mathematics\","
                               "\"choices\":[\"3\",\"4\",\"5\",\"6\"],\"answer\":1}");
    CHECK_EQ_STR(d.text, "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
    CHECK_EQ_STR(d.subject, "high school mathematics");
    CHECK_EQ_INT(d.gold, 1);
    CHECK_EQ_STR(d.choices[1], "B");
    char *p = NULL;
    CHECK_EQ_INT(mc_fewshot_prefix(MC_MMLU, &d, NULL, 0, -1, 0, &p), 0);
    CHECK_EQ_STR(p, "The following are multiple choice questions (with answers) about high school mathematics.\n\n");
    free(p);
    /* 2-shot from a dev split: the subject's own examples only, "text answer\n\n" each */
    mc_doc dev[3] = {
        doc_of(MC_MMLU, "{\"question\":\"1+1?\",\"subject\":\"high_school_mathematics\",\"choices\":[\"1\",\"2\",\"3\",\"4\"],\"answer\":\"B\"}"),
        doc_of(MC_MMLU, "{\"question\":\"Capital of France?\",\"subject\":\"geography\",\"choices\":[\"Paris\",\"Rome\",\"Oslo\",\"Bern\"],\"answer\":0}"),
        doc_of(MC_MMLU, "{\"question\":\"3*3?\",\"subject\":\"high_school_mathematics\",\"choices\":[\"6\",\"9\",\"12\",\"3\"],\"answer\":1}")};
    CHECK_EQ_INT(mc_fewshot_prefix(MC_MMLU, &d, dev, 3, -1, 2, &p), 0);
    CHECK_EQ_STR(p, "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
                    "1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n3*3?\nA. 6\nB. 9\nC. 12\nD. 3\nAnswer: B\n\n");
    free(p);
    /* fewer than k of the subject: an error naming it */
    CHECK_EQ_INT(mc_fewshot_prefix(MC_MMLU, &d, dev, 3, -1, 3, &p), ERR_DATA);
    CHECK(strstr(err_msg(), "3-shot needs 3 examples of subject 'high school mathematics'"));
    /* the doc itself is left out when the shots are its own split */
    CHECK_EQ_INT(mc_fewshot_prefix(MC_MMLU, &dev[0], dev, 3, 0, 1, &p), 0);
    CHECK(strstr(p, "3*3?") && !strstr(p, "1+1?"));
    free(p);
    for (int i = 0; i < 3; i++) mc_doc_free(&dev[i]);
    mc_doc_free(&d);
}

TEST(test_arc_prompt) {
    mc_doc d = doc_of(MC_ARC, "{\"question\":\"Which is a gas?\",\"choices\":{\"text\":[\"ice\",\"steam\",\"rock\"],"
                              "\"label\":[\"A\",\"B\",\"C\"]},\"answerKey\":\"B\"}");
    CHECK_EQ_STR(d.text, "Question: Which is a gas?\nAnswer:");
    CHECK_EQ_STR(d.choices[1], "steam");
    CHECK_EQ_INT(d.gold, 1);
    mc_doc_free(&d);
    d = doc_of(MC_ARC, "{\"question\":\"q\",\"choices\":{\"text\":[\"a\",\"b\",\"c\",\"d\"],\"label\":[\"1\",\"2\",\"3\",\"4\"]},\"answerKey\":\"3\"}");
    CHECK_EQ_INT(d.gold, 2);
    mc_doc_free(&d);
}

TEST(test_hellaswag_prompt) {
    /* the harness's preprocessing: activity label + ": " + ctx_a + " " + ctx_b.capitalize(), then
     * strip, " [title]" -> ". ", [..] removed, double spaces single */
    mc_doc d = doc_of(MC_HELLASWAG, "{\"activity_label\":\"Removing ice from car\",\"ctx_a\":\"Then, the man writes over "
                                    "the snow covering the window of a car, and a woman wearing winter clothes smiles.\","
                                    "\"ctx_b\":\"then\",\"endings\":[\", the man adds wax to the windshield and cuts it.\","
                                    "\" [header] How to x [title] Do  y\",\"c\",\"d\"],\"label\":\"3\"}");
    CHECK_EQ_STR(d.text, "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a "
                         "woman wearing winter clothes smiles. Then");
    CHECK_EQ_STR(d.choices[0], ", the man adds wax to the windshield and cuts it.");
    CHECK_EQ_STR(d.choices[1], " How to x. Do y");
    CHECK_EQ_INT(d.gold, 3);
    mc_doc_free(&d);
}

TEST(test_bad_records) {
    mc_doc d;
    json_t *r = json_loads("{\"question\":\"q\",\"subject\":\"s\",\"choices\":[\"a\",\"b\",\"c\",\"d\"],\"answer\":4}", 0, NULL);
    CHECK_EQ_INT(mc_doc_from_record(MC_MMLU, r, "x.jsonl: record 7", &d), ERR_DATA);
    CHECK(strstr(err_msg(), "x.jsonl: record 7: answer index 4 is out of range (4 choices)"));
    json_decref(r);
    r = json_loads("{\"question\":\"q\",\"choices\":{\"text\":[\"a\",\"b\"],\"label\":[\"A\",\"B\"]},\"answerKey\":\"E\"}", 0, NULL);
    CHECK_EQ_INT(mc_doc_from_record(MC_ARC, r, "arc.jsonl: record 2", &d), ERR_DATA);
    CHECK(strstr(err_msg(), "arc.jsonl: record 2: the answer 'E' is not among the choices"));
    json_decref(r);
    r = json_loads("{\"question\":\"q\",\"subject\":\"s\",\"choices\":[\"a\",\"b\",\"c\",\"d\"]}", 0, NULL);
    CHECK_EQ_INT(mc_doc_from_record(MC_MMLU, r, "m.jsonl: record 0", &d), ERR_DATA);
    CHECK(strstr(err_msg(), "missing 'answer'"));
    json_decref(r);
}

/* a word tokenizer: each run of non-spaces with the spaces before it is one token, its id the
 * sum of its bytes (enough to see where a pair is split) */
static int words(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)ud;
    *ids = malloc(sizeof(int32_t) * (len + 1));
    *n = 0;
    for (size_t i = 0; i < len;) {
        int32_t id = 0;
        while (i < len && text[i] == ' ') id += ' ', i++;
        while (i < len && text[i] != ' ') id += (unsigned char)text[i], i++;
        (*ids)[(*n)++] = id;
    }
    return 0;
}

TEST(test_encode_pair) {
    int32_t *ids;
    size_t n, cs;
    /* the context's trailing space moves to the continuation: "Answer:" + " A" */
    CHECK_EQ_INT(mc_encode_pair(words, NULL, -1, "Q\nAnswer: ", "A", &ids, &n, &cs), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(cs, 1);
    CHECK_EQ_INT(ids[1], ' ' + 'A');
    free(ids);
    /* with BOS, one more token in front, the split moves with it */
    CHECK_EQ_INT(mc_encode_pair(words, NULL, 1, "Q\nAnswer:", " B", &ids, &n, &cs), 0);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(ids[0], 1);
    CHECK_EQ_INT(cs, 2);
    free(ids);
}

/* a fake model: log-likelihood of a sequence = -(its continuation length) * 1 - its last id / 1000 */
static int fake_score(void *ud, const mc_seq *s, size_t n, double *ll) {
    size_t *calls = ud;
    (*calls)++;
    for (size_t i = 0; i < n; i++) ll[i] = -(double)(s[i].len - s[i].cont_start) - s[i].ids[s[i].len - 1] / 1000.0;
    return 0;
}

TEST(test_acc_and_acc_norm) {
    /* choices "a" (1 token, id ' '+'a' = 129) and "bb cc dd" (3 tokens): acc prefers the short one,
     * acc_norm (per character: -1.129/1 against about -3.2/8) the long one */
    mc_doc docs[2] = {
        doc_of(MC_ARC, "{\"question\":\"x\",\"choices\":[\"a\",\"bb cc dd\"],\"answer\":0}"),
        doc_of(MC_ARC, "{\"question\":\"y\",\"choices\":[\"a\",\"bb cc dd\"],\"answer\":1}")};
    mc_task t = {.name = "toy", .format = MC_ARC, .docs = docs, .n_docs = 2, .bos = -1};
    size_t calls = 0;
    mc_result r;
    CHECK_EQ_INT(mc_run(&t, words, NULL, fake_score, &calls, 3, NULL, NULL, &r), 0);
    CHECK_NEAR(r.acc, 0.5, 0);
    CHECK_NEAR(r.acc_norm, 0.5, 0);
    CHECK_EQ_INT(calls, 2); /* 4 requests in batches of 3 */
    json_t *d0 = json_array_get(r.per_doc, 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(d0, "pred")), 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(d0, "pred_norm")), 1);
    mc_result_free(&r);
    /* left truncation: at most 4 tokens a sequence (the long choice's 5 lose one), counted */
    t.max_len = 4;
    CHECK_EQ_INT(mc_run(&t, words, NULL, fake_score, &calls, 8, NULL, NULL, &r), 0);
    CHECK_EQ_INT(r.truncated, 2);
    mc_result_free(&r);
    /* at 3 the answer itself would be cut: an error naming the task and doc */
    t.max_len = 3;
    CHECK_EQ_INT(mc_run(&t, words, NULL, fake_score, &calls, 8, NULL, NULL, &r), ERR_DATA);
    CHECK(strstr(err_msg(), "task 'toy', doc 0: the answer alone is longer than the model's 3 tokens"));
    for (int i = 0; i < 2; i++) mc_doc_free(&docs[i]);
}

TEST(test_subjects) {
    mc_doc docs[3] = {
        doc_of(MC_MMLU, "{\"question\":\"q1\",\"subject\":\"anatomy\",\"choices\":[\"w\",\"x\",\"y\",\"z\"],\"answer\":0}"),
        doc_of(MC_MMLU, "{\"question\":\"q2\",\"subject\":\"anatomy\",\"choices\":[\"w\",\"x\",\"y\",\"z\"],\"answer\":3}"),
        doc_of(MC_MMLU, "{\"question\":\"q3\",\"subject\":\"virology\",\"choices\":[\"w\",\"x\",\"y\",\"z\"],\"answer\":0}")};
    mc_task t = {.name = "mmlu", .format = MC_MMLU, .docs = docs, .n_docs = 3, .bos = -1};
    size_t calls = 0;
    mc_result r;
    /* the fake prefers the smallest last id: " A" -> choice 0 everywhere */
    CHECK_EQ_INT(mc_run(&t, words, NULL, fake_score, &calls, 64, NULL, NULL, &r), 0);
    CHECK_NEAR(r.acc, 2.0 / 3.0, 1e-12);
    CHECK_NEAR(json_real_value(json_object_get(json_object_get(r.subjects, "anatomy"), "acc")), 0.5, 1e-12);
    CHECK_NEAR(json_real_value(json_object_get(json_object_get(r.subjects, "virology"), "acc")), 1.0, 1e-12);
    mc_result_free(&r);
    for (int i = 0; i < 3; i++) mc_doc_free(&docs[i]);
}

int main(void) {
    RUN(test_mmlu_prompt);
    RUN(test_arc_prompt);
    RUN(test_hellaswag_prompt);
    RUN(test_bad_records);
    RUN(test_encode_pair);
    RUN(test_acc_and_acc_norm);
    RUN(test_subjects);
    return test_summary();
}
