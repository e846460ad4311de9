/* mc.c: see mc.h. The strings below are the harness's task templates, byte for byte. */
#define _GNU_SOURCE
#include "eval/mc.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/rng.h"
#include "core/str.h"
#include "data/dataset_read.h"

int mc_format_parse(const char *name, mc_format *out) {
    if (!strcmp(name, "mmlu")) *out = MC_MMLU;
    else if (!strcmp(name, "arc")) *out = MC_ARC;
    else if (!strcmp(name, "hellaswag")) *out = MC_HELLASWAG;
    else if (!strcmp(name, "lua")) *out = MC_LUA;
    else return err_set(ERR_RECIPE, "unknown task format '%s' (mmlu, arc, hellaswag or lua)", name);
    return 0;
}

void mc_doc_free(mc_doc *d) {
    free(d->text);
    for (int i = 0; i < d->n_choices; i++) free(d->choices[i]);
    free(d->choices);
    free(d->subject);
    memset(d, 0, sizeof *d);
}

/* Python's str.strip() for ASCII whitespace */
static char *strip(const char *s) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) n--;
    return strndup(s, n);
}

/* every occurrence of from replaced, left to right, as Python's str.replace */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t lf = strlen(from), lt = strlen(to), n = 0;
    for (const char *p = s; (p = strstr(p, from)); p += lf) n++;
    char *out = malloc(strlen(s) + n * (lt > lf ? lt - lf : 0) + 1), *o = out;
    if (!out) return NULL;
    for (const char *p = s, *q; ; p = q + lf) {
        q = strstr(p, from);
        size_t k = q ? (size_t)(q - p) : strlen(p);
        memcpy(o, p, k), o += k;
        if (!q) break;
        memcpy(o, to, lt), o += lt;
    }
    *o = 0;
    return out;
}

/* HellaSwag's preprocess: strip, " [title]" -> ". ", drop "[...]" (shortest), "  " -> " " */
static char *hellaswag_preprocess(const char *text) {
    char *a = strip(text), *b = a ? replace_all(a, " [title]", ". ") : NULL;
    free(a);
    if (!b) return NULL;
    char *c = malloc(strlen(b) + 1), *o = c;
    for (const char *p = b; c && *p;) {
        const char *close = *p == '[' ? strchr(p + 1, ']') : NULL;
        if (close) p = close + 1;
        else *o++ = *p++;
    }
    if (c) *o = 0;
    free(b);
    char *d = c ? replace_all(c, "  ", " ") : NULL;
    free(c);
    return d;
}

/* Python's str.capitalize() for ASCII: first character upper, the rest lower */
static char *capitalize(const char *s) {
    char *o = strdup(s);
    for (size_t i = 0; o && o[i]; i++) o[i] = (char)(i ? tolower((unsigned char)o[i]) : toupper((unsigned char)o[i]));
    return o;
}

static const char *str_field(const json_t *rec, const char *key) { return json_string_value(json_object_get(rec, key)); }

static int set_choices(mc_doc *d, const json_t *arr, const char *what, const char *key) {
    if (!json_is_array(arr) || json_array_size(arr) < 2)
        return err_set(ERR_DATA, "%s: '%s' must be a list of at least two choices", what, key);
    d->n_choices = (int)json_array_size(arr);
    d->choices = calloc((size_t)d->n_choices, sizeof *d->choices);
    for (int i = 0; d->choices && i < d->n_choices; i++) {
        json_t *c = json_array_get(arr, (size_t)i);
        if (!json_is_string(c)) return err_set(ERR_DATA, "%s: %s[%d] is not a string", what, key, i);
        d->choices[i] = strdup(json_string_value(c));
    }
    return d->choices ? 0 : err_set(ERR_STAGE, "out of memory");
}

