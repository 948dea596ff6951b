/* make_model: writes a synthetic (random) Hugging Face Llama model directory of any shape, up to
 * 7B and beyond, without holding it in memory.
 *
 *   make_model --out DIR [--dim 4096 --hidden 11008 --layers 32 --heads 32 --kv-heads 32
 *              --vocab 32000 --max-pos 4096] [--dtype bf16|f16|f32] [--seed 1] [--std 0.02]
 *              [--shard-gb 5]
 *
 * What it writes: DIR/config.json (model_type llama, LlamaForCausalLM, rms_norm_eps 1e-5,
 * rope_theta 10000, untied, torch_dtype, initializer_range = --std) and the weights as HF lays
 * them out: model.safetensors when they fit in one shard of --shard-gb * 10^9 bytes, otherwise
 * model-0000i-of-0000N.safetensors plus model.safetensors.index.json (metadata.total_size and a
 * weight_map with sorted keys). Tensors split into shards greedily in checkpoints/model_hf.c's
 * slot order, as model_save_hf does; each shard's __metadata__ holds format "pt" and the
 * generator version, seed and std, so a cache made with other values is not taken for this one.
 * Values come from bench/make_model_rng.h: matrices uniform with standard deviation --std, norm
 * weights 1 + noise within +-1/32; each element a pure function of (seed, tensor, index), so a
 * test can regenerate any of them (tests/test_make_model.c). Within a file the tensors follow that
 * slot order (HF's own save_pretrained orders and splits slightly differently; readers go by the
 * header and the index, so nothing depends on it).
 *
 * How: every header is computed from the shapes before any data is generated; each shard is
 * written to NAME.tmp (space reserved with fallocate), header first, then each tensor in chunks
 * of 4 Mi elements (at most 16 MB, one buffer), with written ranges pushed to disk and dropped
 * from the page cache every 64 MB so neither this process nor the cache grows; then fsync and
 * rename (checkpoints/atomic.h). The index and config.json come last,
 * config.json the very last: a directory with a config.json is complete.
 *
 * Caching: when DIR already holds config.json identical to the one this run would write, the same
 * index, and every shard with the expected size and header, it prints "cached" and exits 0
 * without writing. Otherwise config.json and the index are removed first, shards that are
 * already complete (a run killed midway) are kept, stale weight files (other shard counts,
 * *.tmp) are removed, and the rest is written.
 *
 * What it does not do: Gaussian values (uniform is enough for timing and memory probes), tied
 * embeddings, biases, rope_scaling, tokenizer files, or any check of the data bytes of a cached
 * shard beyond its header and size (a shard only gets its final name once fully written).
 * Errors: one line "make_model: FILE: reason" on stderr, exit 1 (2 for bad usage). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "autograd/tensor.h"
#include "bench/make_model_rng.h"
#include "checkpoints/atomic.h"

#define CHUNK_ELEMS ((uint64_t)4 << 20) /* elements per generated chunk (a multiple of 4) */
#define WINDOW_BYTES ((uint64_t)64 << 20) /* writeback window */

enum { DT_BF16, DT_F16, DT_F32 };
static const char *const dt_st[3] = {"BF16", "F16", "F32"};
static const char *const dt_torch[3] = {"bfloat16", "float16", "float32"};
static const char *const dt_flag[3] = {"bf16", "f16", "f32"};
static const size_t dt_size[3] = {2, 2, 4};

typedef struct opts {
    const char *out;
    int dim, hidden, layers, heads, kv_heads, vocab, max_pos, dtype;
    uint64_t seed;
    double std, shard_gb;
} opts;

typedef struct mm_tensor {
    char name[96];
    int slot, is_norm;
    int64_t rows, cols; /* norms: rows 1, written as shape [cols] */
    uint64_t numel, nbytes;
    int shard;          /* 0-based */
    uint64_t offset;    /* in the shard's data section */
} mm_tensor;

typedef struct mm_shard {
    char fname[64];
    int first, count;   /* tensor range */
    char *header;       /* 8-byte length + JSON + space padding */
    size_t header_len;
    uint64_t data_bytes, file_bytes;
    int keep;           /* already complete on disk */
} mm_shard;

typedef struct plan {
    mm_tensor *t;
    int n;
    mm_shard *sh;
    int n_sh;
    uint64_t total_bytes, params;
    char *config, *index; /* file texts; index NULL with one shard */
} plan;

