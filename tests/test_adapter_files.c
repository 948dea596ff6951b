/* Adapter exports/imports (safetensors, .pth, HDF5) and the HDF5 training checkpoint
 * (checkpoints/adapter_file.h, DESIGN.md §4): bit-exact round trips, the metadata-free
 * default_len rule, files written by torch.save and our .pth read by torch.load (both through
 * /usr/bin/python3 with torch, skipped with a reason when it is missing), one-line errors for
 * bad inputs, checkpoint versioning, resolve/prune, and a SIGKILL during a checkpoint write. */
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/safetensors.h"
#include "tests/test.h"

static char g_dir[256];

static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

/* err is one line that names the file. */
static int one_line_naming(const char *err, const char *path) {
    return strstr(err, path) != NULL && strchr(err, '\n') == NULL && strlen(err) > strlen(path) + 4;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) * 0x1.0p-53 * 4.0 - 2.0);
}

/* An adapter with random values (gates too, so that "zeros below" is visible). */
static void make_adapter(adapter_data *a, int n_layers, int H, int dim, int K, int L, int act) {
    memset(a, 0, sizeof *a);
    a->adapter_len = K;
    a->adapter_layer = L;
    a->n_layers = n_layers;
    a->n_heads = H;
    a->dim = dim;
    a->gate_act = act;
    a->query = malloc((size_t)L * K * dim * sizeof(float));
    a->gates = malloc((size_t)L * H * sizeof(float));
    for (int i = 0; i < L * K * dim; i++) a->query[i] = frand();
    for (int i = 0; i < L * H; i++) a->gates[i] = frand() * 0.1f;
    a->query[0] = -0.0f;
    a->query[1] = 1e-40f; /* denormal */
}

static int same_adapter(const adapter_data *a, const adapter_data *b, int check_act) {
    if (a->adapter_len != b->adapter_len || a->adapter_layer != b->adapter_layer || a->n_layers != b->n_layers ||
        a->n_heads != b->n_heads || a->dim != b->dim || (check_act && a->gate_act != b->gate_act))
        return 0;
    size_t nq = (size_t)a->adapter_layer * a->adapter_len * a->dim, ng = (size_t)a->adapter_layer * a->n_heads;
    return !memcmp(a->query, b->query, nq * 4) && !memcmp(a->gates, b->gates, ng * 4);
}

static void test_export_format_parse(void) {
    export_format f;
    CHECK(export_format_parse("safetensors", &f) == 0 && f == EXPORT_SAFETENSORS, "safetensors");
    CHECK(export_format_parse("pth", &f) == 0 && f == EXPORT_PTH, "pth");
    CHECK(export_format_parse("hdf5", &f) == 0 && f == EXPORT_HDF5, "hdf5");
    CHECK(export_format_parse("onnx", &f) == -1, "onnx must be refused");
}

static void round_trip(export_format fmt, const char *name, int act, int with_meta) {
    adapter_data a, b;
    char err[ADAPTER_ERR_LEN];
    make_adapter(&a, 6, 4, 16, 3, 2, act);
    const char *p = tpath(name);
    int rc = adapter_export(p, fmt, &a, err, sizeof err);
    CHECK(rc == 0, "export %s: %s", name, err);
    /* default_len deliberately wrong where metadata must win */
    rc = adapter_import(p, with_meta ? 7 : 3, 6, 4, 16, &b, err, sizeof err);
    CHECK(rc == 0, "import %s: %s", name, err);
    if (rc == 0) {
        CHECK(same_adapter(&a, &b, with_meta), "%s: round trip not bit exact (K %d L %d act %d)", name,
              b.adapter_len, b.adapter_layer, b.gate_act);
        if (!with_meta) CHECK(b.gate_act == GATE_TANH, "no metadata -> tanh");
        adapter_data_free(&b);
    }
    /* the same file with the model sizes taken from the file */
    rc = adapter_import(p, 3, 0, 0, 0, &b, err, sizeof err);
    CHECK(rc == 0 && b.n_layers == 6 && b.n_heads == 4 && b.dim == 16, "%s without model sizes: %s", name, err);
    if (rc == 0) adapter_data_free(&b);
    struct stat sb;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(stat(tmp, &sb) != 0, "%s: temporary left behind", tmp);
    adapter_data_free(&a);
}