/* the answer: an index, an index as text ("2"), or a letter ("C") */
static int set_gold(mc_doc *d, const json_t *v, const char *what, const char *key, const json_t *labels) {
    long g = -1;
    if (json_is_integer(v)) g = (long)json_integer_value(v);
    else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        for (size_t i = 0; json_is_array(labels) && i < json_array_size(labels); i++)
            if (!strcmp(s, json_string_value(json_array_get(labels, i)) ? json_string_value(json_array_get(labels, i)) : ""))
                g = (long)i;
        /* without labels (MMLU's "C", HellaSwag's "2"): a letter or an index as text */
        if (g < 0 && !labels && s[0] >= 'A' && s[0] <= 'Z' && !s[1]) g = s[0] - 'A';
        else if (g < 0 && !labels && *s) {
            char *e;
            long x = strtol(s, &e, 10);
            if (!*e) g = x;
        }
        if (g < 0) return err_set(ERR_DATA, "%s: the answer '%s' is not among the choices%s", what, s,
                                  labels ? " (nor their labels)" : "");
    } else {
        return err_set(ERR_DATA, "%s: missing '%s' (the right choice: an index or a letter)", what, key);
    }
    if (g < 0 || g >= d->n_choices)
        return err_set(ERR_DATA, "%s: answer index %ld is out of range (%d choices)", what, g, d->n_choices);
    d->gold = (int)g;
    return 0;
}

int mc_doc_from_record(mc_format f, const json_t *rec, const char *what, mc_doc *d) {
    memset(d, 0, sizeof *d);
    int rc = 0;
    if (!json_is_object(rec)) return err_set(ERR_DATA, "%s: not a record", what);
    if (f == MC_MMLU) {
        const char *q = str_field(rec, "question"), *subj = str_field(rec, "subject");
        if (!q) return err_set(ERR_DATA, "%s: missing 'question'", what);
        if ((rc = set_choices(d, json_object_get(rec, "choices"), what, "choices"))) goto fail;
        if (d->n_choices != 4) { rc = err_set(ERR_DATA, "%s: MMLU has 4 choices, this record %d", what, d->n_choices); goto fail; }
        if ((rc = set_gold(d, json_object_get(rec, "answer"), what, "answer", NULL))) goto fail;
        char *qs = strip(q);
        d->text = qs ? xasprintf("%s\nA. %s\nB. %s\nC. %s\nD. %s\nAnswer:", qs, d->choices[0], d->choices[1],
                                 d->choices[2], d->choices[3]) : NULL;
        free(qs);
        d->subject = subj ? replace_all(subj, "_", " ") : strdup("");
        /* the continuations are the letters; the texts are in the prompt */
        for (int i = 0; i < 4; i++) {
            free(d->choices[i]);
            d->choices[i] = xasprintf("%c", 'A' + i);
        }
    } else if (f == MC_ARC) {
        const char *q = str_field(rec, "question");
        if (!q) return err_set(ERR_DATA, "%s: missing 'question'", what);
        const json_t *ch = json_object_get(rec, "choices"), *labels = NULL, *texts = ch;
        if (json_is_object(ch)) texts = json_object_get(ch, "text"), labels = json_object_get(ch, "label");
        if ((rc = set_choices(d, texts, what, "choices"))) goto fail;
        const json_t *ans = json_object_get(rec, "answerKey") ? json_object_get(rec, "answerKey") : json_object_get(rec, "answer");
        if ((rc = set_gold(d, ans, what, "answerKey", labels))) goto fail;
        d->text = xasprintf("Question: %s\nAnswer:", q);
        d->subject = strdup("");
    } else if (f == MC_LUA) {
        const char *q = str_field(rec, "text"), *subj = str_field(rec, "subject");
        if (!q) return err_set(ERR_DATA, "%s: the task hook's table has no 'text' (the question as asked)", what);
        const json_t *ch = json_object_get(rec, "choices");
        if ((rc = set_choices(d, ch, what, "choices"))) goto fail;
        if ((rc = set_gold(d, json_object_get(rec, "gold"), what, "gold", ch))) goto fail;
        d->text = strdup(q);
        d->subject = strdup(subj ? subj : "");
    } else {
        const char *label = str_field(rec, "activity_label"), *a = str_field(rec, "ctx_a"), *b = str_field(rec, "ctx_b");
        if (!label || !a || !b) return err_set(ERR_DATA, "%s: HellaSwag needs 'activity_label', 'ctx_a' and 'ctx_b'", what);
        if ((rc = set_choices(d, json_object_get(rec, "endings"), what, "endings"))) goto fail;
        for (int i = 0; i < d->n_choices; i++) {
            char *p = hellaswag_preprocess(d->choices[i]);
            free(d->choices[i]);
            d->choices[i] = p;
        }
        if ((rc = set_gold(d, json_object_get(rec, "label"), what, "label", NULL))) goto fail;
        char *cb = capitalize(b), *raw = cb ? xasprintf("%s: %s %s", label, a, cb) : NULL;
        d->text = raw ? hellaswag_preprocess(raw) : NULL;
        free(cb);
        free(raw);
        d->subject = strdup("");
    }
    if (!d->text || !d->subject) rc = err_set(ERR_STAGE, "out of memory");
    if (!rc) return 0;
fail:
    mc_doc_free(d);
    return rc;
}

