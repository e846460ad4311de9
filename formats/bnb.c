/* bnb.c: write and read the transformers + bitsandbytes 4-bit checkpoint layout (see bnb.h). */
#include "formats/bnb.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/pubdir.h"
#include "core/json_in.h"
#include "formats/pyjson.h"
#include "kernels/cpu/nf4.h"

void bnb_opts_default(bnb_opts *o) {
    memset(o, 0, sizeof *o);
    o->quant_type = OPS_NF4;
    o->blocksize = 64;
    o->double_quant = true;
    o->compute_dtype = "bfloat16";
    o->nthreads = 2;
}

void bnb_report_free(bnb_report *r) {
    for (size_t i = 0; i < r->n; i++) free(r->t[i].name);
    free(r->t);
    memset(r, 0, sizeof *r);
}

const char *bnb_module_type(const char *name, char *buf, size_t n) {
    /* the component before the last (".weight"/".bias"), or the name itself */
    const char *end = strrchr(name, '.');
    if (!end) end = name + strlen(name);
    const char *start = end;
    while (start > name && start[-1] != '.') start--;
    size_t l = (size_t)(end - start);
    if (l >= n) l = n - 1;
    memcpy(buf, start, l);
    buf[l] = 0;
    return buf;
}

/* a module name matches a skip entry when the entry is the whole name or a run of its
 * dot-separated components ("lm_head", "mlp.down_proj", "model.layers.0.self_attn.q_proj") */
static bool module_skipped(const char *module, const char *const *skip, int n_skip) {
    size_t ml = strlen(module);
    for (int i = 0; i < n_skip; i++) {
        size_t sl = strlen(skip[i]);
        if (!sl || sl > ml) continue;
        for (const char *p = module; (p = strstr(p, skip[i])) != NULL; p++) {
            bool left = p == module || p[-1] == '.';
            bool right = p[sl] == 0 || p[sl] == '.';
            if (left && right) return true;
        }
    }
    return false;
}

bool bnb_should_quantize(const char *name, int ndim, const char *const *skip, int n_skip) {
    size_t l = strlen(name);
    if (ndim != 2 || l < 8 || strcmp(name + l - 7, ".weight")) return false;
    char type[64];
    bnb_module_type(name, type, sizeof type);
    /* transformers keeps the input and output embeddings (get_keys_to_not_convert) */
    static const char *const keep[] = {"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out",
                                       "word_embeddings", "output", NULL};
    for (int i = 0; keep[i]; i++)
        if (!strcmp(type, keep[i])) return false;
    if (strstr(name, "norm")) return false;
    char module[512];
    if (l - 7 >= sizeof module) return false;
    memcpy(module, name, l - 7);
    module[l - 7] = 0;
    return !module_skipped(module, skip, n_skip);
}

static const char *torch_dtype_name(st_dtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : d == ST_F32 ? "float32" : NULL;
}

static int src_dtype(st_dtype d) { return d == ST_BF16 ? NF4_SRC_BF16 : d == ST_F16 ? NF4_SRC_F16 : NF4_SRC_F32; }

/* Give the input's pages back once a tensor is done: a file mapping counts in RSS while its
 * pages are mapped, and a 7B model is 13.5 GB. The range is rounded inwards to whole pages. */