static void test_safetensors_round_trip_bit_exact(void) {
    round_trip(EXPORT_SAFETENSORS, "a.safetensors", GATE_IDENTITY, 1);
    /* layout: every layer's gate, zeros below the adapted ones, metadata */
    st_file f;
    char err[ADAPTER_ERR_LEN];
    CHECK(st_open(tpath("a.safetensors"), &f, err, sizeof err) == 0, "%s", err);
    if (!f.t) return;
    CHECK(f.n == 7, "tensors: %d, want 1 + 6 gates", f.n);
    const st_tensor *q = st_find(&f, "adapter_query.weight");
    CHECK(q && q->ndim == 2 && q->shape[0] == 6 && q->shape[1] == 16 && !strcmp(q->dtype, "F32"), "query shape");
    for (int i = 0; i < 6; i++) {
        char name[64];
        snprintf(name, sizeof name, "layers.%d.attention.gate", i);
        const st_tensor *g = st_find(&f, name);
        CHECK(g && g->ndim == 4 && g->shape[0] == 1 && g->shape[1] == 4 && g->shape[2] == 1 && g->shape[3] == 1,
              "%s shape", name);
        if (g && i < 4) {
            float v[4];
            memcpy(v, g->data, sizeof v);
            CHECK(v[0] == 0 && v[1] == 0 && v[2] == 0 && v[3] == 0, "%s must be zeros", name);
        }
    }
    const char *k = st_meta(&f, "adapter_len"), *l = st_meta(&f, "adapter_layer"), *g = st_meta(&f, "gate_act");
    CHECK(k && !strcmp(k, "3") && l && !strcmp(l, "2") && g && !strcmp(g, "identity"), "metadata %s %s %s",
          k ? k : "-", l ? l : "-", g ? g : "-");
    st_close(&f);
}

static void test_pth_round_trip_bit_exact(void) { round_trip(EXPORT_PTH, "a.pth", GATE_TANH, 0); }

static void test_hdf5_round_trip_bit_exact(void) {
    round_trip(EXPORT_HDF5, "a.h5", GATE_IDENTITY, 1);
    hid_t f = H5Fopen(tpath("a.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0, "h5 open");
    if (f < 0) return;
    long long v = 0;
    hid_t at = H5Aopen(f, "adapter_len", H5P_DEFAULT);
    CHECK(at >= 0 && H5Aread(at, H5T_NATIVE_LLONG, &v) >= 0 && v == 3, "adapter_len attribute %lld", v);
    if (at >= 0) H5Aclose(at);
    CHECK(H5Aexists(f, "gate_act") > 0 && H5Aexists(f, "adapter_layer") > 0, "attributes");
    hid_t ds = H5Dopen2(f, "layers.5.attention.gate", H5P_DEFAULT);
    CHECK(ds >= 0, "gate dataset");
    if (ds >= 0) {
        hid_t sp = H5Dget_space(ds);
        hsize_t dims[4] = {0};
        CHECK(H5Sget_simple_extent_ndims(sp) == 4 && H5Sget_simple_extent_dims(sp, dims, NULL) == 4 &&
              dims[0] == 1 && dims[1] == 4 && dims[2] == 1 && dims[3] == 1, "gate dims");
        H5Sclose(sp);
        H5Dclose(ds);
    }
    H5Fclose(f);
}

/* A safetensors file without metadata, as the reference would write it. */
static void write_bare_st(const char *p, int rows, int dim, int n_layers, int H, float gate_base) {
    char err[ADAPTER_ERR_LEN];
    int n = 1 + n_layers;
    st_out *t = calloc((size_t)n, sizeof *t);
    float *q = malloc((size_t)rows * dim * 4), *g = malloc((size_t)n_layers * H * 4);
    char(*names)[64] = calloc((size_t)n_layers, 64);
    for (int i = 0; i < rows * dim; i++) q[i] = (float)i * 0.5f;
    for (int i = 0; i < n_layers * H; i++) g[i] = gate_base + (float)i;
    t[0] = (st_out){"adapter_query.weight", "F32", 2, {rows, dim}, q};
    for (int i = 0; i < n_layers; i++) {
        snprintf(names[i], 64, "layers.%d.attention.gate", i);
        t[1 + i] = (st_out){names[i], "F32", 4, {1, H, 1, 1}, g + i * H};
    }
    CHECK(st_write(p, t, n, NULL, NULL, 0, err, sizeof err) == 0, "st_write: %s", err);
    free(t);
    free(q);
    free(g);
    free(names);
}

static void test_import_without_metadata_uses_default_len(void) {
    const char *p = tpath("bare.safetensors");
    write_bare_st(p, 4 * 5, 8, 6, 2, 100.0f); /* K 5, L 4 of 6 layers; lower gates non-zero */
    adapter_data b;
    char err[ADAPTER_ERR_LEN];
    int rc = adapter_import(p, 5, 6, 2, 8, &b, err, sizeof err);
    CHECK(rc == 0, "%s", err);
    if (rc) return;
    CHECK(b.adapter_len == 5 && b.adapter_layer == 4 && b.gate_act == GATE_TANH, "K %d L %d act %d", b.adapter_len,
          b.adapter_layer, b.gate_act);
    /* gates of layers 2..5 (values 100 + 2*layer + h), layers 0..1 ignored */
    for (int j = 0; j < 4; j++)
        for (int h = 0; h < 2; h++)
            CHECK(b.gates[j * 2 + h] == 100.0f + (float)((j + 2) * 2 + h), "gate %d %d = %g", j, h,
                  b.gates[j * 2 + h]);
    CHECK(b.query[19 * 8 + 7] == (float)(19 * 8 + 7) * 0.5f, "query value");
    adapter_data_free(&b);
    rc = adapter_import(p, 10, 6, 2, 8, &b, err, sizeof err); /* 20 rows / 10 -> L 2 */
    CHECK(rc == 0 && b.adapter_layer == 2 && b.gates[0] == 100.0f + 8, "default 10: %s", err);
    if (rc == 0) adapter_data_free(&b);
}

static void test_import_rows_not_divisible_is_an_error(void) {
    const char *p = tpath("odd.safetensors");
    write_bare_st(p, 7, 8, 4, 2, 0.0f);
    adapter_data b;
    char err[ADAPTER_ERR_LEN] = "";
    int rc = adapter_import(p, 2, 4, 2, 8, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, p) && strstr(err, "multiple"), "got %d: %s", rc, err);
}

static void test_import_shape_mismatch_vs_model_is_an_error(void) {
    adapter_data a, b;
    char err[ADAPTER_ERR_LEN] = "";
    make_adapter(&a, 6, 4, 16, 3, 2, GATE_TANH);
    const char *ps = tpath("m.safetensors"), *pp = tpath("m.pth"), *ph = tpath("m.h5");
    CHECK(adapter_export(ps, EXPORT_SAFETENSORS, &a, err, sizeof err) == 0, "%s", err);
    CHECK(adapter_export(pp, EXPORT_PTH, &a, err, sizeof err) == 0, "%s", err);
    CHECK(adapter_export(ph, EXPORT_HDF5, &a, err, sizeof err) == 0, "%s", err);
    const char *files[3] = {ps, pp, ph};
    for (int i = 0; i < 3; i++) {
        int rc = adapter_import(files[i], 3, 6, 4, 32, &b, err, sizeof err); /* dim */
        CHECK(rc == -1 && one_line_naming(err, files[i]), "dim mismatch accepted: %s", err);
        rc = adapter_import(files[i], 3, 6, 8, 16, &b, err, sizeof err); /* heads */
        CHECK(rc == -1 && one_line_naming(err, files[i]), "n_heads mismatch accepted: %s", err);
        rc = adapter_import(files[i], 3, 4, 4, 16, &b, err, sizeof err); /* fewer layers */
        CHECK(rc == -1 && one_line_naming(err, files[i]), "n_layers mismatch accepted: %s", err);
    }
    /* a model with more layers: the metadata-free .pth is checked by its gate names */
    int rc = adapter_import(pp, 3, 8, 4, 16, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pp) && strstr(err, "layers.6.attention.gate"), "%s", err);
    printf("  e.g. %s\n", err);
    adapter_data_free(&a);
}

