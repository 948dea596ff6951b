/* Hugging Face Llama directories: config.json + model.safetensors, or shards
 * model-XXXXX-of-YYYYY.safetensors listed by model.safetensors.index.json ("weight_map").
 *
 * Reader: config.json must describe a Llama (architectures contains "LlamaForCausalLM" or
 * model_type "llama"); every expected tensor must exist once, be F32/F16/BF16 and have exactly the
 * shape the config implies; an unknown tensor named "model.*" is an error (rotary_emb.inv_freq
 * buffers are ignored, as are tensors outside "model." other than lm_head.weight). HF stores
 * wq/wk rows permuted for rotate-half RoPE: Meta row (h, 2i+j) = HF row (h, j*hd/2 + i); we undo
 * it on load into owned buffers of the same dtype. Big matrices keep the file's dtype and point
 * into the mapping when aligned; with mixed dtypes among them everything is promoted to f32.
 * Norm weights become owned f32 copies.
 * Writer: config.json (with "architectures": ["LlamaForCausalLM"]), tensors converted to the
 * requested dtype and wq/wk permuted forward, one file or shards + index; every file atomically.
 * Not handled: rope_scaling (refused), attention/mlp biases (their tensors are refused), PyTorch
 * pickles (pytorch_model.bin). */
#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/atomic.h"
#include "checkpoints/model_priv.h"

#define HF_MAX_JSON (64u << 20)

static const char *const layer_suffix[9] = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",   "mlp.down_proj.weight",    "mlp.up_proj.weight",
};

/* HF tensor name of slot i (slot order of model_priv.h: w1 = gate, w2 = down, w3 = up). */
static void hf_name(int i, int L, char *buf, size_t n) {
    if (i == 0) snprintf(buf, n, "model.embed_tokens.weight");
    else if (i == 1 + 9 * L) snprintf(buf, n, "model.norm.weight");
    else if (i == 2 + 9 * L) snprintf(buf, n, "lm_head.weight");
    else snprintf(buf, n, "model.layers.%d.%s", (i - 1) / 9, layer_suffix[(i - 1) % 9]);
}

