/* llama2.c checkpoints (the legacy "version 0" export of karpathy/llama2.c): a header of 7 int32
 * {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len} (vocab_size < 0:
 * untied classifier), then f32 arrays: token_embedding [vocab, dim], rms_att [L, dim],
 * wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
 * w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
 * freq_cis_real [seq, hd/2], freq_cis_imag [seq, hd/2], then wcls [vocab, dim] when untied.
 * Weights are already in Meta's pair layout. RMSNorm eps is 1e-5 (as run.c), rope theta 10000.
 *
 * The reader maps the file and points every tensor into the mapping (f32, 4-byte aligned since
 * the header is 28 bytes); the file size must match the header exactly. The freq_cis tables are
 * skipped on read (RoPE is recomputed from theta) and written on export the way llama2.c's
 * export.py computes them. Versioned llama2.c exports (magic "ak42") are not read. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/atomic.h"
#include "checkpoints/model_priv.h"

/* Upper bounds that keep every size computation far from overflow. */
#define L2C_MAX_DIM (1 << 16)
#define L2C_MAX_HIDDEN (1 << 20)
#define L2C_MAX_LAYERS (1 << 12)
#define L2C_MAX_VOCAB (1 << 24)
#define L2C_MAX_SEQ (1 << 24)

static int32_t rd_i32(const unsigned char *b) {
    uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* Parses and checks a header; 0 and the config and expected file size, or -1 with why. */
static int parse_header(const unsigned char *b, llama_config *c, uint64_t *expect, char *why, size_t n) {
    int32_t h[7];
    for (int i = 0; i < 7; i++) h[i] = rd_i32(b + 4 * i);
    int32_t dim = h[0], hidden = h[1], L = h[2], H = h[3], Hkv = h[4], vocab = h[5], seq = h[6];
    if (dim <= 0 || dim > L2C_MAX_DIM || hidden <= 0 || hidden > L2C_MAX_HIDDEN || L <= 0 || L > L2C_MAX_LAYERS ||
        H <= 0 || Hkv <= 0 || vocab == 0 || vocab < -L2C_MAX_VOCAB || vocab > L2C_MAX_VOCAB || seq <= 0 ||
        seq > L2C_MAX_SEQ || dim % H || H % Hkv || (dim / H) % 2) {
        snprintf(why, n, "bad llama2.c header {dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
                 "vocab_size %d, max_seq_len %d}: expected positive sizes with dim %% n_heads == 0, "
                 "n_heads %% n_kv_heads == 0 and an even head size",
                 dim, hidden, L, H, Hkv, vocab, seq);
        return -1;
    }
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->hidden_dim = hidden;
    c->n_layers = L;
    c->n_heads = H;
    c->n_kv_heads = Hkv;
    c->tied = vocab > 0;
    c->vocab_size = vocab > 0 ? vocab : -vocab;
    c->max_seq_len = seq;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    uint64_t V = (uint64_t)c->vocab_size, D = (uint64_t)dim, F = (uint64_t)hidden, NL = (uint64_t)L;
    uint64_t kv = (uint64_t)Hkv * (D / (uint64_t)H), hd = D / (uint64_t)H;
    uint64_t floats = V * D + NL * (D + D * D + 2 * kv * D + D * D + D + 3 * F * D) + D + (uint64_t)seq * hd +
                      (c->tied ? 0 : V * D);
    *expect = 28 + 4 * floats; /* < 2^62 under the bounds above */
    return 0;
}

int mf_llama2c_plausible(const unsigned char *hdr28, uint64_t size) {
    llama_config c;
    uint64_t expect;
    char why[8];
    return parse_header(hdr28, &c, &expect, why, sizeof why) == 0 && expect == size;
}

int mf_load_llama2c(const char *path, model_weights *w, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    unsigned char hdr[28];
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file: expected a llama2.c checkpoint", path);
        close(fd);
        return -1;
    }
    uint64_t size = (uint64_t)sb.st_size, expect;
    if (size < 28 || pread(fd, hdr, 28, 0) != 28) {
        snprintf(err, errlen, "%s: truncated: a llama2.c checkpoint starts with a 28-byte header, file has %" PRIu64 " bytes",
                 path, size);
        close(fd);
        return -1;
    }
    char why[400];
    if (parse_header(hdr, &w->cfg, &expect, why, sizeof why)) {
        snprintf(err, errlen, "%s: %s", path, why);
        close(fd);
        memset(w, 0, sizeof *w);
        return -1;
    }
    if (size < expect) {
        snprintf(err, errlen, "%s: truncated: expected %" PRIu64 " bytes, file has %" PRIu64, path, expect, size);
        close(fd);
        memset(w, 0, sizeof *w);
        return -1;
    }
    if (size > expect) {
        snprintf(err, errlen, "%s: %" PRIu64 " unexpected bytes after the weights: expected exactly %" PRIu64
                 " bytes for this header (not a llama2.c legacy checkpoint?)", path, size - expect, expect);
        close(fd);
        memset(w, 0, sizeof *w);
        return -1;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map %" PRIu64 " bytes: %s", path, size, strerror(errno));
        memset(w, 0, sizeof *w);
        return -1;
    }
    if (mf_begin(w)) {
        munmap(map, (size_t)size);
        snprintf(err, errlen, "%s: out of memory", path);
        memset(w, 0, sizeof *w);
        return -1;
    }
    model_priv *p = w->priv;
    p->map = map;
    p->map_size = (size_t)size;
    const llama_config *c = &w->cfg;
    int D = c->dim, F = c->hidden_dim, L = c->n_layers, kv = c->n_kv_heads * (D / c->n_heads);
    float *at = (float *)((char *)map + 28);
    w->tok_emb = ag_tensor_of(at, c->vocab_size, D, AG_F32);
    at += (size_t)c->vocab_size * D;
    /* Per-layer arrays are stacked over layers, in slot order k: attn_norm wq wk wv wo ffn_norm
     * w1 w2 w3. */
    int rows[9] = {1, D, kv, kv, D, 1, F, D, F}, cols[9] = {D, D, D, D, D, D, D, F, D};
    for (int k = 0; k < 9; k++) {
        size_t per = (size_t)rows[k] * (size_t)cols[k];
        for (int l = 0; l < L; l++)
            *mf_slot_tensor(w, 1 + 9 * l + k) = ag_tensor_of(at + (size_t)l * per, rows[k], cols[k], AG_F32);
        at += (size_t)L * per;
    }
    w->norm = ag_tensor_of(at, 1, D, AG_F32);
    at += D;
    at += (size_t)c->max_seq_len * (D / c->n_heads); /* freq_cis_real and _imag, [seq, hd/2] each */
    w->cls = c->tied ? w->tok_emb : ag_tensor_of(at, c->vocab_size, D, AG_F32);
    w->dtype = AG_F32;
    snprintf(w->format, sizeof w->format, "llama2c");
    w->fingerprint = mf_fingerprint(w);
    return 0;
}

