/* Hostile and damaged files (issue 15): every file here is crafted by this test, byte by byte
 * or by damaging a valid one, and must give one line naming the file, never a crash, an
 * out-of-bounds read or an allocation the file does not pay for:
 *   .pth tensors whose size/stride/offset arithmetic wraps 64 bits, expanded (stride 0) views;
 *   a 46-byte zip with a zip64 end-of-central-directory locator;
 *   HDF5 checkpoints declaring more elements than they hold (contiguous and chunked), fields
 *   out of range (negative step, sizes whose product passes 2^64);
 *   NaN/Inf in model weights and in adapters;
 *   a safetensors file named .bin; `inspect` of damaged adapters; `export` format inference;
 *   pruning that must keep the checkpoint just written.
 * Deliberately not here: runs of the trainer (tests/test_robust_run.c). */
#include <hdf5.h>
#include <stdint.h>
#include <string.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/adapter_io.h"
#include "checkpoints/model_file.h"
#include "tests/test.h"

static char g_dir[256];

static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static int one_line_naming(const char *err, const char *path) {
    return strstr(err, path) != NULL && strchr(err, '\n') == NULL;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(p, 1, n, f);
        fclose(f);
    }
}

/* ------------------------------------------------------------ a tiny zip + pickle writer */

typedef struct bytes {
    unsigned char b[8192];
    size_t n;
} bytes;