static void drop_pages(const void *p, uint64_t n) {
    static long page;
    if (!page) page = sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t e = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* one Linear being quantized */
typedef struct qlinear {
    const st_tensor *src;
    const bnb_opts *o;
    int64_t n, nb, nn;
    float *absmax;        /* [nb] f32 (not nested) */
    uint8_t *qabs;        /* [nb] (nested) */
    float *nabs;          /* [nn] (nested) */
    float offset;
    char *state;          /* quant_state JSON bytes */
    size_t state_len;
    double err2, ref2;    /* squared reconstruction error and squared norm */
    const float *dmap;    /* the dynamic map */
    double *done, total;  /* progress over both passes, shared */
} qlinear;

static void qlinear_progress(qlinear *q) {
    *q->done += (double)q->src->nbytes;
    if (q->o->progress) q->o->progress(q->o->progress_arg, *q->done, q->total);
}

static float dynamic_map[NF4_DYNAMIC_MAP_SIZE];
static pthread_once_t dynamic_once = PTHREAD_ONCE_INIT;
static void dynamic_init(void) { nf4_dynamic_map(dynamic_map); }

static char *quant_state_json(const qlinear *q, size_t *len) {
    json_t *j = json_object();
    json_object_set_new(j, "quant_type", json_string(q->o->quant_type == OPS_FP4 ? "fp4" : "nf4"));
    json_object_set_new(j, "blocksize", json_integer(q->o->blocksize));
    json_object_set_new(j, "dtype", json_string(torch_dtype_name(q->src->dtype)));
    json_t *shape = json_array();
    for (int d = 0; d < q->src->ndim; d++) json_array_append_new(shape, json_integer(q->src->shape[d]));
    json_object_set_new(j, "shape", shape);
    if (q->o->double_quant) {
        json_object_set_new(j, "nested_blocksize", json_integer(NF4_NESTED_BLOCKSIZE));
        json_object_set_new(j, "nested_dtype", json_string("float32"));
        json_object_set_new(j, "nested_offset", json_real((double)q->offset));
    }
    char *s = pyjson_dumps(j, -1, false);
    json_decref(j);
    if (s) *len = strlen(s);
    return s;
}

static int first_bad_error(const st_tensor *t, int64_t i) {
    int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
    float v = 0;
    st_read_f32(t, i, 1, &v);
    return err_set(ERR_DATA, "tensor '%s' holds %s at flat index %lld (row %lld, column %lld): the checkpoint is "
                   "corrupt; re-download or re-export it", t->name, isnan(v) ? "NaN" : "Inf", (long long)i,
                   (long long)(i / cols), (long long)(i % cols));
}

/* pass 1: absmax (and its double quantization) for one Linear */
static int qlinear_prepare(qlinear *q) {
    float *am = malloc((size_t)q->nb * sizeof(float));
    if (!am) return err_set(ERR_STAGE, "out of memory for the absmax of '%s'", q->src->name);
    int64_t bad = nf4_absmax(am, q->src->data, src_dtype(q->src->dtype), q->n, q->o->blocksize, q->o->nthreads);
    drop_pages(q->src->data, q->src->nbytes);
    if (bad >= 0) {
        free(am);
        return first_bad_error(q->src, bad);
    }
    if (q->o->double_quant) {
        q->nn = nf4_nblocks(q->nb, NF4_NESTED_BLOCKSIZE);
        q->qabs = malloc((size_t)q->nb);
        q->nabs = malloc((size_t)q->nn * sizeof(float));
        if (!q->qabs || !q->nabs) {
            free(am);
            return err_set(ERR_STAGE, "out of memory for the absmax of '%s'", q->src->name);
        }
        q->offset = nf4_absmax_mean(am, q->nb);
        nf4_double_quant(q->qabs, q->nabs, am, q->nb, q->offset, q->dmap);
        free(am);
    } else {
        q->absmax = am;
    }
    q->state = quant_state_json(q, &q->state_len);
    if (!q->state) return err_set(ERR_STAGE, "out of memory");
    return 0;
}

static void qlinear_free(qlinear *q) {
    free(q->absmax);
    free(q->qabs);
    free(q->nabs);
    free(q->state);
}

/* pass 2, inside the writer: the packed codes of one Linear, and its reconstruction error
 * against what the file stores (the de-nested absmax when double-quantized) */
static int fill_codes(void *arg, const char *name, void *dst, uint64_t nbytes) {
    qlinear *q = arg;
    if (q->o->interrupted && *q->o->interrupted) return err_set(ERR_INTERRUPTED, "interrupted");
    float *am = malloc((size_t)q->nb * sizeof(float)), *stored = NULL;
    if (q->o->double_quant) {
        stored = malloc((size_t)q->nb * sizeof(float));
        if (stored) nf4_double_dequant(stored, q->qabs, q->nabs, q->dmap, q->nb, q->offset);
    }
    if (!am || (q->o->double_quant && !stored)) {
        free(am);
        free(stored);
        return err_set(ERR_STAGE, "out of memory quantizing '%s'", name);
    }
    double err[2];
    int64_t bad = nf4_quantize_err(dst, am, q->src->data, src_dtype(q->src->dtype), q->n, q->o->blocksize,
                                   q->o->quant_type, q->o->nthreads, stored, err);
    free(am);
    free(stored);
    if (bad >= 0) /* the file changed under us between the passes */
        return first_bad_error(q->src, bad);
    q->err2 = err[0];
    q->ref2 = err[1];
    drop_pages(q->src->data, q->src->nbytes);
    qlinear_progress(q);
    (void)nbytes;
    return 0;
}

/* a kept tensor, copied through a callback so its input pages can be dropped after */
static int fill_copy(void *arg, const char *name, void *dst, uint64_t nbytes) {
    const st_tensor *t = arg;
    memcpy(dst, t->data, nbytes);
    drop_pages(t->data, t->nbytes);
    (void)name;
    return 0;
}

static bool is_weight_file(const char *n) {
    static const char *const ext[] = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt", NULL};
    size_t l = strlen(n);
    for (int i = 0; ext[i]; i++) {
        size_t e = strlen(ext[i]);
        if (l >= e && !strcmp(n + l - e, ext[i])) return true;
    }
    return !strcmp(n, "model.safetensors.index.json") || !strcmp(n, "pytorch_model.bin.index.json") ||
           !strcmp(n, "config.json");
}

/* tokenizer files, generation_config.json, chat templates, README ...: every other regular
 * file (symlinks followed: a hub snapshot is made of them) */
static int copy_side_files(const char *in_dir, const char *out_dir) {
    DIR *d = opendir(in_dir);
    if (!d) return err_errno(ERR_DATA, "cannot read '%s'", in_dir);
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.' || is_weight_file(e->d_name)) continue;
        char *src = fs_join(in_dir, e->d_name);
        struct stat st;
        if (stat(src, &st) == 0 && S_ISREG(st.st_mode)) {
            char *buf = NULL;
            size_t len = 0;
            rc = fs_read_all(src, &buf, &len);
            if (!rc) {
                char *dst = fs_join(out_dir, e->d_name);
                rc = fs_write_atomic(dst, buf, len);
                free(dst);
            }
            free(buf);
        }
        free(src);
    }
    closedir(d);
    return rc;
}