static void copy_truncated(const char *src, const char *dst, double frac) {
    FILE *f = fopen(src, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    f = fopen(dst, "wb");
    fwrite(buf, 1, (size_t)((double)got * frac), f);
    fclose(f);
    free(buf);
}

static void test_truncated_and_garbage_files_are_errors(void) {
    adapter_data a, b;
    char err[ADAPTER_ERR_LEN] = "";
    make_adapter(&a, 6, 4, 16, 3, 2, GATE_TANH);
    const char *fmts[3] = {"t.safetensors", "t.pth", "t.h5"};
    export_format ef[3] = {EXPORT_SAFETENSORS, EXPORT_PTH, EXPORT_HDF5};
    double fracs[3] = {0.5, 0.95, 0.02};
    for (int i = 0; i < 3; i++) {
        const char *p = tpath(fmts[i]);
        CHECK(adapter_export(p, ef[i], &a, err, sizeof err) == 0, "%s", err);
        for (int k = 0; k < 3; k++) {
            char tp[600];
            snprintf(tp, sizeof tp, "%s/trunc%d%d", g_dir, i, k);
            copy_truncated(p, tp, fracs[k]);
            int rc = adapter_import(tp, 3, 6, 4, 16, &b, err, sizeof err);
            CHECK(rc == -1 && one_line_naming(err, tp), "truncated %s (%.2f) accepted or bad message: %s", fmts[i],
                  fracs[k], err);
            if (rc == 0) adapter_data_free(&b);
            if (k == 0) printf("  e.g. %s\n", err);
        }
    }
    /* a .pth whose storage bytes were damaged: CRC */
    {
        const char *p = tpath("t.pth"), *d = tpath("crc.pth");
        copy_truncated(p, d, 1.0);
        FILE *f = fopen(d, "r+b");
        fseek(f, 200, SEEK_SET); /* inside data.pkl or the first storage */
        int c = fgetc(f);
        fseek(f, 200, SEEK_SET);
        fputc(c ^ 0x5A, f);
        fclose(f);
        int rc = adapter_import(d, 3, 6, 4, 16, &b, err, sizeof err);
        CHECK(rc == -1 && one_line_naming(err, d), "damaged .pth accepted: %s", err);
        if (rc == 0) adapter_data_free(&b);
    }
    const char *g = tpath("garbage.bin");
    FILE *f = fopen(g, "wb");
    for (int i = 0; i < 4096; i++) fputc((int)((i * 7919u) >> 3) & 0xFF, f);
    fclose(f);
    int rc = adapter_import(g, 3, 6, 4, 16, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, g), "garbage: %s", err);
    printf("  e.g. %s\n", err);
    const char *e = tpath("empty.bin");
    fclose(fopen(e, "wb"));
    rc = adapter_import(e, 3, 6, 4, 16, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, e), "empty: %s", err);
    rc = adapter_import(tpath("missing.pth"), 3, 6, 4, 16, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, tpath("missing.pth")), "missing: %s", err);
    adapter_data_free(&a);
}