static void put(bytes *o, const void *p, size_t n) {
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void u8(bytes *o, unsigned v) { o->b[o->n++] = (unsigned char)v; }
static void u16(bytes *o, unsigned v) { u8(o, v & 255); u8(o, (v >> 8) & 255); }
static void u32(bytes *o, uint32_t v) { u16(o, v & 0xFFFF); u16(o, v >> 16); }

static uint32_t crc32_of(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

static void pk_str(bytes *o, const char *s) {
    u8(o, 'X');
    u32(o, (uint32_t)strlen(s));
    put(o, s, strlen(s));
}
static void pk_i64(bytes *o, int64_t v) { /* LONG1 with 8 bytes */
    u8(o, 0x8a);
    u8(o, 8);
    for (int i = 0; i < 8; i++) u8(o, (unsigned)(((uint64_t)v >> (8 * i)) & 255));
}
static void pk_global(bytes *o, const char *m, const char *n) {
    u8(o, 'c');
    put(o, m, strlen(m));
    u8(o, '\n');
    put(o, n, strlen(n));
    u8(o, '\n');
}

/* data.pkl: {"adapter_query.weight": tensor(storage "0" of `numel` floats, offset, size, stride)} */
static void pickle_tensor(bytes *o, int64_t numel, int64_t offset, const int64_t *size, const int64_t *stride, int nd) {
    u8(o, 0x80);
    u8(o, 2);
    u8(o, '}');
    u8(o, '(');
    pk_str(o, "adapter_query.weight");
    pk_global(o, "torch._utils", "_rebuild_tensor_v2");
    u8(o, '(');
    u8(o, '(');
    pk_str(o, "storage");
    pk_global(o, "torch", "FloatStorage");
    pk_str(o, "0");
    pk_str(o, "cpu");
    pk_i64(o, numel);
    u8(o, 't');
    u8(o, 'Q');
    pk_i64(o, offset);
    u8(o, '(');
    for (int d = 0; d < nd; d++) pk_i64(o, size[d]);
    u8(o, 't');
    u8(o, '(');
    for (int d = 0; d < nd; d++) pk_i64(o, stride[d]);
    u8(o, 't');
    u8(o, 0x89);
    pk_global(o, "collections", "OrderedDict");
    u8(o, ')');
    u8(o, 'R');
    u8(o, 't');
    u8(o, 'R');
    u8(o, 'u');
    u8(o, '.');
}

/* A STORED zip of the given entries (names, data) as torch.save lays them out. */
static void zip_of(bytes *z, int n, const char *const *names, const bytes *const *data) {
    uint32_t offs[8];
    z->n = 0;
    for (int i = 0; i < n; i++) {
        offs[i] = (uint32_t)z->n;
        uint32_t crc = crc32_of(data[i]->b, data[i]->n);
        u32(z, 0x04034b50u);
        u16(z, 20); u16(z, 0); u16(z, 0); u16(z, 0); u16(z, 0x21);
        u32(z, crc); u32(z, (uint32_t)data[i]->n); u32(z, (uint32_t)data[i]->n);
        u16(z, (unsigned)strlen(names[i])); u16(z, 0);
        put(z, names[i], strlen(names[i]));
        put(z, data[i]->b, data[i]->n);
    }
    uint32_t cd = (uint32_t)z->n;
    for (int i = 0; i < n; i++) {
        u32(z, 0x02014b50u);
        u16(z, 20); u16(z, 20); u16(z, 0); u16(z, 0); u16(z, 0); u16(z, 0x21);
        u32(z, crc32_of(data[i]->b, data[i]->n)); u32(z, (uint32_t)data[i]->n); u32(z, (uint32_t)data[i]->n);
        u16(z, (unsigned)strlen(names[i])); u16(z, 0); u16(z, 0); u16(z, 0); u16(z, 0); u32(z, 0);
        u32(z, offs[i]);
        put(z, names[i], strlen(names[i]));
    }
    uint32_t cds = (uint32_t)z->n - cd;
    u32(z, 0x06054b50u);
    u16(z, 0); u16(z, 0); u16(z, (unsigned)n); u16(z, (unsigned)n);
    u32(z, cds); u32(z, cd); u16(z, 0);
}

/* A .pth holding one tensor view over a storage of `numel` floats; returns its path. */
static const char *craft_pth(const char *name, int64_t numel, int64_t offset, const int64_t *size,
                             const int64_t *stride, int nd) {
    static bytes pkl, storage, version, z;
    memset(&pkl, 0, sizeof pkl);
    memset(&storage, 0, sizeof storage);
    memset(&version, 0, sizeof version);
    pickle_tensor(&pkl, numel, offset, size, stride, nd);
    for (int i = 0; i < 8; i++) { /* 8 floats of storage, whatever numel claims */
        float f = (float)i;
        put(&storage, &f, 4);
    }
    put(&version, "3\n", 2);
    const char *names[3] = {"archive/data.pkl", "archive/data/0", "archive/version"};
    const bytes *data[3] = {&pkl, &storage, &version};
    zip_of(&z, 3, names, data);
    const char *p = tpath(name);
    write_bytes(p, z.b, z.n);
    return p;
}

static void expect_import_fails(const char *p, const char *needle) {
    adapter_data a;
    char err[ADAPTER_ERR_LEN] = "";
    int rc = adapter_import(p, 2, -1, -1, -1, &a, err, sizeof err);
    CHECK(rc == -1, "%s: import must fail", p);
    if (rc == 0) adapter_data_free(&a);
    CHECK(one_line_naming(err, p), "%s: one line naming the file: '%s'", p, err);
    CHECK(!needle || strstr(err, needle), "%s: '%s' lacks '%s'", p, err, needle);
    printf("  e.g. %s\n", err);
}

static void test_pth_size_arithmetic_that_wraps_is_refused(void) {
    /* a stride near 2^63: offset + (size-1)*stride = 2 + 2*(2^63-1) = 2^64 wraps to 0, inside the
     * storage, and element 1 was then read 2^63 floats away */
    int64_t size[2] = {3, 1}, stride[2] = {INT64_MAX, 1};
    expect_import_fails(craft_pth("stride.pth", 8, 2, size, stride, 2), "overflow");
    /* an offset near 2^63: (2^63-1) + 2*(2^62+1) = 2^64+1 wraps to 1 */
    int64_t size1[1] = {3}, stride1[1] = {(INT64_C(1) << 62) + 1};
    expect_import_fails(craft_pth("offset.pth", 8, INT64_MAX, size1, stride1, 1), "overflow");
    /* sizes whose product passes 2^64 */
    int64_t big[2] = {INT64_C(1) << 33, INT64_C(1) << 33}, st3[2] = {0, 0};
    expect_import_fails(craft_pth("sizes.pth", 8, 0, big, st3, 2), "overflow");
    /* an expanded view (stride 0): 2^30 elements from 8 floats of storage */
    int64_t exp_size[2] = {INT64_C(1) << 15, INT64_C(1) << 15};
    expect_import_fails(craft_pth("expand.pth", 8, 0, exp_size, st3, 2), "more than its storage");
    /* the sane view of the same storage reads (the crafting itself is right) */
    int64_t ok_size[2] = {2, 4}, ok_stride[2] = {4, 1};
    tensor_set s;
    char err[ADAPTER_ERR_LEN];
    int rc = pth_read(craft_pth("sane.pth", 8, 0, ok_size, ok_stride, 2), &s, err, sizeof err);
    CHECK(rc == 0 && s.n == 1 && s.t[0].data[7] == 7.0f, "a valid crafted .pth reads: %s", err);
    if (rc == 0) ts_free(&s);
}

static void test_zip64_end_record_in_a_tiny_file_is_refused(void) {
    bytes z;
    memset(&z, 0, sizeof z);
    u32(&z, 0x04034b50u); /* 4 bytes of a local header signature */
    /* zip64 locator: signature, disk, offset of the zip64 end record (points inside the file), disks */
    u32(&z, 0x07064b50u);
    u32(&z, 0);
    u32(&z, 4); u32(&z, 0);
    u32(&z, 1);
    /* end of central directory with the zip64 markers */
    u32(&z, 0x06054b50u);
    u16(&z, 0); u16(&z, 0); u16(&z, 0xFFFF); u16(&z, 0xFFFF);
    u32(&z, 0xFFFFFFFFu); u32(&z, 0xFFFFFFFFu); u16(&z, 0);
    CHECK(z.n == 46, "the crafted zip is %zu bytes", z.n);
    const char *p = tpath("zip64.pth");
    write_bytes(p, z.b, z.n);
    expect_import_fails(p, "zip64");
}

/* ------------------------------------------------------------ HDF5 */

static void make_ckpt(train_ckpt *c, int K, int L, int dim, int H) {
    memset(c, 0, sizeof *c);
    c->version = CKPT_VERSION;
    snprintf(c->method, sizeof c->method, "adapter");
    c->adapter = (adapter_data){K, L, 4, H, dim, GATE_TANH, NULL, NULL};
    c->n_params = (size_t)L * K * dim + (size_t)L * H;
    c->params = calloc(c->n_params, 4);
    c->adam_m = calloc(c->n_params, 4);
    c->adam_v = calloc(c->n_params, 4);
    c->adapter.query = c->params;
    c->adapter.gates = c->params + (size_t)L * K * dim;
    c->step = 3;
    c->adam_t = 3;
    c->config_json = strdup("{}");
}

static void set_attr(const char *p, const char *name, long long v) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_LLONG, &v);
    H5Aclose(a);
    H5Fclose(f);
}