/* config.json + quantization_config as BitsAndBytesConfig.to_dict writes it, re-serialized the
 * way transformers saves (json.dumps, indent 2, sorted keys, trailing newline) */
static int write_config(json_t *cfg, const bnb_opts *o, const char *out_dir) {
    json_t *q = json_object();
    json_object_set_new(q, "_load_in_4bit", json_true());
    json_object_set_new(q, "_load_in_8bit", json_false());
    json_object_set_new(q, "bnb_4bit_compute_dtype", json_string(o->compute_dtype));
    json_object_set_new(q, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(q, "bnb_4bit_quant_type", json_string(o->quant_type == OPS_FP4 ? "fp4" : "nf4"));
    json_object_set_new(q, "bnb_4bit_use_double_quant", json_boolean(o->double_quant));
    json_object_set_new(q, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(q, "llm_int8_has_fp16_weight", json_false());
    if (o->n_skip > 0) {
        json_t *a = json_array();
        for (int i = 0; i < o->n_skip; i++) json_array_append_new(a, json_string(o->skip[i]));
        json_object_set_new(q, "llm_int8_skip_modules", a);
    } else {
        json_object_set_new(q, "llm_int8_skip_modules", json_null());
    }
    json_object_set_new(q, "llm_int8_threshold", json_real(6.0));
    json_object_set_new(q, "load_in_4bit", json_true());
    json_object_set_new(q, "load_in_8bit", json_false());
    json_object_set_new(q, "quant_method", json_string("bitsandbytes"));
    json_object_set_new(cfg, "quantization_config", q);
    return pyjson_write_config(cfg, out_dir, "config.json");
}

static int check_opts(const bnb_opts *o) {
    if (o->quant_type != OPS_NF4 && o->quant_type != OPS_FP4)
        return err_set(ERR_USAGE, "quant_type must be nf4 or fp4");
    if (!nf4_blocksize_valid(o->blocksize))
        return err_set(ERR_USAGE, "blocksize %d is not one bitsandbytes accepts (32, 64, 128, ..., 4096)", o->blocksize);
    if (!o->compute_dtype || (strcmp(o->compute_dtype, "bfloat16") && strcmp(o->compute_dtype, "float16") &&
                              strcmp(o->compute_dtype, "float32")))
        return err_set(ERR_USAGE, "compute_dtype must be bfloat16, float16 or float32");
    return 0;
}

/* ---- bnb_quantize_dir, in its steps ---- */

/* the input's config.json, which must be an unquantized Hugging Face model's */
static int load_input_config(const char *in_dir, json_t **out) {
    *out = NULL;
    char *cfg_path = fs_join(in_dir, "config.json");
    json_t *cfg = NULL;
    int rc = 0;
    if (!fs_exists(cfg_path))
        rc = err_set(ERR_DATA, "'%s' has no config.json: not a Hugging Face model directory", in_dir);
    else if (!(rc = json_in_load_file(cfg_path, 0, &cfg)) && !json_is_object(cfg))
        rc = err_set(ERR_DATA, "%s: not a JSON object", cfg_path);
    else if (!rc && json_object_get(cfg, "quantization_config"))
        rc = err_set(ERR_DATA, "'%s' is already quantized (config.json has quantization_config)", in_dir);
    free(cfg_path);
    if (rc) json_decref(cfg);
    else *out = cfg;
    return rc;
}

/* every tensor checked before any expensive work; *quant_in: the bytes to quantize */
static int check_tensors(const st_model *m, const char *in_dir, const bnb_opts *o, uint64_t *quant_in) {
    *quant_in = 0;
    for (size_t i = 0; i < st_count(m); i++) {
        const st_tensor *t = st_at(m, i);
        if (strstr(t->name, ".quant_state.") || strstr(t->name, ".weight.absmax"))
            return err_set(ERR_DATA, "'%s' is already quantized (tensor '%s')", in_dir, t->name);
        if (!bnb_should_quantize(t->name, t->ndim, o->skip, o->n_skip)) continue;
        *quant_in += t->nbytes;
        if (!torch_dtype_name(t->dtype))
            return err_set(ERR_DATA, "tensor '%s' is %s: only bf16, f16 and f32 weights can be quantized", t->name,
                           st_dtype_name(t->dtype));
        if (st_numel(t) == 0 || st_numel(t) > INT32_MAX)
            return err_set(ERR_DATA, "tensor '%s' has %lld elements: bitsandbytes quantizes 1 to 2^31-1", t->name,
                           (long long)st_numel(t));
    }
    return 0;
}

/* pass 1: the report's row of every tensor, and absmax and nested pieces of every Linear */
static int prepare_all(const st_model *m, const bnb_opts *o, uint64_t quant_in, double *done_bytes, qlinear *ql,
                       bnb_report *rep) {
    int rc = 0;
    for (size_t i = 0; i < st_count(m) && !rc; i++) {
        const st_tensor *t = st_at(m, i);
        bnb_tensor_stat *s = &rep->t[i];
        s->name = strdup(t->name);
        bnb_module_type(t->name, s->module_type, sizeof s->module_type);
        s->numel = st_numel(t);
        s->bytes_before = t->nbytes;
        if (!bnb_should_quantize(t->name, t->ndim, o->skip, o->n_skip)) continue;
        if (o->interrupted && *o->interrupted) return err_set(ERR_INTERRUPTED, "interrupted");
        qlinear *q = &ql[i];
        q->src = t;
        q->o = o;
        q->n = st_numel(t);
        q->nb = nf4_nblocks(q->n, o->blocksize);
        q->dmap = dynamic_map;
        q->done = done_bytes;
        q->total = 2.0 * (double)quant_in;
        rc = qlinear_prepare(q);
        s->quantized = true;
        if (!rc) qlinear_progress(q);
    }
    return rc;
}

/* shard like the input: a sharded input sets the shard limit to its largest file (0: one file) */
static uint64_t input_shard_limit(const st_model *m, const char *in_dir) {
    uint64_t max_shard = 0;
    char *idx = fs_join(in_dir, "model.safetensors.index.json");
    if (fs_exists(idx))
        for (size_t i = 0; i < st_count(m); i++) {
            int64_t sz = fs_size(st_at(m, i)->file);
            if (sz > 0 && (uint64_t)sz > max_shard) max_shard = (uint64_t)sz;
        }
    free(idx);
    return max_shard;
}

/* the tensors of one quantized Linear (docs/bitsandbytes.md); the codes are filled in pass 2 */
static int add_quantized(st_writer *w, const st_tensor *t, qlinear *q, const bnb_opts *o, bnb_tensor_stat *s) {
    const float *qmap = nf4_quant_map(o->quant_type);
    const char *qs = o->quant_type == OPS_FP4 ? "bitsandbytes__fp4" : "bitsandbytes__nf4";
    char name[600];
    int64_t shp[2] = {nf4_packed_bytes(q->n), 1};
    int rc = st_writer_add(w, t->name, ST_U8, 2, shp, NULL, fill_codes, q);
    s->bytes_after = (uint64_t)shp[0];
    snprintf(name, sizeof name, "%s.absmax", t->name);
    if (!rc && o->double_quant) {
        rc = st_writer_add(w, name, ST_U8, 1, &q->nb, q->qabs, NULL, NULL);
        s->bytes_after += (uint64_t)q->nb;
        snprintf(name, sizeof name, "%s.nested_absmax", t->name);
        if (!rc) rc = st_writer_add(w, name, ST_F32, 1, &q->nn, q->nabs, NULL, NULL);
        int64_t n256 = NF4_DYNAMIC_MAP_SIZE;
        snprintf(name, sizeof name, "%s.nested_quant_map", t->name);
        if (!rc) rc = st_writer_add(w, name, ST_F32, 1, &n256, dynamic_map, NULL, NULL);
        s->bytes_after += (uint64_t)q->nn * 4 + NF4_DYNAMIC_MAP_SIZE * 4;
    } else if (!rc) {
        rc = st_writer_add(w, name, ST_F32, 1, &q->nb, q->absmax, NULL, NULL);
        s->bytes_after += (uint64_t)q->nb * 4;
    }
    int64_t n16 = 16, nst = (int64_t)q->state_len;
    snprintf(name, sizeof name, "%s.quant_map", t->name);
    if (!rc) rc = st_writer_add(w, name, ST_F32, 1, &n16, qmap, NULL, NULL);
    snprintf(name, sizeof name, "%s.quant_state.%s", t->name, qs);
    if (!rc) rc = st_writer_add(w, name, ST_U8, 1, &nst, q->state, NULL, NULL);
    s->bytes_after += 64 + q->state_len;
    return rc;
}

/* the output directory's safetensors files (model.safetensors or its shards) */
static int count_shards(const char *dir) {
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".safetensors") && !strstr(e->d_name, ".index.json")) n++;
    if (d) closedir(d);
    return n;
}

