/* Model files, common part: model_load() dispatch (HF directory vs llama2.c .bin), model_free(),
 * model_to_f32(), model_init_random(), model_param_count(), the fingerprint, and the helpers the
 * format files share (model_priv.h). The formats themselves live in model_hf.c and
 * model_llama2c.c. Meta's consolidated.*.pth is recognised and refused with a message; it is
 * deliberately not read here. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "autograd/rng.h"
#include "checkpoints/model_priv.h"

int mf_n_slots(const llama_config *c) { return 2 + 9 * c->n_layers + (c->tied ? 0 : 1); }

mf_slot_info mf_slot(const llama_config *c, int i) {
    int kv_dim = c->n_kv_heads * (c->dim / c->n_heads);
    mf_slot_info s = {0, 0, 0, 0};
    if (i == 0 || i == 2 + 9 * c->n_layers) {
        s.rows = c->vocab_size;
        s.cols = c->dim;
    } else if (i == 1 + 9 * c->n_layers) {
        s.rows = 1;
        s.cols = c->dim;
        s.is_norm = 1;
    } else {
        switch ((i - 1) % 9) {
        case 0: case 5: s.rows = 1; s.cols = c->dim; s.is_norm = 1; break;
        case 1: s.rows = c->dim; s.cols = c->dim; s.perm_heads = c->n_heads; break;
        case 2: s.rows = kv_dim; s.cols = c->dim; s.perm_heads = c->n_kv_heads; break;
        case 3: s.rows = kv_dim; s.cols = c->dim; break;
        case 4: s.rows = c->dim; s.cols = c->dim; break;
        case 6: case 8: s.rows = c->hidden_dim; s.cols = c->dim; break;
        case 7: s.rows = c->dim; s.cols = c->hidden_dim; break;
        }
    }
    return s;
}

ag_tensor *mf_slot_tensor(model_weights *w, int i) {
    int L = w->cfg.n_layers;
    if (i == 0) return &w->tok_emb;
    if (i == 1 + 9 * L) return &w->norm;
    if (i == 2 + 9 * L) return &w->cls;
    llama_layer_weights *l = &w->layers[(i - 1) / 9];
    ag_tensor *t[9] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo, &l->ffn_norm, &l->w1, &l->w2, &l->w3};
    return t[(i - 1) % 9];
}

int mf_check_config(const llama_config *c, char *why, size_t n) {
    if (c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->hidden_dim <= 0 ||
        c->vocab_size <= 0 || c->max_seq_len < 0) {
        snprintf(why, n, "dim %d, n_layers %d, n_heads %d, n_kv_heads %d, hidden_dim %d, vocab_size %d, max_seq_len %d: "
                 "expected positive values", c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->hidden_dim,
                 c->vocab_size, c->max_seq_len);
        return -1;
    }
    if (c->dim % c->n_heads || c->n_heads % c->n_kv_heads || (c->dim / c->n_heads) % 2) {
        snprintf(why, n, "dim %d, n_heads %d, n_kv_heads %d: expected dim %% n_heads == 0, n_heads %% n_kv_heads == 0 "
                 "and an even head size", c->dim, c->n_heads, c->n_kv_heads);
        return -1;
    }
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f) || isinf(c->norm_eps) || isinf(c->rope_theta)) {
        snprintf(why, n, "norm_eps %g, rope_theta %g: expected positive finite values", (double)c->norm_eps,
                 (double)c->rope_theta);
        return -1;
    }
    if (c->n_layers > (1 << 20) || c->tied < 0 || c->tied > 1) {
        snprintf(why, n, "n_layers %d, tied %d: out of range", c->n_layers, c->tied);
        return -1;
    }
    return 0;
}

int mf_begin(model_weights *w) {
    model_priv *p = calloc(1, sizeof *p);
    w->layers = calloc((size_t)w->cfg.n_layers, sizeof(llama_layer_weights));
    if (!p || !w->layers) {
        free(p);
        free(w->layers);
        w->layers = NULL;
        return -1;
    }
    w->priv = p;
    return 0;
}

void *mf_alloc(model_weights *w, size_t bytes) {
    model_priv *p = w->priv;
    if (p->n_owned == p->cap_owned) {
        int cap = p->cap_owned ? 2 * p->cap_owned : 32;
        void **o = realloc(p->owned, (size_t)cap * sizeof(void *));
        if (!o) return NULL;
        p->owned = o;
        p->cap_owned = cap;
    }
    void *b = NULL;
    if (posix_memalign(&b, 64, bytes ? (bytes + 63) / 64 * 64 : 64) != 0) return NULL;
    p->owned[p->n_owned++] = b;
    return b;
}

int model_is_mapped(const model_weights *w, const ag_tensor *t) {
    const model_priv *p = w->priv;
    const char *d = t->data;
    if (!p || !d) return 0;
    if (p->map && d >= (const char *)p->map && d < (const char *)p->map + p->map_size) return 1;
    for (int i = 0; i < p->n_st; i++)
        if (d >= (const char *)p->st[i].map && d < (const char *)p->st[i].map + p->st[i].size) return 1;
    return 0;
}

/* Releases mappings and owned buffers (not the layer array). */
static void priv_free(model_priv *p) {
    if (!p) return;
    for (int i = 0; i < p->n_st; i++) st_close(&p->st[i]);
    free(p->st);
    if (p->map) munmap(p->map, p->map_size);
    for (int i = 0; i < p->n_owned; i++) free(p->owned[i]);
    free(p->owned);
    free(p);
}