/* Slot of an HF tensor name, or -1 when it is not one of a model with L layers. */
static int hf_slot_of(const char *name, int L) {
    if (!strcmp(name, "model.embed_tokens.weight")) return 0;
    if (!strcmp(name, "model.norm.weight")) return 1 + 9 * L;
    if (!strcmp(name, "lm_head.weight")) return 2 + 9 * L;
    if (strncmp(name, "model.layers.", 13)) return -1;
    const char *p = name + 13;
    if (!isdigit((unsigned char)*p) || (p[0] == '0' && isdigit((unsigned char)p[1]))) return -1;
    long l = 0;
    while (isdigit((unsigned char)*p)) {
        l = l * 10 + (*p++ - '0');
        if (l > INT_MAX / 16) return -1;
    }
    if (*p++ != '.' || l >= L) return -1;
    for (int k = 0; k < 9; k++)
        if (!strcmp(p, layer_suffix[k])) return 1 + 9 * (int)l + k;
    return -1;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Reads and parses a JSON file; NULL with err on failure. */
static cJSON *read_json(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(HF_MAX_JSON + 1);
    size_t n = buf ? fread(buf, 1, HF_MAX_JSON + 1, f) : 0;
    int rerr = ferror(f);
    fclose(f);
    if (!buf || rerr || n > HF_MAX_JSON) {
        snprintf(err, errlen, "%s: %s", path, !buf ? "out of memory" : rerr ? "read error" : "larger than 64 MB: expected a small JSON file");
        free(buf);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
    if (!j) {
        size_t at = end && end >= buf && end <= buf + n ? (size_t)(end - buf) : 0;
        snprintf(err, errlen, "%s: not valid JSON (near byte %zu)", path, at);
    } else {
        for (const char *p = end; p < buf + n; p++)
            if (!isspace((unsigned char)*p)) {
                snprintf(err, errlen, "%s: not valid JSON: unexpected text at byte %zu after the top-level value", path,
                         (size_t)(p - buf));
                cJSON_Delete(j);
                j = NULL;
                break;
            }
    }
    free(buf);
    return j;
}

/* Optional positive integer key (required when req). */
static int cfg_int(const cJSON *root, const char *key, int req, int def, int *out, const char *file, char *err,
                   size_t errlen) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!x || cJSON_IsNull(x)) {
        if (req) {
            snprintf(err, errlen, "%s: missing key '%s': expected a positive integer", file, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    double d = cJSON_IsNumber(x) ? x->valuedouble : -1.0;
    if (!(d >= 1.0 && d <= (double)INT_MAX && floor(d) == d)) {
        snprintf(err, errlen, "%s: key '%s' is not a positive integer", file, key);
        return -1;
    }
    *out = (int)d;
    return 0;
}

static int cfg_num(const cJSON *root, const char *key, double def, double *out, const char *file, char *err,
                   size_t errlen) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!x || cJSON_IsNull(x)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(x) || !(x->valuedouble > 0.0) || isinf(x->valuedouble)) {
        snprintf(err, errlen, "%s: key '%s' is not a positive number", file, key);
        return -1;
    }
    *out = x->valuedouble;
    return 0;
}

/* config.json -> llama_config. */
static int parse_config(const char *file, llama_config *c, char *err, size_t errlen) {
    cJSON *root = read_json(file, err, errlen);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object: expected a Hugging Face config", file);
        goto done;
    }
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int llama = cJSON_IsString(mt) && !strcmp(mt->valuestring, "llama");
    const char *arch0 = NULL;
    if (cJSON_IsArray(arch))
        for (const cJSON *a = arch->child; a; a = a->next)
            if (cJSON_IsString(a)) {
                if (!arch0) arch0 = a->valuestring;
                if (!strcmp(a->valuestring, "LlamaForCausalLM")) llama = 1;
            }
    if (!llama) {
        if (cJSON_IsString(mt))
            snprintf(err, errlen, "%s: model_type '%.100s' is not a Llama model", file, mt->valuestring);
        else if (arch0)
            snprintf(err, errlen, "%s: architectures '%.100s' is not a Llama model: expected LlamaForCausalLM", file, arch0);
        else
            snprintf(err, errlen, "%s: no model_type or architectures: expected a Llama model (model_type \"llama\")", file);
        goto done;
    }
    memset(c, 0, sizeof *c);
    if (cfg_int(root, "hidden_size", 1, 0, &c->dim, file, err, errlen) ||
        cfg_int(root, "num_hidden_layers", 1, 0, &c->n_layers, file, err, errlen) ||
        cfg_int(root, "num_attention_heads", 1, 0, &c->n_heads, file, err, errlen) ||
        cfg_int(root, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads, file, err, errlen) ||
        cfg_int(root, "intermediate_size", 1, 0, &c->hidden_dim, file, err, errlen) ||
        cfg_int(root, "vocab_size", 1, 0, &c->vocab_size, file, err, errlen) ||
        cfg_int(root, "max_position_embeddings", 0, 0, &c->max_seq_len, file, err, errlen))
        goto done;
    double eps, theta;
    if (cfg_num(root, "rms_norm_eps", 1e-6, &eps, file, err, errlen) ||
        cfg_num(root, "rope_theta", 10000.0, &theta, file, err, errlen))
        goto done;
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (tie && !cJSON_IsNull(tie) && !cJSON_IsBool(tie)) {
        snprintf(err, errlen, "%s: key 'tie_word_embeddings' is not true/false", file);
        goto done;
    }
    c->tied = cJSON_IsTrue(tie);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        snprintf(err, errlen, "%s: rope_scaling is set: not supported (expected plain RoPE, rope_scaling null)", file);
        goto done;
    }
    char why[300];
    if (mf_check_config(c, why, sizeof why)) {
        snprintf(err, errlen, "%s: %s", file, why);
        goto done;
    }
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (cJSON_IsNumber(hd) && hd->valuedouble != (double)(c->dim / c->n_heads)) {
        snprintf(err, errlen, "%s: head_dim %g differs from hidden_size / num_attention_heads = %d: not supported", file,
                 hd->valuedouble, c->dim / c->n_heads);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* A shard name from an index: a plain file name inside the directory. */
static int safe_file_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

/* Opens the weight files: the shards named by the index, or model.safetensors. `where` receives
 * the file to name in "missing tensor" messages. */
static int open_weights(const char *dir, model_weights *w, char *where, size_t wn, char *err, size_t errlen) {
    model_priv *p = w->priv;
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (!file_exists(path)) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (!file_exists(path)) {
            char pt[4400];
            snprintf(pt, sizeof pt, "%s/pytorch_model.bin", dir);
            if (file_exists(pt))
                snprintf(err, errlen, "%s: PyTorch pickle weights are not supported: expected model.safetensors", pt);
            else
                snprintf(err, errlen, "%s: no model.safetensors or model.safetensors.index.json", dir);
            return -1;
        }
        p->st = calloc(1, sizeof(st_file));
        if (!p->st) {
            snprintf(err, errlen, "%s: out of memory", path);
            return -1;
        }
        snprintf(where, wn, "%s", path);
        if (st_open(path, &p->st[0], err, errlen)) return -1;
        p->n_st = 1;
        return 0;
    }
    snprintf(where, wn, "%s", path);
    cJSON *idx = read_json(path, err, errlen);
    if (!idx) return -1;
    int rc = -1;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child) {
        snprintf(err, errlen, "%s: no weight_map object: expected {\"weight_map\": {tensor: file}}", path);
        goto done;
    }
    int n = cJSON_GetArraySize(wm);
    p->st = calloc((size_t)n, sizeof(st_file));
    if (!p->st) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !safe_file_name(e->valuestring)) {
            snprintf(err, errlen, "%s: weight_map gives tensor %.100s the file '%.100s': expected a file name inside the directory",
                     path, e->string, cJSON_IsString(e) ? e->valuestring : "(not a string)");
            goto done;
        }
        int seen = 0;
        for (int s = 0; s < p->n_st && !seen; s++) {
            const char *b = strrchr(p->st[s].path, '/');
            seen = !strcmp(b ? b + 1 : p->st[s].path, e->valuestring);
        }
        if (seen) continue;
        char sp[4400];
        snprintf(sp, sizeof sp, "%s/%s", dir, e->valuestring);
        if (st_open(sp, &p->st[p->n_st], err, errlen)) goto done;
        p->n_st++;
    }
    /* Every tensor the index names must be in the file it names. */
    for (const cJSON *e = wm->child; e; e = e->next) {
        const st_file *sf = NULL;
        for (int s = 0; s < p->n_st && !sf; s++) {
            const char *b = strrchr(p->st[s].path, '/');
            if (!strcmp(b ? b + 1 : p->st[s].path, e->valuestring)) sf = &p->st[s];
        }
        if (!sf || !st_find(sf, e->string)) {
            snprintf(err, errlen, "%s: weight_map puts tensor %.100s in %.100s, which does not contain it", path, e->string,
                     e->valuestring);
            goto done;
        }
    }
    rc = 0;