static double g_gen_s, g_write_s;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "make_model: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: make_model --out DIR [--dim 4096] [--hidden 11008] [--layers 32] [--heads 32] [--kv-heads 32]\n"
            "                  [--vocab 32000] [--max-pos 4096] [--dtype bf16|f16|f32] [--seed 1] [--std 0.02]\n"
            "                  [--shard-gb 5]\n"
            "Writes a random Hugging Face Llama directory (config.json + safetensors) streaming, in little memory;\n"
            "prints \"cached\" and exits 0 when DIR already holds exactly this model.\n");
}

static void bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void bad_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "make_model: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see --help)\n");
    va_end(ap);
    exit(2);
}

static int parse_int(const char *flag, const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > INT_MAX) bad_usage("%s '%s': expected a positive integer", flag, s);
    return (int)v;
}

static double parse_pos(const char *flag, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0.0) || isinf(v)) bad_usage("%s '%s': expected a positive number", flag, s);
    return v;
}

static void parse_args(int argc, char **argv, opts *o) {
    *o = (opts){NULL, 4096, 11008, 32, 32, 32, 32000, 4096, DT_BF16, 1, 0.02, 5.0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) bad_usage("%s: %s", a, strncmp(a, "--", 2) ? "unexpected argument" : "missing value");
        const char *v = argv[++i];
        if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--dim")) o->dim = parse_int(a, v);
        else if (!strcmp(a, "--hidden")) o->hidden = parse_int(a, v);
        else if (!strcmp(a, "--layers")) o->layers = parse_int(a, v);
        else if (!strcmp(a, "--heads")) o->heads = parse_int(a, v);
        else if (!strcmp(a, "--kv-heads")) o->kv_heads = parse_int(a, v);
        else if (!strcmp(a, "--vocab")) o->vocab = parse_int(a, v);
        else if (!strcmp(a, "--max-pos")) o->max_pos = parse_int(a, v);
        else if (!strcmp(a, "--std")) o->std = parse_pos(a, v);
        else if (!strcmp(a, "--shard-gb")) o->shard_gb = parse_pos(a, v);
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') bad_usage("--seed '%s': expected a non-negative integer", v);
            o->seed = (uint64_t)s;
        } else if (!strcmp(a, "--dtype")) {
            int d = -1;
            for (int k = 0; k < 3; k++)
                if (!strcmp(v, dt_flag[k])) d = k;
            if (d < 0) bad_usage("--dtype '%s': expected bf16, f16 or f32", v);
            o->dtype = d;
        } else bad_usage("unknown flag %s", a);
    }
    if (!o->out || !o->out[0]) bad_usage("--out DIR is required");
    if (o->dim % o->heads) bad_usage("--dim %d is not a multiple of --heads %d", o->dim, o->heads);
    if ((o->dim / o->heads) % 2) bad_usage("head dim %d (dim / heads) is odd: RoPE needs it even", o->dim / o->heads);
    if (o->heads % o->kv_heads) bad_usage("--heads %d is not a multiple of --kv-heads %d", o->heads, o->kv_heads);
}

/* ---- the plan: names, shapes, shards, headers, file texts ---- */

static const char *const layer_suffix[9] = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",   "mlp.down_proj.weight",    "mlp.up_proj.weight",
};

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *s, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) fail("formatting failed");
        if (s->p && s->len + (size_t)n < s->cap) {
            s->len += (size_t)n;
            return;
        }
        size_t cap = s->cap ? s->cap : 4096;
        while (cap <= s->len + (size_t)n) cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) fail("out of memory");
        s->p = p;
        s->cap = cap;
    }
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const mm_tensor *const *)a)->name, (*(const mm_tensor *const *)b)->name);
}