/* ---------------------------------------------------------------- PyTorch interop */

static int torch_ok = -1;
static int have_torch(void) {
    if (torch_ok < 0) torch_ok = system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
    return torch_ok;
}

/* Runs /usr/bin/python3 on script text with args; output into out. Exit status. */
static int run_python(const char *script, const char *args, char *out, size_t outlen) {
    const char *sp = tpath("check.py");
    FILE *f = fopen(sp, "w");
    fputs(script, f);
    fclose(f);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1", sp, args);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    out[0] = 0;
    if (!p) return -1;
    while (n + 1 < outlen) {
        size_t k = fread(out + n, 1, outlen - 1 - n, p);
        if (k == 0) break;
        n += k;
    }
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *torch_load_script =
    "import sys, zipfile, struct, torch\n"
    "p = sys.argv[1]; L, K, D, H, NL = map(int, sys.argv[2:7])\n"
    "z = zipfile.ZipFile(p); raw = open(p, 'rb').read()\n"
    "for i in z.infolist():\n"
    "    assert i.compress_type == 0, i.filename\n"
    "    o = i.header_offset; n, e = struct.unpack('<HH', raw[o + 26:o + 30])\n"
    "    if '/data/' in i.filename: assert (o + 30 + n + e) % 64 == 0, ('unaligned', i.filename)\n"
    "for wo in (None, True):\n"
    "    sd = torch.load(p) if wo is None else torch.load(p, weights_only=True)\n"
    "    assert isinstance(sd, dict), type(sd)\n"
    "    exp = ['adapter_query.weight'] + ['layers.%d.attention.gate' % i for i in range(NL)]\n"
    "    assert sorted(sd.keys()) == sorted(exp), list(sd.keys())\n"
    "    q = sd['adapter_query.weight']\n"
    "    assert q.dtype == torch.float32 and tuple(q.shape) == (L * K, D) and q.is_contiguous(), q.shape\n"
    "    idx = torch.arange(L * K * D, dtype=torch.float64)\n"
    "    assert torch.equal(q, ((idx % 97) * 0.125 - 3.0).float().reshape(L * K, D)), 'query values'\n"
    "    for i in range(NL):\n"
    "        g = sd['layers.%d.attention.gate' % i]\n"
    "        assert g.dtype == torch.float32 and tuple(g.shape) == (1, H, 1, 1), (i, g.shape)\n"
    "        j = i - (NL - L)\n"
    "        want = torch.zeros(H) if j < 0 else torch.tensor([(j * H + h + 1) * 0.0625 for h in range(H)])\n"
    "        assert torch.equal(g, want.reshape(1, H, 1, 1)), ('gate', i, g)\n"
    "    assert not q.requires_grad\n"
    "print('TORCH_OK', torch.__version__, 'weights_only default and True')\n";

static void test_torch_load_reads_our_pth(void) {
    if (!have_torch()) SKIP("/usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    adapter_data a;
    make_adapter(&a, 5, 3, 12, 4, 3, GATE_TANH);
    for (int i = 0; i < 3 * 4 * 12; i++) a.query[i] = (float)(i % 97) * 0.125f - 3.0f;
    for (int i = 0; i < 3 * 3; i++) a.gates[i] = (float)(i + 1) * 0.0625f;
    char err[ADAPTER_ERR_LEN], out[4096], args[700];
    const char *p = tpath("torch_check.pth");
    CHECK(adapter_export(p, EXPORT_PTH, &a, err, sizeof err) == 0, "%s", err);
    snprintf(args, sizeof args, "%s 3 4 12 3 5", p);
    int st = run_python(torch_load_script, args, out, sizeof out);
    CHECK(st == 0 && strstr(out, "TORCH_OK"), "torch.load check failed (status %d):\n%s", st, out);
    if (st == 0) printf("  %s", out);
    adapter_data_free(&a);
}

static const char *torch_save_script =
    "import sys, argparse, collections, torch\n"
    "d = sys.argv[1]; NL, H, D, K, L = map(int, sys.argv[2:7])\n"
    "q = ((torch.arange(L * K * D) % 61) * 0.25 - 7).float().reshape(L * K, D)\n"
    "G = ((torch.arange(NL * H) % 13) * 0.5 - 2).float()  # one storage for every gate\n"
    "# (a) as the reference's extract script: a dict; query float16, gates views with offsets\n"
    "sd = {'adapter_query.weight': q.half()}\n"
    "for i in range(NL): sd['layers.%d.attention.gate' % i] = G[i * H:(i + 1) * H].view(1, H, 1, 1)\n"
    "torch.save(sd, d + '/ref_a.pth')\n"
    "# (b) bfloat16, a non-contiguous (transposed) query, an nn.Parameter\n"
    "sd = {'adapter_query.weight': q.bfloat16().t().contiguous().t()}\n"
    "for i in range(NL): sd['layers.%d.attention.gate' % i] = G[i * H:(i + 1) * H].bfloat16().view(1, H, 1, 1)\n"
    "top = 'layers.%d.attention.gate' % (NL - 1)\n"
    "sd[top] = torch.nn.Parameter(sd[top].clone())  # saved through _rebuild_parameter\n"
    "torch.save(sd, d + '/ref_b.pth')\n"
    "# (c) a training checkpoint: {'model': state_dict (OrderedDict with _metadata), 'args': Namespace, ...}\n"
    "class Attn(torch.nn.Module):\n"
    "    def __init__(s):\n"
    "        super().__init__(); s.gate = torch.nn.Parameter(torch.zeros(1, H, 1, 1)); s.wq = torch.nn.Linear(D, D, bias=False)\n"
    "class Layer(torch.nn.Module):\n"
    "    def __init__(s): super().__init__(); s.attention = Attn()\n"
    "class M(torch.nn.Module):\n"
    "    def __init__(s):\n"
    "        super().__init__(); s.adapter_query = torch.nn.Embedding(L * K, D); s.layers = torch.nn.ModuleList([Layer() for _ in range(NL)])\n"
    "m = M()\n"
    "with torch.no_grad():\n"
    "    m.adapter_query.weight.copy_(q)\n"
    "    for i in range(NL): m.layers[i].attention.gate.copy_(G[i * H:(i + 1) * H].view(1, H, 1, 1))\n"
    "torch.save({'model': m.state_dict(), 'epoch': 3, 'args': argparse.Namespace(lr=1e-3, name='x', ks=[1, 2]),\n"
    "            'scaler': {'scale': 65536.0, 'growth': True, 'none': None}}, d + '/ref_c.pth')\n"
    "print('SAVED', torch.__version__)\n";

static void test_import_torch_save_reference_files(void) {
    if (!have_torch()) SKIP("/usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    const int NL = 6, H = 4, D = 10, K = 3, L = 2;
    char out[4096], args[700], err[ADAPTER_ERR_LEN];
    snprintf(args, sizeof args, "%s %d %d %d %d %d", g_dir, NL, H, D, K, L);
    int st = run_python(torch_save_script, args, out, sizeof out);
    CHECK(st == 0 && strstr(out, "SAVED"), "torch.save script failed (%d):\n%s", st, out);
    if (st != 0) return;
    const char *files[3] = {"ref_a.pth", "ref_b.pth", "ref_c.pth"};
    for (int f = 0; f < 3; f++) {
        adapter_data b;
        const char *p = tpath(files[f]);
        int rc = adapter_import(p, K, NL, H, D, &b, err, sizeof err);
        CHECK(rc == 0, "%s: %s", files[f], err);
        if (rc) continue;
        CHECK(b.adapter_len == K && b.adapter_layer == L && b.gate_act == GATE_TANH, "%s: K %d L %d", files[f],
              b.adapter_len, b.adapter_layer);
        int bad = 0;
        for (int i = 0; i < L * K * D; i++) bad += b.query[i] != (float)(i % 61) * 0.25f - 7.0f;
        for (int j = 0; j < L; j++)
            for (int h = 0; h < H; h++) {
                int gi = (NL - L + j) * H + h;
                bad += b.gates[j * H + h] != (float)(gi % 13) * 0.5f - 2.0f;
            }
        CHECK(bad == 0, "%s: %d values differ", files[f], bad);
        adapter_data_free(&b);
    }
    /* the reference's default rule on a metadata-free file: rows 6 / default 4 -> error */
    adapter_data b;
    int rc = adapter_import(tpath("ref_a.pth"), 4, NL, H, D, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, tpath("ref_a.pth")), "rows 6 with default_len 4: %s", err);
}

/* ---------------------------------------------------------------- training checkpoint */

static void make_ckpt(train_ckpt *c, int L, int K, int dim, int H, int64_t step) {
    memset(c, 0, sizeof *c);
    c->version = CKPT_VERSION;
    snprintf(c->method, sizeof c->method, "adapter");
    c->adapter = (adapter_data){K, L, 8, H, dim, GATE_IDENTITY, NULL, NULL};
    c->n_params = (size_t)L * K * dim + (size_t)L * H;
    c->params = malloc(c->n_params * 4);
    c->adam_m = malloc(c->n_params * 4);
    c->adam_v = malloc(c->n_params * 4);
    for (size_t i = 0; i < c->n_params; i++) {
        c->params[i] = frand();
        c->adam_m[i] = frand() * 1e-3f;
        c->adam_v[i] = frand() * frand() * 1e-6f;
    }
    uint32_t nan_bits = 0x7fc01234u; /* a NaN with a payload, -0, inf, denormal: bits must survive */
    memcpy(&c->adam_m[0], &nan_bits, 4);
    c->adam_m[1] = -0.0f;
    c->adam_m[2] = -INFINITY;
    c->adam_v[0] = 1e-44f;
    c->adapter.query = c->params;
    c->adapter.gates = c->params + (size_t)L * K * dim;
    c->step = step;
    c->adam_t = step + 7;
    c->epoch = 2;
    c->micro_index = 123456789012LL;
    c->data_seed = 0xFEDCBA9876543210ull;
    c->rng_state[0] = 1;
    c->rng_state[1] = UINT64_MAX;
    c->rng_state[2] = 0x8000000000000000ull;
    c->rng_state[3] = 42;
    c->model_fingerprint = 0xDEADBEEFCAFEF00Dull;
    c->tok_fingerprint = 0x0123456789ABCDEFull;
    c->config_json = strdup("{\"model\": \"m\",\n \"lr\": 0.009, \"note\": \"caf\xc3\xa9\"}");
}

static int same_ckpt(const train_ckpt *a, const train_ckpt *b) {
    return a->n_params == b->n_params && !strcmp(a->method, b->method) &&
           !memcmp(a->params, b->params, a->n_params * 4) && !memcmp(a->adam_m, b->adam_m, a->n_params * 4) &&
           !memcmp(a->adam_v, b->adam_v, a->n_params * 4) && a->step == b->step && a->adam_t == b->adam_t &&
           a->epoch == b->epoch && a->micro_index == b->micro_index && a->data_seed == b->data_seed &&
           !memcmp(a->rng_state, b->rng_state, sizeof a->rng_state) &&
           a->model_fingerprint == b->model_fingerprint && a->tok_fingerprint == b->tok_fingerprint &&
           !strcmp(a->config_json, b->config_json) && a->adapter.adapter_len == b->adapter.adapter_len &&
           a->adapter.adapter_layer == b->adapter.adapter_layer && a->adapter.n_layers == b->adapter.n_layers &&
           a->adapter.n_heads == b->adapter.n_heads && a->adapter.dim == b->adapter.dim &&
           a->adapter.gate_act == b->adapter.gate_act;
}

static void test_ckpt_round_trip_bit_exact(void) {
    train_ckpt c, d;
    char err[ADAPTER_ERR_LEN];
    make_ckpt(&c, 3, 5, 16, 4, 77);
    const char *p = tpath("rt.h5");
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    int rc = ckpt_load(p, &d, err, sizeof err);
    CHECK(rc == 0, "%s", err);
    if (rc == 0) {
        CHECK(same_ckpt(&c, &d), "checkpoint round trip not bit exact");
        CHECK(d.version == CKPT_VERSION, "version %d", d.version);
        CHECK(d.adapter.query == d.params && d.adapter.gates == d.params + 3 * 5 * 16, "adapter aliases params");
        ckpt_free(&d);
    }
    /* adapter_import takes the adapter of a checkpoint */
    adapter_data b;
    rc = adapter_import(p, 10, 8, 4, 16, &b, err, sizeof err);
    CHECK(rc == 0, "%s", err);
    if (rc == 0) {
        CHECK(same_adapter(&c.adapter, &b, 1), "adapter of the checkpoint");
        adapter_data_free(&b);
    }
    adapter_data v;
    CHECK(ckpt_adapter_view(&c, &v, p, err, sizeof err) == 0 && v.query == c.params, "view");
    /* method "full": no adapter view, no import; NULL config_json reads back as "" */
    snprintf(c.method, sizeof c.method, "full");
    free(c.config_json);
    c.config_json = NULL;
    const char *pf = tpath("full.h5");
    CHECK(ckpt_save(pf, &c, err, sizeof err) == 0, "%s", err);
    rc = ckpt_load(pf, &d, err, sizeof err);
    CHECK(rc == 0 && !strcmp(d.method, "full") && d.adapter.query == NULL && d.config_json &&
              !strcmp(d.config_json, "") && !memcmp(d.adam_v, c.adam_v, c.n_params * 4),
          "full: %s", err);
    if (rc == 0) {
        CHECK(ckpt_adapter_view(&d, &v, pf, err, sizeof err) == -1 && one_line_naming(err, pf), "view of full");
        ckpt_free(&d);
    }
    rc = adapter_import(pf, 10, 8, 4, 16, &b, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pf), "import of a full checkpoint: %s", err);
    ckpt_free(&c);
}

static void set_version_attr(const char *p, long long v) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "version", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_LLONG, &v);
    H5Aclose(a);
    H5Fclose(f);
}