done:
    cJSON_Delete(idx);
    return rc;
}

static int dtype_of(const char *s, ag_dtype *d) {
    if (!strcmp(s, "F32")) *d = AG_F32;
    else if (!strcmp(s, "F16")) *d = AG_F16;
    else if (!strcmp(s, "BF16")) *d = AG_BF16;
    else return -1;
    return 0;
}

static void shape_str(const st_tensor *t, char *buf, size_t n) {
    size_t at = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && at < n; d++)
        at += (size_t)snprintf(buf + at, n - at, "%s%" PRId64, d ? ", " : "", t->shape[d]);
    if (at < n) snprintf(buf + at, n - at, "]");
}

typedef struct hf_src {
    const st_tensor *t;
    const char *file;
    ag_dtype dt;
} hf_src;

/* Finds, checks and materialises every tensor. */
static int load_tensors(model_weights *w, const char *where, char *err, size_t errlen) {
    model_priv *p = w->priv;
    const llama_config *c = &w->cfg;
    int L = c->n_layers, n = mf_n_slots(c);
    hf_src *src = calloc((size_t)n + 1, sizeof(hf_src));
    if (!src) {
        snprintf(err, errlen, "%s: out of memory", where);
        return -1;
    }
    int rc = -1;
    for (int s = 0; s < p->n_st; s++)
        for (int k = 0; k < p->st[s].n; k++) {
            const st_tensor *t = &p->st[s].t[k];
            int slot = hf_slot_of(t->name, L);
            if (slot == 2 + 9 * L && c->tied) continue; /* a tied model's redundant copy */
            if (slot < 0) {
                if (!strncmp(t->name, "model.", 6) && !ends_with(t->name, "rotary_emb.inv_freq")) {
                    snprintf(err, errlen, "%s: unexpected tensor %.200s: not part of a Llama model with %d layers", p->st[s].path,
                             t->name, L);
                    goto done;
                }
                continue;
            }
            if (src[slot].t) {
                snprintf(err, errlen, "%s: tensor %s appears again (first in %s)", p->st[s].path, t->name, src[slot].file);
                goto done;
            }
            src[slot].t = t;
            src[slot].file = p->st[s].path;
        }
    int big_dt = -1, mixed = 0;
    for (int i = 0; i < n; i++) {
        char name[128], got[200];
        hf_name(i, L, name, sizeof name);
        if (!src[i].t) {
            snprintf(err, errlen, "%s: missing tensor %s", where, name);
            goto done;
        }
        const st_tensor *t = src[i].t;
        mf_slot_info s = mf_slot(c, i);
        if (dtype_of(t->dtype, &src[i].dt)) {
            snprintf(err, errlen, "%s: tensor %s has dtype %s: expected F32, F16 or BF16", src[i].file, name, t->dtype);
            goto done;
        }
        int ok = s.is_norm ? (t->ndim == 1 && t->shape[0] == s.cols)
                           : (t->ndim == 2 && t->shape[0] == s.rows && t->shape[1] == s.cols);
        if (!ok) {
            shape_str(t, got, sizeof got);
            if (s.is_norm)
                snprintf(err, errlen, "%s: tensor %s has shape %s: expected [%d] from config.json", src[i].file, name, got, s.cols);
            else
                snprintf(err, errlen, "%s: tensor %s has shape %s: expected [%d, %d] from config.json", src[i].file, name, got,
                         s.rows, s.cols);
            goto done;
        }
        if (!s.is_norm) {
            if (big_dt < 0) big_dt = (int)src[i].dt;
            else if (big_dt != (int)src[i].dt) mixed = 1;
        }
    }
    ag_dtype bd = mixed ? AG_F32 : (ag_dtype)big_dt;
    int hd = c->dim / c->n_heads;
    for (int i = 0; i < n; i++) {
        mf_slot_info s = mf_slot(c, i);
        const st_tensor *t = src[i].t;
        ag_dtype sd = src[i].dt, td = s.is_norm ? AG_F32 : bd;
        size_t ss = ag_dtype_size(sd), ts = ag_dtype_size(td);
        ag_tensor *dst = mf_slot_tensor(w, i);
        if (sd == td && !s.perm_heads && !s.is_norm && (uintptr_t)t->data % ss == 0) {
            *dst = ag_tensor_of((void *)(uintptr_t)t->data, s.rows, s.cols, td);
            continue;
        }
        char *buf = mf_alloc(w, (size_t)s.rows * s.cols * ts);
        if (!buf) {
            char name[128];
            hf_name(i, L, name, sizeof name);
            snprintf(err, errlen, "%s: out of memory converting tensor %s", src[i].file, name);
            goto done;
        }
        for (int m = 0; m < s.rows; m++) {
            int r = s.perm_heads ? mf_meta_to_hf_row(m, hd) : m;
            mf_convert(buf + (size_t)m * s.cols * ts, td, (const char *)t->data + (size_t)r * s.cols * ss, sd, (size_t)s.cols);
        }
        /* the source pages are read once: give them back so the model costs one copy, not two
         * (the file stays in the page cache; only whole pages inside the tensor are dropped) */
        uintptr_t a = ((uintptr_t)t->data + 4095) & ~(uintptr_t)4095;
        uintptr_t e = ((uintptr_t)t->data + (size_t)s.rows * s.cols * ss) & ~(uintptr_t)4095;
        if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
        *dst = ag_tensor_of(buf, s.rows, s.cols, td);
    }
    if (c->tied) w->cls = w->tok_emb;
    w->dtype = bd;
    rc = 0;
done:
    free(src);
    return rc;
}