static void make_plan(const opts *o, plan *p) {
    memset(p, 0, sizeof *p);
    int L = o->layers, hd = o->dim / o->heads;
    int64_t kv_dim = (int64_t)o->kv_heads * hd;
    p->n = 3 + 9 * L;
    p->t = calloc((size_t)p->n, sizeof(mm_tensor));
    if (!p->t) fail("out of memory");
    for (int i = 0; i < p->n; i++) {
        mm_tensor *t = &p->t[i];
        t->slot = i;
        t->cols = o->dim;
        if (i == 0 || i == 2 + 9 * L) {
            t->rows = o->vocab;
            snprintf(t->name, sizeof t->name, "%s", i == 0 ? "model.embed_tokens.weight" : "lm_head.weight");
        } else if (i == 1 + 9 * L) {
            t->rows = 1;
            t->is_norm = 1;
            snprintf(t->name, sizeof t->name, "model.norm.weight");
        } else {
            int l = (i - 1) / 9, k = (i - 1) % 9;
            snprintf(t->name, sizeof t->name, "model.layers.%d.%s", l, layer_suffix[k]);
            switch (k) {
            case 0: case 5: t->rows = 1; t->is_norm = 1; break;
            case 1: case 4: t->rows = o->dim; break;
            case 2: case 3: t->rows = kv_dim; break;
            case 6: case 8: t->rows = o->hidden; break;
            case 7: t->rows = o->dim; t->cols = o->hidden; break;
            }
        }
        t->numel = (uint64_t)t->rows * (uint64_t)t->cols;
        t->nbytes = t->numel * dt_size[o->dtype];
        p->params += t->numel;
        p->total_bytes += t->nbytes;
    }
    /* Greedy split: a new shard when the current one is not empty and the tensor would overflow. */
    double lim = o->shard_gb * 1e9;
    uint64_t shard_bytes = lim >= 1.8e19 ? UINT64_MAX : (uint64_t)lim;
    p->sh = calloc((size_t)p->n, sizeof(mm_shard));
    if (!p->sh) fail("out of memory");
    uint64_t cur = 0;
    for (int i = 0; i < p->n; i++) {
        if (i == 0 || (cur > 0 && cur + p->t[i].nbytes > shard_bytes)) {
            p->sh[p->n_sh].first = i;
            p->n_sh++;
            cur = 0;
        }
        mm_shard *s = &p->sh[p->n_sh - 1];
        p->t[i].shard = p->n_sh - 1;
        p->t[i].offset = cur;
        s->count++;
        cur += p->t[i].nbytes;
        s->data_bytes = cur;
    }
    char std_s[32];
    snprintf(std_s, sizeof std_s, "%.9g", o->std);
    for (int s = 0; s < p->n_sh; s++) {
        mm_shard *sh = &p->sh[s];
        if (p->n_sh == 1) snprintf(sh->fname, sizeof sh->fname, "model.safetensors");
        else snprintf(sh->fname, sizeof sh->fname, "model-%05d-of-%05d.safetensors", s + 1, p->n_sh);
        sbuf h = {0};
        sb_printf(&h, "12345678{\"__metadata__\":{\"format\":\"pt\",\"make_model_generator\":\"%s\",\"make_model_seed\":\"%" PRIu64
                  "\",\"make_model_std\":\"%s\"}", MM_GENERATOR_VERSION, o->seed, std_s);
        for (int i = sh->first; i < sh->first + sh->count; i++) {
            const mm_tensor *t = &p->t[i];
            if (t->is_norm) sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%" PRId64 "]", t->name, dt_st[o->dtype], t->cols);
            else sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%" PRId64 ",%" PRId64 "]", t->name, dt_st[o->dtype], t->rows, t->cols);
            sb_printf(&h, ",\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset, t->offset + t->nbytes);
        }
        sb_printf(&h, "}");
        while (h.len % 8) sb_printf(&h, " "); /* the data section starts 8-aligned */
        uint64_t jl = h.len - 8;
        for (int b = 0; b < 8; b++) h.p[b] = (char)(unsigned char)(jl >> (8 * b));
        sh->header = h.p;
        sh->header_len = h.len;
        sh->file_bytes = h.len + sh->data_bytes;
    }
    sbuf c = {0};
    sb_printf(&c, "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n");
    sb_printf(&c, "  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n  \"initializer_range\": %s,\n", o->dim, std_s);
    sb_printf(&c, "  \"intermediate_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"model_type\": \"llama\",\n", o->hidden,
              o->max_pos);
    sb_printf(&c, "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n  \"num_key_value_heads\": %d,\n", o->heads, L,
              o->kv_heads);
    sb_printf(&c, "  \"rms_norm_eps\": 1e-05,\n  \"rope_scaling\": null,\n  \"rope_theta\": 10000.0,\n");
    sb_printf(&c, "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"%s\",\n  \"use_cache\": true,\n  \"vocab_size\": %d\n}\n",
              dt_torch[o->dtype], o->vocab);
    p->config = c.p;
    if (p->n_sh > 1) {
        const mm_tensor **sorted = malloc((size_t)p->n * sizeof *sorted);
        if (!sorted) fail("out of memory");
        for (int i = 0; i < p->n; i++) sorted[i] = &p->t[i];
        qsort(sorted, (size_t)p->n, sizeof *sorted, cmp_tensor_name);
        sbuf x = {0};
        sb_printf(&x, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {\n", p->total_bytes);
        for (int i = 0; i < p->n; i++)
            sb_printf(&x, "    \"%s\": \"%s\"%s\n", sorted[i]->name, p->sh[sorted[i]->shard].fname, i + 1 < p->n ? "," : "");
        sb_printf(&x, "  }\n}\n");
        p->index = x.p;
        free(sorted);
    }
}

static void free_plan(plan *p) {
    for (int s = 0; s < p->n_sh; s++) free(p->sh[s].header);
    free(p->sh);
    free(p->t);
    free(p->config);
    free(p->index);
}

/* ---- files ---- */

static void make_dirs(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) fail("%.100s...: path too long", dir);
    for (char *q = buf + 1;; q++) {
        if (*q == '/' || !*q) {
            char save = *q;
            *q = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) fail("%s: cannot create directory: %s", buf, strerror(errno));
            *q = save;
            if (!save) break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) fail("%s: not a directory", dir);
}