void model_free(model_weights *w) {
    if (!w) return;
    priv_free(w->priv);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

void mf_convert(void *dst, ag_dtype dd, const void *src, ag_dtype sd, size_t n) {
    if (dd == sd) {
        memcpy(dst, src, n * ag_dtype_size(sd));
        return;
    }
    enum { CH = 1024 };
    float f[CH];
    uint16_t h[CH];
    const char *s = src;
    char *d = dst;
    for (size_t at = 0; at < n; at += CH) {
        size_t k = n - at < CH ? n - at : CH;
        if (sd == AG_F32) {
            memcpy(f, s + at * 4, k * 4);
        } else {
            memcpy(h, s + at * 2, k * 2);
            ag_to_f32(f, h, sd, k);
        }
        if (dd == AG_F32) {
            memcpy(d + at * 4, f, k * 4);
        } else {
            for (size_t i = 0; i < k; i++) h[i] = dd == AG_BF16 ? ag_f32_to_bf16(f[i]) : ag_f32_to_f16(f[i]);
            memcpy(d + at * 2, h, k * 2);
        }
    }
}

/* FNV-1a 64. */
static void fnv(uint64_t *hsh, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        *hsh ^= b[i];
        *hsh *= 0x100000001b3ull;
    }
}

static void fnv_i32(uint64_t *hsh, int32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    fnv(hsh, b, 4);
}

static void fnv_f32(uint64_t *hsh, float f) {
    int32_t v;
    memcpy(&v, &f, 4);
    fnv_i32(hsh, v);
}

/* FNV-1a 64 over the config fields, then for every slot its shape and the values (as f32 bit
 * patterns) of its first and last 64 elements: 256 bytes each way for f32 weights, cheap for any
 * model size. Values rather than raw bytes so that the same weights give the same fingerprint in
 * an HF F32 directory and a llama2.c file; the same file always gives the same value. */
uint64_t mf_fingerprint(model_weights *w) {
    uint64_t h = 0xcbf29ce484222325ull;
    const llama_config *c = &w->cfg;
    fnv(&h, "llama-fp1", 9);
    int32_t ints[] = {c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->hidden_dim, c->vocab_size, c->max_seq_len, c->tied};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) fnv_i32(&h, ints[i]);
    fnv_f32(&h, c->norm_eps);
    fnv_f32(&h, c->rope_theta);
    int n = mf_n_slots(c);
    for (int i = 0; i < n; i++) {
        const ag_tensor *t = mf_slot_tensor(w, i);
        size_t ne = ag_numel(t), k = ne < 64 ? ne : 64, es = ag_dtype_size(t->dtype);
        float v[128];
        mf_convert(v, AG_F32, t->data, t->dtype, k);
        mf_convert(v + k, AG_F32, (const char *)t->data + (ne - k) * es, t->dtype, k);
        fnv_i32(&h, t->rows);
        fnv_i32(&h, t->cols);
        for (size_t j = 0; j < 2 * k; j++) fnv_f32(&h, v[j]);
    }
    return h;
}