int mf_load_hf(const char *dir_in, model_weights *w, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    char dir[4096], cfgp[4400];
    if (snprintf(dir, sizeof dir, "%s", dir_in) >= (int)sizeof dir) {
        snprintf(err, errlen, "%.200s...: path too long", dir_in);
        return -1;
    }
    for (size_t len = strlen(dir); len > 1 && dir[len - 1] == '/'; len--) dir[len - 1] = 0;
    if (snprintf(cfgp, sizeof cfgp, "%s/config.json", dir) >= 4096) {
        snprintf(err, errlen, "%.200s...: path too long", dir);
        return -1;
    }
    if (!file_exists(cfgp)) {
        char pj[4400];
        snprintf(pj, sizeof pj, "%s/params.json", dir);
        if (file_exists(pj))
            snprintf(err, errlen, "%s: Meta consolidated checkpoints (params.json + .pth) are not supported: convert to a "
                     "Hugging Face directory or a llama2.c .bin", dir);
        else
            snprintf(err, errlen, "%s: no config.json: expected a Hugging Face Llama directory", dir);
        return -1;
    }
    llama_config c;
    if (parse_config(cfgp, &c, err, errlen)) return -1;
    w->cfg = c;
    if (mf_begin(w)) {
        snprintf(err, errlen, "%s: out of memory", dir);
        memset(w, 0, sizeof *w);
        return -1;
    }
    char where[4400];
    if (open_weights(dir, w, where, sizeof where, err, errlen) || load_tensors(w, where, err, errlen)) {
        model_free(w);
        return -1;
    }
    snprintf(w->format, sizeof w->format, "hf");
    w->fingerprint = mf_fingerprint(w);
    return 0;
}

