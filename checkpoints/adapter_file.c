/* Adapter export and import (adapter_file.h, DESIGN.md §4): the reference's tensor names in
 * safetensors (through safetensors.h), PyTorch .pth (torch_pth.c) and HDF5 (ckpt_hdf5.c).
 * Every format goes through a tensor_set (adapter_io.h), so the shape checks against the base
 * model live here once: adapter_query.weight [L*K, dim], one gate of H values for every adapted
 * layer, gates of lower layers accepted and ignored, adapter_len/adapter_layer from metadata or
 * from default_len and the row count.
 * Deliberately not: any tensor other than the adapter's (extra tensors in a file are ignored),
 * integer tensors, writing 16-bit exports. */
#include "checkpoints/adapter_file.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/tensor.h"
#include "checkpoints/adapter_io.h"
#include "checkpoints/safetensors.h"

/* ---------------------------------------------------------------- tensor_set */

int ts_add(tensor_set *s, const char *name, int ndim, const int64_t *shape, float *data) {
    if (ndim < 0 || ndim > TS_MAX_DIMS) {
        free(data);
        return -1;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        ts_tensor *t = realloc(s->t, (size_t)cap * sizeof *t);
        if (!t) {
            free(data);
            return -1;
        }
        s->t = t;
        s->cap = cap;
    }
    ts_tensor *t = &s->t[s->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        free(data);
        return -1;
    }
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    s->n++;
    return 0;
}

int ts_add_meta(tensor_set *s, const char *key, const char *val) {
    if (s->n_meta == s->meta_cap) {
        int cap = s->meta_cap ? 2 * s->meta_cap : 8;
        char **k = realloc(s->keys, (size_t)cap * sizeof *k);
        if (!k) return -1;
        s->keys = k;
        char **v = realloc(s->vals, (size_t)cap * sizeof *v);
        if (!v) return -1;
        s->vals = v;
        s->meta_cap = cap;
    }
    s->keys[s->n_meta] = strdup(key);
    s->vals[s->n_meta] = strdup(val);
    if (!s->keys[s->n_meta] || !s->vals[s->n_meta]) {
        free(s->keys[s->n_meta]);
        free(s->vals[s->n_meta]);
        return -1;
    }
    s->n_meta++;
    return 0;
}

const ts_tensor *ts_find(const tensor_set *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name)) return &s->t[i];
    return NULL;
}

const char *ts_meta(const tensor_set *s, const char *key) {
    for (int i = 0; i < s->n_meta; i++)
        if (!strcmp(s->keys[i], key)) return s->vals[i];
    return NULL;
}

size_t ts_numel(const ts_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

void ts_free(tensor_set *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->t[i].name);
        free(s->t[i].data);
    }
    for (int i = 0; i < s->n_meta; i++) {
        free(s->keys[i]);
        free(s->vals[i]);
    }
    free(s->t);
    free(s->keys);
    free(s->vals);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- adapter <-> tensor_set */

int export_format_parse(const char *s, export_format *f) {
    if (!s) return -1;
    if (!strcmp(s, "safetensors")) *f = EXPORT_SAFETENSORS;
    else if (!strcmp(s, "pth")) *f = EXPORT_PTH;
    else if (!strcmp(s, "hdf5") || !strcmp(s, "h5")) *f = EXPORT_HDF5;
    else return -1;
    return 0;
}

static const char *gate_act_name(int g) { return g == GATE_IDENTITY ? "identity" : "tanh"; }

/* Index of the first NaN or Inf of x[0..n), or -1 when every value is finite. */
static long long first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long long)i;
    return -1;
}

