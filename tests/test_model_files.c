/* Model files: safetensors round trip and corrupt-file refusal, HF (F32/F16/BF16, sharded) and
 * llama2.c writers/readers round-tripping random models (tied/untied, GQA), the HF wq/wk row
 * permutation checked against hand-written row tables in both directions, the real
 * stories260K.bin, and one-line errors for bad model files. Temporary files live in a mkdtemp()
 * directory removed at the end. Does not test the CLI (the lead's tests do). */
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "checkpoints/model_file.h"
#include "checkpoints/safetensors.h"
#include "tests/test.h"

static char g_tmp[256];

static void tmp_path(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", g_tmp, rel); }

static int write_file(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static int one_line_naming(const char *err, const char *what) {
    return err[0] && !strchr(err, '\n') && strstr(err, what) != NULL;
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

/* A safetensors file from a literal header and `data` zero bytes; hlen_override >= 0 replaces the
 * length field. */
static void make_st(const char *path, const char *json, size_t data, int64_t hlen_override) {
    size_t jl = strlen(json);
    unsigned char *b = calloc(8 + jl + data + 1, 1);
    uint64_t h = hlen_override >= 0 ? (uint64_t)hlen_override : jl;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(h >> (8 * i));
    memcpy(b + 8, json, jl);
    write_file(path, b, 8 + jl + data);
    free(b);
}

/* ---- safetensors ---- */

static void test_safetensors_round_trip_keeps_names_shapes_dtypes_metadata_and_bytes(void) {
    char path[512], err[512];
    tmp_path(path, sizeof path, "rt.safetensors");
    float a[6] = {1.5f, -2, 3.25f, 0, 1e-8f, -7};
    uint16_t b[5] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000}; /* F16, odd count */
    uint16_t c[8] = {0x3f80, 0x4000, 0x4040, 0x4080, 0xbf80, 0, 1, 0x7f7f};
    int32_t d = 42;
    st_out t[4] = {
        {"a.weight", "F32", 2, {2, 3}, a},
        {"b \"quoted\"\\name", "F16", 1, {5}, b},
        {"c", "BF16", 3, {2, 2, 2}, c},
        {"scalar", "I32", 0, {0}, &d},
    };
    const char *mk[2] = {"adapter_len", "gate_act"}, *mv[2] = {"10", "tanh"};
    CHECK(st_write(path, t, 4, mk, mv, 2, err, sizeof err) == 0, "%s", err);
    CHECK(!exists("rt.safetensors.tmp"), "temporary left behind");
    st_file f;
    CHECK(st_open(path, &f, err, sizeof err) == 0, "%s", err);
    if (!f.map) return;
    CHECK(f.n == 4, "n %d", f.n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | ((unsigned char *)f.map)[i];
    CHECK((8 + hlen) % 8 == 0, "data section starts at %llu, not a multiple of 8", (unsigned long long)(8 + hlen));
    size_t want_size = 8 + hlen + sizeof a + sizeof b + sizeof c + sizeof d;
    CHECK(f.size == want_size, "size %zu want %zu", f.size, want_size);
    for (int i = 0; i < 4; i++) {
        const st_tensor *s = st_find(&f, t[i].name);
        CHECK(s != NULL, "tensor %s missing", t[i].name);
        if (!s) continue;
        CHECK(!strcmp(s->dtype, t[i].dtype), "%s dtype %s", t[i].name, s->dtype);
        CHECK(s->ndim == t[i].ndim, "%s ndim %d", t[i].name, s->ndim);
        size_t nb = st_dtype_size(t[i].dtype);
        for (int k = 0; k < s->ndim; k++) {
            CHECK(s->shape[k] == t[i].shape[k], "%s shape[%d]", t[i].name, k);
            nb *= (size_t)t[i].shape[k];
        }
        CHECK(s->nbytes == nb, "%s nbytes %zu want %zu", t[i].name, s->nbytes, nb);
        CHECK(memcmp(s->data, t[i].data, nb) == 0, "%s bytes differ", t[i].name);
    }
    CHECK(!strcmp(f.t[0].name, "a.weight") && !strcmp(f.t[3].name, "scalar"), "order %s..%s", f.t[0].name, f.t[3].name);
    CHECK(f.n_meta == 2 && st_meta(&f, "adapter_len") && !strcmp(st_meta(&f, "adapter_len"), "10") &&
              !strcmp(st_meta(&f, "gate_act"), "tanh"), "metadata");
    CHECK(st_meta(&f, "nope") == NULL && st_find(&f, "nope") == NULL, "absent lookups");
    CHECK((uintptr_t)f.t[0].data % 8 == 0, "first tensor not 8-aligned");
    st_close(&f);
    st_close(&f); /* idempotent */
    CHECK(st_dtype_size("BF16") == 2 && st_dtype_size("F64") == 8 && st_dtype_size("F42") == 0, "dtype sizes");
    /* The writer refuses duplicate names and unknown dtypes. */
    st_out dup[2] = {{"x", "F32", 1, {1}, a}, {"x", "F32", 1, {1}, a}};
    CHECK(st_write(path, dup, 2, NULL, NULL, 0, err, sizeof err) == -1 && one_line_naming(err, "x"), "dup: %s", err);
    st_out bad[1] = {{"x", "Q4", 1, {1}, a}};
    CHECK(st_write(path, bad, 1, NULL, NULL, 0, err, sizeof err) == -1, "unknown dtype accepted");
}

static void test_corrupt_safetensors_give_one_line_errors_naming_the_file(void) {
    char path[512], err[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    const char *ok8 = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    struct { const char *what, *json; size_t data; int64_t hlen; } cases[] = {
        {"header length beyond the file", ok8, 8, 5000},
        {"header length 2^63", ok8, 8, INT64_MAX},
        {"bad JSON", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_", 8, -1},
        {"not an object", "[1,2,3]", 0, -1},
        {"trailing garbage in header", "{}   x", 0, -1},
        {"offsets out of range", "{\"t\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", 16, -1},
        {"nbytes mismatch", "{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, -1},
        {"unknown dtype", "{\"t\":{\"dtype\":\"F42\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1},
        {"dtype not a string", "{\"t\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1},
        {"missing shape", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, -1},
        {"negative shape", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, -1},
        {"fractional shape", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, -1},
        {"shape product overflow",
         "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, -1},
        {"overflow to the right size",
         "{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,2],\"data_offsets\":[0,0]}}", 0, -1},
        {"too many dims", "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, -1},
        {"begin after end", "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, -1},
        {"three offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, -1},
        {"huge offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1e300,1e300]}}", 8, -1},
        {"duplicate names",
         "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, -1},
        {"overlapping data",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
         24, -1},
        {"overlap around an empty tensor",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, -1},
        {"metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0, -1},
        {"metadata not an object", "{\"__metadata__\":[\"k\"]}", 0, -1},
        {"empty header", "", 0, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_st(path, cases[i].json, cases[i].data, cases[i].hlen);
        st_file f;
        err[0] = 0;
        int rc = st_open(path, &f, err, sizeof err);
        CHECK(rc == -1, "%s: accepted", cases[i].what);
        CHECK(one_line_naming(err, path), "%s: error '%s' does not name the file in one line", cases[i].what, err);
        CHECK(f.map == NULL && f.t == NULL && f.n == 0, "%s: state not cleared", cases[i].what);
        st_close(&f);
    }
    /* Files too small to hold the length, and the empty file. */
    for (size_t n = 0; n < 8; n++) {
        write_file(path, "\x10\0\0\0\0\0\0", n);
        st_file f;
        CHECK(st_open(path, &f, err, sizeof err) == -1 && one_line_naming(err, path), "%zu-byte file: %s", n, err);
    }
    st_file f;
    CHECK(st_open(g_tmp, &f, err, sizeof err) == -1 && one_line_naming(err, g_tmp), "directory accepted: %s", err);
    CHECK(st_open("/nonexistent/x.safetensors", &f, err, sizeof err) == -1 && one_line_naming(err, "/nonexistent/x.safetensors"),
          "missing file: %s", err);
    /* The control: the same minimal header with a correct length loads. */
    make_st(path, ok8, 8, -1);
    CHECK(st_open(path, &f, err, sizeof err) == 0 && f.n == 1 && f.t[0].nbytes == 8, "the valid control case: %s", err);
    st_close(&f);
}

/* Every truncation of a valid file is refused; random header corruption never crashes and never
 * yields a tensor outside the mapping. */
static void test_truncated_and_mutated_safetensors_never_crash(void) {
    char path[512], cut[512], err[512];
    tmp_path(path, sizeof path, "fz.safetensors");
    tmp_path(cut, sizeof cut, "fz_cut.safetensors");
    float a[12];
    uint16_t b[7] = {1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < 12; i++) a[i] = (float)i;
    st_out t[3] = {{"a", "F32", 2, {3, 4}, a}, {"b", "BF16", 1, {7}, b}, {"c", "F32", 1, {2}, a}};
    const char *mk[1] = {"k"}, *mv[1] = {"v"};
    CHECK(st_write(path, t, 3, mk, mv, 1, err, sizeof err) == 0, "%s", err);
    size_t n;
    unsigned char *orig = read_all(path, &n);
    if (!orig) return;
    int accepted = 0;
    for (size_t len = 0; len < n; len++) {
        write_file(cut, orig, len);
        st_file f;
        if (st_open(cut, &f, err, sizeof err) == 0) accepted++;
        else CHECK(one_line_naming(err, cut), "cut at %zu: %s", len, err);
        st_close(&f);
    }
    CHECK(accepted == 0, "%d truncated files accepted", accepted);
    ag_rng rng;
    ag_rng_seed(&rng, 7);
    unsigned char *m = malloc(n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | orig[i];
    int opened = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(m, orig, n);
        int flips = 1 + (int)ag_rng_below(&rng, 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)ag_rng_below(&rng, 8 + hlen);
            static const char alphabet[] = "0123456789[]{}\",:-e. FBIU";
            m[at] = ag_rng_below(&rng, 2) ? (unsigned char)alphabet[ag_rng_below(&rng, sizeof alphabet - 1)]
                                          : (unsigned char)ag_rng_u64(&rng);
        }
        write_file(cut, m, n);
        st_file f;
        if (st_open(cut, &f, err, sizeof err) == 0) {
            opened++;
            for (int i = 0; i < f.n; i++) {
                const char *lo = f.map, *d = f.t[i].data;
                CHECK(d >= lo && d + f.t[i].nbytes <= lo + f.size, "tensor %s outside the mapping", f.t[i].name);
                volatile unsigned char sum = 0; /* touch every byte (ASan catches a bad range) */
                for (size_t k = 0; k < f.t[i].nbytes; k++) sum += (unsigned char)d[k];
            }
        } else {
            CHECK(one_line_naming(err, cut), "mutation %d: %s", it, err);
        }
        st_close(&f);
    }
    printf("  %d of 3000 mutated headers still valid (all in range)\n", opened);
    free(m);
    free(orig);
}

/* ---- model helpers ---- */

static llama_config cfg_gqa_untied(void) {
    llama_config c = {.dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .hidden_dim = 48,
                      .vocab_size = 37, .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 0};
    return c;
}

static llama_config cfg_tied(void) {
    llama_config c = {.dim = 16, .n_layers = 3, .n_heads = 2, .n_kv_heads = 2, .hidden_dim = 40,
                      .vocab_size = 23, .max_seq_len = 32, .norm_eps = 1e-6f, .rope_theta = 500000.0f, .tied = 1};
    return c;
}

static int cfg_equal(const llama_config *a, const llama_config *b) {
    return a->dim == b->dim && a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
           a->hidden_dim == b->hidden_dim && a->vocab_size == b->vocab_size && a->max_seq_len == b->max_seq_len &&
           a->norm_eps == b->norm_eps && a->rope_theta == b->rope_theta && a->tied == b->tied;
}

/* Every tensor of the model, in a fixed order, with a name for messages. */
static int model_tensors(const model_weights *w, const ag_tensor **t, const char **names) {
    int n = 0;
    static char nb[512][48];
    t[n] = &w->tok_emb; names[n++] = "tok_emb";
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const llama_layer_weights *L = &w->layers[l];
        const ag_tensor *lt[9] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w1, &L->w2, &L->w3};
        static const char *ln[9] = {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"};
        for (int k = 0; k < 9; k++) {
            snprintf(nb[n], sizeof nb[n], "layers.%d.%s", l, ln[k]);
            t[n] = lt[k];
            names[n] = nb[n];
            n++;
        }
    }
    t[n] = &w->norm; names[n++] = "norm";
    t[n] = &w->cls; names[n++] = "cls";
    return n;
}

static float value_at(const ag_tensor *t, size_t i) {
    float v;
    if (t->dtype == AG_F32) return ((const float *)t->data)[i];
    uint16_t h;
    memcpy(&h, (const char *)t->data + 2 * i, 2);
    ag_to_f32(&v, &h, t->dtype, 1);
    return v;
}

static float round_to(float x, ag_dtype d) {
    if (d == AG_BF16) return ag_bf16_to_f32(ag_f32_to_bf16(x));
    if (d == AG_F16) return ag_f16_to_f32(ag_f32_to_f16(x));
    return x;
}

/* Mismatches between got and round_to(want, rnd), over shapes and every value. */
static int model_mismatches(const model_weights *want, const model_weights *got, ag_dtype rnd) {
    const ag_tensor *a[512], *b[512];
    const char *na[512], *nb[512];
    int n = model_tensors(want, a, na);
    model_tensors(got, b, nb);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (a[i]->rows != b[i]->rows || a[i]->cols != b[i]->cols) {
            printf("    %s: shape [%d,%d] vs [%d,%d]\n", na[i], a[i]->rows, a[i]->cols, b[i]->rows, b[i]->cols);
            bad++;
            continue;
        }
        size_t ne = ag_numel(a[i]);
        for (size_t k = 0; k < ne; k++) {
            float x = round_to(value_at(a[i], k), rnd), y = value_at(b[i], k);
            if (memcmp(&x, &y, 4)) {
                if (bad < 3) printf("    %s[%zu]: want %.9g got %.9g\n", na[i], k, (double)x, (double)y);
                bad++;
            }
        }
    }
    return bad;
}

/* ---- round trips ---- */

static void hf_round_trip(const llama_config *cfg, ag_dtype dt, size_t shard, const char *sub) {
    char dir[512], err[MODEL_ERR_LEN];
    tmp_path(dir, sizeof dir, sub);
    model_weights w, r, r2;
    CHECK(model_init_random(&w, cfg, 1234, 0.05f) == 0, "init");
    CHECK(model_save_hf(dir, &w, dt, shard, err, sizeof err) == 0, "save: %s", err);
    if (model_load(dir, &r, err, sizeof err) != 0) {
        CHECK(0, "load %s: %s", sub, err);
        model_free(&w);
        return;
    }
    CHECK(cfg_equal(&w.cfg, &r.cfg), "%s: config differs (eps %g/%g theta %g/%g)", sub, (double)w.cfg.norm_eps,
          (double)r.cfg.norm_eps, (double)w.cfg.rope_theta, (double)r.cfg.rope_theta);
    CHECK(r.dtype == dt, "%s: dtype %d want %d", sub, (int)r.dtype, (int)dt);
    CHECK(!strcmp(r.format, "hf"), "format %s", r.format);
    CHECK(r.norm.dtype == AG_F32 && r.layers[0].attn_norm.dtype == AG_F32 && r.layers[0].ffn_norm.dtype == AG_F32,
          "%s: norm weights not f32", sub);
    CHECK(r.layers[0].wq.dtype == dt && r.layers[0].w2.dtype == dt && r.tok_emb.dtype == dt, "%s: matrix dtype", sub);
    CHECK(cfg->tied ? r.cls.data == r.tok_emb.data : r.cls.data != r.tok_emb.data, "%s: tying", sub);
    int bad = model_mismatches(&w, &r, dt);
    CHECK(bad == 0, "%s: %d values differ from the original (rounded to the file dtype)", sub, bad);
    CHECK(model_load(dir, &r2, err, sizeof err) == 0, "reload: %s", err);
    CHECK(r2.fingerprint == r.fingerprint, "%s: same files, different fingerprints", sub);
    if (dt == AG_F32) CHECK(r.fingerprint == w.fingerprint, "%s: identical values should give the same fingerprint", sub);
    else CHECK(r.fingerprint != w.fingerprint, "%s: rounded weights gave the f32 fingerprint", sub);
    /* model_to_f32: owned, writable, same values, fingerprint kept. */
    uint64_t fp = r2.fingerprint;
    CHECK(model_to_f32(&r2, err, sizeof err) == 0, "to_f32: %s", err);
    CHECK(r2.dtype == AG_F32 && r2.layers[cfg->n_layers - 1].w3.dtype == AG_F32 && r2.cls.dtype == AG_F32, "to_f32 dtypes");
    CHECK(model_mismatches(&w, &r2, dt) == 0, "%s: to_f32 changed values", sub);
    CHECK(r2.fingerprint == fp, "to_f32 changed the fingerprint");
    ((float *)r2.layers[0].wq.data)[0] += 1.0f; /* writable (would fault on a read-only mapping) */
    CHECK(cfg->tied ? r2.cls.data == r2.tok_emb.data : 1, "to_f32 untied the classifier");
    model_free(&r2);
    model_free(&r);
    model_free(&w);
    CHECK(r.layers == NULL && r.priv == NULL, "model_free leaves a cleared struct");
    model_free(&r); /* and is idempotent */
}

static void test_hf_f32_round_trip_is_exact_gqa_untied(void) {
    llama_config c = cfg_gqa_untied();
    hf_round_trip(&c, AG_F32, 0, "hf_f32");
    char p[512];
    tmp_path(p, sizeof p, "hf_f32/model.safetensors.index.json");
    CHECK(!exists(p), "an unsharded save wrote an index");
}

static void test_hf_f32_round_trip_is_exact_tied(void) {
    llama_config c = cfg_tied();
    hf_round_trip(&c, AG_F32, 0, "hf_f32_tied");
    char p[512], err[512];
    tmp_path(p, sizeof p, "hf_f32_tied/model.safetensors");
    st_file f;
    CHECK(st_open(p, &f, err, sizeof err) == 0, "%s", err);
    CHECK(st_find(&f, "lm_head.weight") == NULL, "tied model wrote lm_head.weight");
    CHECK(st_meta(&f, "format") && !strcmp(st_meta(&f, "format"), "pt"), "format metadata missing");
    const st_tensor *n = st_find(&f, "model.layers.2.post_attention_layernorm.weight");
    CHECK(n && n->ndim == 1 && n->shape[0] == 16, "norm weight not 1-D [dim]");
    st_close(&f);
}

static void test_hf_bf16_round_trip_equals_bf16_rounding(void) {
    llama_config c = cfg_gqa_untied();
    hf_round_trip(&c, AG_BF16, 0, "hf_bf16");
    llama_config t = cfg_tied();
    hf_round_trip(&t, AG_BF16, 0, "hf_bf16_tied");
}

static void test_hf_f16_round_trip_equals_f16_rounding(void) {
    llama_config c = cfg_gqa_untied();
    hf_round_trip(&c, AG_F16, 0, "hf_f16");
}

static void test_hf_sharded_round_trip_writes_index_and_shards(void) {
    llama_config c = cfg_gqa_untied();
    /* layers hold 2*32*32 + 2*16*32 + 3*48*32 floats = 22528 bytes each; embeddings 4736 bytes */
    hf_round_trip(&c, AG_F32, 12000, "hf_sharded");
    char p[512], err[512];
    tmp_path(p, sizeof p, "hf_sharded/model.safetensors.index.json");
    CHECK(exists(p), "no index");
    tmp_path(p, sizeof p, "hf_sharded/model.safetensors");
    CHECK(!exists(p), "model.safetensors written next to the shards");
    int n_sh = 0;
    for (int k = 2; k < 99 && !n_sh; k++) {
        char q[512];
        snprintf(q, sizeof q, "%s/hf_sharded/model-00001-of-%05d.safetensors", g_tmp, k);
        if (exists(q)) n_sh = k;
    }
    CHECK(n_sh >= 3, "expected at least 3 shards, found %d", n_sh);
    for (int k = 1; k <= n_sh; k++) {
        char q[512];
        snprintf(q, sizeof q, "%s/hf_sharded/model-%05d-of-%05d.safetensors", g_tmp, k, n_sh);
        st_file f;
        CHECK(st_open(q, &f, err, sizeof err) == 0, "%s", err);
        CHECK(f.n >= 1, "empty shard %d", k);
        size_t bytes = 0;
        for (int i = 0; i < f.n; i++) bytes += f.t[i].nbytes;
        CHECK(bytes <= 12000 || f.n == 1, "shard %d holds %zu bytes in %d tensors", k, bytes, f.n);
        st_close(&f);
    }
    /* Re-saving unsharded into the same directory removes the stale index. */
    model_weights w, r;
    model_init_random(&w, &c, 99, 0.1f);
    tmp_path(p, sizeof p, "hf_sharded");
    CHECK(model_save_hf(p, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(p, &r, err, sizeof err) == 0, "%s", err);
    CHECK(model_mismatches(&w, &r, AG_F32) == 0, "re-saved directory loads stale weights");
    model_free(&r);
    model_free(&w);
}

static void llama2c_round_trip(const llama_config *cfg, const char *name) {
    char path[512], err[MODEL_ERR_LEN];
    tmp_path(path, sizeof path, name);
    model_weights w, r;
    model_init_random(&w, cfg, 77, 0.02f);
    CHECK(model_save_llama2c(path, &w, err, sizeof err) == 0, "%s", err);
    size_t n;
    unsigned char *b = read_all(path, &n);
    if (!b) return;
    int32_t h[7];
    memcpy(h, b, 28);
    int hd = cfg->dim / cfg->n_heads, kv = cfg->n_kv_heads * hd;
    CHECK(h[0] == cfg->dim && h[1] == cfg->hidden_dim && h[2] == cfg->n_layers && h[3] == cfg->n_heads &&
              h[4] == cfg->n_kv_heads && h[5] == (cfg->tied ? 1 : -1) * cfg->vocab_size && h[6] == cfg->max_seq_len,
          "%s: header", name);
    size_t floats = (size_t)cfg->vocab_size * cfg->dim * (cfg->tied ? 1 : 2) + cfg->dim +
                    (size_t)cfg->n_layers * (2 * cfg->dim + 2 * cfg->dim * cfg->dim + 2 * kv * cfg->dim + 3 * cfg->hidden_dim * cfg->dim) +
                    (size_t)cfg->max_seq_len * hd;
    CHECK(n == 28 + 4 * floats, "%s: %zu bytes want %zu", name, n, 28 + 4 * floats);
    /* freq_cis_real[pos=3][i=1] = cos(3 * theta^(-2/hd)) follows rms_final. */
    size_t fc = 28 + 4 * (floats - (size_t)cfg->max_seq_len * hd - (cfg->tied ? 0 : (size_t)cfg->vocab_size * cfg->dim));
    float re, im;
    memcpy(&re, b + fc + 4 * (3 * (hd / 2) + 1), 4);
    memcpy(&im, b + fc + 4 * ((size_t)cfg->max_seq_len * hd / 2 + 3 * (hd / 2) + 1), 4);
    double ang = 3.0 * pow((double)cfg->rope_theta, -2.0 / hd);
    CHECK_CLOSE(re, cos(ang), 1e-6, 0, "freq_cis_real[3][1]");
    CHECK_CLOSE(im, sin(ang), 1e-6, 0, "freq_cis_imag[3][1]");
    /* wk of layer 1 sits where llama2.c's run.c expects it. */
    size_t off = 28 + 4 * ((size_t)cfg->vocab_size * cfg->dim + (size_t)cfg->n_layers * cfg->dim +
                           (size_t)cfg->n_layers * cfg->dim * cfg->dim + (size_t)kv * cfg->dim);
    float v;
    memcpy(&v, b + off + 4 * 5, 4);
    CHECK(v == ((float *)w.layers[1].wk.data)[5], "%s: wk[1][5] at the wrong offset", name);
    free(b);
    CHECK(model_load(path, &r, err, sizeof err) == 0, "%s", err);
    if (!r.layers) { model_free(&w); return; }
    llama_config want = *cfg;
    want.norm_eps = 1e-5f;
    want.rope_theta = 10000.0f;
    CHECK(cfg_equal(&want, &r.cfg), "%s: config differs", name);
    CHECK(!strcmp(r.format, "llama2c") && r.dtype == AG_F32, "%s: format %s", name, r.format);
    CHECK(model_mismatches(&w, &r, AG_F32) == 0, "%s: values differ", name);
    CHECK(cfg->tied ? r.cls.data == r.tok_emb.data : r.cls.data != r.tok_emb.data, "%s: tying", name);
    model_free(&r);
    model_free(&w);
}

static void test_llama2c_round_trip_tied_and_untied_gqa(void) {
    llama_config a = cfg_gqa_untied(), b = cfg_tied();
    a.rope_theta = 10000.0f;
    b.rope_theta = 10000.0f;
    llama2c_round_trip(&a, "untied_gqa.bin");
    llama2c_round_trip(&b, "tied.bin");
}

/* ---- wq/wk permutation ---- */

/* dim 16, 2 heads (hd 8), 1 kv head. */
static llama_config cfg_perm(void) {
    llama_config c = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .hidden_dim = 12,
                      .vocab_size = 5, .max_seq_len = 16, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    return c;
}

/* Rewrites a safetensors file: drops `drop` (may be NULL), appends `add`. */
static int rewrite_st(const char *path, const char *drop, const st_out *add, int n_add, const st_out *prepend,
                      char *err, size_t errlen) {
    st_file f;
    if (st_open(path, &f, err, errlen)) return -1;
    st_out *o = calloc((size_t)f.n + (size_t)n_add + 2, sizeof(st_out));
    int n = 0;
    if (prepend) o[n++] = *prepend;
    for (int i = 0; i < f.n; i++) {
        if (drop && !strcmp(f.t[i].name, drop)) continue;
        o[n].name = f.t[i].name;
        o[n].dtype = f.t[i].dtype;
        o[n].ndim = f.t[i].ndim;
        memcpy(o[n].shape, f.t[i].shape, sizeof o[n].shape);
        o[n].data = f.t[i].data;
        n++;
    }
    for (int i = 0; i < n_add; i++) o[n++] = add[i];
    int rc = st_write(path, o, n, NULL, NULL, 0, err, errlen);
    free(o);
    st_close(&f);
    return rc;
}

static void test_hf_reader_unpermutes_wq_wk_rows_by_hand_table(void) {
    char dir[512], path[600], err[MODEL_ERR_LEN];
    tmp_path(dir, sizeof dir, "perm_read");
    llama_config c = cfg_perm();
    model_weights w, r;
    model_init_random(&w, &c, 5, 0.1f);
    CHECK(model_save_hf(dir, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    /* HF file rows labelled: row r, column k holds 100*r + k. */
    static float q[16 * 16], k[8 * 16];
    for (int i = 0; i < 16 * 16; i++) q[i] = (float)(100 * (i / 16) + i % 16);
    for (int i = 0; i < 8 * 16; i++) k[i] = (float)(100 * (i / 16) + i % 16);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_out qo = {"model.layers.0.self_attn.q_proj.weight", "F32", 2, {16, 16}, q};
    st_out ko = {"model.layers.0.self_attn.k_proj.weight", "F32", 2, {8, 16}, k};
    CHECK(rewrite_st(path, "model.layers.0.self_attn.q_proj.weight", &qo, 1, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(rewrite_st(path, "model.layers.0.self_attn.k_proj.weight", &ko, 1, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(dir, &r, err, sizeof err) == 0, "%s", err);
    if (!r.layers) { model_free(&w); return; }
    /* Meta row (h, 2i+j) = HF row (h, j*hd/2 + i), hd = 8: written out by hand. */
    static const int q_from[16] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
    static const int k_from[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    const float *wq = r.layers[0].wq.data, *wk = r.layers[0].wk.data;
    for (int m = 0; m < 16; m++)
        for (int col = 0; col < 16; col += 5)
            CHECK(wq[m * 16 + col] == (float)(100 * q_from[m] + col), "wq Meta row %d col %d holds %g: expected HF row %d", m,
                  col, (double)wq[m * 16 + col], q_from[m]);
    for (int m = 0; m < 8; m++)
        for (int col = 0; col < 16; col += 5)
            CHECK(wk[m * 16 + col] == (float)(100 * k_from[m] + col), "wk Meta row %d col %d holds %g: expected HF row %d", m,
                  col, (double)wk[m * 16 + col], k_from[m]);
    /* wv is not permuted. */
    CHECK(memcmp(r.layers[0].wv.data, w.layers[0].wv.data, 8 * 16 * 4) == 0, "wv was permuted");
    model_free(&r);
    model_free(&w);
}

static void test_hf_writer_permutes_wq_wk_rows_by_hand_table(void) {
    char dir[512], path[600], err[MODEL_ERR_LEN];
    tmp_path(dir, sizeof dir, "perm_write");
    llama_config c = cfg_perm();
    model_weights w;
    model_init_random(&w, &c, 6, 0.1f);
    float *wq = w.layers[0].wq.data, *wk = w.layers[0].wk.data;
    for (int i = 0; i < 16 * 16; i++) wq[i] = (float)(100 * (i / 16) + i % 16); /* Meta row m labelled */
    for (int i = 0; i < 8 * 16; i++) wk[i] = (float)(100 * (i / 16) + i % 16);
    CHECK(model_save_hf(dir, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_file f;
    CHECK(st_open(path, &f, err, sizeof err) == 0, "%s", err);
    const st_tensor *q = st_find(&f, "model.layers.0.self_attn.q_proj.weight");
    const st_tensor *k = st_find(&f, "model.layers.0.self_attn.k_proj.weight");
    CHECK(q && k, "q/k missing");
    if (q && k) {
        /* HF row (h, j*hd/2 + i) = Meta row (h, 2i+j), hd = 8. */
        static const int q_from[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
        static const int k_from[8] = {0, 2, 4, 6, 1, 3, 5, 7};
        for (int r = 0; r < 16; r++) {
            float v;
            memcpy(&v, (const char *)q->data + 4 * (r * 16 + 3), 4);
            CHECK(v == (float)(100 * q_from[r] + 3), "HF q row %d holds %g: expected Meta row %d", r, (double)v, q_from[r]);
        }
        for (int r = 0; r < 8; r++) {
            float v;
            memcpy(&v, (const char *)k->data + 4 * (r * 16 + 3), 4);
            CHECK(v == (float)(100 * k_from[r] + 3), "HF k row %d holds %g: expected Meta row %d", r, (double)v, k_from[r]);
        }
    }
    st_close(&f);
    model_free(&w);
}

/* ---- mixed dtypes, alignment, dispatch ---- */

static void test_hf_mixed_dtypes_and_unaligned_tensors_load_correctly(void) {
    char dir[512], path[600], err[MODEL_ERR_LEN];
    llama_config c = cfg_gqa_untied();
    model_weights w, r;
    model_init_random(&w, &c, 3, 0.1f);
    /* (1) BF16 directory with the embedding rewritten as F32: matrices promoted to f32. */
    tmp_path(dir, sizeof dir, "mixed");
    CHECK(model_save_hf(dir, &w, AG_BF16, 0, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_out emb = {"model.embed_tokens.weight", "F32", 2, {37, 32}, w.tok_emb.data};
    /* a 3-element F16 tensor first shifts every following tensor to an odd address */
    static const uint16_t odd[3] = {1, 2, 3};
    st_out pre = {"extra.odd", "F16", 1, {3}, odd};
    CHECK(rewrite_st(path, "model.embed_tokens.weight", &emb, 1, &pre, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(dir, &r, err, sizeof err) == 0, "%s", err);
    if (r.layers) {
        CHECK(r.dtype == AG_F32 && r.layers[1].w2.dtype == AG_F32 && r.tok_emb.dtype == AG_F32, "mixed: not promoted to f32");
        CHECK(memcmp(r.tok_emb.data, w.tok_emb.data, 37 * 32 * 4) == 0, "mixed: f32 embedding changed");
        int bad = 0;
        for (int i = 0; i < 48 * 32; i++)
            bad += ((float *)r.layers[1].w1.data)[i] != round_to(((float *)w.layers[1].w1.data)[i], AG_BF16);
        CHECK(bad == 0, "mixed: %d w1 values differ from bf16 rounding", bad);
        CHECK(r.fingerprint != 0, "fingerprint");
    }
    model_free(&r);
    /* (2) F32 directory with every tensor misaligned: copied, values exact. */
    tmp_path(dir, sizeof dir, "unaligned");
    CHECK(model_save_hf(dir, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(rewrite_st(path, NULL, NULL, 0, &pre, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(dir, &r, err, sizeof err) == 0, "%s", err);
    if (r.layers) {
        CHECK((uintptr_t)r.layers[0].wv.data % 4 == 0 && (uintptr_t)r.tok_emb.data % 4 == 0, "tensor left unaligned");
        CHECK(model_mismatches(&w, &r, AG_F32) == 0, "unaligned: values differ");
    }
    model_free(&r);
    model_free(&w);
}

static void test_model_load_dispatches_on_path(void) {
    char dir[512], p[600], err[MODEL_ERR_LEN];
    llama_config c = cfg_tied();
    model_weights w, r;
    model_init_random(&w, &c, 8, 0.1f);
    tmp_path(dir, sizeof dir, "dispatch");
    CHECK(model_save_hf(dir, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    const char *forms[3] = {"/config.json", "/model.safetensors", "/"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", dir, forms[i]);
        CHECK(model_load(p, &r, err, sizeof err) == 0 && !strcmp(r.format, "hf"), "%s: %s", p, err);
        model_free(&r);
    }
    /* A llama2.c file under another extension is recognised by its header and size. */
    c.rope_theta = 10000.0f;
    model_free(&w);
    model_init_random(&w, &c, 8, 0.1f);
    snprintf(p, sizeof p, "%s/weights.dat", g_tmp);
    CHECK(model_save_llama2c(p, &w, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(p, &r, err, sizeof err) == 0 && !strcmp(r.format, "llama2c"), "%s: %s", p, err);
    CHECK(model_mismatches(&w, &r, AG_F32) == 0, "weights.dat values");
    model_free(&r);
    model_free(&w);
}

static void test_model_init_random_is_deterministic_and_param_count_matches(void) {
    llama_config c = cfg_gqa_untied();
    model_weights a, b, d;
    CHECK(model_init_random(&a, &c, 42, 0.02f) == 0 && model_init_random(&b, &c, 42, 0.02f) == 0 &&
              model_init_random(&d, &c, 43, 0.02f) == 0, "init");
    CHECK(model_mismatches(&a, &b, AG_F32) == 0 && a.fingerprint == b.fingerprint, "same seed, different weights");
    CHECK(a.fingerprint != d.fingerprint && memcmp(a.layers[0].wq.data, d.layers[0].wq.data, 64), "seed ignored");
    const float *n = a.layers[1].ffn_norm.data;
    double mean = 0, var = 0;
    for (int i = 0; i < 32; i++) mean += n[i] / 32.0;
    for (int i = 0; i < 32; i++) var += (n[i] - mean) * (n[i] - mean) / 31.0;
    CHECK(fabs(mean - 1.0) < 0.08 && sqrt(var) > 0.05 && sqrt(var) < 0.2, "norm weights mean %g sd %g: want ~1 +- 0.1", mean,
          sqrt(var));
    const float *m = a.layers[0].w1.data;
    double s2 = 0;
    for (int i = 0; i < 48 * 32; i++) s2 += (double)m[i] * m[i];
    CHECK_CLOSE(sqrt(s2 / (48 * 32)), 0.02, 0.002, 0, "matrix std");
    size_t want = 37 * 32 * 2 + 32 + 2 * (2 * 32 + 2 * 32 * 32 + 2 * 16 * 32 + 3 * 48 * 32);
    CHECK(model_param_count(&c) == want, "param count %zu want %zu", model_param_count(&c), want);
    llama_config s = {.dim = 64, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4, .hidden_dim = 172, .vocab_size = 512,
                      .max_seq_len = 512, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    CHECK(model_param_count(&s) == 260032, "stories260K count %zu", model_param_count(&s));
    llama_config bad = c;
    bad.n_kv_heads = 3;
    model_weights x;
    CHECK(model_init_random(&x, &bad, 1, 0.1f) == -1, "n_heads %% n_kv_heads != 0 accepted");
    model_free(&a);
    model_free(&b);
    model_free(&d);
}

/* ---- the real stories260K ---- */

static void test_stories260k_loads_with_the_right_config_and_raw_values(void) {
    char buf[512], err[MODEL_ERR_LEN];
    const char *path = test_shared("models/stories260K.bin", buf, sizeof buf);
    if (!path) SKIP("../shared/models/stories260K.bin is absent");
    model_weights w, w2;
    if (model_load(path, &w, err, sizeof err) != 0) {
        CHECK(0, "%s", err);
        return;
    }
    llama_config want = {.dim = 64, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4, .hidden_dim = 172, .vocab_size = 512,
                         .max_seq_len = 512, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    CHECK(cfg_equal(&w.cfg, &want), "config {dim %d layers %d heads %d kv %d hidden %d vocab %d seq %d tied %d}", w.cfg.dim,
          w.cfg.n_layers, w.cfg.n_heads, w.cfg.n_kv_heads, w.cfg.hidden_dim, w.cfg.vocab_size, w.cfg.max_seq_len, w.cfg.tied);
    CHECK(!strcmp(w.format, "llama2c") && w.dtype == AG_F32 && w.cls.data == w.tok_emb.data, "format/dtype/tying");
    size_t n;
    unsigned char *raw = read_all(path, &n);
    float first[8];
    memcpy(first, raw + 28, sizeof first);
    for (int i = 0; i < 8; i++) CHECK(((float *)w.tok_emb.data)[i] == first[i], "tok_emb[%d]", i);
    CHECK_CLOSE(first[0], -0.29474878311157227, 1e-9, 0, "first raw float");
    /* wq of layer 0 starts after the embedding and the 5 rms_att vectors. */
    float wq0;
    memcpy(&wq0, raw + 28 + 4 * (512 * 64 + 5 * 64), 4);
    CHECK(((float *)w.layers[0].wq.data)[0] == wq0, "wq[0][0]");
    CHECK(model_load(path, &w2, err, sizeof err) == 0 && w2.fingerprint == w.fingerprint, "fingerprint not stable");
    model_free(&w2);
    /* Exported again as llama2.c: the same bytes, the freq_cis tables to float rounding. */
    char out[512];
    tmp_path(out, sizeof out, "stories_again.bin");
    CHECK(model_save_llama2c(out, &w, err, sizeof err) == 0, "%s", err);
    size_t n2;
    unsigned char *again = read_all(out, &n2);
    CHECK(again && n2 == n, "re-export has %zu bytes, original %zu", n2, n);
    if (again && n2 == n) {
        size_t fc = 28 + 4 * (size_t)(512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64);
        CHECK(memcmp(raw, again, fc) == 0 && fc + 2 * 512 * 4 * 4 == n, "weights differ from the original bytes");
        double maxd = 0;
        for (size_t o = fc; o < n; o += 4) {
            float a, b;
            memcpy(&a, raw + o, 4);
            memcpy(&b, again + o, 4);
            if (fabs(a - b) > maxd) maxd = fabs(a - b);
        }
        CHECK(maxd < 1e-5, "freq_cis tables differ by %g", maxd);
        printf("  freq_cis re-export max |diff| %.3g\n", maxd);
    }
    free(again);
    free(raw);
    /* And through HF F32: the same values, config and fingerprint. */
    char dir[512];
    tmp_path(dir, sizeof dir, "stories_hf");
    CHECK(model_save_hf(dir, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(dir, &w2, err, sizeof err) == 0, "%s", err);
    if (w2.layers) {
        CHECK(cfg_equal(&w.cfg, &w2.cfg), "HF config differs");
        CHECK(model_mismatches(&w, &w2, AG_F32) == 0, "HF values differ");
        CHECK(w2.fingerprint == w.fingerprint, "same weights via HF F32 give another fingerprint");
    }
    model_free(&w2);
    model_free(&w);
}

/* ---- bad model files ---- */

static void expect_load_error(const char *path, const char *name1, const char *name2, const char *what) {
    model_weights w;
    char err[MODEL_ERR_LEN] = "";
    int rc = model_load(path, &w, err, sizeof err);
    CHECK(rc == -1, "%s: accepted", what);
    CHECK(one_line_naming(err, name1), "%s: error '%s' does not name '%s' in one line", what, err, name1);
    if (name2) CHECK(strstr(err, name2) != NULL, "%s: error '%s' does not name '%s'", what, err, name2);
    CHECK(w.layers == NULL && w.priv == NULL, "%s: model not cleared", what);
    model_free(&w);
    printf("  %-28s -> %s\n", what, err);
}

static void fresh_hf(const char *dir, const model_weights *w) {
    char err[MODEL_ERR_LEN];
    CHECK(model_save_hf(dir, w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
}

static void test_bad_model_files_give_one_line_errors(void) {
    char dir[512], p[600], q[600], err[MODEL_ERR_LEN];
    llama_config c = cfg_gqa_untied();
    model_weights w;
    model_init_random(&w, &c, 11, 0.1f);

    /* llama2.c */
    tmp_path(p, sizeof p, "bad.bin");
    CHECK(model_save_llama2c(p, &w, err, sizeof err) == 0, "%s", err);
    size_t n;
    unsigned char *b = read_all(p, &n);
    write_file(p, b, n - 4);
    char want[200];
    snprintf(want, sizeof want, "truncated: expected %zu bytes, file has %zu", n, n - 4);
    expect_load_error(p, p, want, "truncated .bin");
    unsigned char *g = calloc(n + 8, 1);
    memcpy(g, b, n);
    write_file(p, g, n + 8);
    expect_load_error(p, p, "8 unexpected bytes", "trailing garbage .bin");
    int32_t h[7] = {30, 48, 2, 4, 2, 37, 64}; /* 30 % 4 != 0 */
    memcpy(g, h, 28);
    write_file(p, g, n);
    expect_load_error(p, p, "n_heads", "wrong header .bin");
    h[0] = 32;
    h[2] = -1;
    memcpy(g, h, 28);
    write_file(p, g, n);
    expect_load_error(p, p, "header", "negative layers .bin");
    write_file(p, b, 20);
    expect_load_error(p, p, "truncated", "20-byte .bin");
    write_file(p, "", 0);
    expect_load_error(p, p, "truncated", "empty .bin");
    free(g);
    free(b);
    tmp_path(q, sizeof q, "notes.txt");
    write_file(q, "hello, this is not a model at all", 33);
    expect_load_error(q, q, "not a model", "text file");
    expect_load_error("/nonexistent/model", "/nonexistent/model", NULL, "missing path");

    /* HF: tensors */
    tmp_path(dir, sizeof dir, "bad_hf");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    fresh_hf(dir, &w);
    static float wide[48 * 33];
    st_out up = {"model.layers.0.mlp.up_proj.weight", "F32", 2, {48, 33}, wide};
    CHECK(rewrite_st(p, "model.layers.0.mlp.up_proj.weight", &up, 1, NULL, err, sizeof err) == 0, "%s", err);
    expect_load_error(dir, p, "model.layers.0.mlp.up_proj.weight has shape [48, 33]: expected [48, 32]", "shape mismatch");
    fresh_hf(dir, &w);
    CHECK(rewrite_st(p, "model.layers.1.self_attn.v_proj.weight", NULL, 0, NULL, err, sizeof err) == 0, "%s", err);
    expect_load_error(dir, p, "missing tensor model.layers.1.self_attn.v_proj.weight", "missing tensor");
    fresh_hf(dir, &w);
    st_out bias = {"model.layers.0.self_attn.q_proj.bias", "F32", 1, {32}, wide};
    CHECK(rewrite_st(p, NULL, &bias, 1, NULL, err, sizeof err) == 0, "%s", err);
    expect_load_error(dir, p, "unexpected tensor model.layers.0.self_attn.q_proj.bias", "extra tensor");
    fresh_hf(dir, &w);
    st_out layer2 = {"model.layers.2.input_layernorm.weight", "F32", 1, {32}, wide};
    CHECK(rewrite_st(p, NULL, &layer2, 1, NULL, err, sizeof err) == 0, "%s", err);
    expect_load_error(dir, p, "model.layers.2.input_layernorm.weight", "tensor of a third layer");
    fresh_hf(dir, &w);
    static int32_t ints[37 * 32];
    st_out emb = {"model.embed_tokens.weight", "I32", 2, {37, 32}, ints};
    CHECK(rewrite_st(p, "model.embed_tokens.weight", &emb, 1, NULL, err, sizeof err) == 0, "%s", err);
    expect_load_error(dir, p, "model.embed_tokens.weight has dtype I32", "integer tensor");
    fresh_hf(dir, &w);
    b = read_all(p, &n);
    write_file(p, b, n / 2);
    free(b);
    expect_load_error(dir, p, NULL, "truncated safetensors");
    unlink(p);
    expect_load_error(dir, dir, "no model.safetensors", "no weights");

    /* HF: config.json */
    fresh_hf(dir, &w);
    snprintf(q, sizeof q, "%s/config.json", dir);
    const char *gpt2 = "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 32}";
    write_file(q, gpt2, strlen(gpt2));
    char exact[700];
    snprintf(exact, sizeof exact, "%s: model_type 'gpt2' is not a Llama model", q);
    model_weights x;
    CHECK(model_load(dir, &x, err, sizeof err) == -1 && !strcmp(err, exact), "gpt2 error '%s', want '%s'", err, exact);
    write_file(q, "{\"model_type\": \"llama\", ", 24);
    expect_load_error(dir, q, "not valid JSON", "config not JSON");
    const char *nohid = "{\"model_type\": \"llama\", \"num_hidden_layers\": 2}";
    write_file(q, nohid, strlen(nohid));
    expect_load_error(dir, q, "hidden_size", "config without hidden_size");
    const char *badkv = "{\"model_type\": \"llama\", \"hidden_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                        " \"num_key_value_heads\": 3, \"intermediate_size\": 48, \"vocab_size\": 37}";
    write_file(q, badkv, strlen(badkv));
    expect_load_error(dir, q, "n_kv_heads", "heads not divisible");
    unlink(q);
    expect_load_error(dir, dir, "config.json", "no config.json");
    snprintf(q, sizeof q, "%s/params.json", dir);
    write_file(q, "{}", 2);
    expect_load_error(dir, dir, "params.json", "Meta directory");
    unlink(q);

    /* HF: sharded index */
    tmp_path(dir, sizeof dir, "bad_sharded");
    CHECK(model_save_hf(dir, &w, AG_F32, 12000, err, sizeof err) == 0, "%s", err);
    snprintf(q, sizeof q, "%s/model.safetensors.index.json", dir);
    b = read_all(q, &n);
    char *idx = calloc(n + 64, 1);
    memcpy(idx, b, n);
    free(b);
    char *at = strstr(idx, "model-00002-of-");
    if (at) {
        memcpy(at + 8, "777", 3); /* model-00777-of-...: absent */
        write_file(q, idx, n);
        expect_load_error(dir, "model-00777-of-", "cannot open", "index names a missing shard");
        memcpy(at, "../00002", 8); /* a path outside the directory */
        write_file(q, idx, n);
        expect_load_error(dir, q, "../00002", "index escapes the directory");
        memcpy(at, "model-00002", 11);
        write_file(q, idx, n);
        model_weights ok;
        CHECK(model_load(dir, &ok, err, sizeof err) == 0, "restored index: %s", err);
        model_free(&ok);
        /* A shard losing one of its tensors while the index still lists it. */
        char sh[600];
        snprintf(sh, sizeof sh, "%s/", dir);
        size_t dl = strlen(sh);
        memcpy(sh + dl, at, 32);
        sh[dl + strcspn(at, "\"")] = 0;
        st_file f;
        CHECK(st_open(sh, &f, err, sizeof err) == 0, "%s", err);
        char victim[128];
        snprintf(victim, sizeof victim, "%s", f.n ? f.t[0].name : "");
        st_close(&f);
        CHECK(rewrite_st(sh, victim, NULL, 0, NULL, err, sizeof err) == 0, "%s", err);
        expect_load_error(dir, q, victim, "index lists a missing tensor");
    } else {
        CHECK(0, "no second shard in the index");
    }
    free(idx);
    model_free(&w);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_model_files_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_safetensors_round_trip_keeps_names_shapes_dtypes_metadata_and_bytes);
    RUN(test_corrupt_safetensors_give_one_line_errors_naming_the_file);
    RUN(test_truncated_and_mutated_safetensors_never_crash);
    RUN(test_hf_f32_round_trip_is_exact_gqa_untied);
    RUN(test_hf_f32_round_trip_is_exact_tied);
    RUN(test_hf_bf16_round_trip_equals_bf16_rounding);
    RUN(test_hf_f16_round_trip_equals_f16_rounding);
    RUN(test_hf_sharded_round_trip_writes_index_and_shards);
    RUN(test_llama2c_round_trip_tied_and_untied_gqa);
    RUN(test_hf_reader_unpermutes_wq_wk_rows_by_hand_table);
    RUN(test_hf_writer_permutes_wq_wk_rows_by_hand_table);
    RUN(test_hf_mixed_dtypes_and_unaligned_tensors_load_correctly);
    RUN(test_model_load_dispatches_on_path);
    RUN(test_model_init_random_is_deterministic_and_param_count_matches);
    RUN(test_stories260k_loads_with_the_right_config_and_raw_values);
    RUN(test_bad_model_files_give_one_line_errors);
    test_rmtree(g_tmp);
    return TEST_MAIN_END("test_model_files");
}