static void set_method(const char *p, const char *m) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Adelete(f, "method");
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(m));
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "method", t, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, m);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    H5Fclose(f);
}

/* Replaces dataset `name` by an f32 one of n elements that are never written (contiguous with
 * late allocation, or chunked): the file stays a few KB whatever n says. */
static void replace_dataset(const char *p, const char *name, hsize_t n, int chunked) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, name, H5P_DEFAULT);
    hsize_t dims[1] = {n}, chunk[1] = {1024};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    hid_t pl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked) H5Pset_chunk(pl, 1, chunk);
    else H5Pset_alloc_time(pl, H5D_ALLOC_TIME_LATE);
    hid_t ds = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    CHECK(ds >= 0, "crafting dataset %s of %llu elements", name, (unsigned long long)n);
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(pl);
    H5Sclose(sp);
    H5Fclose(f);
}

static void expect_ckpt_fails(const char *p, const char *needle) {
    train_ckpt d;
    char err[ADAPTER_ERR_LEN] = "";
    int rc = ckpt_load(p, &d, err, sizeof err);
    CHECK(rc == -1, "%s: ckpt_load must fail", p);
    if (rc == 0) ckpt_free(&d);
    CHECK(one_line_naming(err, p), "one line naming the file: '%s'", err);
    CHECK(!needle || strstr(err, needle), "'%s' lacks '%s'", err, needle);
    printf("  e.g. %s\n", err);
}