/* the report's totals and errors; frees every qlinear */
static void report_totals(bnb_report *rep, qlinear *ql, size_t nt) {
    double e2 = 0, r2 = 0;
    for (size_t i = 0; i < nt && ql && rep->t; i++) {
        bnb_tensor_stat *s = &rep->t[i];
        rep->params += s->numel;
        rep->bytes_before += s->bytes_before;
        rep->bytes_after += s->bytes_after;
        if (ql[i].src) {
            s->rel_rmse = ql[i].ref2 > 0 ? sqrt(ql[i].err2 / ql[i].ref2) : 0.0;
            rep->params_quantized += s->numel;
            rep->quant_bytes_before += s->bytes_before;
            rep->quant_bytes_after += s->bytes_after;
            e2 += ql[i].err2;
            r2 += ql[i].ref2;
        }
        qlinear_free(&ql[i]);
    }
    rep->rel_rmse = r2 > 0 ? sqrt(e2 / r2) : 0.0;
    rep->bits_per_param = rep->params_quantized ? 8.0 * (double)rep->quant_bytes_after / (double)rep->params_quantized : 0;
}

int bnb_quantize_dir(const char *in_dir, const char *out_dir, const bnb_opts *o, bnb_report *rep) {
    double t0 = clock_now_s();
    memset(rep, 0, sizeof *rep);
    int rc = check_opts(o);
    if (rc) return rc;
    pthread_once(&dynamic_once, dynamic_init);
    json_t *cfg;
    if ((rc = load_input_config(in_dir, &cfg))) return rc;
    st_model *m = NULL;
    if ((rc = st_open(&m, in_dir))) {
        json_decref(cfg);
        return rc;
    }
    size_t nt = st_count(m);
    double done_bytes = 0;
    qlinear *ql = calloc(nt ? nt : 1, sizeof *ql);
    rep->t = calloc(nt ? nt : 1, sizeof *rep->t);
    rep->n = nt;
    st_writer *w = NULL;
    char *tmp = NULL;
    uint64_t quant_in = 0;
    if (!ql || !rep->t) {
        rc = err_set(ERR_STAGE, "out of memory");
        goto done;
    }
    if ((rc = check_tensors(m, in_dir, o, &quant_in))) goto done;
    if ((rc = prepare_all(m, o, quant_in, &done_bytes, ql, rep))) goto done;
    if ((rc = pubdir_begin(&tmp, out_dir))) goto done;
    if ((rc = st_writer_open(&w, tmp, "model", input_shard_limit(m, in_dir)))) goto done;
    for (size_t i = 0; i < nt && !rc; i++) {
        const st_tensor *t = st_at(m, i);
        if (ql[i].src) {
            rc = add_quantized(w, t, &ql[i], o, &rep->t[i]);
        } else { /* kept as it is */
            rc = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, NULL, fill_copy, (void *)t);
            rep->t[i].bytes_after = t->nbytes;
        }
    }
    if (rc) goto done;
    if ((rc = st_writer_finish(&w))) goto done; /* pass 2 runs inside, through fill_codes */
    if ((rc = write_config(cfg, o, tmp))) goto done;
    if ((rc = copy_side_files(in_dir, tmp))) goto done;
    rep->shards = count_shards(tmp);
    rc = pubdir_commit(&tmp, out_dir);