static void test_ckpt_bad_files_are_refused(void) {
    train_ckpt c, d;
    char err[ADAPTER_ERR_LEN] = "";
    make_ckpt(&c, 2, 3, 8, 2, 5);
    const char *p = tpath("v2.h5");
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    set_version_attr(p, 2);
    int rc = ckpt_load(p, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, p) && strstr(err, "checkpoint version 2, this build reads version 1"),
          "%s", err);
    printf("  e.g. %s\n", err);
    /* a missing field, a missing dataset */
    const char *pm = tpath("missing_field.h5");
    CHECK(ckpt_save(pm, &c, err, sizeof err) == 0, "%s", err);
    hid_t f = H5Fopen(pm, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Adelete(f, "adam_t");
    H5Fclose(f);
    rc = ckpt_load(pm, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pm) && strstr(err, "adam_t"), "%s", err);
    CHECK(ckpt_save(pm, &c, err, sizeof err) == 0, "%s", err);
    f = H5Fopen(pm, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "adam_v", H5P_DEFAULT);
    H5Fclose(f);
    rc = ckpt_load(pm, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pm) && strstr(err, "adam_v"), "%s", err);
    /* n_params that does not match the adapter shape */
    CHECK(ckpt_save(pm, &c, err, sizeof err) == 0, "%s", err);
    f = H5Fopen(pm, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "adapter_len", H5P_DEFAULT);
    long long four = 4;
    H5Awrite(a, H5T_NATIVE_LLONG, &four);
    H5Aclose(a);
    H5Fclose(f);
    rc = ckpt_load(pm, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pm), "%s", err);
    /* truncated, not HDF5, an adapter export instead of a checkpoint */
    const char *pt = tpath("trunc.h5");
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    copy_truncated(p, pt, 0.6);
    rc = ckpt_load(pt, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pt), "truncated: %s", err);
    printf("  e.g. %s\n", err);
    const char *pg = tpath("garbage.h5");
    FILE *fp = fopen(pg, "wb");
    fputs("definitely not hdf5\n", fp);
    fclose(fp);
    rc = ckpt_load(pg, &d, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, pg), "garbage: %s", err);
    rc = ckpt_load(tpath("a.h5"), &d, err, sizeof err); /* the HDF5 adapter export */
    CHECK(rc == -1 && one_line_naming(err, tpath("a.h5")), "export as checkpoint: %s", err);
    /* a bad method is refused on save */
    snprintf(c.method, sizeof c.method, "lora");
    rc = ckpt_save(p, &c, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, p), "method lora: %s", err);
    ckpt_free(&c);
}

