/* bench/make_model, the streaming writer of synthetic HF Llama models: small models it writes
 * (bf16 in many shards with an index, f32 and f16 in one model.safetensors) load with
 * model_load() with the requested config and dtype, and every element of every tensor the loader
 * reads equals an independent regeneration from bench/make_model_rng.h (converted with the
 * library's rounding; q/k rows through the HF -> Meta permutation written out here); a second run
 * prints "cached" and touches nothing; another seed or shape rewrites (stale shards removed); a
 * truncated shard or a missing config.json (a killed run) is repaired, keeping complete shards;
 * `llama-adapter inspect` describes the directory; bad flags and unwritable directories give one
 * line and a non-zero exit. The binary is dirname($LLAMA_ADAPTER_BIN)/bench/make_model (the
 * bench binary of the same build); tests SKIP with the reason when it is absent. Does not write
 * a 7B model (minutes and 13.5 GB; see the report of the change that added make_model). */
#include <dirent.h>
#include <libgen.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/tensor.h"
#include "bench/make_model_rng.h"
#include "checkpoints/model_file.h"
#include "tests/test.h"

static char g_tmp[256];
static char g_mm[4096];

/* Small model of the brief: dim 64, hidden 160, 3 layers, 4 heads, 2 kv heads, vocab 300. */
#define SMALL "--dim 64 --hidden 160 --layers 3 --heads 4 --kv-heads 2 --vocab 300 --max-pos 256"

static const char *mm_bin(void) {
    const char *b = getenv("LLAMA_ADAPTER_BIN");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", b ? b : "build/llama-adapter");
    snprintf(g_mm, sizeof g_mm, "%s/bench/make_model", dirname(buf));
    return access(g_mm, X_OK) == 0 ? g_mm : NULL;
}

/* Runs make_model with args; stdout/stderr into *out / *err (malloc'ed). Exit status or -1. */
static int run_mm(const char *args, char **out, char **err) {
    char cmd[8192], of[512], ef[512];
    snprintf(of, sizeof of, "%s/mm_stdout.txt", g_tmp);
    snprintf(ef, sizeof ef, "%s/mm_stderr.txt", g_tmp);
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", g_mm, args, of, ef);
    int st = system(cmd);
    *out = test_read_file(of, NULL);
    *err = test_read_file(ef, NULL);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Writes DIR (under g_tmp) with make_model; 0 when it exited 0. */
static int make(const char *dir, const char *args) {
    char a[4096];
    snprintf(a, sizeof a, "--out %s/%s %s", g_tmp, dir, args);
    char *out, *err;
    int rc = run_mm(a, &out, &err);
    CHECK(rc == 0, "make_model %s: exit %d: %s", a, rc, err ? err : "");
    free(out);
    free(err);
    return rc;
}

static void path_of(char *buf, size_t n, const char *dir, const char *name) {
    snprintf(buf, n, "%s/%s%s%s", g_tmp, dir, name ? "/" : "", name ? name : "");
}

/* Files of dir whose name contains `part`. */
static int count_files(const char *dir, const char *part) {
    char p[512];
    path_of(p, sizeof p, dir, NULL);
    DIR *d = opendir(p);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, part) != NULL;
    closedir(d);
    return n;
}

/* The loaded tensor of HF slot i (0 embed; 1 + 9l + k layer l; 1 + 9L norm; 2 + 9L lm_head). */
static const ag_tensor *slot_tensor(const model_weights *w, int i) {
    int L = w->cfg.n_layers;
    if (i == 0) return &w->tok_emb;
    if (i == 1 + 9 * L) return &w->norm;
    if (i == 2 + 9 * L) return &w->cls;
    const llama_layer_weights *y = &w->layers[(i - 1) / 9];
    const ag_tensor *t[9] = {&y->attn_norm, &y->wq, &y->wk, &y->wv, &y->wo, &y->ffn_norm, &y->w1, &y->w2, &y->w3};
    return t[(i - 1) % 9];
}