/* Number of NaN/Inf values among n values of dtype dt (bit tests on the exponent field, so the
 * loop vectorises and reads memory at full speed). */
static size_t count_nonfinite(const void *data, ag_dtype dt, size_t n) {
    size_t bad = 0;
    if (dt == AG_F32) {
        const uint32_t *u = data;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7f800000u) == 0x7f800000u;
    } else {
        const uint16_t *h = data;
        uint16_t m = dt == AG_BF16 ? 0x7f80u : 0x7c00u;
        for (size_t i = 0; i < n; i++) bad += (uint16_t)(h[i] & m) == m;
    }
    return bad;
}

static void slot_desc(const llama_config *c, int i, char *buf, size_t n) {
    static const char *kind[9] = {"attention norm", "wq", "wk", "wv", "wo", "ffn norm", "w1 (gate)", "w2 (down)", "w3 (up)"};
    int L = c->n_layers;
    if (i == 0) snprintf(buf, n, "the token embedding");
    else if (i == 1 + 9 * L) snprintf(buf, n, "the final norm");
    else if (i == 2 + 9 * L) snprintf(buf, n, "the output projection");
    else snprintf(buf, n, "layer %d %s", (i - 1) / 9, kind[(i - 1) % 9]);
}

/* Refuses weights holding NaN or Inf: every value of every tensor is scanned (in parallel,
 * chunks of 1M values), which costs about one read of the weights at memory speed; a model
 * read from disk for the first time pays its page-in here instead of in the first step. */
static int check_finite(model_weights *w, const char *path, char *err, size_t errlen) {
    int n = mf_n_slots(&w->cfg);
    for (int i = 0; i < n; i++) {
        const ag_tensor *t = mf_slot_tensor(w, i);
        size_t ne = ag_numel(t), es = ag_dtype_size(t->dtype), chunk = (size_t)1 << 20;
        long long nch = (long long)((ne + chunk - 1) / chunk);
        size_t bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : bad) if (nch > 1)
        for (long long k = 0; k < nch; k++) {
            size_t a = (size_t)k * chunk, m = ne - a < chunk ? ne - a : chunk;
            bad += count_nonfinite((const char *)t->data + a * es, t->dtype, m);
        }
        if (bad) {
            size_t at = 0;
            while (at < ne && !count_nonfinite((const char *)t->data + at * es, t->dtype, 1)) at++;
            char what[64];
            slot_desc(&w->cfg, i, what, sizeof what);
            snprintf(err, errlen, "%s: %s holds %zu non-finite values (NaN or Inf), the first at row %zu, column %zu: "
                     "expected finite weights (a diverged or damaged model)", path, what, bad,
                     at / (size_t)t->cols, at % (size_t)t->cols);
            return -1;
        }
    }
    return 0;
}

size_t model_param_count(const llama_config *cfg) {
    size_t total = 0;
    int n = mf_n_slots(cfg);
    for (int i = 0; i < n; i++) {
        mf_slot_info s = mf_slot(cfg, i);
        total += (size_t)s.rows * (size_t)s.cols;
    }
    return total;
}

int model_init_random(model_weights *w, const llama_config *cfg, uint64_t seed, float std) {
    char why[256];
    memset(w, 0, sizeof *w);
    if (mf_check_config(cfg, why, sizeof why)) return -1;
    w->cfg = *cfg;
    if (mf_begin(w)) return -1;
    size_t total = model_param_count(cfg);
    float *block = mf_alloc(w, total * sizeof(float));
    if (!block) {
        model_free(w);
        return -1;
    }
    ag_rng rng;
    ag_rng_seed(&rng, seed);
    int n = mf_n_slots(cfg);
    float *at = block;
    for (int i = 0; i < n; i++) {
        mf_slot_info s = mf_slot(cfg, i);
        size_t ne = (size_t)s.rows * (size_t)s.cols;
        for (size_t j = 0; j < ne; j++)
            at[j] = s.is_norm ? (float)(1.0 + 0.1 * ag_rng_normal(&rng)) : (float)(std * ag_rng_normal(&rng));
        *mf_slot_tensor(w, i) = ag_tensor_of(at, s.rows, s.cols, AG_F32);
        at += ne;
    }
    if (cfg->tied) w->cls = w->tok_emb;
    w->dtype = AG_F32;
    snprintf(w->format, sizeof w->format, "random");
    w->fingerprint = mf_fingerprint(w);
    return 0;
}