done:
    if (w) st_writer_free(&w);
    if (tmp) pubdir_abort(&tmp);
    report_totals(rep, ql, nt);
    rep->seconds = clock_now_s() - t0;
    free(ql);
    st_close(&m);
    json_decref(cfg);
    return rc;
}

/* ---- reading ---- */

static const st_tensor *find2(const st_model *m, const char *prefix, const char *suffix) {
    char name[1024];
    if (snprintf(name, sizeof name, "%s%s", prefix, suffix) >= (int)sizeof name) return NULL;
    return st_find(m, name);
}

bool bnb_linear_present(const st_model *m, const char *prefix) {
    return find2(m, prefix, ".weight.quant_state.bitsandbytes__nf4") ||
           find2(m, prefix, ".weight.quant_state.bitsandbytes__fp4");
}

void bnb_linear_free(bnb_linear *l) {
    free(l->absmax);
    free(l->nested_absmax);
    memset(l, 0, sizeof *l);
}

static int f32_tensor(const st_tensor *t, const char *what, int64_t want, float *dst) {
    if (!t) return err_set(ERR_DATA, "missing tensor '%s'", what);
    if (t->dtype != ST_F32 || st_numel(t) != want)
        return err_set(ERR_DATA, "tensor '%s' is %s with %lld elements, expected F32 with %lld", t->name,
                       st_dtype_name(t->dtype), (long long)st_numel(t), (long long)want);
    memcpy(dst, t->data, (size_t)want * 4); /* copied: the mapping need not be 4-aligned */
    return 0;
}