/* append to a growing string */
typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;
static int sb_add(sbuf *b, const char *s) {
    size_t k = strlen(s);
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + k + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return err_set(ERR_STAGE, "out of memory");
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, k + 1);
    b->n += k;
    return 0;
}

int mc_fewshot_prefix(mc_format f, const mc_doc *doc, const mc_doc *shots, size_t n_shots, long self, int k, char **out) {
    sbuf b = {0};
    int rc = sb_add(&b, "");
    if (!rc && f == MC_MMLU) {
        char *desc = xasprintf("The following are multiple choice questions (with answers) about %s.\n\n", doc->subject);
        rc = desc ? sb_add(&b, desc) : err_set(ERR_STAGE, "out of memory");
        free(desc);
    }
    int used = 0;
    for (size_t i = 0; !rc && i < n_shots && used < k; i++) {
        if ((long)i == self) continue;
        if (f == MC_MMLU && strcmp(shots[i].subject, doc->subject)) continue; /* MMLU: the subject's own dev split */
        if (!(rc = sb_add(&b, shots[i].text)) && !(rc = sb_add(&b, " ")) &&
            !(rc = sb_add(&b, shots[i].choices[shots[i].gold])))
            rc = sb_add(&b, "\n\n");
        used++;
    }
    if (!rc && used < k)
        rc = err_set(ERR_DATA, "%d-shot needs %d examples%s%s%s, the few-shot source has %d", k, k,
                     f == MC_MMLU ? " of subject '" : "", f == MC_MMLU ? doc->subject : "", f == MC_MMLU ? "'" : "", used);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}

int mc_encode_pair(mc_encode_fn encode, void *ud, int32_t bos, const char *context, const char *continuation,
                   int32_t **ids, size_t *n_ids, size_t *cont_start) {
    *ids = NULL;
    size_t lc = strlen(context), keep = lc;
    while (keep && isspace((unsigned char)context[keep - 1])) keep--; /* trailing spaces go to the continuation */
    size_t lk = strlen(continuation);
    char *whole = malloc(lc + lk + 1);
    if (!whole) return err_set(ERR_STAGE, "out of memory");
    memcpy(whole, context, lc);
    memcpy(whole + lc, continuation, lk + 1);
    int32_t *w = NULL, *c = NULL;
    size_t nw = 0, nc = 0;
    int rc = encode(ud, whole, lc + lk, &w, &nw);
    if (!rc) rc = encode(ud, context, keep, &c, &nc);
    free(whole);
    free(c);
    if (rc) {
        free(w);
        return rc;
    }
    if (nc > nw) nc = nw;
    size_t off = bos >= 0 ? 1 : 0;
    int32_t *out = malloc(sizeof(int32_t) * (nw + off + 1));
    if (!out) {
        free(w);
        return err_set(ERR_STAGE, "out of memory");
    }
    if (off) out[0] = bos;
    memcpy(out + off, w, sizeof(int32_t) * nw);
    free(w);
    *ids = out;
    *n_ids = nw + off;
    *cont_start = nc + off;
    return 0;
}