int model_to_f32(model_weights *w, char *err, size_t errlen) {
    if (!w->priv || !w->layers) {
        snprintf(err, errlen, "model_to_f32: no model loaded");
        return -1;
    }
    model_priv *old = w->priv, *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "model_to_f32: out of memory");
        return -1;
    }
    w->priv = p;
    size_t total = model_param_count(&w->cfg);
    float *block = mf_alloc(w, total * sizeof(float));
    if (!block) {
        priv_free(p);
        w->priv = old;
        snprintf(err, errlen, "model_to_f32: out of memory for %zu parameters (%zu MB)", total, total * 4 >> 20);
        return -1;
    }
    int n = mf_n_slots(&w->cfg);
    float *at = block;
    for (int i = 0; i < n; i++) {
        ag_tensor *t = mf_slot_tensor(w, i);
        size_t ne = ag_numel(t);
        mf_convert(at, AG_F32, t->data, t->dtype, ne);
        *t = ag_tensor_of(at, t->rows, t->cols, AG_F32);
        at += ne;
    }
    if (w->cfg.tied) w->cls = w->tok_emb;
    w->dtype = AG_F32;
    priv_free(old); /* the fingerprint stays: it names the source weights */
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int model_load_any(const char *path, model_weights *w, char *err, size_t errlen);

int model_load(const char *path, model_weights *w, char *err, size_t errlen) {
    if (model_load_any(path, w, err, errlen)) return -1;
    if (check_finite(w, path, err, errlen)) {
        model_free(w);
        return -1;
    }
    return 0;
}

/* A file whose first 8 bytes are a plausible safetensors header length followed by '{'. */
static int looks_like_safetensors(const char *path, uint64_t size) {
    unsigned char h[9];
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(h, 1, sizeof h, f) : 0;
    if (f) fclose(f);
    if (got < 9) return 0;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | h[i];
    return hl >= 2 && hl <= size - 8 && h[8] == '{';
}

static int model_load_any(const char *path, model_weights *w, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(sb.st_mode)) return mf_load_hf(path, w, err, errlen);
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a file or directory: expected a Hugging Face Llama directory or a llama2.c .bin", path);
        return -1;
    }
    const char *b = base_name(path);
    if (!strcmp(b, "config.json") || ends_with(b, ".safetensors") || !strcmp(b, "model.safetensors.index.json")) {
        char dir[4096];
        size_t len = (size_t)(b - path);
        if (len >= sizeof dir) {
            snprintf(err, errlen, "%.200s...: path too long", path);
            return -1;
        }
        if (len == 0) snprintf(dir, sizeof dir, ".");
        else snprintf(dir, sizeof dir, "%.*s", (int)(len - 1 ? len - 1 : 1), path);
        return mf_load_hf(dir, w, err, errlen);
    }
    if (ends_with(b, ".pth") || !strcmp(b, "params.json")) {
        snprintf(err, errlen, "%s: Meta consolidated .pth checkpoints are not supported: convert to a Hugging Face "
                 "directory (config.json + model.safetensors) or a llama2.c .bin", path);
        return -1;
    }
    if (ends_with(b, ".bin")) {
        if (looks_like_safetensors(path, (uint64_t)sb.st_size)) {
            snprintf(err, errlen, "%s: this .bin file is a safetensors file, not a llama2.c checkpoint: a Hugging Face "
                     "model is a directory with config.json + model.safetensors (rename it and give the directory)", path);
            return -1;
        }
        return mf_load_llama2c(path, w, err, errlen);
    }
    unsigned char hdr[28];
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(hdr, 1, sizeof hdr, f) : 0;
    if (f) fclose(f);
    if (got == sizeof hdr && mf_llama2c_plausible(hdr, (uint64_t)sb.st_size)) return mf_load_llama2c(path, w, err, errlen);
    snprintf(err, errlen, "%s: not a model file: expected a Hugging Face Llama directory (config.json + "
             "model.safetensors) or a llama2.c .bin checkpoint", path);
    return -1;
}