int bnb_linear_load(const st_model *m, const char *prefix, bnb_linear *out) {
    memset(out, 0, sizeof *out);
    const st_tensor *st = find2(m, prefix, ".weight.quant_state.bitsandbytes__nf4");
    out->quant_type = OPS_NF4;
    if (!st) {
        st = find2(m, prefix, ".weight.quant_state.bitsandbytes__fp4");
        out->quant_type = OPS_FP4;
    }
    if (!st) return err_set(ERR_DATA, "'%s' is not a bitsandbytes 4-bit Linear (no weight.quant_state tensor)", prefix);
    json_error_t je;
    json_t *j = json_loadb((const char *)st->data, st->nbytes, 0, &je);
    int rc = 0;
    const char *qt = json_string_value(json_object_get(j, "quant_type"));
    json_t *shape = json_object_get(j, "shape");
    json_t *off = json_object_get(j, "nested_offset");
    int64_t bs = json_integer_value(json_object_get(j, "blocksize"));
    if (!j) rc = err_set(ERR_DATA, "tensor '%s': bad JSON: %s", st->name, je.text);
    else if (!qt || (strcmp(qt, "nf4") && strcmp(qt, "fp4")) || (out->quant_type == OPS_FP4) != !strcmp(qt, "fp4"))
        rc = err_set(ERR_DATA, "tensor '%s': quant_type must match its name (nf4 or fp4)", st->name);
    else if (!json_is_array(shape) || json_array_size(shape) != 2)
        rc = err_set(ERR_DATA, "tensor '%s': shape must be [out_features, in_features]", st->name);
    else if (bs < 16 || bs > 4096 || (bs & (bs - 1)))
        rc = err_set(ERR_DATA, "tensor '%s': blocksize %lld is not a power of two in 16..4096", st->name, (long long)bs);
    else if (off && json_integer_value(json_object_get(j, "nested_blocksize")) != NF4_NESTED_BLOCKSIZE)
        rc = err_set(ERR_DATA, "tensor '%s': nested_blocksize must be 256", st->name);
    if (rc) {
        json_decref(j);
        return rc;
    }
    out->w.rows = json_integer_value(json_array_get(shape, 0));
    out->w.cols = json_integer_value(json_array_get(shape, 1));
    out->w.blocksize = (int)bs;
    out->nested = off != NULL;
    float offset = (float)json_number_value(off);
    const char *dt = json_string_value(json_object_get(j, "dtype"));
    snprintf(out->dtype, sizeof out->dtype, "%s", dt ? dt : "float32");
    json_decref(j);

    int64_t n = out->w.rows * out->w.cols, nb = nf4_nblocks(n, (int)bs);
    char pname[600];
    snprintf(pname, sizeof pname, "%s.weight", prefix);
    const st_tensor *wt = st_find(m, pname);
    if (!wt || n <= 0 || (int64_t)wt->nbytes != nf4_packed_bytes(n))
        return err_set(ERR_DATA, "tensor '%s' must hold %lld packed bytes for shape [%lld, %lld]", pname,
                       (long long)nf4_packed_bytes(n), (long long)out->w.rows, (long long)out->w.cols);
    out->w.codes = wt->data; /* any quant_storage dtype: the bytes are what count */
    snprintf(pname, sizeof pname, "%s.weight.quant_map", prefix);
    if ((rc = f32_tensor(find2(m, prefix, ".weight.quant_map"), pname, 16, out->qmap))) return rc;
    out->w.quant_map = out->qmap;
    out->absmax = malloc((size_t)nb * sizeof(float));
    if (!out->absmax) return err_set(ERR_STAGE, "out of memory");
    const st_tensor *am = find2(m, prefix, ".weight.absmax");
    snprintf(pname, sizeof pname, "%s.weight.absmax", prefix);
    if (!out->nested) {
        rc = f32_tensor(am, pname, nb, out->absmax);
    } else {
        int64_t nn = nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE);
        float *nabs = malloc((size_t)nn * 4), map[NF4_DYNAMIC_MAP_SIZE];
        if (!am || am->dtype != ST_U8 || st_numel(am) != nb)
            rc = err_set(ERR_DATA, "tensor '%s' must be U8 with %lld elements", pname, (long long)nb);
        snprintf(pname, sizeof pname, "%s.weight.nested_absmax", prefix);
        if (!rc) rc = f32_tensor(find2(m, prefix, ".weight.nested_absmax"), pname, nn, nabs);
        snprintf(pname, sizeof pname, "%s.weight.nested_quant_map", prefix);
        if (!rc) rc = f32_tensor(find2(m, prefix, ".weight.nested_quant_map"), pname, NF4_DYNAMIC_MAP_SIZE, map);
        if (!rc) {
            nf4_double_dequant(out->absmax, am->data, nabs, map, nb, offset);
            out->absmax_q = am->data;
            out->nested_absmax = nabs;
            out->n_nested = nn;
            memcpy(out->nested_map, map, sizeof map);
            out->nested_offset = offset;
        } else {
            free(nabs);
        }
    }
    if (rc) {
        bnb_linear_free(out);
        return rc;
    }
    out->w.absmax = out->absmax;
    return 0;
}