/* characters (UTF-8 code points), the harness's len() */
static size_t n_chars(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

typedef struct request {
    int32_t *ids;
    size_t len, cont_start;
    size_t doc;
    int choice;
} request;

static size_t common_prefix(const request *a, const request *b) {
    size_t n = 0;
    while (n < a->len && n < b->len && a->ids[n] == b->ids[n]) n++;
    return n;
}

/* requests by their tokens (then by length); ties keep the file's order */
static int cmp_req(const void *a, const void *b, void *ud) {
    const request *ra = &((const request *)ud)[*(const size_t *)a], *rb = &((const request *)ud)[*(const size_t *)b];
    size_t n = ra->len < rb->len ? ra->len : rb->len;
    for (size_t i = 0; i < n; i++)
        if (ra->ids[i] != rb->ids[i]) return ra->ids[i] < rb->ids[i] ? -1 : 1;
    if (ra->len != rb->len) return ra->len < rb->len ? -1 : 1;
    size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
    return ia < ib ? -1 : ia > ib;
}

/* every (question, choice) request of the task, encoded as the harness encodes it: the few-shot
 * prefix and the question as the context, " " + the choice as the continuation, cut from the left
 * to max_len (counted in r->truncated) */
static int build_requests(const mc_task *t, mc_encode_fn encode, void *enc_ud, request *req, mc_result *r) {
    const mc_doc *shots = t->shots ? t->shots : t->docs;
    size_t n_shots = t->shots ? t->n_shots : t->n_docs;
    int rc = 0;
    size_t q = 0;
    for (size_t i = 0; !rc && i < t->n_docs; i++) {
        const mc_doc *d = &t->docs[i];
        char *prefix = NULL;
        rc = mc_fewshot_prefix(t->format, d, shots, n_shots, t->shots ? -1 : (long)i, t->num_fewshot, &prefix);
        if (rc) {
            err_wrap("task '%s', doc %zu", t->name, i);
            break;
        }
        char *ctx = xasprintf("%s%s", prefix, d->text);
        free(prefix);
        for (int c = 0; !rc && c < d->n_choices; c++, q++) {
            char *cont = xasprintf(" %s", d->choices[c]);
            rc = ctx && cont ? mc_encode_pair(encode, enc_ud, t->bos, ctx, cont, &req[q].ids, &req[q].len, &req[q].cont_start)
                             : err_set(ERR_STAGE, "out of memory");
            free(cont);
            req[q].doc = i;
            req[q].choice = c;
            if (rc) break;
            if (req[q].cont_start >= req[q].len) {
                rc = err_set(ERR_DATA, "task '%s', doc %zu: choice %d encodes to no token", t->name, i, c);
                break;
            }
            if (t->max_len && req[q].len > t->max_len) { /* cut from the left, as the harness does */
                size_t cut = req[q].len - t->max_len;
                if (cut >= req[q].cont_start) {
                    rc = err_set(ERR_DATA, "task '%s', doc %zu: the answer alone is longer than the model's %zu tokens",
                                 t->name, i, t->max_len);
                    break;
                }
                memmove(req[q].ids, req[q].ids + cut, sizeof(int32_t) * t->max_len);
                req[q].len = t->max_len;
                req[q].cont_start -= cut;
                r->truncated++;
            }
        }
        free(ctx);
    }
    return rc;
}

/* score in batches, in the order of the requests' tokens: the choices of a question, and questions
 * with the same few-shot examples, come one after the other, so a scorer that keeps the last context
 * computed (stages/evaluate.c) computes a shared prefix once */
static int score_requests(const mc_task *t, request *req, size_t n_req, double *ll, mc_seq *seqs, size_t batch,
                          mc_score_fn score, void *score_ud, void (*progress)(void *ud, size_t done, size_t total),
                          void *progress_ud) {
    int rc = 0;
    size_t *ord = malloc(sizeof(size_t) * (n_req ? n_req : 1));
    double *out = malloc(sizeof(double) * (batch ? batch : 1));
    if (!rc && (!ord || !out)) rc = err_set(ERR_STAGE, "out of memory");
    for (size_t k = 0; !rc && k < n_req; k++) ord[k] = k;
    if (!rc) qsort_r(ord, n_req, sizeof *ord, cmp_req, req);
    for (size_t s = 0; !rc && s < n_req;) {
        size_t n = n_req - s < batch ? n_req - s : batch;
        for (size_t k = 0; k < n; k++) {
            const request *rq = &req[ord[s + k]];
            size_t a = s + k > 0 ? common_prefix(rq, &req[ord[s + k - 1]]) : 0;
            size_t b = s + k + 1 < n_req ? common_prefix(rq, &req[ord[s + k + 1]]) : 0;
            seqs[k] = (mc_seq){rq->ids, rq->len, rq->cont_start, a > b ? a : b};
        }
        rc = score(score_ud, seqs, n, out);
        for (size_t k = 0; !rc && k < n; k++) ll[ord[s + k]] = out[k];
        s += n;
        if (progress) progress(progress_ud, (size_t)((double)t->n_docs * (double)s / (double)n_req), t->n_docs);
    }
    free(ord);
    free(out);
    return rc;
}

/* acc (argmax of the log-likelihoods) and acc_norm (divided by the choice's length in
 * characters), per document, per subject and over the task */
static void tally(const mc_task *t, const double *ll, mc_result *r) {
    r->subjects = json_object();
    r->per_doc = json_array();
    double acc = 0, accn = 0;
    for (size_t i = 0, k = 0; i < t->n_docs; i++) {
        const mc_doc *d = &t->docs[i];
        int best = 0, bestn = 0;
        json_t *lls = json_array();
        for (int c = 0; c < d->n_choices; c++) {
            double v = ll[k + (size_t)c], vn = v / (double)n_chars(d->choices[c]);
            if (v > ll[k + (size_t)best]) best = c;
            if (vn > ll[k + (size_t)bestn] / (double)n_chars(d->choices[bestn])) bestn = c;
            json_array_append_new(lls, json_real(v));
        }
        k += (size_t)d->n_choices;
        double a = best == d->gold, an = bestn == d->gold;
        acc += a, accn += an;
        json_array_append_new(r->per_doc, json_pack("{s:I, s:o, s:i, s:i, s:i}", "record", (json_int_t)d->record,
                                                    "loglik", lls, "pred", best, "pred_norm", bestn, "gold", d->gold));
        if (d->subject[0]) {
            json_t *sj = json_object_get(r->subjects, d->subject);
            if (!sj) json_object_set_new(r->subjects, d->subject, sj = json_pack("{s:f, s:f, s:i}", "acc", 0.0, "acc_norm", 0.0, "n", 0));
            json_object_set_new(sj, "acc", json_real(json_real_value(json_object_get(sj, "acc")) + a));
            json_object_set_new(sj, "acc_norm", json_real(json_real_value(json_object_get(sj, "acc_norm")) + an));
            json_object_set_new(sj, "n", json_integer(json_integer_value(json_object_get(sj, "n")) + 1));
        }
    }
    const char *key;
    json_t *sj;
    json_object_foreach(r->subjects, key, sj) {
        double n = (double)json_integer_value(json_object_get(sj, "n"));
        json_object_set_new(sj, "acc", json_real(json_real_value(json_object_get(sj, "acc")) / n));
        json_object_set_new(sj, "acc_norm", json_real(json_real_value(json_object_get(sj, "acc_norm")) / n));
    }
    r->n = t->n_docs;
    r->acc = t->n_docs ? acc / (double)t->n_docs : NAN;
    r->acc_norm = t->n_docs ? accn / (double)t->n_docs : NAN;
}

int mc_run(const mc_task *t, mc_encode_fn encode, void *enc_ud, mc_score_fn score, void *score_ud, size_t batch,
           void (*progress)(void *ud, size_t done, size_t total), void *progress_ud, mc_result *r) {
    memset(r, 0, sizeof *r);
    size_t n_req = 0;
    for (size_t i = 0; i < t->n_docs; i++) n_req += (size_t)t->docs[i].n_choices;
    request *req = calloc(n_req ? n_req : 1, sizeof *req);
    double *ll = calloc(n_req ? n_req : 1, sizeof *ll);
    mc_seq *seqs = calloc(batch ? batch : 1, sizeof *seqs);
    int rc = req && ll && seqs ? 0 : err_set(ERR_STAGE, "out of memory");
    if (!rc) rc = build_requests(t, encode, enc_ud, req, r);
    if (!rc) rc = score_requests(t, req, n_req, ll, seqs, batch, score, score_ud, progress, progress_ud);
    if (!rc) tally(t, ll, r);
    for (size_t i = 0; req && i < n_req; i++) free(req[i].ids);
    free(req);
    free(ll);
    free(seqs);
    if (rc) mc_result_free(r);
    return rc;
}

void mc_result_free(mc_result *r) {
    json_decref(r->subjects);
    json_decref(r->per_doc);
    r->subjects = r->per_doc = NULL;
}

void mc_docs_free(mc_doc **docs, size_t n) {
    for (size_t i = 0; *docs && i < n; i++) mc_doc_free(&(*docs)[i]);
    free(*docs);
    *docs = NULL;
}

int mc_load_docs(mc_format f, char *const *paths, size_t n_paths, mc_record_fn transform, void *transform_ud,
                 int64_t limit, uint64_t seed, mc_doc **docs, size_t *n) {
    *docs = NULL;
    *n = 0;
    size_t cap = 0, base = 0;
    int rc = 0;
    for (size_t p = 0; !rc && p < n_paths; p++) {
        dataset_reader *rd;
        if ((rc = dataset_reader_open(&rd, paths[p], DATASET_TYPE_AUTO))) break;
        json_t *rec;
        size_t last = 0;
        while (!(rc = dataset_reader_next(rd, &rec)) && rec) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 64;
                mc_doc *np = realloc(*docs, cap * sizeof *np);
                if (!np) { json_decref(rec); rc = err_set(ERR_STAGE, "out of memory"); break; }
                *docs = np;
            }
            char what[600];
            last = dataset_reader_index(rd);
            snprintf(what, sizeof what, "%s: record %zu", paths[p], last);
            json_t *use = rec;
            if (transform) {
                rc = transform(transform_ud, rec, what, &use);
                json_decref(rec);
                if (rc) break;
                if (!use) continue; /* left out */
            }
            rc = mc_doc_from_record(f, use, what, &(*docs)[*n]);
            json_decref(use);
            if (rc) break;
            (*docs)[*n].record = base + last;
            (*n)++;
        }
        dataset_reader_close(&rd);
        base += last + 1;
    }
    const char *path = n_paths == 1 ? paths[0] : "the task's files";
    if (!rc && *n == 0) rc = err_set(ERR_DATA, "'%s' holds no records", path);
    if (!rc && limit > 0 && (size_t)limit < *n) {
        /* a seeded subset, in file order: pick by a partial Fisher-Yates over indices */
        size_t *idx = malloc(*n * sizeof *idx);
        if (!idx) rc = err_set(ERR_STAGE, "out of memory");
        for (size_t i = 0; idx && i < *n; i++) idx[i] = i;
        rng_state r;
        rng_seed(&r, seed);
        for (size_t i = 0; idx && i < (size_t)limit; i++) {
            size_t j = i + (size_t)rng_next_below(&r, *n - i), tmp = idx[i];
            idx[i] = idx[j], idx[j] = tmp;
        }
        if (idx) {
            bool *keep = calloc(*n, 1);
            for (size_t i = 0; keep && i < (size_t)limit; i++) keep[idx[i]] = true;
            size_t o = 0;
            for (size_t i = 0; keep && i < *n; i++) {
                if (keep[i]) (*docs)[o++] = (*docs)[i];
                else mc_doc_free(&(*docs)[i]);
            }
            if (keep) *n = o;
            free(keep);
        }
        free(idx);
    }
    if (rc) mc_docs_free(docs, *n), *n = 0;
    return rc;
}