static void test_hdf5_declared_sizes_are_checked_before_allocating(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    train_ckpt c;
    char err[ADAPTER_ERR_LEN];
    make_ckpt(&c, 2, 2, 8, 2);
    const char *p = tpath("sizes.h5");
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    /* a full checkpoint whose datasets declare 2^29 and 2^62 elements in a file of a few KB */
    set_method(p, "full");
    set_attr(p, "n_params", 1LL << 29);
    replace_dataset(p, "params", (hsize_t)1 << 29, 0);
    struct stat st;
    stat(p, &st);
    printf("  crafted checkpoint: %lld bytes declaring 2^29 params\n", (long long)st.st_size);
    expect_ckpt_fails(p, "declares more values");
    set_attr(p, "n_params", 1LL << 62);
    replace_dataset(p, "params", (hsize_t)1 << 62, 1);
    expect_ckpt_fails(p, "declares more values");
    /* dims larger than the checkpoint's own n_params */
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    replace_dataset(p, "adam_m", (hsize_t)1 << 40, 1);
    expect_ckpt_fails(p, "n_params");
    /* an HDF5 adapter export whose adapter_query declares 2^29 rows */
    adapter_data a = c.adapter;
    a.n_layers = 4;
    const char *pa = tpath("adapter.h5");
    CHECK(adapter_export(pa, EXPORT_HDF5, &a, err, sizeof err) == 0, "%s", err);
    replace_dataset(pa, ADAPTER_QUERY_NAME, (hsize_t)1 << 29, 0);
    expect_import_fails(pa, "declares more data");
    ckpt_free(&c);
}