void bnb_linear_dequant(const bnb_linear *l, float *dst) {
    nf4_dequantize(dst, l->w.codes, l->w.absmax, l->w.quant_map, l->w.blocksize, 0, l->w.rows * l->w.cols, 2);
}

/* ---- reports ---- */

typedef struct type_row {
    char type[32];
    int tensors;
    int64_t params;
    uint64_t before, after;
    double err2, ref2;
    bool quantized;
} type_row;

void bnb_report_lines(const bnb_report *r, void (*line)(void *arg, const char *text), void *arg) {
    type_row *rows = calloc(r->n + 1, sizeof *rows);
    size_t nr = 0;
    if (!rows) return;
    for (size_t i = 0; i < r->n; i++) {
        const bnb_tensor_stat *t = &r->t[i];
        /* quantized and kept tensors of one type are separate rows */
        size_t k = 0;
        while (k < nr && (strcmp(rows[k].type, t->module_type) || rows[k].quantized != t->quantized)) k++;
        if (k == nr) {
            snprintf(rows[nr].type, sizeof rows[nr].type, "%s", t->module_type);
            rows[nr++].quantized = t->quantized;
        }
        rows[k].tensors++;
        rows[k].params += t->numel;
        rows[k].before += t->bytes_before;
        rows[k].after += t->bytes_after;
        rows[k].err2 += t->rel_rmse * t->rel_rmse; /* mean of per-tensor squares, for the row */
    }
    char buf[200];
    snprintf(buf, sizeof buf, "%-32s %7s %14s %11s %11s %10s %9s", "module", "tensors", "params", "before MB",
             "after MB", "bits/param", "rel RMSE");
    line(arg, buf);
    for (size_t k = 0; k < nr; k++) {
        const type_row *w = &rows[k];
        char name[40];
        snprintf(name, sizeof name, "%s%s", w->type, w->quantized ? "" : " (kept)");
        char rmse[16] = "-";
        if (w->quantized) snprintf(rmse, sizeof rmse, "%.4f", sqrt(w->err2 / w->tensors));
        snprintf(buf, sizeof buf, "%-32s %7d %14lld %11.1f %11.1f %10.3f %9s", name, w->tensors,
                 (long long)w->params, w->before / 1e6, w->after / 1e6,
                 w->params ? 8.0 * (double)w->after / (double)w->params : 0.0, rmse);
        line(arg, buf);
    }
    snprintf(buf, sizeof buf, "%-32s %7zu %14lld %11.1f %11.1f %10.3f %9.4f", "total", r->n, (long long)r->params,
             r->bytes_before / 1e6, r->bytes_after / 1e6,
             r->params ? 8.0 * (double)r->bytes_after / (double)r->params : 0.0, r->rel_rmse);
    line(arg, buf);
    snprintf(buf, sizeof buf,
             "quantized %lld of %lld parameters at %.3f bits each (%.1f MB -> %.1f MB); %d file(s); %.1f s, %.0f MB/s",
             (long long)r->params_quantized, (long long)r->params, r->bits_per_param, r->quant_bytes_before / 1e6,
             r->quant_bytes_after / 1e6, r->shards, r->seconds,
             r->seconds > 0 ? r->quant_bytes_before / 1e6 / r->seconds : 0.0);
    line(arg, buf);
    free(rows);
}

json_t *bnb_report_json(const bnb_report *r) {
    json_t *a = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const bnb_tensor_stat *t = &r->t[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(t->name));
        json_object_set_new(o, "module", json_string(t->module_type));
        json_object_set_new(o, "numel", json_integer(t->numel));
        json_object_set_new(o, "quantized", json_boolean(t->quantized));
        json_object_set_new(o, "bytes_before", json_integer((json_int_t)t->bytes_before));
        json_object_set_new(o, "bytes_after", json_integer((json_int_t)t->bytes_after));
        if (t->quantized) json_object_set_new(o, "rel_rmse", json_real(t->rel_rmse));
        json_array_append_new(a, o);
    }
    json_t *tot = json_object();
    json_object_set_new(tot, "params", json_integer(r->params));
    json_object_set_new(tot, "params_quantized", json_integer(r->params_quantized));
    json_object_set_new(tot, "bytes_before", json_integer((json_int_t)r->bytes_before));
    json_object_set_new(tot, "bytes_after", json_integer((json_int_t)r->bytes_after));
    json_object_set_new(tot, "bits_per_param", json_real(r->bits_per_param));
    json_object_set_new(tot, "rel_rmse", json_real(r->rel_rmse));
    json_object_set_new(tot, "seconds", json_real(r->seconds));
    json_object_set_new(tot, "files", json_integer(r->shards));
    json_t *j = json_object();
    json_object_set_new(j, "tensors", a);
    json_object_set_new(j, "totals", tot);
    return j;
}