static int adapter_check(const char *path, const adapter_data *a, char *err, size_t errlen) {
    if (!a || a->adapter_len <= 0 || a->adapter_layer <= 0 || a->n_layers <= 0 ||
        a->adapter_layer > a->n_layers || a->n_heads <= 0 || a->dim <= 0 || !a->query || !a->gates ||
        (a->gate_act != GATE_TANH && a->gate_act != GATE_IDENTITY)) {
        snprintf(err, errlen, "%s: invalid adapter to export (adapter_len %d, adapter_layer %d, n_layers %d, "
                 "n_heads %d, dim %d): expected positive sizes, adapter_layer <= n_layers and data",
                 path, a ? a->adapter_len : 0, a ? a->adapter_layer : 0, a ? a->n_layers : 0,
                 a ? a->n_heads : 0, a ? a->dim : 0);
        return -1;
    }
    size_t nq = (size_t)a->adapter_layer * (size_t)a->adapter_len * (size_t)a->dim;
    long long bad_q = first_nonfinite(a->query, nq), bad_g = first_nonfinite(a->gates, (size_t)a->adapter_layer * a->n_heads);
    if (bad_q >= 0 || bad_g >= 0) {
        snprintf(err, errlen, "%s: the adapter holds a non-finite value (NaN or Inf) in %s at index %lld: refusing to "
                 "export a diverged adapter", path, bad_q >= 0 ? "adapter_query" : "the gates", bad_q >= 0 ? bad_q : bad_g);
        return -1;
    }
    return 0;
}

/* The export tensors and metadata of a (copies). */
static int adapter_to_set(const char *path, const adapter_data *a, tensor_set *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    size_t LK = (size_t)a->adapter_layer * (size_t)a->adapter_len, H = (size_t)a->n_heads;
    float *q = malloc(LK * (size_t)a->dim * sizeof *q);
    if (!q) goto oom;
    memcpy(q, a->query, LK * (size_t)a->dim * sizeof *q);
    int64_t qshape[2] = {(int64_t)LK, a->dim};
    if (ts_add(s, ADAPTER_QUERY_NAME, 2, qshape, q)) goto oom;
    int lo = a->n_layers - a->adapter_layer;
    for (int i = 0; i < a->n_layers; i++) {
        float *g = calloc(H, sizeof *g);
        if (!g) goto oom;
        if (i >= lo) memcpy(g, a->gates + (size_t)(i - lo) * H, H * sizeof *g);
        char name[64];
        snprintf(name, sizeof name, ADAPTER_GATE_FMT, i);
        int64_t gshape[4] = {1, a->n_heads, 1, 1};
        if (ts_add(s, name, 4, gshape, g)) goto oom;
    }
    char v[32];
    snprintf(v, sizeof v, "%d", a->adapter_len);
    if (ts_add_meta(s, "adapter_len", v)) goto oom;
    snprintf(v, sizeof v, "%d", a->adapter_layer);
    if (ts_add_meta(s, "adapter_layer", v)) goto oom;
    if (ts_add_meta(s, "gate_act", gate_act_name(a->gate_act))) goto oom;
    snprintf(v, sizeof v, "%d", a->n_layers);
    if (ts_add_meta(s, "n_layers", v)) goto oom;
    snprintf(v, sizeof v, "%d", a->n_heads);
    if (ts_add_meta(s, "n_heads", v)) goto oom;
    snprintf(v, sizeof v, "%d", a->dim);
    if (ts_add_meta(s, "dim", v)) goto oom;
    return 0;
oom:
    ts_free(s);
    snprintf(err, errlen, "%s: out of memory", path);
    return -1;
}