/* The HF row holding Meta row m of a q/k projection with head dim hd: Meta row (h, 2i+j) is HF row
 * (h, j*hd/2 + i) (rotate-half layout). */
static int hf_row_of_meta(int m, int hd) {
    int h = m / hd, q = m % hd;
    return h * hd + (q % 2) * (hd / 2) + q / 2;
}

/* Compares every element of every tensor of w with the generator for (seed, std) in file dtype
 * `fdt`; returns the number of mismatches (the first few printed). */
static long compare_all(const model_weights *w, uint64_t seed, double std, ag_dtype fdt) {
    int L = w->cfg.n_layers, hd = w->cfg.dim / w->cfg.n_heads;
    long bad = 0;
    for (int i = 0; i < 3 + 9 * L; i++) {
        const ag_tensor *t = slot_tensor(w, i);
        int k = i >= 1 && i <= 9 * L ? (i - 1) % 9 : -1;
        int is_norm = i == 1 + 9 * L || k == 0 || k == 5, perm = k == 1 || k == 2;
        mm_gen g = mm_gen_of(seed, i, is_norm, mm_matrix_scale(std));
        for (int m = 0; m < t->rows; m++) {
            int r = perm ? hf_row_of_meta(m, hd) : m;
            for (int c = 0; c < t->cols; c++) {
                float v = mm_value(&g, (uint64_t)r * (uint64_t)t->cols + (uint64_t)c);
                /* the file's value, as a float, and the bits the loader should hold */
                float want = fdt == AG_BF16 ? ag_bf16_to_f32(ag_f32_to_bf16(v)) : fdt == AG_F16 ? ag_f16_to_f32(ag_f32_to_f16(v)) : v;
                size_t e = (size_t)m * t->cols + c;
                float got = t->dtype == AG_F32 ? ((const float *)t->data)[e]
                          : t->dtype == AG_BF16 ? ag_bf16_to_f32(((const uint16_t *)t->data)[e])
                                                : ag_f16_to_f32(((const uint16_t *)t->data)[e]);
                if (got != want) {
                    if (bad < 5) printf("  slot %d [%d, %d]: got %.9g want %.9g\n", i, m, c, got, want);
                    bad++;
                }
            }
        }
    }
    return bad;
}

