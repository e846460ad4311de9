/* test_hooks_shipped.c: the ready hooks in hooks/ driven through core/hooks.h: the cosine and
 * warmup-stable-decay schedules, the metrics logger (JSONL and CSV), the webhook notifier
 * (against a one-shot HTTP server on 127.0.0.1) and the demo task's generate and score. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "test.h"

static char tmp[] = "/tmp/qlora_hooks_XXXXXX";

static hooks *open_spec(const char *json) {
    hooks *h = NULL;
    json_t *spec = json_loads(json, 0, NULL);
    if (hooks_open(&h, spec)) fprintf(stderr, "hooks_open: %s\n", err_msg());
    json_decref(spec);
    return h;
}

static double lr_at(hooks *h, int64_t step, int64_t total) {
    double lr = -1;
    if (hooks_lr(h, step, total, 1e-3, &lr)) fprintf(stderr, "lr: %s\n", err_msg());
    return lr;
}

TEST(test_cosine) {
    hooks *h = open_spec("{\"lr\": \"../hooks/cosine.lua\"}");
    CHECK(h && hooks_has(h, "lr"));
    if (!h) return;
    CHECK_NEAR(lr_at(h, 0, 100), 1e-3 / 3, 1e-12); /* 3 warmup steps */
    CHECK_NEAR(lr_at(h, 2, 100), 1e-3, 1e-12);
    CHECK_NEAR(lr_at(h, 51, 100), 1e-3 * (0.1 + 0.9 * 0.5), 1e-12);
    CHECK_NEAR(lr_at(h, 99, 100), 1e-4, 1e-12);
    /* monotone after warmup */
    double prev = 1;
    for (int s = 3; s < 100; s++) {
        double v = lr_at(h, s, 100);
        CHECK(v <= prev + 1e-15);
        prev = v;
    }
    hooks_free(&h);
}

TEST(test_wsd) {
    hooks *h = open_spec("{\"lr\": \"../hooks/wsd.lua\"}");
    CHECK(h != NULL);
    if (!h) return;
    CHECK_NEAR(lr_at(h, 0, 100), 1e-3 / 5, 1e-12);
    CHECK_NEAR(lr_at(h, 4, 100), 1e-3, 1e-12);
    CHECK_NEAR(lr_at(h, 50, 100), 1e-3, 1e-12);
    CHECK_NEAR(lr_at(h, 79, 100), 1e-3, 1e-12);
    CHECK_NEAR(lr_at(h, 80, 100), 1e-3 * 0.95, 1e-12);
    CHECK_NEAR(lr_at(h, 99, 100), 0, 1e-12);
    hooks_free(&h);
}

static char *slurp(const char *path) {
    char *s = NULL;
    size_t n;
    fs_read_all(path, &s, &n);
    return s;
}