/* ---- inspect ---- */

static bool is_bnb_aux(const char *name) {
    static const char *const aux[] = {".weight.absmax", ".weight.quant_map", ".weight.nested_absmax",
                                      ".weight.nested_quant_map", ".weight.quant_state.", NULL};
    for (int i = 0; aux[i]; i++)
        if (strstr(name, aux[i])) return true;
    return false;
}

int bnb_inspect(const char *dir, bnb_inspect_row **rows_out, size_t *n_out) {
    st_model *m = NULL;
    int rc = st_open(&m, dir);
    if (rc) return rc;
    size_t nt = st_count(m), nr = 0;
    bnb_inspect_row *rows = calloc(nt + 1, sizeof *rows);
    if (!rows) {
        st_close(&m);
        return err_set(ERR_STAGE, "out of memory");
    }
    /* stored bytes of the bnb pieces go to their Linear's row */
    for (size_t i = 0; i < nt; i++) {
        const st_tensor *t = st_at(m, i);
        char type[32];
        int64_t params = st_numel(t);
        bool quantized = false, quantizable = bnb_should_quantize(t->name, t->ndim, NULL, 0);
        double stored = (double)t->nbytes;
        if (is_bnb_aux(t->name)) continue;
        char prefix[600];
        size_t l = strlen(t->name);
        if (l > 7 && !strcmp(t->name + l - 7, ".weight") && l - 7 < sizeof prefix) {
            snprintf(prefix, sizeof prefix, "%.*s", (int)(l - 7), t->name);
            if (bnb_linear_present(m, prefix)) {
                bnb_linear bl;
                if ((rc = bnb_linear_load(m, prefix, &bl))) break;
                params = bl.w.rows * bl.w.cols;
                bnb_linear_free(&bl);
                quantized = quantizable = true;
                static const char *const sfx[] = {".weight.absmax", ".weight.quant_map", ".weight.nested_absmax",
                                                  ".weight.nested_quant_map", ".weight.quant_state.bitsandbytes__nf4",
                                                  ".weight.quant_state.bitsandbytes__fp4", NULL};
                for (int k = 0; sfx[k]; k++) {
                    const st_tensor *a = find2(m, prefix, sfx[k]);
                    if (a) stored += (double)a->nbytes;
                }
            }
        }
        bnb_module_type(t->name, type, sizeof type);
        size_t k = 0;
        while (k < nr && strcmp(rows[k].module_type, type)) k++;
        if (k == nr) snprintf(rows[nr++].module_type, sizeof rows[0].module_type, "%s", type);
        bnb_inspect_row *r = &rows[k];
        r->tensors++;
        r->params += params;
        r->quantizable |= quantizable;
        r->bytes_bf16 += 2.0 * (double)params;
        r->bytes_stored += stored;
        if (quantizable) {
            double nb = (double)nf4_nblocks(params, 64);
            r->bytes_nf4 += (double)nf4_packed_bytes(params) + 4.0 * nb + 64 + 140;
            r->bytes_nf4_dq += (double)nf4_packed_bytes(params) + nb + 4.0 * (double)nf4_nblocks((int64_t)nb, 256) + 64 +
                               1024 + 200;
        } else {
            r->bytes_nf4 += 2.0 * (double)params; /* kept in the model dtype (bf16 here) */
            r->bytes_nf4_dq += 2.0 * (double)params;
        }
        (void)quantized;
    }
    st_close(&m);
    if (rc) {
        free(rows);
        return rc;
    }
    bnb_inspect_row *tot = &rows[nr];
    snprintf(tot->module_type, sizeof tot->module_type, "total");
    for (size_t k = 0; k < nr; k++) {
        tot->tensors += rows[k].tensors;
        tot->params += rows[k].params;
        tot->bytes_bf16 += rows[k].bytes_bf16;
        tot->bytes_nf4 += rows[k].bytes_nf4;
        tot->bytes_nf4_dq += rows[k].bytes_nf4_dq;
        tot->bytes_stored += rows[k].bytes_stored;
    }
    *rows_out = rows;
    *n_out = nr + 1;
    return 0;
}