/* ---- writer ---- */

static const char *st_dtype_name(ag_dtype d) { return d == AG_F32 ? "F32" : d == AG_F16 ? "F16" : "BF16"; }
static const char *torch_dtype_name(ag_dtype d) { return d == AG_F32 ? "float32" : d == AG_F16 ? "float16" : "bfloat16"; }

/* mkdir -p. */
static int make_dirs(const char *dir, char *err, size_t errlen) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        snprintf(err, errlen, "%.200s...: path too long", dir);
        return -1;
    }
    for (char *q = buf + 1;; q++) {
        if (*q == '/' || !*q) {
            char save = *q;
            *q = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create directory: %s", buf, strerror(errno));
                return -1;
            }
            *q = save;
            if (!save) break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", dir);
        return -1;
    }
    return 0;
}

/* Shortest decimal that reads back (through strtod, as cJSON does) as the same float. */
static void fmt_float(char *buf, size_t n, float v) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if ((float)strtod(buf, NULL) == v) return;
    }
}

typedef struct fill_ctx {
    model_weights *w;
    int base;     /* slot of the shard's first tensor */
    ag_dtype dt;  /* target dtype */
} fill_ctx;

/* Produces slot base+index in the target dtype, wq/wk rows in HF order. */
static int fill_slot(void *vctx, int index, void *buf, size_t nbytes) {
    fill_ctx *x = vctx;
    const llama_config *c = &x->w->cfg;
    int slot = x->base + index, hd = c->dim / c->n_heads;
    mf_slot_info s = mf_slot(c, slot);
    const ag_tensor *t = mf_slot_tensor(x->w, slot);
    size_t ds = ag_dtype_size(x->dt), ss = ag_dtype_size(t->dtype);
    if (nbytes != (size_t)s.rows * s.cols * ds) return -1;
    for (int r = 0; r < s.rows; r++) {
        int m = s.perm_heads ? mf_hf_to_meta_row(r, hd) : r;
        mf_convert((char *)buf + (size_t)r * s.cols * ds, x->dt, (const char *)t->data + (size_t)m * s.cols * ss, t->dtype,
                   (size_t)s.cols);
    }
    return 0;
}

static int write_text(const char *path, const char *text, char *err, size_t errlen) {
    atomic_file a;
    if (atomic_open(&a, path, err, errlen)) return -1;
    if (fputs(text, a.f) < 0 || fputc('\n', a.f) < 0) {
        snprintf(err, errlen, "%s: write failed: %s", a.tmp, strerror(errno));
        atomic_abort(&a);
        return -1;
    }
    return atomic_commit(&a, err, errlen);
}