/* Strict decimal int metadata: 0 and *out, 1 when absent, -1 with err when malformed. */
static int meta_int(const tensor_set *s, const char *path, const char *key, int *out, char *err, size_t errlen) {
    const char *v = ts_meta(s, key);
    if (!v) return 1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x <= 0 || x > 1 << 30) {
        snprintf(err, errlen, "%s: metadata %s = \"%s\": expected a positive integer", path, key, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* "layers.{i}.attention.gate" -> i, else -1. */
static int gate_index(const char *name) {
    if (strncmp(name, "layers.", 7) != 0) return -1;
    const char *p = name + 7;
    if (*p < '0' || *p > '9') return -1;
    long i = 0;
    while (*p >= '0' && *p <= '9') {
        i = i * 10 + (*p++ - '0');
        if (i > 1 << 20) return -1;
    }
    return strcmp(p, ".attention.gate") == 0 ? (int)i : -1;
}

static void shape_str(const ts_tensor *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* The checks of adapter_import() on a tensor_set read from `path`. Model sizes <= 0 are taken
 * from the file (metadata, else the tensors). */
static int adapter_from_set(const char *path, const tensor_set *s, int default_len, int n_layers, int n_heads,
                            int dim, adapter_data *out, char *err, size_t errlen) {
    char sh[96];
    int K = 0, L = 0, mL = 0, mH = 0, mD = 0;
    const ts_tensor *q = ts_find(s, ADAPTER_QUERY_NAME);
    if (!q) {
        snprintf(err, errlen, "%s: no tensor " ADAPTER_QUERY_NAME ": expected an adapter export "
                 "(adapter_query.weight [L*K, dim], layers.{i}.attention.gate [1, H, 1, 1])", path);
        return -1;
    }
    if (meta_int(s, path, "adapter_len", &K, err, errlen) < 0 || meta_int(s, path, "adapter_layer", &L, err, errlen) < 0 ||
        meta_int(s, path, "n_layers", &mL, err, errlen) < 0 || meta_int(s, path, "n_heads", &mH, err, errlen) < 0 ||
        meta_int(s, path, "dim", &mD, err, errlen) < 0)
        return -1;
    if ((mL && n_layers > 0 && mL != n_layers) || (mH && n_heads > 0 && mH != n_heads) ||
        (mD && dim > 0 && mD != dim)) {
        snprintf(err, errlen, "%s: adapter trained for n_layers %d, n_heads %d, dim %d: the model has n_layers %d, "
                 "n_heads %d, dim %d", path, mL, mH, mD, n_layers, n_heads, dim);
        return -1;
    }
    if (n_layers <= 0) n_layers = mL;
    if (n_heads <= 0) n_heads = mH;
    if (dim <= 0) dim = mD;
    shape_str(q, sh, sizeof sh);
    if (q->ndim != 2 || q->shape[0] <= 0 || q->shape[1] <= 0 || q->shape[0] > INT_MAX || q->shape[1] > INT_MAX ||
        (dim > 0 && q->shape[1] != dim)) {
        snprintf(err, errlen, "%s: tensor " ADAPTER_QUERY_NAME " has shape %s: expected [L*K, %d] for this model",
                 path, sh, dim);
        return -1;
    }
    dim = (int)q->shape[1];
    int64_t rows = q->shape[0];
    /* gates: each of H values, each index a layer of the model */
    int max_layer = -1;
    for (int i = 0; i < s->n; i++) {
        int li = gate_index(s->t[i].name);
        if (li < 0) continue;
        int64_t h = (int64_t)ts_numel(&s->t[i]);
        if (n_heads <= 0 && h > 0 && h <= INT_MAX) n_heads = (int)h;
        if (h != n_heads) {
            shape_str(&s->t[i], sh, sizeof sh);
            snprintf(err, errlen, "%s: tensor %s has shape %s: expected [1, %d, 1, 1] (n_heads %d of the model)",
                     path, s->t[i].name, sh, n_heads, n_heads);
            return -1;
        }
        if (n_layers > 0 && li >= n_layers) {
            snprintf(err, errlen, "%s: tensor %s: the model has only %d layers", path, s->t[i].name, n_layers);
            return -1;
        }
        if (li > max_layer) max_layer = li;
    }
    if (n_layers <= 0) n_layers = max_layer + 1;
    if (K <= 0 && L > 0 && rows % L == 0) K = (int)(rows / L); /* adapter_layer alone is enough */
    if (K <= 0) K = default_len;
    if (K <= 0) {
        snprintf(err, errlen, "%s: no adapter_len metadata and no default adapter_len: pass --adapter-len", path);
        return -1;
    }
    if (L <= 0) {
        if (rows % K != 0) {
            snprintf(err, errlen, "%s: tensor " ADAPTER_QUERY_NAME " has %lld rows, not a multiple of adapter_len %d "
                     "(the file has no adapter_len metadata: pass the --adapter-len it was trained with)",
                     path, (long long)rows, K);
            return -1;
        }
        L = (int)(rows / K);
    } else if (rows != (int64_t)L * K) {
        snprintf(err, errlen, "%s: tensor " ADAPTER_QUERY_NAME " has %lld rows: metadata adapter_layer %d x "
                 "adapter_len %d needs %lld", path, (long long)rows, L, K, (long long)L * K);
        return -1;
    }
    if (n_layers <= 0 || L > n_layers) {
        snprintf(err, errlen, "%s: adapter_layer %d (= %lld rows / adapter_len %d) exceeds the model's %d layers",
                 path, L, (long long)rows, K, n_layers);
        return -1;
    }
    const char *act = ts_meta(s, "gate_act");
    int gact = GATE_TANH;
    if (act && !strcmp(act, "identity")) gact = GATE_IDENTITY;
    else if (act && strcmp(act, "tanh") != 0) {
        snprintf(err, errlen, "%s: metadata gate_act = \"%s\": expected \"tanh\" or \"identity\"", path, act);
        return -1;
    }
    if (n_heads <= 0) {
        snprintf(err, errlen, "%s: no layers.{i}.attention.gate tensor: expected one per adapted layer", path);
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->adapter_len = K;
    out->adapter_layer = L;
    out->n_layers = n_layers;
    out->n_heads = n_heads;
    out->dim = dim;
    out->gate_act = gact;
    out->query = malloc((size_t)rows * (size_t)dim * sizeof(float));
    out->gates = malloc((size_t)L * (size_t)n_heads * sizeof(float));
    if (!out->query || !out->gates) {
        adapter_data_free(out);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    memcpy(out->query, q->data, (size_t)rows * (size_t)dim * sizeof(float));
    long long bad = first_nonfinite(out->query, (size_t)rows * (size_t)dim);
    if (bad >= 0) {
        adapter_data_free(out);
        snprintf(err, errlen, "%s: tensor " ADAPTER_QUERY_NAME " holds a non-finite value (NaN or Inf) at index %lld "
                 "(row %lld): expected finite numbers (a diverged run?)", path, bad, bad / dim);
        return -1;
    }
    for (int j = 0; j < L; j++) {
        char name[64];
        int li = n_layers - L + j;
        snprintf(name, sizeof name, ADAPTER_GATE_FMT, li);
        const ts_tensor *g = ts_find(s, name);
        if (!g) {
            adapter_data_free(out);
            snprintf(err, errlen, "%s: no tensor %s: adapter_layer %d of %d layers adapts layers %d..%d (the file's "
                     "gates go up to layer %d: an adapter for another model?)", path, name, L, n_layers, n_layers - L,
                     n_layers - 1, max_layer);
            return -1;
        }
        memcpy(out->gates + (size_t)j * n_heads, g->data, (size_t)n_heads * sizeof(float));
        long long bg = first_nonfinite(g->data, (size_t)n_heads);
        if (bg >= 0) {
            adapter_data_free(out);
            snprintf(err, errlen, "%s: tensor %s holds a non-finite value (NaN or Inf) at head %lld: expected finite "
                     "numbers (a diverged run?)", path, name, bg);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- safetensors glue */

static int st_export(const char *path, const tensor_set *s, char *err, size_t errlen) {
    st_out *t = calloc((size_t)s->n, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (int i = 0; i < s->n; i++) {
        t[i].name = s->t[i].name;
        t[i].dtype = "F32";
        t[i].ndim = s->t[i].ndim;
        for (int d = 0; d < s->t[i].ndim; d++) t[i].shape[d] = s->t[i].shape[d];
        t[i].data = s->t[i].data;
    }
    int rc = st_write(path, t, s->n, (const char *const *)s->keys, (const char *const *)s->vals, s->n_meta, err,
                      errlen);
    free(t);
    return rc;
}

static int st_import(const char *path, tensor_set *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    st_file f;
    if (st_open(path, &f, err, errlen)) return -1;
    int rc = -1;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.t[i];
        int wanted = !strcmp(t->name, ADAPTER_QUERY_NAME) || gate_index(t->name) >= 0;
        if (!wanted) continue;
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        float *x = malloc((numel ? numel : 1) * sizeof *x);
        if (!x) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto done;
        }
        const unsigned char *src = t->data;
        if (!strcmp(t->dtype, "F32")) memcpy(x, src, numel * 4);
        else if (!strcmp(t->dtype, "F16") || !strcmp(t->dtype, "BF16")) {
            int bf = t->dtype[0] == 'B';
            for (size_t k = 0; k < numel; k++) {
                uint16_t h = (uint16_t)(src[2 * k] | (src[2 * k + 1] << 8));
                x[k] = bf ? ag_bf16_to_f32(h) : ag_f16_to_f32(h);
            }
        } else if (!strcmp(t->dtype, "F64")) {
            for (size_t k = 0; k < numel; k++) {
                double v;
                memcpy(&v, src + 8 * k, 8);
                x[k] = (float)v;
            }
        } else {
            free(x);
            snprintf(err, errlen, "%s: tensor %s has dtype %s: expected F32, F16 or BF16", path, t->name, t->dtype);
            goto done;
        }
        if (ts_add(s, t->name, t->ndim, t->shape, x)) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto done;
        }
    }
    for (int i = 0; i < f.n_meta; i++)
        if (ts_add_meta(s, f.meta_keys[i], f.meta_vals[i])) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto done;
        }
    rc = 0;
done:
    st_close(&f);
    if (rc) ts_free(s);
    return rc;
}

/* ---------------------------------------------------------------- public */

int adapter_export(const char *path, export_format fmt, const adapter_data *a, char *err, size_t errlen) {
    if (adapter_check(path, a, err, errlen)) return -1;
    tensor_set s;
    if (adapter_to_set(path, a, &s, err, errlen)) return -1;
    int rc;
    switch (fmt) {
    case EXPORT_SAFETENSORS: rc = st_export(path, &s, err, errlen); break;
    case EXPORT_PTH: rc = pth_write(path, &s, err, errlen); break;
    case EXPORT_HDF5: rc = h5_adapter_write(path, &s, err, errlen); break;
    default:
        snprintf(err, errlen, "%s: unknown export format %d: expected safetensors, pth or hdf5", path, (int)fmt);
        rc = -1;
    }
    ts_free(&s);
    return rc;
}

int adapter_import(const char *path, int default_len, int n_layers, int n_heads, int dim, adapter_data *out,
                   char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char head[16] = {0};
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got == 0) {
        snprintf(err, errlen, "%s: empty file: expected an adapter (safetensors, .pth or HDF5)", path);
        return -1;
    }
    tensor_set s;
    int rc;
    if (got >= 4 && !memcmp(head, "PK\3\4", 4)) rc = pth_read(path, &s, err, errlen);
    else if (got >= 8 && !memcmp(head, "\x89HDF\r\n\x1a\n", 8)) rc = h5_adapter_read(path, &s, err, errlen);
    else if (pth_is_legacy(head, got)) rc = pth_read(path, &s, err, errlen); /* says why it is refused */
    else {
        char st_err[ADAPTER_ERR_LEN];
        rc = st_import(path, &s, st_err, sizeof st_err);
        if (rc) {
            /* st_err starts with the path already */
            const char *why = st_err;
            size_t pl = strlen(path);
            if (!strncmp(why, path, pl) && why[pl] == ':') why += pl + 1;
            while (*why == ' ') why++;
            snprintf(err, errlen, "%s: not a PyTorch zip (.pth), HDF5 or safetensors file (as safetensors: %s)",
                     path, why);
        }
    }
    if (rc) return -1;
    rc = adapter_from_set(path, &s, default_len, n_layers, n_heads, dim, out, err, errlen);
    ts_free(&s);
    return rc;
}

void adapter_data_free(adapter_data *a) {
    if (!a) return;
    free(a->query);
    free(a->gates);
    a->query = NULL;
    a->gates = NULL;
}