static void join(char *buf, size_t n, const char *dir, const char *name) {
    if (snprintf(buf, n, "%s/%s", dir, name) >= (int)n) fail("%.100s...: path too long", dir);
}

/* 1 when `path` is a regular file of exactly `size` bytes starting with `len` bytes equal to `want`. */
static int file_matches(const char *path, const char *want, size_t len, uint64_t size) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != size) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char *buf = malloc(len ? len : 1);
    int ok = buf && fread(buf, 1, len, f) == len && memcmp(buf, want, len) == 0;
    free(buf);
    fclose(f);
    return ok;
}

static int shard_complete(const char *dir, const mm_shard *s) {
    char path[4400];
    join(path, sizeof path, dir, s->fname);
    return file_matches(path, s->header, s->header_len, s->file_bytes);
}

static int text_matches(const char *dir, const char *name, const char *text) {
    char path[4400];
    join(path, sizeof path, dir, name);
    return file_matches(path, text, strlen(text), strlen(text));
}

static void remove_file(const char *dir, const char *name) {
    char path[4400];
    join(path, sizeof path, dir, name);
    if (unlink(path) != 0 && errno != ENOENT) fail("%s: cannot remove: %s", path, strerror(errno));
}

/* "model-DDDDD-of-DDDDD.safetensors", optionally followed by ".tmp". */
static int is_shard_name(const char *s) {
    static const char pat[] = "model-#####-of-#####.safetensors";
    size_t n = sizeof pat - 1, len = strlen(s);
    if (len != n && !(len == n + 4 && !strcmp(s + n, ".tmp"))) return 0;
    for (size_t i = 0; i < n; i++)
        if (pat[i] == '#' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i]) return 0;
    return 1;
}

/* Removes config.json, the index and every weight file of ours that is not a complete shard of
 * this plan; marks the complete ones `keep`. */
static void clear_stale(const char *dir, plan *p) {
    remove_file(dir, "config.json"); /* first: from here on the directory does not look complete */
    remove_file(dir, "config.json.tmp");
    remove_file(dir, "model.safetensors.index.json");
    remove_file(dir, "model.safetensors.index.json.tmp");
    for (int s = 0; s < p->n_sh; s++) p->sh[s].keep = shard_complete(dir, &p->sh[s]);
    DIR *d = opendir(dir);
    if (!d) fail("%s: cannot list: %s", dir, strerror(errno));
    char (*victims)[300] = NULL;
    int nv = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const char *nm = e->d_name;
        if (!is_shard_name(nm) && strcmp(nm, "model.safetensors") && strcmp(nm, "model.safetensors.tmp")) continue;
        int keep = 0;
        for (int s = 0; s < p->n_sh; s++)
            if (p->sh[s].keep && !strcmp(nm, p->sh[s].fname)) keep = 1;
        if (keep) continue;
        if (nv == cap) {
            cap = cap ? 2 * cap : 16;
            void *q = realloc(victims, (size_t)cap * sizeof *victims);
            if (!q) fail("out of memory");
            victims = q;
        }
        snprintf(victims[nv++], sizeof victims[0], "%s", nm);
    }
    closedir(d);
    for (int i = 0; i < nv; i++) remove_file(dir, victims[i]);
    free(victims);
}

static void write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail("%s: write failed: %s", path, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
}

/* ---- generation ---- */