/* Loads g_tmp/dir, checks the config of SMALL and the dtypes, and compares every value. */
static void check_small(const char *dir, uint64_t seed, double std, ag_dtype fdt) {
    char p[512], err[1024];
    path_of(p, sizeof p, dir, NULL);
    model_weights w;
    int rc = model_load(p, &w, err, sizeof err);
    CHECK(rc == 0, "model_load %s: %s", p, err);
    if (rc) return;
    const llama_config *c = &w.cfg;
    CHECK(c->dim == 64 && c->hidden_dim == 160 && c->n_layers == 3 && c->n_heads == 4 && c->n_kv_heads == 2 &&
              c->vocab_size == 300 && c->max_seq_len == 256 && !c->tied,
          "config dim %d hidden %d L %d H %d Hkv %d vocab %d max %d tied %d", c->dim, c->hidden_dim, c->n_layers,
          c->n_heads, c->n_kv_heads, c->vocab_size, c->max_seq_len, c->tied);
    CHECK(c->norm_eps == 1e-5f && c->rope_theta == 10000.0f, "eps %g theta %g", c->norm_eps, c->rope_theta);
    CHECK(w.dtype == fdt, "weights dtype %d, want %d", (int)w.dtype, (int)fdt);
    CHECK(w.tok_emb.rows == 300 && w.tok_emb.cols == 64 && w.cls.rows == 300 && w.layers[0].wk.rows == 32 &&
              w.layers[0].wv.rows == 32 && w.layers[2].w2.rows == 64 && w.layers[2].w2.cols == 160 &&
              w.layers[1].w1.rows == 160 && w.norm.cols == 64,
          "shapes");
    CHECK(w.tok_emb.dtype == fdt && w.layers[1].wq.dtype == fdt && w.layers[2].w2.dtype == fdt && w.cls.dtype == fdt,
          "matrix dtypes");
    CHECK(w.cls.data != w.tok_emb.data, "lm_head shares the embedding");
    long bad = compare_all(&w, seed, std, fdt);
    CHECK(bad == 0, "%ld values differ from the regenerated ones", bad);
    /* the values have the requested spread: mean ~0, std ~`std`; norms near 1 */
    double s = 0, s2 = 0;
    size_t n = ag_numel(&w.layers[1].w1);
    for (size_t e = 0; e < n; e++) {
        const ag_tensor *t = &w.layers[1].w1;
        double v = t->dtype == AG_F32 ? ((const float *)t->data)[e]
                 : t->dtype == AG_BF16 ? ag_bf16_to_f32(((const uint16_t *)t->data)[e])
                                       : ag_f16_to_f32(((const uint16_t *)t->data)[e]);
        s += v;
        s2 += v * v;
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    CHECK(fabs(mean) < 0.05 * std && fabs(sd - std) < 0.05 * std, "w1 mean %g std %g, want 0 and %g", mean, sd, std);
    int near1 = 1;
    for (int j = 0; j < 64; j++) near1 &= fabsf(((const float *)w.layers[0].attn_norm.data)[j] - 1.0f) <= 1.0f / 32;
    CHECK(near1, "norm weights not within 1/32 of 1");
    model_free(&w);
}

static void test_bf16_sharded_model_loads_and_every_value_matches(void) {
    if (!mm_bin()) SKIP("%s not built (make BUILD=... tests-build builds the bench binaries)", g_mm);
    if (make("bf16", SMALL " --dtype bf16 --seed 7 --std 0.02 --shard-gb 0.00003")) return;
    char p[512];
    path_of(p, sizeof p, "bf16", "model.safetensors.index.json");
    char *idx = test_read_file(p, NULL);
    CHECK(idx && strstr(idx, "\"weight_map\"") && strstr(idx, "\"total_size\": 335744"), "index: %.200s", idx ? idx : "(none)");
    CHECK(idx && strstr(idx, "\"lm_head.weight\": \"model-00014-of-00014.safetensors\""), "lm_head not in the last shard");
    free(idx);
    CHECK(count_files("bf16", "-of-00014.safetensors") == 14, "%d shards, want 14", count_files("bf16", "-of-00014.safetensors"));
    CHECK(count_files("bf16", ".tmp") == 0, "temporary files left behind");
    CHECK(count_files("bf16", "model.safetensors") == 1, "want the index and no model.safetensors");
    path_of(p, sizeof p, "bf16", "config.json");
    char *cfg = test_read_file(p, NULL);
    CHECK(cfg && strstr(cfg, "\"LlamaForCausalLM\"") && strstr(cfg, "\"model_type\": \"llama\"") &&
              strstr(cfg, "\"torch_dtype\": \"bfloat16\"") && strstr(cfg, "\"tie_word_embeddings\": false"),
          "config.json: %.300s", cfg ? cfg : "(none)");
    free(cfg);
    check_small("bf16", 7, 0.02, AG_BF16);
}

static void test_f32_and_f16_single_file_models_match_exactly(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    if (make("f32", SMALL " --dtype f32 --seed 3 --std 0.05") == 0) {
        CHECK(count_files("f32", "model.safetensors") == 1 && count_files("f32", "index") == 0 &&
                  count_files("f32", "-of-") == 0,
              "want one model.safetensors and no index");
        check_small("f32", 3, 0.05, AG_F32);
    }
    if (make("f16", SMALL " --dtype f16 --seed 3 --std 0.05") == 0) check_small("f16", 3, 0.05, AG_F16);
}

static void test_second_run_prints_cached_and_writes_nothing(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    if (make("cache", SMALL " --seed 7 --shard-gb 0.0001")) return;
    char p[512], a[1024];
    path_of(p, sizeof p, "cache", "model-00002-of-00004.safetensors");
    struct stat before, after;
    CHECK(stat(p, &before) == 0, "%s missing", p);
    snprintf(a, sizeof a, "--out %s/cache " SMALL " --seed 7 --shard-gb 0.0001", g_tmp);
    char *out, *err;
    int rc = run_mm(a, &out, &err);
    CHECK(rc == 0 && out && !strcmp(out, "cached\n"), "rerun: exit %d, stdout '%s', stderr '%s'", rc, out ? out : "",
          err ? err : "");
    free(out);
    free(err);
    CHECK(stat(p, &after) == 0 && after.st_ino == before.st_ino && after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
              after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
          "shard rewritten by a cached run");
}

static void test_other_seed_or_shape_rewrites_and_removes_stale_shards(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    if (make("redo", SMALL " --seed 7 --shard-gb 0.0001")) return;
    CHECK(count_files("redo", "-of-00004.safetensors") == 4, "want 4 shards");
    /* another seed: same config.json, different shard metadata */
    char a[1024];
    snprintf(a, sizeof a, "--out %s/redo " SMALL " --seed 8 --shard-gb 0.0001", g_tmp);
    char *out, *err;
    int rc = run_mm(a, &out, &err);
    CHECK(rc == 0 && out && !strncmp(out, "wrote ", 6), "seed 8: exit %d, stdout '%s'", rc, out ? out : "");
    free(out);
    free(err);
    check_small("redo", 8, 0.02, AG_BF16);
    /* another shape and shard size: old shards go, the new model loads */
    if (make("redo", "--dim 32 --hidden 48 --layers 2 --heads 2 --kv-heads 2 --vocab 50 --shard-gb 0.000008")) return;
    int n_new = count_files("redo", "-of-");
    CHECK(count_files("redo", "-of-00004") == 0 && count_files("redo", ".tmp") == 0, "stale shards left");
    char p[512], e2[1024];
    path_of(p, sizeof p, "redo", NULL);
    model_weights w;
    CHECK(model_load(p, &w, e2, sizeof e2) == 0, "%s", e2);
    if (w.layers) {
        CHECK(w.cfg.dim == 32 && w.cfg.n_layers == 2 && n_new > 1, "dim %d layers %d shards %d", w.cfg.dim, w.cfg.n_layers,
              n_new);
        CHECK(compare_all(&w, 1, 0.02, AG_BF16) == 0, "values of the new shape");
        model_free(&w);
    }
}

static void test_killed_or_damaged_directory_is_completed_keeping_good_shards(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    if (make("fix", SMALL " --seed 7 --shard-gb 0.0001")) return;
    char cfg[512], sh1[512], sh3[512], junk[512];
    path_of(cfg, sizeof cfg, "fix", "config.json");
    path_of(sh1, sizeof sh1, "fix", "model-00001-of-00004.safetensors");
    path_of(sh3, sizeof sh3, "fix", "model-00003-of-00004.safetensors");
    path_of(junk, sizeof junk, "fix", "model-00003-of-00004.safetensors.tmp");
    struct stat b1, a1;
    stat(sh1, &b1);
    /* a run killed while writing shard 3: no config.json, shard 3 absent, its temporary left */
    CHECK(unlink(cfg) == 0 && rename(sh3, junk) == 0, "setting up the killed run");
    char a[1024];
    snprintf(a, sizeof a, "--out %s/fix " SMALL " --seed 7 --shard-gb 0.0001", g_tmp);
    char *out, *err;
    int rc = run_mm(a, &out, &err);
    CHECK(rc == 0 && out && !strncmp(out, "wrote ", 6), "after a kill: exit %d, stdout '%s'", rc, out ? out : "");
    CHECK(err && strstr(err, "keeping 3 complete shard(s)"), "stderr: %s", err ? err : "");
    free(out);
    free(err);
    CHECK(stat(sh1, &a1) == 0 && a1.st_ino == b1.st_ino, "a complete shard was rewritten");
    CHECK(count_files("fix", ".tmp") == 0, "temporary left");
    check_small("fix", 7, 0.02, AG_BF16);
    /* a damaged shard under an intact config.json: not cached, rewritten */
    CHECK(truncate(sh1, 100) == 0, "truncate");
    rc = run_mm(a, &out, &err);
    CHECK(rc == 0 && out && !strncmp(out, "wrote ", 6), "after truncation: exit %d, stdout '%s'", rc, out ? out : "");
    free(out);
    free(err);
    check_small("fix", 7, 0.02, AG_BF16);
}

static void test_inspect_describes_the_written_model(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    if (make("insp", SMALL " --shard-gb 0.0001")) return;
    char a[600], *out, *err;
    snprintf(a, sizeof a, "inspect %s/insp", g_tmp);
    int rc = test_run_bin(g_tmp, a, &out, &err);
    llama_config c = {64, 3, 4, 2, 160, 300, 256, 1e-5f, 10000.0f, 0};
    char want[64];
    snprintf(want, sizeof want, "%zu frozen", model_param_count(&c));
    CHECK(rc == 0 && out && strstr(out, "dim 64, 3 layers, 4 heads, 2 kv heads (head dim 16), hidden 160, vocab 300") &&
              strstr(out, "weights bf16") && strstr(out, want),
          "inspect: exit %d\n%s%s", rc, out ? out : "", err ? err : "");
    free(out);
    free(err);
}

static void test_bad_flags_and_unwritable_dirs_give_one_line_errors(void) {
    if (!mm_bin()) SKIP("%s not built", g_mm);
    struct { const char *args, *needle; int code; } cases[] = {
        {"--out X --dim 64 --heads 5", "--heads 5", 2},
        {"--out X --heads 4 --kv-heads 3 --dim 64", "--kv-heads 3", 2},
        {"--out X --dtype q4", "q4", 2},
        {"--out X --std -1", "--std", 2},
        {"--out X --dim 12 --heads 4", "odd", 2},
        {"--dim 64", "--out", 2},
        {"--out X --frobnicate 1", "--frobnicate", 2},
        {"--out /proc/self/nope/model " SMALL, "/proc/self/nope", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out, *err;
        int rc = run_mm(cases[i].args, &out, &err);
        CHECK(rc == cases[i].code && err && test_count_lines(err) == 1 && strstr(err, cases[i].needle) &&
                  !strncmp(err, "make_model: ", 12),
              "'%s': exit %d (want %d), stderr '%s'", cases[i].args, rc, cases[i].code, err ? err : "");
        free(out);
        free(err);
    }
    /* a file where the directory should be */
    char f[512], a[700];
    path_of(f, sizeof f, "plainfile", NULL);
    FILE *fp = fopen(f, "w");
    if (fp) fclose(fp);
    snprintf(a, sizeof a, "--out %s " SMALL, f);
    char *out, *err;
    int rc = run_mm(a, &out, &err);
    CHECK(rc == 1 && err && test_count_lines(err) == 1 && strstr(err, f), "file as --out: exit %d, '%s'", rc, err ? err : "");
    free(out);
    free(err);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_make_model_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_bf16_sharded_model_loads_and_every_value_matches);
    RUN(test_f32_and_f16_single_file_models_match_exactly);
    RUN(test_second_run_prints_cached_and_writes_nothing);
    RUN(test_other_seed_or_shape_rewrites_and_removes_stale_shards);
    RUN(test_killed_or_damaged_directory_is_completed_keeping_good_shards);
    RUN(test_inspect_describes_the_written_model);
    RUN(test_bad_flags_and_unwritable_dirs_give_one_line_errors);
    test_rmtree(g_tmp);
    return TEST_MAIN_END("test_make_model");
}