static int write_config(const char *dir, const llama_config *c, ag_dtype dt, char *err, size_t errlen) {
    char path[4400], num[64];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *j = cJSON_CreateObject();
    const char *arch = "LlamaForCausalLM";
    cJSON_AddItemToObject(j, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddStringToObject(j, "model_type", "llama");
    cJSON_AddNumberToObject(j, "hidden_size", c->dim);
    cJSON_AddNumberToObject(j, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    if (c->max_seq_len > 0) cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_seq_len);
    fmt_float(num, sizeof num, c->norm_eps);
    cJSON_AddRawToObject(j, "rms_norm_eps", num);
    fmt_float(num, sizeof num, c->rope_theta);
    cJSON_AddRawToObject(j, "rope_theta", num);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddStringToObject(j, "torch_dtype", torch_dtype_name(dt));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    int rc = write_text(path, text, err, errlen);
    free(text);
    return rc;
}

int model_save_hf(const char *dir, const model_weights *w, ag_dtype dtype, size_t shard_bytes, char *err,
                  size_t errlen) {
    const llama_config *c = &w->cfg;
    char why[300];
    if (!w->layers || mf_check_config(c, why, sizeof why)) {
        snprintf(err, errlen, "%s: cannot write this model: %s", dir, w->layers ? why : "no weights");
        return -1;
    }
    if (dtype != AG_F32 && dtype != AG_F16 && dtype != AG_BF16) {
        snprintf(err, errlen, "%s: unknown dtype %d: expected F32, F16 or BF16", dir, (int)dtype);
        return -1;
    }
    model_weights *mw = (model_weights *)w; /* only read through */
    int n = mf_n_slots(c), L = c->n_layers;
    for (int i = 0; i < n; i++) {
        mf_slot_info s = mf_slot(c, i);
        const ag_tensor *t = mf_slot_tensor(mw, i);
        if (!t->data || t->rows != s.rows || t->cols != s.cols) {
            hf_name(i, L, why, sizeof why);
            snprintf(err, errlen, "%s: tensor %s is [%d, %d]: expected [%d, %d] from the config", dir, why, t->rows, t->cols,
                     s.rows, s.cols);
            return -1;
        }
    }
    if (make_dirs(dir, err, errlen)) return -1;
    st_out *out = calloc((size_t)n, sizeof(st_out));
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    size_t *bytes = calloc((size_t)n, sizeof(size_t));
    int rc = -1;
    if (!out || !names || !bytes) {
        snprintf(err, errlen, "%s: out of memory", dir);
        goto done;
    }
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        mf_slot_info s = mf_slot(c, i);
        hf_name(i, L, names[i], sizeof names[i]);
        out[i].name = names[i];
        out[i].dtype = st_dtype_name(dtype);
        out[i].ndim = s.is_norm ? 1 : 2;
        out[i].shape[0] = s.is_norm ? s.cols : s.rows;
        out[i].shape[1] = s.cols;
        const ag_tensor *t = mf_slot_tensor(mw, i);
        out[i].data = t->dtype == dtype && !s.perm_heads ? t->data : NULL; /* NULL: fill_slot converts */
        bytes[i] = (size_t)s.rows * s.cols * ag_dtype_size(dtype);
        total += bytes[i];
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    char path[4400];
    fill_ctx ctx = {mw, 0, dtype};
    if (shard_bytes == 0 || total <= shard_bytes) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (st_write_stream(path, out, n, mk, mv, 1, fill_slot, &ctx, err, errlen)) goto done;
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        unlink(path); /* a stale index would take precedence on load */
    } else {
        int n_sh = 0;
        size_t cur = 0;
        for (int i = 0; i < n; i++) {
            if (i == 0 || (cur > 0 && cur + bytes[i] > shard_bytes)) {
                n_sh++;
                cur = 0;
            }
            cur += bytes[i];
        }
        cJSON *idx = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(idx, "metadata");
        cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
        char num[32], fname[64];
        snprintf(num, sizeof num, "%zu", total);
        cJSON_AddRawToObject(meta, "total_size", num);
        int start = 0;
        for (int sh = 1; sh <= n_sh; sh++) {
            int end = start + 1;
            size_t sz = bytes[start];
            while (end < n && sz + bytes[end] <= shard_bytes) sz += bytes[end++];
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", sh, n_sh);
            snprintf(path, sizeof path, "%s/%s", dir, fname);
            ctx.base = start;
            if (st_write_stream(path, out + start, end - start, mk, mv, 1, fill_slot, &ctx, err, errlen)) {
                cJSON_Delete(idx);
                goto done;
            }
            for (int i = start; i < end; i++) cJSON_AddStringToObject(wm, names[i], fname);
            start = end;
        }
        char *text = cJSON_Print(idx);
        cJSON_Delete(idx);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (!text || write_text(path, text, err, errlen)) {
            if (!text) snprintf(err, errlen, "%s: out of memory", path);
            free(text);
            goto done;
        }
        free(text);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        unlink(path); /* superseded by the shards */
    }
    rc = write_config(dir, c, dtype, err, errlen);
done:
    free(out);
    free(names);
    free(bytes);
    return rc;
}