/* f32 -> bf16 rounding to nearest even for finite values (ag_f32_to_bf16 without its NaN branch,
 * which keeps the loop below from vectorising; generated values are never NaN). */
static inline uint16_t bf16_finite(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Draws d0 .. d0+nd-1 (elements 4*d0 ..) into o, one dtype per loop so each vectorises. */
static void fill_draws(void *buf, int dt, mm_gen g, uint64_t d0, int64_t nd) {
    if (dt == DT_BF16) {
        uint16_t *restrict o = buf;
        for (int64_t d = 0; d < nd; d++) {
            uint64_t x = mm_draw(g.key, d0 + (uint64_t)d);
            for (int k = 0; k < 4; k++) o[4 * d + k] = bf16_finite(mm_value_of_lane(&g, mm_lane(x, k)));
        }
    } else if (dt == DT_F16) {
        uint16_t *restrict o = buf;
        for (int64_t d = 0; d < nd; d++) {
            uint64_t x = mm_draw(g.key, d0 + (uint64_t)d);
            for (int k = 0; k < 4; k++) o[4 * d + k] = ag_f32_to_f16(mm_value_of_lane(&g, mm_lane(x, k)));
        }
    } else {
        float *restrict o = buf;
        for (int64_t d = 0; d < nd; d++) {
            uint64_t x = mm_draw(g.key, d0 + (uint64_t)d);
            for (int k = 0; k < 4; k++) o[4 * d + k] = mm_value_of_lane(&g, mm_lane(x, k));
        }
    }
}

/* Elements e0 .. e0+n-1 of tensor g into buf (dtype dt); e0 is a multiple of 4. One thread: at
 * about 0.3 ns per value here (2 s for a 7B model) generation is a small part of the time, and
 * splitting 4 Mi-element chunks over OpenMP threads measured slower on a shared 2-core machine. */
static void fill_chunk(void *buf, int dt, const mm_gen *g, uint64_t e0, uint64_t n) {
    const int64_t nd = (int64_t)(n / 4);
    fill_draws(buf, dt, *g, e0 / 4, nd);
    for (uint64_t e = (uint64_t)nd * 4; e < n; e++) {
        float v = mm_value(g, e0 + e);
        if (dt == DT_BF16) ((uint16_t *)buf)[e] = bf16_finite(v);
        else if (dt == DT_F16) ((uint16_t *)buf)[e] = ag_f32_to_f16(v);
        else ((float *)buf)[e] = v;
    }
}

/* Writes one shard to NAME.tmp, then fsync + rename. */
static void write_shard(const char *dir, const opts *o, const plan *p, const mm_shard *s, void *buf) {
    char path[4400], tmp[4400];
    join(path, sizeof path, dir, s->fname);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) fail("%.100s...: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("%s: cannot create: %s", tmp, strerror(errno));
    int fe = fallocate(fd, 0, 0, (off_t)s->file_bytes);
    if (fe != 0 && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
        int e = errno;
        close(fd);
        unlink(tmp);
        fail("%s: cannot reserve %" PRIu64 " bytes: %s", tmp, s->file_bytes, strerror(e));
    }
    double t0 = now_s();
    write_all(fd, s->header, s->header_len, tmp);
    g_write_s += now_s() - t0;
    uint64_t pos = s->header_len, win = 0, prev = 0, prev_len = 0;
    size_t es = dt_size[o->dtype];
    for (int i = s->first; i < s->first + s->count; i++) {
        const mm_tensor *t = &p->t[i];
        mm_gen g = mm_gen_of(o->seed, t->slot, t->is_norm, mm_matrix_scale(o->std));
        for (uint64_t e0 = 0; e0 < t->numel; e0 += CHUNK_ELEMS) {
            uint64_t n = t->numel - e0 < CHUNK_ELEMS ? t->numel - e0 : CHUNK_ELEMS;
            double a = now_s();
            fill_chunk(buf, o->dtype, &g, e0, n);
            double b = now_s();
            write_all(fd, buf, (size_t)(n * es), tmp);
            pos += n * es;
            if (pos - win >= WINDOW_BYTES) {
                /* start writing this window back; wait for the previous one and drop it from the cache */
                sync_file_range(fd, (off_t)win, (off_t)(pos - win), SYNC_FILE_RANGE_WRITE);
                if (prev_len) {
                    sync_file_range(fd, (off_t)prev, (off_t)prev_len,
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
                    posix_fadvise(fd, (off_t)prev, (off_t)prev_len, POSIX_FADV_DONTNEED);
                }
                prev = win;
                prev_len = pos - win;
                win = pos;
            }
            g_gen_s += b - a;
            g_write_s += now_s() - b;
        }
    }
    double c = now_s();
    if (pos != s->file_bytes) fail("%s: wrote %" PRIu64 " bytes, expected %" PRIu64, tmp, pos, s->file_bytes);
    if (fsync(fd) != 0) fail("%s: cannot sync: %s", tmp, strerror(errno));
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (close(fd) != 0) fail("%s: close failed: %s", tmp, strerror(errno));
    char err[600];
    if (atomic_rename(tmp, path, err, sizeof err)) fail("%s", err);
    g_write_s += now_s() - c;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[4400], err[600];
    join(path, sizeof path, dir, name);
    atomic_file a;
    if (atomic_open(&a, path, err, sizeof err)) fail("%s", err);
    if (fputs(text, a.f) < 0) {
        int e = errno;
        atomic_abort(&a);
        fail("%s.tmp: write failed: %s", path, strerror(e));
    }
    if (atomic_commit(&a, err, sizeof err)) fail("%s", err);
}

static void human(char *buf, size_t n, double bytes) {
    if (bytes >= 1e9) snprintf(buf, n, "%.2f GB", bytes / 1e9);
    else if (bytes >= 1e6) snprintf(buf, n, "%.2f MB", bytes / 1e6);
    else snprintf(buf, n, "%.1f kB", bytes / 1e3);
}

int main(int argc, char **argv) {
    opts o;
    parse_args(argc, argv, &o);
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", o.out) >= (int)sizeof dir) fail("%.100s...: path too long", o.out);
    for (size_t len = strlen(dir); len > 1 && dir[len - 1] == '/'; len--) dir[len - 1] = 0;
    plan p;
    make_plan(&o, &p);
    make_dirs(dir);

    int cached = text_matches(dir, "config.json", p.config);
    if (cached && p.index) cached = text_matches(dir, "model.safetensors.index.json", p.index);
    else if (cached) {
        char ip[4400];
        join(ip, sizeof ip, dir, "model.safetensors.index.json");
        cached = access(ip, F_OK) != 0; /* a stale index would take precedence over model.safetensors */
    }
    for (int s = 0; cached && s < p.n_sh; s++) cached = shard_complete(dir, &p.sh[s]);
    if (cached) {
        printf("cached\n");
        free_plan(&p);
        return 0;
    }

    double t0 = now_s();
    clear_stale(dir, &p);
    uint64_t todo = 0;
    int kept = 0;
    for (int s = 0; s < p.n_sh; s++) {
        if (p.sh[s].keep) kept++;
        else todo += p.sh[s].file_bytes;
    }
    struct statvfs vf;
    if (statvfs(dir, &vf) == 0 && (uint64_t)vf.f_bavail * vf.f_frsize < todo + ((uint64_t)64 << 20)) {
        char need[32], have[32];
        human(need, sizeof need, (double)todo);
        human(have, sizeof have, (double)vf.f_bavail * (double)vf.f_frsize);
        fail("%s: not enough disk space: the model needs %s, %s free", dir, need, have);
    }
    if (kept) fprintf(stderr, "make_model: keeping %d complete shard(s) of an earlier run\n", kept);
    void *buf = malloc((size_t)(CHUNK_ELEMS * dt_size[o.dtype]));
    if (!buf) fail("out of memory");
    for (int s = 0; s < p.n_sh; s++) {
        if (p.sh[s].keep) continue;
        double a = now_s();
        write_shard(dir, &o, &p, &p.sh[s], buf);
        char sz[32];
        human(sz, sizeof sz, (double)p.sh[s].file_bytes);
        fprintf(stderr, "make_model: wrote %s/%s (%d tensors, %s) in %.1f s\n", dir, p.sh[s].fname, p.sh[s].count, sz,
                now_s() - a);
    }
    free(buf);
    if (p.index) write_text(dir, "model.safetensors.index.json", p.index);
    write_text(dir, "config.json", p.config); /* last: the directory is now complete */
    char sz[32];
    human(sz, sizeof sz, (double)p.total_bytes);
    printf("wrote %s: %d tensors, %" PRIu64 " parameters, %s, %s in %d file(s); %.1f s (generate %.1f s, write %.1f s)\n",
           dir, p.n, p.params, dt_flag[o.dtype], sz, p.n_sh, now_s() - t0, g_gen_s, g_write_s);
    free_plan(&p);
    return 0;
}
