/* test_sample.c: the logits processors and draws of model/sample.c. */
#include <stdlib.h>

#include "generate/sample.h"
#include "test.h"

TEST(test_greedy_and_penalty) {
    sampler s;
    sample_opts o = SAMPLE_OPTS_GREEDY;
    CHECK_EQ_INT(sampler_init(&s, 4, &o), 0);
    float l[4] = {1.0f, 3.0f, 2.9f, -1.0f};
    CHECK_EQ_INT(sampler_next(&s, l, NULL, 0), 1);
    sampler_free(&s);
    o.repetition_penalty = 1.5f; /* 3.0 / 1.5 = 2.0 < 2.9 */
    CHECK_EQ_INT(sampler_init(&s, 4, &o), 0);
    float l2[4] = {1.0f, 3.0f, 2.9f, -1.0f};
    int32_t hist[2] = {1, 3};
    CHECK_EQ_INT(sampler_next(&s, l2, hist, 2), 2);
    CHECK_NEAR(l2[3], -1.5, 1e-6); /* a negative logit is multiplied */
    sampler_free(&s);
}

TEST(test_top_k_top_p) {
    sampler s;
    sample_opts o = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .repetition_penalty = 1.0f, .seed = 3};
    CHECK_EQ_INT(sampler_init(&s, 4, &o), 0);
    for (int i = 0; i < 50; i++) {
        float l[4] = {0.5f, 0.2f, 0.4f, 0.45f};
        CHECK_EQ_INT(sampler_next(&s, l, NULL, 0), 0);
    }
    sampler_free(&s);
    /* probs ~ {0.64, 0.24, 0.09, 0.03}: top_p 0.8 keeps the first two only */
    o = (sample_opts){.temperature = 1.0f, .top_k = 0, .top_p = 0.8f, .repetition_penalty = 1.0f, .seed = 4};
    CHECK_EQ_INT(sampler_init(&s, 4, &o), 0);
    int count[4] = {0};
    for (int i = 0; i < 2000; i++) {
        float l[4] = {3.0f, 2.0f, 1.0f, 0.0f};
        count[sampler_next(&s, l, NULL, 0)]++;
    }
    CHECK(count[2] == 0 && count[3] == 0);
    CHECK(count[0] > 1300 && count[0] < 1600); /* 0.64/0.88 = 0.73 of 2000 */
    sampler_free(&s);
}

TEST(test_temperature_draws) {
    sampler s;
    sample_opts o = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f, .seed = 9};
    CHECK_EQ_INT(sampler_init(&s, 2, &o), 0);
    int ones = 0;
    for (int i = 0; i < 4000; i++) {
        float l[2] = {0.0f, 1.0986123f}; /* p(1) = 0.75 */
        ones += sampler_next(&s, l, NULL, 0);
    }
    CHECK(ones > 2850 && ones < 3150);
    sampler_free(&s);
    /* same seed, same draws */
    sampler a, b;
    sampler_init(&a, 2, &o);
    sampler_init(&b, 2, &o);
    for (int i = 0; i < 100; i++) {
        float l1[2] = {0.0f, 0.0f}, l2[2] = {0.0f, 0.0f};
        CHECK_EQ_INT(sampler_next(&a, l1, NULL, 0), sampler_next(&b, l2, NULL, 0));
    }
    sampler_free(&a);
    sampler_free(&b);
}

int main(void) {
    RUN(test_greedy_and_penalty);
    RUN(test_top_k_top_p);
    RUN(test_temperature_draws);
    return test_summary();
}