/* Writes n values of t's data as f32 (converting 16-bit tensors chunk by chunk). */
static int write_f32(FILE *f, const void *src, ag_dtype dt, size_t n) {
    if (dt == AG_F32) return fwrite(src, 4, n, f) == n ? 0 : -1;
    enum { CH = 4096 };
    float buf[CH];
    for (size_t at = 0; at < n; at += CH) {
        size_t k = n - at < CH ? n - at : CH;
        mf_convert(buf, AG_F32, (const char *)src + at * 2, dt, k);
        if (fwrite(buf, 4, k, f) != k) return -1;
    }
    return 0;
}

int model_save_llama2c(const char *path, const model_weights *w, char *err, size_t errlen) {
    const llama_config *c = &w->cfg;
    char why[300];
    if (!w->layers || mf_check_config(c, why, sizeof why)) {
        snprintf(err, errlen, "%s: cannot write this model: %s", path, w->layers ? why : "no weights");
        return -1;
    }
    if (c->max_seq_len <= 0) {
        snprintf(err, errlen, "%s: a llama2.c checkpoint needs max_seq_len > 0 (the model has %d)", path, c->max_seq_len);
        return -1;
    }
    int32_t hdr[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                      c->tied ? c->vocab_size : -c->vocab_size, c->max_seq_len};
    atomic_file a;
    if (atomic_open(&a, path, err, errlen)) return -1;
    int bad = fwrite(hdr, 4, 7, a.f) != 7;
    model_weights *mw = (model_weights *)w; /* mf_slot_tensor only reads through it here */
    bad |= write_f32(a.f, w->tok_emb.data, w->tok_emb.dtype, ag_numel(&w->tok_emb));
    for (int k = 0; k < 9 && !bad; k++)
        for (int l = 0; l < c->n_layers && !bad; l++) {
            const ag_tensor *t = mf_slot_tensor(mw, 1 + 9 * l + k);
            bad |= write_f32(a.f, t->data, t->dtype, ag_numel(t));
        }
    if (!bad) bad |= write_f32(a.f, w->norm.data, w->norm.dtype, ag_numel(&w->norm));
    /* freq_cis as llama2.c's export.py (precompute_freqs_cis in f32): cos then sin tables. */
    int hd = c->dim / c->n_heads, half = hd / 2;
    float *row = malloc((size_t)half * sizeof(float));
    bad |= !row;
    for (int part = 0; part < 2 && !bad; part++)
        for (int pos = 0; pos < c->max_seq_len && !bad; pos++) {
            for (int i = 0; i < half; i++) {
                float fr = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd);
                float ang = (float)pos * fr;
                row[i] = part == 0 ? cosf(ang) : sinf(ang);
            }
            bad |= fwrite(row, 4, (size_t)half, a.f) != (size_t)half;
        }
    free(row);
    if (!c->tied && !bad) bad |= write_f32(a.f, w->cls.data, w->cls.dtype, ag_numel(&w->cls));
    if (bad) {
        snprintf(err, errlen, "%s: write failed: %s", a.tmp, strerror(errno));
        atomic_abort(&a);
        return -1;
    }
    return atomic_commit(&a, err, errlen);
}