static void test_hdf5_checkpoint_fields_are_range_checked(void) {
    train_ckpt c;
    char err[ADAPTER_ERR_LEN];
    make_ckpt(&c, 2, 2, 8, 2);
    const char *p = tpath("fields.h5");
    static const struct { const char *name; long long v; const char *needle; } bad[] = {
        {"step", -5, "step = -5 is out of range"},
        {"epoch", -1, "epoch"},
        {"adam_t", -1, "adam_t"},
        {"micro_index", -7, "micro_index"},
        {"dim", 1LL << 40, "dim"},
        {"n_params", -1, "n_params"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
        set_attr(p, bad[i].name, bad[i].v);
        expect_ckpt_fails(p, bad[i].needle);
    }
    /* L*K*dim wraps to 0 mod 2^64 and L*H equals the stored n_params: the product is checked */
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    set_attr(p, "adapter_layer", 1LL << 21);
    set_attr(p, "n_layers", 1LL << 21);
    set_attr(p, "adapter_len", 1LL << 21);
    set_attr(p, "dim", 1LL << 22);
    set_attr(p, "n_heads", 1);
    set_attr(p, "n_params", 1LL << 21);
    expect_ckpt_fails(p, "does not match");
    ckpt_free(&c);
}

/* Single-byte damage to the attribute messages at the end of an HDF5 export. HDF5 1.10 itself
 * crashes on some of them (segfaults in its attribute parsing): those files are read first in a
 * forked child, so every one of them gives one line and this process survives. */
static void test_hdf5_library_crashes_are_contained(void) {
    char err[ADAPTER_ERR_LEN];
    adapter_data a = {2, 2, 2, 4, 32, GATE_TANH, calloc(128, 4), calloc(8, 4)};
    const char *p = tpath("attr.h5"), *q = tpath("attr_damaged.h5");
    CHECK(adapter_export(p, EXPORT_HDF5, &a, err, sizeof err) == 0, "%s", err);
    adapter_data_free(&a);
    size_t n = 0;
    char *b = test_read_file(p, &n);
    if (!b || n < 200) {
        CHECK(0, "export of %zu bytes", n);
        free(b);
        return;
    }
    int failed = 0, refused = 0, bad_lines = 0;
    for (size_t off = n - 172; off < n - 156; off++) /* where the attribute messages sit */
        for (int v = 0; v < 2; v++) {
            char saved = b[off];
            b[off] = v ? (char)0xff : (char)(saved ^ 0x80);
            write_bytes(q, b, n);
            b[off] = saved;
            adapter_data o;
            err[0] = 0;
            if (adapter_import(q, 2, -1, -1, -1, &o, err, sizeof err) == 0) {
                adapter_data_free(&o);
                continue;
            }
            refused++;
            failed += strstr(err, "the HDF5 library failed") != NULL;
            bad_lines += !one_line_naming(err, q);
        }
    free(b);
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
    printf("  HDF5 %u.%u.%u: %d of 32 damaged files refused, %d of them because the library crashed on them\n", maj,
           min, rel, refused, failed);
    CHECK(bad_lines == 0, "%d refusals are not one line naming the file", bad_lines);
    CHECK(failed > 0 || !(maj == 1 && min == 10), "HDF5 1.10 crashes on some of these; none was contained");
}

/* ------------------------------------------------------------ NaN / Inf */

static void test_nonfinite_weights_and_adapters_are_refused(void) {
    llama_config cfg = {.dim = 16, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2, .hidden_dim = 32, .vocab_size = 40,
                        .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    model_weights w;
    char err[MODEL_ERR_LEN];
    CHECK(model_init_random(&w, &cfg, 3, 0.1f) == 0, "random model");
    ((float *)w.layers[1].w3.data)[5 * 16 + 3] = NAN;
    const char *dirs[2] = {tpath("nan_f32"), tpath("inf_bf16")};
    CHECK(model_save_hf(dirs[0], &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    ((float *)w.layers[1].w3.data)[5 * 16 + 3] = 1.0f;
    ((float *)w.tok_emb.data)[7] = INFINITY;
    CHECK(model_save_hf(dirs[1], &w, AG_BF16, 0, err, sizeof err) == 0, "%s", err);
    const char *needles[2] = {"layer 1 w3 (up) holds 1 non-finite", "token embedding"};
    for (int i = 0; i < 2; i++) {
        model_weights v;
        int rc = model_load(dirs[i], &v, err, sizeof err);
        CHECK(rc == -1 && one_line_naming(err, dirs[i]) && strstr(err, needles[i]), "%s: '%s'", dirs[i], err);
        if (rc == 0) model_free(&v);
        printf("  e.g. %s\n", err);
    }
    model_free(&w);
    /* an adapter with a NaN: refused on import (every format) and on export */
    adapter_data a = {2, 2, 4, 2, 8, GATE_TANH, calloc(32, 4), calloc(4, 4)};
    a.query[9] = NAN;
    CHECK(adapter_export(tpath("nan.safetensors"), EXPORT_SAFETENSORS, &a, err, sizeof err) == -1 &&
              strstr(err, "non-finite"), "export of a NaN adapter: '%s'", err);
    /* write one through the tensor-set writer directly, then import it */
    tensor_set s;
    memset(&s, 0, sizeof s);
    float *q = calloc(32, 4), *g2 = calloc(2, 4), *g3 = calloc(2, 4);
    q[9] = NAN;
    int64_t qs[2] = {4, 8}, gs[4] = {1, 2, 1, 1};
    ts_add(&s, ADAPTER_QUERY_NAME, 2, qs, q);
    ts_add(&s, "layers.2.attention.gate", 4, gs, g2);
    ts_add(&s, "layers.3.attention.gate", 4, gs, g3);
    CHECK(pth_write(tpath("nan.pth"), &s, err, sizeof err) == 0, "%s", err);
    ts_free(&s);
    expect_import_fails(tpath("nan.pth"), "non-finite");
    adapter_data_free(&a);
}

/* ------------------------------------------------------------ names, inspect, export */

static void test_inspect_and_model_load_report_the_real_reason(void) {
    char err[MODEL_ERR_LEN];
    /* a model's safetensors file named .bin */
    adapter_data a = {2, 2, 4, 2, 8, GATE_TANH, calloc(32, 4), calloc(4, 4)};
    llama_config cfg = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .hidden_dim = 32, .vocab_size = 40,
                        .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    model_weights m;
    const char *bin = tpath("weights.bin");
    CHECK(model_init_random(&m, &cfg, 3, 0.1f) == 0 && model_save_hf(tpath("hfm"), &m, AG_F32, 0, err, sizeof err) == 0,
          "%s", err);
    model_free(&m);
    test_sh("cp %s/model.safetensors %s", tpath("hfm"), bin);
    model_weights w;
    int rc = model_load(bin, &w, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "safetensors file, not a llama2.c") && one_line_naming(err, bin), "'%s'", err);
    if (rc == 0) model_free(&w);
    /* damaged adapter .pth and .h5: inspect says what their reader says */
    const char *pth = tpath("dmg.pth"), *h5 = tpath("dmg.h5");
    CHECK(adapter_export(pth, EXPORT_PTH, &a, err, sizeof err) == 0, "%s", err);
    CHECK(adapter_export(h5, EXPORT_HDF5, &a, err, sizeof err) == 0, "%s", err);
    struct stat sb;
    stat(pth, &sb);
    CHECK(truncate(pth, sb.st_size - 30) == 0, "truncate");
    stat(h5, &sb);
    CHECK(truncate(h5, sb.st_size / 2) == 0, "truncate");
    const char *files[3] = {pth, h5, bin};
    const char *wrong[3] = {"Meta consolidated", "not a model file", "bad llama2.c header"};
    for (int i = 0; i < 3; i++) {
        char args[700], *e = NULL;
        snprintf(args, sizeof args, "inspect %s", files[i]);
        int st_ = test_run_bin(g_dir, args, NULL, &e);
        CHECK(st_ == 1 && e && test_count_lines(e) == 1 && strstr(e, files[i]) && !strstr(e, wrong[i]),
              "inspect %s: exit %d, '%s'", files[i], st_, e ? e : "");
        printf("  e.g. %s", e ? e : "\n");
        free(e);
    }
    adapter_data_free(&a);
}

static void test_export_format_follows_the_extension(void) {
    char err[ADAPTER_ERR_LEN];
    train_ckpt c;
    make_ckpt(&c, 2, 2, 8, 2);
    const char *ck = tpath("ckpt-00000003.h5");
    CHECK(ckpt_save(ck, &c, err, sizeof err) == 0, "%s", err);
    ckpt_free(&c);
    static const struct { const char *out, *magic; size_t n; } cases[] = {
        {"e.pth", "PK\3\4", 4}, {"e.h5", "\x89HDF", 4}, {"e.safetensors", NULL, 0}, {"e.adapter", NULL, 0}};
    for (int i = 0; i < 4; i++) {
        char args[900];
        snprintf(args, sizeof args, "export --adapter %s --out %s", ck, tpath(cases[i].out));
        int st = test_run_bin(g_dir, args, NULL, NULL);
        size_t n = 0;
        char *b = test_read_file(tpath(cases[i].out), &n);
        int ok = st == 0 && b && (cases[i].magic ? n >= 4 && !memcmp(b, cases[i].magic, 4) : n > 9 && b[8] == '{');
        CHECK(ok, "export --out %s: exit %d, format from the extension (safetensors otherwise)", cases[i].out, st);
        free(b);
    }
    char args[900], *e = NULL;
    snprintf(args, sizeof args, "export --adapter %s --format hdf5 --out %s", ck, tpath("x.pth"));
    int st = test_run_bin(g_dir, args, NULL, &e);
    CHECK(st == 2 && e && test_count_lines(e) == 1 && strstr(e, "contradicts"), "a contradiction: exit %d '%s'", st,
          e ? e : "");
    CHECK(access(tpath("x.pth"), F_OK) != 0, "nothing written on a contradiction");
    free(e);
}

static void test_pruning_keeps_the_checkpoint_just_written(void) {
    char dir[600], p[800];
    snprintf(dir, sizeof dir, "%s/prune", g_dir);
    mkdir(dir, 0700);
    long long steps[4] = {1, 2, 3, 99}; /* 99: a checkpoint of another history, newer by name */
    for (int i = 0; i < 4; i++) {
        ckpt_path(dir, steps[i], p, sizeof p);
        FILE *f = fopen(p, "wb");
        if (f) fclose(f);
    }
    ckpt_prune_upto(dir, 1, 3); /* this run just wrote step 3 and keeps 1 */
    ckpt_path(dir, 3, p, sizeof p);
    CHECK(access(p, F_OK) == 0, "the checkpoint just written (step 3) was pruned");
    ckpt_path(dir, 99, p, sizeof p);
    CHECK(access(p, F_OK) == 0, "a later step of another history is not this run's to delete");
    ckpt_path(dir, 2, p, sizeof p);
    CHECK(access(p, F_OK) != 0, "step 2 is pruned (keep 1)");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_robust_files_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_pth_size_arithmetic_that_wraps_is_refused);
    RUN(test_zip64_end_record_in_a_tiny_file_is_refused);
    RUN(test_hdf5_declared_sizes_are_checked_before_allocating);
    RUN(test_hdf5_checkpoint_fields_are_range_checked);
    RUN(test_hdf5_library_crashes_are_contained);
    RUN(test_nonfinite_weights_and_adapters_are_refused);
    RUN(test_inspect_and_model_load_report_the_real_reason);
    RUN(test_export_format_follows_the_extension);
    RUN(test_pruning_keeps_the_checkpoint_just_written);
    test_rmtree(g_dir);
    return TEST_MAIN_END("test_robust_files");
}