static void touch(const char *p) {
    FILE *f = fopen(p, "wb");
    if (f) fclose(f);
}

static int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void test_ckpt_resolve_and_prune(void) {
    char dir[600], p[800], out[900], err[ADAPTER_ERR_LEN] = "";
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    mkdir(dir, 0700);
    int rc = ckpt_resolve(dir, out, sizeof out, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, dir), "empty dir: %s", err);
    long long steps[5] = {2, 10, 9, 100000000LL, 3};
    for (int i = 0; i < 5; i++) {
        ckpt_path(dir, steps[i], p, sizeof p);
        touch(p);
    }
    ckpt_path(dir, 10, p, sizeof p);
    CHECK(strstr(p, "/ckpt-00000010.h5") != NULL, "ckpt_path %s", p);
    snprintf(p, sizeof p, "%s/ckpt-200000000.h5.tmp", dir); /* an interrupted write */
    touch(p);
    snprintf(p, sizeof p, "%s/ckpt-x.h5", dir);
    touch(p);
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    touch(p);
    rc = ckpt_resolve(dir, out, sizeof out, err, sizeof err);
    CHECK(rc == 0 && strstr(out, "/ckpt-100000000.h5"), "newest: %s %s", out, err);
    snprintf(p, sizeof p, "%s/ckpt-00000009.h5", dir);
    rc = ckpt_resolve(p, out, sizeof out, err, sizeof err);
    CHECK(rc == 0 && !strcmp(out, p), "file resolves to itself: %s", out);
    rc = ckpt_resolve(tpath("nope"), out, sizeof out, err, sizeof err);
    CHECK(rc == -1 && one_line_naming(err, tpath("nope")), "missing: %s", err);
    ckpt_prune(dir, 2);
    char q[800];
    int kept = 0;
    for (int i = 0; i < 5; i++) {
        ckpt_path(dir, steps[i], q, sizeof q);
        kept += exists(q);
    }
    ckpt_path(dir, 100000000LL, q, sizeof q);
    CHECK(exists(q), "newest pruned");
    ckpt_path(dir, 10, q, sizeof q);
    CHECK(exists(q), "second newest pruned");
    CHECK(kept == 2, "kept %d, want 2", kept);
    snprintf(q, sizeof q, "%s/metrics.jsonl", dir);
    CHECK(exists(q), "prune removed another file");
    ckpt_prune(dir, 0); /* keep all */
    ckpt_path(dir, 10, q, sizeof q);
    CHECK(exists(q), "keep 0 must keep all");
}