TEST(test_metrics_log) {
    char *jl = fs_join(tmp, "m.jsonl"), *csv = fs_join(tmp, "m.csv");
    json_t *m1 = json_pack("{s:i, s:f}", "step", 1, "loss", 2.5), *m2 = json_pack("{s:i, s:f}", "step", 2, "loss", 2.25);
    /* without allow io: the write is refused and the error names the step */
    setenv("QLORA_METRICS_LOG", jl, 1);
    hooks *h = open_spec("{\"on_step\": \"../hooks/metrics_log.lua\"}");
    CHECK_EQ_INT(hooks_on_step(h, m1), ERR_STAGE);
    CHECK(strstr(err_msg(), "allow: [io]"));
    CHECK(strstr(err_msg(), "(in on_step() for step 1)"));
    hooks_free(&h);

    h = open_spec("{\"on_step\": \"../hooks/metrics_log.lua\", \"on_eval\": \"../hooks/metrics_log.lua\", \"allow\": [\"io\"]}");
    CHECK_EQ_INT(hooks_on_step(h, m1), 0);
    CHECK_EQ_INT(hooks_on_step(h, m2), 0);
    json_t *ev = json_pack("{s:f}", "val_loss", 2.0);
    CHECK_EQ_INT(hooks_on_eval(h, ev), 0);
    hooks_free(&h);
    char *s = slurp(jl);
    CHECK_EQ_STR(s, "{\"event\":\"step\",\"loss\":2.5,\"step\":1}\n{\"event\":\"step\",\"loss\":2.25,\"step\":2}\n"
                    "{\"event\":\"eval\",\"val_loss\":2.0}\n");
    free(s);

    setenv("QLORA_METRICS_LOG", csv, 1);
    h = open_spec("{\"on_step\": \"../hooks/metrics_log.lua\", \"on_eval\": \"../hooks/metrics_log.lua\", \"allow\": [\"io\"]}");
    CHECK_EQ_INT(hooks_on_step(h, m1), 0);
    json_t *ev2 = json_pack("{s:i, s:f, s:s}", "step", 2, "val_loss", 2.0, "stage", "tr,ain");
    CHECK_EQ_INT(hooks_on_eval(h, ev2), 0);
    json_decref(ev2);
    hooks_free(&h);
    s = slurp(csv);
    CHECK_EQ_STR(s, "event,step,name,value\nstep,1,loss,2.5\neval,2,stage,\"tr,ain\"\neval,2,val_loss,2.0\n");
    free(s);
    unsetenv("QLORA_METRICS_LOG");
    json_decref(m1);
    json_decref(m2);
    json_decref(ev);
    free(jl);
    free(csv);
}

/* ---- a one-shot HTTP server ---- */

typedef struct server {
    int fd, port;
    char request[8192];
} server;

static void *serve_one(void *p) {
    server *s = p;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0) return NULL;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(c, s->request + n, sizeof s->request - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        s->request[n] = 0;
        char *body = strstr(s->request, "\r\n\r\n");
        char *cl = strcasestr(s->request, "content-length:");
        if (body && cl && n - (size_t)(body + 4 - s->request) >= (size_t)atol(cl + 15)) break;
    }
    const char *reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    ssize_t w = write(c, reply, strlen(reply));
    (void)w;
    close(c);
    return NULL;
}

static int server_start(server *s, pthread_t *th) {
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(s->fd, (struct sockaddr *)&a, sizeof a) || listen(s->fd, 1) ||
        getsockname(s->fd, (struct sockaddr *)&a, &len))
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(th, NULL, serve_one, s);
}

TEST(test_notify_webhook) {
    server s;
    pthread_t th;
    CHECK_EQ_INT(server_start(&s, &th), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", s.port);
    setenv("QLORA_WEBHOOK_URL", url, 1);
    json_t *summary = json_pack("{s:s, s:s}", "recipe", "nightly", "status", "finished");
    /* no allow http: the post is refused (a misconfigured notifier fails loudly) */
    hooks *h = open_spec("{\"on_run_end\": \"../hooks/notify_webhook.lua\"}");
    CHECK_EQ_INT(hooks_on_run_end(h, summary), ERR_STAGE);
    CHECK(strstr(err_msg(), "allow: [http]"));
    hooks_free(&h);

    h = open_spec("{\"on_run_end\": \"../hooks/notify_webhook.lua\", \"on_stage_end\": \"../hooks/notify_webhook.lua\","
                  " \"allow\": [\"http\"]}");
    CHECK_EQ_INT(hooks_on_stage_end(h, "train", summary), 0); /* stage posts are off by default */
    int rc = hooks_on_run_end(h, summary);
    if (rc) fprintf(stderr, "webhook post: %s\n", err_msg());
    CHECK_EQ_INT(rc, 0);
    if (rc) shutdown(s.fd, SHUT_RDWR); /* no request is coming: let the server's accept return */
    pthread_join(th, NULL);
    close(s.fd);
    CHECK(!strncmp(s.request, "POST /hook HTTP/1.1", 19));
    CHECK(strcasestr(s.request, "content-type: application/json"));
    CHECK(strstr(s.request, "\"text\":\"qlora-run: nightly finished\""));
    /* unreachable: a warning, not a failure */
    setenv("QLORA_WEBHOOK_URL", "http://127.0.0.1:9/none", 1);
    CHECK_EQ_INT(hooks_on_run_end(h, summary), 0);
    hooks_free(&h);
    unsetenv("QLORA_WEBHOOK_URL");
    json_decref(summary);
}

/* ---- the demo task ---- */

typedef struct collect {
    json_t *all;
} collect;

static int collect_rec(void *ud, json_t *rec) {
    json_array_append_new(((collect *)ud)->all, rec);
    return 0;
}

TEST(test_demo_task) {
    hooks *h = open_spec("{\"generate\": \"../hooks/demo_task.lua\", \"score\": \"../hooks/demo_task.lua\","
                         " \"format\": \"../hooks/demo_task.lua\"}");
    CHECK(h != NULL);
    if (!h) return;
    json_t *ctx = json_pack("{s:i, s:{s:i}}", "seed", 5, "args", "n", 100);
    collect c1 = {json_array()}, c2 = {json_array()};
    CHECK_EQ_INT(hooks_generate(h, ctx, collect_rec, &c1), 0);
    CHECK_EQ_INT(hooks_generate(h, ctx, collect_rec, &c2), 0);
    CHECK_EQ_INT(json_array_size(c1.all), 100);
    CHECK(json_equal(c1.all, c2.all)); /* seeded */
    size_t i;
    json_t *r;
    size_t distinct_len = 0;
    int seen[16] = {0};
    json_array_foreach(c1.all, i, r) {
        const char *in = json_string_value(json_object_get(r, "input"));
        const char *out = json_string_value(json_object_get(r, "output"));
        size_t n = strlen(in);
        CHECK(n >= 2 && n <= 6 && strlen(out) == n);
        for (size_t k = 0; k < n; k++) CHECK_EQ_INT(out[k], in[n - 1 - k]);
        if (!seen[n]++) distinct_len++;
    }
    CHECK(distinct_len >= 4);
    json_t *rec = json_array_get(c1.all, 0);
    const char *want = json_string_value(json_object_get(rec, "output"));
    char pred[32];
    snprintf(pred, sizeof pred, "  %s\n", want);
    double sc = -1;
    CHECK_EQ_INT(hooks_score(h, pred, rec, "record 0", &sc), 0);
    CHECK_NEAR(sc, 1, 0);
    CHECK_EQ_INT(hooks_score(h, "zz", rec, "record 0", &sc), 0);
    CHECK_NEAR(sc, 0, 0);
    hooks_format_result f;
    CHECK_EQ_INT(hooks_format(h, rec, NULL, "record 0", &f), 0);
    CHECK_EQ_INT(f.kind, HOOKS_FORMAT_PAIR);
    CHECK_EQ_STR(f.seg[1].text, want);
    hooks_format_result_free(&f);
    /* a bad argument is a data error naming the generator */
    json_t *bad = json_pack("{s:i, s:{s:s}}", "seed", 5, "args", "task", "juggle");
    CHECK_EQ_INT(hooks_generate(h, bad, collect_rec, &c1), ERR_DATA);
    CHECK(strstr(err_msg(), "demo_task.lua:"));
    CHECK(strstr(err_msg(), "hook_args.task must be reverse, sort or upper"));
    json_decref(bad);
    json_decref(c1.all);
    json_decref(c2.all);
    json_decref(ctx);
    hooks_free(&h);
}

TEST(test_hooks_spec_errors) {
    hooks *h = open_spec("{\"on_step\": \"../hooks/cosine.lua\"}");
    CHECK(h == NULL);
    CHECK(strstr(err_msg(), "defines no function 'on_step'"));
    h = open_spec("{\"on_sttep\": \"../hooks/cosine.lua\"}");
    CHECK(h == NULL);
    CHECK(strstr(err_msg(), "unknown key 'on_sttep'"));
}

int main(void) {
    if (!mkdtemp(tmp)) return 1;
    RUN(test_cosine);
    RUN(test_wsd);
    RUN(test_metrics_log);
    RUN(test_notify_webhook);
    RUN(test_demo_task);
    RUN(test_hooks_spec_errors);
    fs_rm_rf(tmp);
    return test_summary();
}