/* Kill test: a child overwrites one checkpoint path with big checkpoints in a loop; SIGKILL at
 * various moments must leave a loadable checkpoint equal to one of the versions written. */
#define KILL_PARAMS (8u << 20) /* 8M floats: 96 MB per checkpoint */

static float kill_value(int64_t step, size_t i, int block) {
    return (float)((uint32_t)(step * 2654435761u + i * 40503u + (uint32_t)block * 977u) % 1000003u) * 0.25f;
}

/* Version `step`: the first KILL_HEAD values of each block derive from the step itself, the rest
 * from its thousand (the kill round), so that the child needs no big refill between writes. */
#define KILL_HEAD 4096u
static void fill_kill_ckpt(train_ckpt *c, int64_t step, int whole) {
    int64_t round = step / 1000 * 1000;
    float *blocks[3] = {c->params, c->adam_m, c->adam_v};
    for (int b = 0; b < 3; b++)
        for (size_t i = 0; i < (whole ? c->n_params : KILL_HEAD); i++)
            blocks[b][i] = kill_value(i < KILL_HEAD ? step : round, i, b);
    c->step = step;
    c->adam_t = step;
    c->micro_index = step * 3;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_ckpt_survives_sigkill_mid_write(void) {
    train_ckpt c;
    char err[ADAPTER_ERR_LEN] = "";
    memset(&c, 0, sizeof c);
    snprintf(c.method, sizeof c.method, "full");
    c.n_params = KILL_PARAMS;
    c.params = malloc(c.n_params * 4);
    c.adam_m = malloc(c.n_params * 4);
    c.adam_v = malloc(c.n_params * 4);
    c.config_json = strdup("{}");
    const char *p = tpath("kill.h5");
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    fill_kill_ckpt(&c, 1, 1);
    double t0 = now_s();
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0, "%s", err);
    double t_write = now_s() - t0;
    printf("  one %u-param checkpoint (%.0f MB) takes %.0f ms to write\n", KILL_PARAMS,
           3.0 * KILL_PARAMS * 4 / 1e6, t_write * 1e3);
    int64_t max_step_written = 1;
    int mid_write = 0, newer = 0;
    const int delays_ms[] = {3, 20, 45, 90, 150, 260};
    for (int k = 0; k < 6; k++) {
        int64_t base = 1000 * (k + 1);
        fill_kill_ckpt(&c, base, 1); /* before the fork: the child only rewrites the heads */
        pid_t pid = fork();
        if (pid == 0) {
            char e[ADAPTER_ERR_LEN];
            for (int64_t s = base;; s++) {
                fill_kill_ckpt(&c, s, 0);
                if (ckpt_save(p, &c, e, sizeof e) != 0) _exit(3);
            }
        }
        CHECK(pid > 0, "fork failed");
        if (pid <= 0) break;
        struct timespec ts = {0, (long)delays_ms[k] * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child ended otherwise (status %d)", st);
        mid_write += exists(tmp);
        unlink(tmp); /* so that the next count sees only that child's temporary */
        train_ckpt d;
        int rc = ckpt_load(p, &d, err, sizeof err);
        CHECK(rc == 0, "after SIGKILL at %d ms the checkpoint does not load: %s", delays_ms[k], err);
        if (rc != 0) continue;
        int64_t s = d.step;
        CHECK(s == max_step_written || (s >= base && s < base + 1000), "step %lld is not a version written",
              (long long)s);
        if (s >= base) {
            max_step_written = s;
            newer++;
        }
        fill_kill_ckpt(&c, s, 1);
        CHECK(d.n_params == c.n_params && !memcmp(d.params, c.params, c.n_params * 4) &&
                  !memcmp(d.adam_m, c.adam_m, c.n_params * 4) && !memcmp(d.adam_v, c.adam_v, c.n_params * 4) &&
                  d.micro_index == s * 3,
              "checkpoint of step %lld is not bit-identical to the version written", (long long)s);
        ckpt_free(&d);
    }
    printf("  6 SIGKILLs, %d of them mid-write (PATH.tmp left behind); %d times the checkpoint loaded was one the "
           "killed child had finished, else the one before\n", mid_write, newer);
    CHECK(mid_write > 0, "no kill landed inside a write: the test proved nothing");
    /* a later save over the stale temporary works */
    fill_kill_ckpt(&c, 99, 1);
    CHECK(ckpt_save(p, &c, err, sizeof err) == 0 && !exists(tmp), "save after a kill: %s", err);
    ckpt_free(&c);
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_rf(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_adapter_files.XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_export_format_parse);
    RUN(test_safetensors_round_trip_bit_exact);
    RUN(test_pth_round_trip_bit_exact);
    RUN(test_hdf5_round_trip_bit_exact);
    RUN(test_import_without_metadata_uses_default_len);
    RUN(test_import_rows_not_divisible_is_an_error);
    RUN(test_import_shape_mismatch_vs_model_is_an_error);
    RUN(test_truncated_and_garbage_files_are_errors);
    RUN(test_torch_load_reads_our_pth);
    RUN(test_import_torch_save_reference_files);
    RUN(test_ckpt_round_trip_bit_exact);
    RUN(test_ckpt_bad_files_are_refused);
    RUN(test_ckpt_resolve_and_prune);
    RUN(test_ckpt_survives_sigkill_mid_write);
    rm_rf(g_dir);
    return TEST_MAIN_END("test_adapter_files");
}
