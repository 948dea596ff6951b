/* The trainer end to end through the real binary, on a fixture made here: a SentencePiece
 * model trained on a small text, a random HF-format Llama model, and Alpaca JSON.
 * Also the schedule and one AdamW step against hand computations. */
#include <cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "autograd/kernels/kernels.h"
#include "autograd/rng.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "data/tok.h"
#include "tests/test.h"
#include "trainer/memory.h"
#include "trainer/optim.h"
#include "trainer/params.h"

static char dir[256], model_dir[300], bf16_model[300], other_model[300], tok_path[300], data_path[300];
static const char *bin;

static const char *WORDS[] = {"apple", "river", "stone", "cloud", "green", "table", "music", "light",
                              "paper", "glass", "horse", "bread", "ocean", "chair", "tiger", "honey"};


static int make_fixture(void) {
    char p[400], err[512];
    snprintf(p, sizeof p, "%s/corpus.txt", dir);
    FILE *f = fopen(p, "w");
    ag_rng r;
    ag_rng_seed(&r, 1);
    for (int i = 0; i < 400; i++) {
        const char *a = WORDS[ag_rng_below(&r, 16)], *b = WORDS[ag_rng_below(&r, 16)];
        fprintf(f, "Below is an instruction that describes a task. Repeat the word %s twice: %s %s. The %s is near the %s.\n", a, a,
                a, a, b);
    }
    fclose(f);
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/tok", dir);
    if (tok_train(p, prefix, 320, "bpe", err, sizeof err)) {
        printf("fixture: %s\n", err);
        return -1;
    }
    snprintf(tok_path, sizeof tok_path, "%s/tok.model", dir);
    tok *t = tok_load(tok_path, err, sizeof err);
    if (!t) return -1;
    int vocab = tok_vocab_size(t);
    tok_free(t);
    snprintf(data_path, sizeof data_path, "%s/data.json", dir);
    f = fopen(data_path, "w");
    fprintf(f, "[\n");
    for (int i = 0; i < 48; i++) {
        const char *a = WORDS[i % 16];
        fprintf(f, "%s{\"instruction\": \"Repeat the word twice.\", \"input\": \"%s\", \"output\": \"%s %s\"}\n", i ? "," : "", a, a, a);
    }
    fprintf(f, "]\n");
    fclose(f);
    llama_config c = {.dim = 32, .n_layers = 3, .n_heads = 4, .n_kv_heads = 2, .hidden_dim = 64, .vocab_size = vocab,
                      .max_seq_len = 128, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    model_weights w;
    snprintf(model_dir, sizeof model_dir, "%s/model", dir);
    snprintf(other_model, sizeof other_model, "%s/other", dir);
    snprintf(bf16_model, sizeof bf16_model, "%s/model_bf16", dir);
    if (model_init_random(&w, &c, 1, 0.2f) || model_save_hf(model_dir, &w, AG_F32, 0, err, sizeof err) ||
        model_save_hf(bf16_model, &w, AG_BF16, 0, err, sizeof err))
        return -1;
    model_free(&w);
    if (model_init_random(&w, &c, 2, 0.2f) || model_save_hf(other_model, &w, AG_F32, 0, err, sizeof err)) return -1;
    model_free(&w);
    return 0;
}

/* metrics.jsonl of a run: the lines, parsed. */
typedef struct metrics {
    int n;
    char lines[256][512];
} metrics;

static int read_metrics(const char *run, metrics *m) {
    char p[400];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    FILE *f = fopen(p, "r");
    m->n = 0;
    if (!f) return -1;
    while (m->n < 256 && fgets(m->lines[m->n], sizeof m->lines[0], f)) m->n++;
    fclose(f);
    return 0;
}

static double field(const char *line, const char *key) {
    cJSON *o = cJSON_Parse(line);
    cJSON *v = cJSON_GetObjectItem(o, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    cJSON_Delete(o);
    return d;
}

/* The textual value of "key" in a metrics line (compared byte for byte). */
static void raw_field(const char *line, const char *key, char *out, size_t n) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    out[0] = 0;
    if (!p) return;
    p += strlen(pat);
    size_t k = strcspn(p, ",}");
    snprintf(out, n, "%.*s", (int)(k < n ? k : n - 1), p);
}

#define COMMON "--model %s --tokenizer %s --data %s --batch-size 4 --max-seq-len 256 --adapter-len 2 --adapter-layer 2 --threads 2"

static void test_loss_goes_down_and_metrics_are_well_formed(void) {
    char run[400];
    snprintf(run, sizeof run, "%s/run_down", dir);
    int st = test_sh("%s train " COMMON " --adapter-len 4 --adapter-layer 3 --out %s --epochs 4 --warmup-epochs 1 --lr 0.2 --no-shuffle --log-every 12"
                " > %s/down.log 2>&1", bin,
                model_dir, tok_path, data_path, run, dir);
    CHECK(st == 0, "train exit %d (see %s/down.log)", st, dir);
    metrics m;
    CHECK(read_metrics(run, &m) == 0 && m.n == 48, "48 metrics lines (4 epochs x 12 steps), got %d", m.n);
    if (m.n < 48) return;
    const char *keys[] = {"step", "epoch", "lr", "loss", "tokens", "tokens_per_s"};
    for (int i = 0; i < m.n; i++) {
        cJSON *o = cJSON_Parse(m.lines[i]);
        CHECK(o != NULL, "line %d is not JSON: %s", i, m.lines[i]);
        for (int k = 0; o && k < 6; k++) CHECK(cJSON_IsNumber(cJSON_GetObjectItem(o, keys[k])), "line %d lacks %s", i, keys[k]);
        CHECK(field(m.lines[i], "step") == i + 1, "steps count 1..n");
        cJSON_Delete(o);
    }
    double first = 0, last = 0;
    for (int i = 0; i < 6; i++) first += field(m.lines[i], "loss") / 6;
    for (int i = m.n - 6; i < m.n; i++) last += field(m.lines[i], "loss") / 6;
    printf("  mean loss of the first 6 steps %.4f, of the last 6 %.4f\n", first, last);
    CHECK(last < first - 0.5, "loss must go down by more than 0.5: %.4f -> %.4f", first, last);
    char ck[500];
    snprintf(ck, sizeof ck, "%s/ckpt-00000048.h5", run);
    CHECK(access(ck, R_OK) == 0, "final checkpoint %s", ck);
    /* the warm-up pass over the longest micro-batch reports the activation memory */
    snprintf(ck, sizeof ck, "%s/down.log", dir);
    char *log = test_read_file(ck, NULL), *mem = log ? strstr(log, "\nmemory: ") : NULL;
    CHECK(mem && atof(mem + 9) > 0, "a 'memory: N MB' line before the first step");
    free(log);
}

/* Schedule values at the start, mid warm-up, end of warm-up and the last step equal the
 * formula; the lr in metrics.jsonl equals the formula at each step's fractional epoch. */
static void test_schedule_values(void) {
    double lr = 0.01, min_lr = 1e-4;
    CHECK(sched_lr(0.0, lr, min_lr, 2, 5) == 0.0, "lr at step 0 is 0");
    CHECK_CLOSE(sched_lr(1.0, lr, min_lr, 2, 5), 0.005, 0, 1e-15, "mid warm-up");
    CHECK_CLOSE(sched_lr(2.0, lr, min_lr, 2, 5), 0.01, 0, 1e-15, "end of warm-up: peak");
    double e = 4.75, want = min_lr + (lr - min_lr) * 0.5 * (1 + cos(M_PI * (e - 2) / 3));
    CHECK_CLOSE(sched_lr(e, lr, min_lr, 2, 5), want, 0, 1e-15, "last step of 20/epoch");
    CHECK_CLOSE(sched_lr(5.0, lr, min_lr, 2, 5), min_lr, 0, 1e-12, "end: min_lr");
    char run[400];
    snprintf(run, sizeof run, "%s/run_down", dir);
    metrics m;
    if (read_metrics(run, &m) || m.n < 48) SKIP("the loss test's run is missing");
    /* that run: 12 steps/epoch, 4 epochs, warm-up 1, lr 0.2, min_lr 0 */
    int idx[] = {0, 5, 11, 12, 47};
    for (int k = 0; k < 5; k++) {
        int i = idx[k];
        double ep = i / 12.0, want2 = sched_lr(ep, 0.2, 0, 1, 4);
        CHECK_CLOSE(field(m.lines[i], "lr"), want2, 0, 1e-15, "metrics lr");
        CHECK_CLOSE(field(m.lines[i], "epoch"), ep, 1e-8, 0, "metrics epoch");
    }
    CHECK(field(m.lines[0], "lr") == 0.0, "the first step runs at lr 0");
}

/* One AdamW step equals the PyTorch formula computed by hand (double, rounded per op). */
static void test_adamw_step_matches_hand_computation(void) {
    float p[4] = {0.5f, -1.25f, 2.0f, 0.0f}, g[4] = {0.1f, -0.02f, 0.0f, 3.0f};
    float p0[4];
    memcpy(p0, p, sizeof p);
    adamw o;
    adamw_init(&o, 4, 0.9, 0.95, 1e-8, 0.02);
    double lr = 1e-3;
    adamw_step(&o, p, g, lr);
    for (int i = 0; i < 4; i++) {
        double pp = p0[i] * (1 - lr * 0.02);
        double m = 0.1 * g[i], v = 0.05 * (double)g[i] * g[i];
        double mh = m / (1 - 0.9), vh = v / (1 - 0.95);
        double want = pp - lr * mh / (sqrt(vh) + 1e-8);
        CHECK_CLOSE(p[i], want, 1e-9, 1e-6, "AdamW step 1");
    }
    /* second step with the same gradient */
    float p1[4];
    memcpy(p1, p, sizeof p);
    adamw_step(&o, p, g, lr);
    for (int i = 0; i < 4; i++) {
        double m = 0.9 * (0.1 * g[i]) + 0.1 * g[i], v = 0.95 * (0.05 * (double)g[i] * g[i]) + 0.05 * (double)g[i] * g[i];
        double mh = m / (1 - 0.81), vh = v / (1 - 0.9025);
        double want = p1[i] * (1 - lr * 0.02) - lr * mh / (sqrt(vh) + 1e-8);
        CHECK_CLOSE(p[i], want, 1e-9, 1e-6, "AdamW step 2");
    }
    CHECK(o.t == 2, "step count");
    adamw_free(&o);
}

/* With gates 0, the first step moves the prompts by the decay term only and every gate by ~lr. */
static void test_first_step_moves_only_gates_and_decay(void) {
    char run[400];
    snprintf(run, sizeof run, "%s/run_first", dir);
    int st = test_sh("%s train " COMMON " --out %s --epochs 2 --warmup-epochs 0 --lr 0.01 --max-steps 1 --seed 5 > %s/first.log 2>&1", bin,
                model_dir, tok_path, data_path, run, dir);
    CHECK(st == 0, "train exit %d", st);
    char ck[500], err[512];
    snprintf(ck, sizeof ck, "%s/ckpt-00000001.h5", run);
    train_ckpt c;
    if (ckpt_load(ck, &c, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    model_weights w;
    CHECK(model_load(model_dir, &w, err, sizeof err) == 0, "%s", err);
    trainable init;
    CHECK(trainable_adapter_init(&init, &w.cfg, 2, 2, GATE_TANH, 5, err, sizeof err) == 0, "%s", err);
    CHECK(c.n_params == init.n, "parameter count");
    size_t nq = (size_t)2 * 2 * w.cfg.dim;
    float decay = (float)(1.0 - 0.01 * 0.02);
    int exact = 1;
    for (size_t i = 0; i < nq; i++) exact &= c.params[i] == init.p[i] * decay;
    CHECK(exact, "adapter_query after step 1 must equal p0 * (1 - lr*wd) exactly");
    for (size_t i = nq; i < c.n_params; i++)
        CHECK(fabsf(c.params[i]) > 0.009f && fabsf(c.params[i]) < 0.0101f, "gate %zu moved by %g, expected ~lr", i - nq, c.params[i]);
    trainable_free(&init);
    model_free(&w);
    ckpt_free(&c);
}

static int same_checkpoint_params(const char *a, const char *b) {
    train_ckpt x, y;
    char err[512];
    if (ckpt_load(a, &x, err, sizeof err)) return printf("  %s\n", err), 0;
    if (ckpt_load(b, &y, err, sizeof err)) return ckpt_free(&x), printf("  %s\n", err), 0;
    int same = x.n_params == y.n_params && !memcmp(x.params, y.params, x.n_params * 4) &&
               !memcmp(x.adam_m, y.adam_m, x.n_params * 4) && !memcmp(x.adam_v, y.adam_v, x.n_params * 4) &&
               x.step == y.step && x.epoch == y.epoch && x.micro_index == y.micro_index;
    ckpt_free(&x);
    ckpt_free(&y);
    return same;
}

/* 2N steps in one run == N steps, then resumed for N more: metrics (loss, lr) and the final
 * adapter and moments bit for bit. Shuffled data, accumulation, across an epoch boundary. */
static void test_resume_is_bit_exact(void) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/run_a", dir);
    snprintf(b, sizeof b, "%s/run_b", dir);
    const char *opts = "--epochs 3 --warmup-epochs 1 --accum-iter 2 --seed 9 --save-every 4";
    int st = test_sh("%s train " COMMON " %s --out %s --max-steps 10 > %s/a.log 2>&1", bin, model_dir, tok_path, data_path, opts, a, dir);
    CHECK(st == 0, "run a exit %d", st);
    st = test_sh("%s train " COMMON " %s --out %s --max-steps 5 > %s/b1.log 2>&1", bin, model_dir, tok_path, data_path, opts, b, dir);
    CHECK(st == 0, "run b exit %d", st);
    st = test_sh("%s train --resume %s --max-steps 10 > %s/b2.log 2>&1", bin, b, dir);
    CHECK(st == 0, "resumed run exit %d (see %s/b2.log)", st, dir);
    metrics ma, mb;
    read_metrics(a, &ma);
    read_metrics(b, &mb);
    CHECK(ma.n == 10 && mb.n == 10, "10 lines each (got %d and %d)", ma.n, mb.n);
    for (int i = 0; i < ma.n && i < mb.n; i++) {
        const char *keys[] = {"step", "epoch", "lr", "loss", "tokens"};
        for (int k = 0; k < 5; k++) {
            char x[64], y[64];
            raw_field(ma.lines[i], keys[k], x, sizeof x);
            raw_field(mb.lines[i], keys[k], y, sizeof y);
            CHECK(!strcmp(x, y) && x[0], "step %d %s: %s vs %s", i + 1, keys[k], x, y);
        }
    }
    char ca[500], cb[500];
    snprintf(ca, sizeof ca, "%s/ckpt-00000010.h5", a);
    snprintf(cb, sizeof cb, "%s/ckpt-00000010.h5", b);
    CHECK(same_checkpoint_params(ca, cb), "final checkpoints differ");
}

/* The binary with these arguments fails with exactly one stderr line containing needle. */
static void expect_fail(const char *args, const char *needle) {
    char *err = NULL;
    int st = test_run_bin(dir, args, NULL, &err);
    CHECK(st != 0, "'%s' must fail", args);
    CHECK(test_count_lines(err) == 1, "'%s': %d stderr lines", args, test_count_lines(err));
    CHECK(err && strstr(err, needle), "'%s': message '%s' lacks '%s'", args, err ? err : "", needle);
    free(err);
}

/* --recompute on and off train the same numbers: every metrics line's loss and lr byte for
 * byte and the final adapter and AdamW moments bit for bit, on the f32 and the bf16 copy of the
 * GQA model, with accumulation and shuffling. */
static void test_recompute_on_off_bit_identical(void) {
    const char *models[2] = {model_dir, bf16_model};
    for (int m = 0; m < 2; m++) {
        char a[400], b[400];
        snprintf(a, sizeof a, "%s/rc_off_%d", dir, m);
        snprintf(b, sizeof b, "%s/rc_on_%d", dir, m);
        const char *opts = "--epochs 2 --warmup-epochs 1 --accum-iter 2 --seed 3 --max-steps 6";
        int st = test_sh("%s train " COMMON " %s --recompute off --out %s > %s/rc_off.log 2>&1", bin, models[m], tok_path,
                         data_path, opts, a, dir);
        CHECK(st == 0, "recompute off: exit %d", st);
        st = test_sh("%s train " COMMON " %s --recompute on --out %s > %s/rc_on.log 2>&1", bin, models[m], tok_path, data_path,
                     opts, b, dir);
        CHECK(st == 0, "recompute on: exit %d", st);
        char log[400], *text;
        snprintf(log, sizeof log, "%s/rc_on.log", dir);
        text = test_read_file(log, NULL);
        CHECK(text && strstr(text, "recompute: on (--recompute"), "the startup lines name the recompute choice");
        free(text);
        metrics ma, mb;
        read_metrics(a, &ma);
        read_metrics(b, &mb);
        CHECK(ma.n == 6 && mb.n == 6, "%s: 6 metrics lines each (got %d and %d)", models[m], ma.n, mb.n);
        for (int i = 0; i < ma.n && i < mb.n; i++) {
            const char *keys[] = {"loss", "lr", "tokens"};
            for (int k = 0; k < 3; k++) {
                char x[64], y[64];
                raw_field(ma.lines[i], keys[k], x, sizeof x);
                raw_field(mb.lines[i], keys[k], y, sizeof y);
                CHECK(!strcmp(x, y) && x[0], "%s step %d %s: %s (off) vs %s (on)", m ? "bf16" : "f32", i + 1, keys[k], x, y);
            }
        }
        char ca[500], cb[500];
        snprintf(ca, sizeof ca, "%s/ckpt-00000006.h5", a);
        snprintf(cb, sizeof cb, "%s/ckpt-00000006.h5", b);
        CHECK(same_checkpoint_params(ca, cb), "%s: final adapters or moments differ with recompute", m ? "bf16" : "f32");
    }
}

/* --precision bf16 (GEMM operands rounded to bf16, f32 sums) follows the f32 run: every step's
 * loss within 1% over 12 steps of training, and the startup line names the path; the f32 run is
 * the default's exact twin when the CPU has no AVX512-BF16 (then this SKIPs). */
static void test_bf16_precision_tracks_f32(void) {
    if (!kn_bf16_gemm_available()) SKIP("this CPU has no AVX512-BF16");
    char a[400], b[400], log[400];
    snprintf(a, sizeof a, "%s/prec_f32", dir);
    snprintf(b, sizeof b, "%s/prec_bf16", dir);
    const char *opts = "--epochs 2 --warmup-epochs 0.5 --seed 4 --max-steps 12 --lr 0.02";
    int st = test_sh("%s train " COMMON " %s --precision f32 --out %s > %s/prec_f32.log 2>&1", bin, bf16_model, tok_path,
                     data_path, opts, a, dir);
    CHECK(st == 0, "f32 run: exit %d", st);
    st = test_sh("%s train " COMMON " %s --precision bf16 --out %s > %s/prec_bf16.log 2>&1", bin, bf16_model, tok_path,
                 data_path, opts, b, dir);
    CHECK(st == 0, "bf16 run: exit %d", st);
    snprintf(log, sizeof log, "%s/prec_bf16.log", dir);
    char *text = test_read_file(log, NULL);
    CHECK(text && strstr(text, "compute: bf16 on AVX512-BF16"), "the startup lines name the bf16 path");
    free(text);
    metrics ma, mb;
    read_metrics(a, &ma);
    read_metrics(b, &mb);
    CHECK(ma.n == 12 && mb.n == 12, "12 metrics lines each (got %d and %d)", ma.n, mb.n);
    double worst = 0;
    int differ = 0;
    for (int i = 0; i < ma.n && i < mb.n; i++) {
        double lf = field(ma.lines[i], "loss"), lb = field(mb.lines[i], "loss");
        double rel = fabs(lb - lf) / fabs(lf);
        worst = fmax(worst, rel);
        differ += lf != lb;
        CHECK(rel < 0.01, "step %d: bf16 loss %.6f vs f32 %.6f (%.2f%%)", i + 1, lb, lf, 100 * rel);
    }
    CHECK(differ > 0, "bf16 and f32 losses are identical: the bf16 path did not run");
    printf("  12 steps: bf16 loss within %.3f%% of f32 at every step\n", 100 * worst);
}

/* The frozen-prefix cache changes no bit: 3 shuffled epochs with the cache off, in memory and in
 * a file (a budget that leaves no room) give the same metrics and final adapter, and epochs 2-3
 * are served from the cache; with f32 compute, auto leaves it off and says why. */
static void test_prefix_cache_is_bit_exact(void) {
    if (!kn_bf16_gemm_available()) SKIP("the cache is exact on the bf16 path; this CPU has no AVX512-BF16");
    model_weights w;
    char err[512];
    CHECK(model_load(model_dir, &w, err, sizeof err) == 0, "%s", err);
    struct stat sd;
    stat(data_path, &sd);
    mem_plan off = mem_plan_train(&w, 2, 2, 0, 4 * 256, 0, 2, (double)sd.st_size);
    model_free(&w);
    const char *modes[3] = {"--prefix-cache off", "--prefix-cache on", "--prefix-cache on --memory-budget"};
    char runs[3][400];
    for (int m = 0; m < 3; m++) {
        snprintf(runs[m], sizeof runs[m], "%s/pc_%d", dir, m);
        char budget[64] = "";
        if (m == 2) snprintf(budget, sizeof budget, " %.0f", off.total + 1000);
        int st = test_sh("%s train " COMMON " --precision bf16 --epochs 3 --warmup-epochs 1 --seed 5 %s%s --out %s > %s/pc_%d.log 2>&1",
                         bin, model_dir, tok_path, data_path, modes[m], budget, runs[m], dir, m);
        CHECK(st == 0, "%s: exit %d", modes[m], st);
        char log[400];
        snprintf(log, sizeof log, "%s/pc_%d.log", dir, m);
        char *text = test_read_file(log, NULL);
        if (m > 0) {
            CHECK(text && strstr(text, m == 1 ? "in memory, reused from epoch 2" : "in a file in the run directory"),
                  "%s: the startup line says where the cache is", modes[m]);
            long hits = -1, misses = -1;
            const char *p = text ? strstr(text, "prefix cache: ") : NULL;
            while (p && sscanf(p, "prefix cache: %ld micro-batches served from the cache, %ld computed", &hits, &misses) != 2)
                p = strstr(p + 1, "prefix cache: ");
            CHECK(hits == 2 * misses && misses == 12, "%s: %ld micro-batches from the cache, %ld computed (want 24 and 12)",
                  modes[m], hits, misses);
        }
        free(text);
    }
    char pcfile[500];
    snprintf(pcfile, sizeof pcfile, "%s/prefix_cache.f32", runs[2]);
    CHECK(access(pcfile, F_OK) != 0, "the cache file is removed when the run ends");
    metrics ma, mb, mc;
    read_metrics(runs[0], &ma);
    read_metrics(runs[1], &mb);
    read_metrics(runs[2], &mc);
    CHECK(ma.n == 36 && mb.n == 36 && mc.n == 36, "36 steps each (got %d, %d, %d)", ma.n, mb.n, mc.n);
    for (int i = 0; i < ma.n && i < mb.n && i < mc.n; i++) {
        char x[64], y[64], z[64];
        raw_field(ma.lines[i], "loss", x, sizeof x);
        raw_field(mb.lines[i], "loss", y, sizeof y);
        raw_field(mc.lines[i], "loss", z, sizeof z);
        CHECK(!strcmp(x, y) && !strcmp(x, z) && x[0], "step %d loss: off %s, memory %s, file %s", i + 1, x, y, z);
    }
    char ca[500], cb[500], cc[500];
    snprintf(ca, sizeof ca, "%s/ckpt-00000036.h5", runs[0]);
    snprintf(cb, sizeof cb, "%s/ckpt-00000036.h5", runs[1]);
    snprintf(cc, sizeof cc, "%s/ckpt-00000036.h5", runs[2]);
    CHECK(same_checkpoint_params(ca, cb) && same_checkpoint_params(ca, cc), "final adapters differ with the prefix cache");
    char *out = NULL, args[1200];
    snprintf(args, sizeof args, "train " COMMON " --precision f32 --epochs 2 --warmup-epochs 1 --max-steps 1 --out %s/pc_f32",
             model_dir, tok_path, data_path, dir);
    int st = test_run_bin(dir, args, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "prefix cache: off (f32 sgemm"), "f32 auto: cache off with the reason (exit %d)", st);
    free(out);
}

/* A run whose memory estimate exceeds the budget stops before it reads any data: the data
 * path here does not exist, and the message is about memory, with the flags that lower it. */
static void test_memory_budget_refusal(void) {
    char args[2000];
    snprintf(args, sizeof args, "train --model %s --tokenizer %s --data %s/no-such-data.json --memory-budget 2M --out %s/mb",
             model_dir, tok_path, dir, dir);
    expect_fail(args, "memory budget is 2.0 MiB");
    expect_fail(args, "--batch-size");
    snprintf(args, sizeof args, "train --model %s --tokenizer %s --data %s --memory-budget lots --out %s/mb", model_dir, tok_path,
             data_path, dir);
    expect_fail(args, "--memory-budget 'lots'");
    snprintf(args, sizeof args, "train --model %s --tokenizer %s --data %s --recompute maybe --out %s/mb", model_dir, tok_path,
             data_path, dir);
    expect_fail(args, "--recompute 'maybe'");
    snprintf(args, sizeof args, "eval --model %s --tokenizer %s --data %s/no-such-data.json --memory-budget 2M", model_dir,
             tok_path, dir);
    expect_fail(args, "memory budget is 2.0 MiB");
    /* auto with a budget between the plan with and without recomputation turns it on */
    model_weights w;
    char err[512];
    CHECK(model_load(model_dir, &w, err, sizeof err) == 0, "%s", err);
    struct stat sd;
    stat(data_path, &sd);
    mem_plan on = mem_plan_train(&w, 2, 3, 0, 4 * 256, 1, 2, (double)sd.st_size);
    mem_plan off = mem_plan_train(&w, 2, 3, 0, 4 * 256, 0, 2, (double)sd.st_size);
    model_free(&w);
    CHECK(on.activations < off.activations, "recomputation must plan fewer activation bytes (%.0f vs %.0f)", on.activations,
          off.activations);
    char *out = NULL;
    snprintf(args, sizeof args,
             "train --model %s --tokenizer %s --data %s --batch-size 4 --max-seq-len 256 --adapter-len 2 --adapter-layer 3 "
             "--max-steps 1 --threads 2 --memory-budget %.0f --out %s/mb_auto",
             model_dir, tok_path, data_path, (on.total + off.total) / 2, dir);
    int st = test_run_bin(dir, args, &out, NULL);
    CHECK(st == 0, "auto recompute run: exit %d", st);
    CHECK(out && strstr(out, "recompute: on (auto, the run does not fit the budget without it"), "auto must turn recompute on: %s",
          out ? out : "");
    free(out);
}


static void test_resume_refuses_other_model_or_shape(void) {
    char args[2000], b[400];
    snprintf(b, sizeof b, "%s/run_b", dir);
    snprintf(args, sizeof args, "train --resume %s --model %s --max-steps 12", b, other_model);
    expect_fail(args, "another base model");
    snprintf(args, sizeof args, "train --resume %s --adapter-len 3 --max-steps 12", b);
    expect_fail(args, "K=2");
    snprintf(args, sizeof args, "train --resume %s/nothing-here", dir);
    expect_fail(args, "nothing-here");
}

/* Export in every format, then eval with the export == eval with the checkpoint; and
 * --init-adapter from an export with lr 0 keeps the adapter (same eval loss). */
static void test_export_round_trip(void) {
    char run[400], out[600], log[600];
    snprintf(run, sizeof run, "%s/run_down", dir);
    const char *fmts[] = {"safetensors", "pth", "hdf5"};
    char ref[256] = "";
    snprintf(log, sizeof log, "%s/eval.json", dir);
    int st = test_sh("%s eval --model %s --tokenizer %s --data %s --max-seq-len 256 --adapter %s > %s 2>/dev/null", bin, model_dir,
                tok_path, data_path, run, log);
    CHECK(st == 0, "eval with the run directory: exit %d", st);
    FILE *f = fopen(log, "r");
    if (f) {
        if (!fgets(ref, sizeof ref, f)) ref[0] = 0;
        fclose(f);
    }
    CHECK(field(ref, "tokens") > 0 && field(ref, "loss") > 0, "eval output %s", ref);
    for (int i = 0; i < 3; i++) {
        snprintf(out, sizeof out, "%s/adapter.%s", dir, fmts[i]);
        st = test_sh("%s export --adapter %s --format %s --out %s > /dev/null 2>&1", bin, run, fmts[i], out);
        CHECK(st == 0, "export %s: exit %d", fmts[i], st);
        char got[256] = "";
        st = test_sh("%s eval --model %s --tokenizer %s --data %s --max-seq-len 256 --adapter %s --adapter-len 4 > %s 2>/dev/null", bin,
                model_dir, tok_path, data_path, out, log);
        f = fopen(log, "r");
        if (f) {
            if (!fgets(got, sizeof got, f)) got[0] = 0;
            fclose(f);
        }
        CHECK(st == 0 && !strcmp(got, ref), "eval with the %s export: %s vs %s", fmts[i], got, ref);
    }
    /* --init-adapter then one step at lr 0: the adapter is unchanged */
    char run2[400];
    snprintf(run2, sizeof run2, "%s/run_init", dir);
    snprintf(out, sizeof out, "%s/adapter.safetensors", dir);
    st = test_sh("%s train " COMMON " --out %s --init-adapter %s --blr 0 --max-steps 1 > %s/init.log 2>&1", bin, model_dir, tok_path,
            data_path, run2, out, dir);
    CHECK(st == 0, "train --init-adapter: exit %d", st);
    char got[256] = "";
    st = test_sh("%s eval --model %s --tokenizer %s --data %s --max-seq-len 256 --adapter %s > %s 2>/dev/null", bin, model_dir, tok_path,
            data_path, run2, log);
    f = fopen(log, "r");
    if (f) {
        if (!fgets(got, sizeof got, f)) got[0] = 0;
        fclose(f);
    }
    CHECK(st == 0 && !strcmp(got, ref), "eval after --init-adapter: %s vs %s", got, ref);
}

/* With gates 0 (a fresh adapter), eval with the adapter equals eval without it. */
static void test_zero_init_eval_equals_base(void) {
    char run[400], log[600], a[256] = "", b[256] = "";
    snprintf(run, sizeof run, "%s/run_zero", dir);
    int st = test_sh("%s train " COMMON " --out %s --blr 0 --max-steps 1 > /dev/null 2>&1", bin, model_dir, tok_path, data_path, run);
    CHECK(st == 0, "train exit %d", st);
    snprintf(log, sizeof log, "%s/e1.json", dir);
    test_sh("%s eval --model %s --tokenizer %s --data %s --max-seq-len 256 --adapter %s > %s 2>/dev/null", bin, model_dir, tok_path,
       data_path, run, log);
    FILE *f = fopen(log, "r");
    if (f && fgets(a, sizeof a, f)) fclose(f);
    test_sh("%s eval --model %s --tokenizer %s --data %s --max-seq-len 256 > %s 2>/dev/null", bin, model_dir, tok_path, data_path, log);
    f = fopen(log, "r");
    if (f && fgets(b, sizeof b, f)) fclose(f);
    CHECK(a[0] && !strcmp(a, b), "eval with a zero-gate adapter %s != base %s", a, b);
}

/* SIGINT during training: a final checkpoint is written, exit 130, and the run resumes. */
static void test_sigint_writes_checkpoint(void) {
    char run[400], cmd[2000];
    snprintf(run, sizeof run, "%s/run_int", dir);
    snprintf(cmd, sizeof cmd, "exec %s train " COMMON " --out %s --epochs 200 --save-every 100000 > %s/int.log 2>&1", bin, model_dir,
             tok_path, data_path, run, dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    metrics m = {0};
    for (int i = 0; i < 300 && (read_metrics(run, &m) || m.n < 3); i++) usleep(20000);
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130, "exit status %d after SIGINT, expected 130",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    read_metrics(run, &m);
    char ck[600], err[512];
    snprintf(ck, sizeof ck, "%s/ckpt-%08d.h5", run, m.n);
    train_ckpt c;
    CHECK(ckpt_load(ck, &c, err, sizeof err) == 0, "checkpoint at the interrupted step %d: %s", m.n, err);
    if (c.params) ckpt_free(&c);
    int st = test_sh("%s train --resume %s --max-steps %d > /dev/null 2>&1", bin, run, m.n + 2);
    CHECK(st == 0, "resume after SIGINT: exit %d", st);
}

static void test_config_file_and_flags(void) {
    char cfg[400], out[600];
    snprintf(cfg, sizeof cfg, "%s/preset.json", dir);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"model\": \"%s\", \"tokenizer\": \"%s\", \"data\": \"%s\", \"adapter_len\": 2, \"adapter_layer\": 2,\n"
               " \"batch_size\": 4, \"max_seq_len\": 256, \"blr\": 0.5, \"max_steps\": 1, \"out\": \"%s/run_cfg\"}\n",
            model_dir, tok_path, data_path, dir);
    fclose(f);
    snprintf(out, sizeof out, "%s/cfg.log", dir);
    int st = test_sh("%s train --config %s --batch-size 8 > %s 2>&1", bin, cfg, out);
    CHECK(st == 0, "train --config: exit %d", st);
    f = fopen(out, "r");
    char line[8192];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "config: ", 8)) {
            found = 1;
            CHECK(strstr(line, "\"batch_size\":8") && strstr(line, "\"blr\":0.5") && strstr(line, "\"adapter_len\":2"),
                  "resolved config: flags override the file: %s", line);
        }
    if (f) fclose(f);
    CHECK(found, "the resolved config is printed");
    f = fopen(cfg, "w");
    fprintf(f, "{\"modle\": \"x\"}\n");
    fclose(f);
    char args[700];
    snprintf(args, sizeof args, "train --config %s", cfg);
    expect_fail(args, "unknown key \"modle\"");
    f = fopen(cfg, "w");
    fprintf(f, "{\"batch_size\": \"four\"}\n");
    fclose(f);
    expect_fail(args, "expected an integer");
    /* --help lists every key with its default */
    snprintf(out, sizeof out, "%s/help.txt", dir);
    st = test_sh("%s train --help > %s", bin, out);
    CHECK(st == 0, "--help exit %d", st);
    f = fopen(out, "r");
    char text[16384] = "";
    size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[got] = 0;
    const char *keys[] = {"--model", "--tokenizer", "--data", "--val-data", "--adapter-len", "--adapter-layer", "--gate-act",
                          "--max-seq-len", "--batch-size", "--accum-iter", "--epochs", "--warmup-epochs", "--blr", "--lr",
                          "--min-lr", "--weight-decay", "--seed", "--no-shuffle", "--max-steps", "--init-adapter", "--resume",
                          "--out", "--threads", "(default: 0.009)", "(default: 0.02)"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) CHECK(strstr(text, keys[i]), "--help lacks %s", keys[i]);
}

/* --method full on plain text: every weight trains (language-model pre-training), the loss goes
 * down, and the result is a HF directory that loads and evaluates to the logged loss level. */
static void test_full_method_pretrains_on_text(void) {
    char run[400], corpus[400], log[500];
    snprintf(run, sizeof run, "%s/run_full", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    int st = test_sh("%s train --method full --model %s --tokenizer %s --data %s --out %s --batch-size 8 --epochs 1 --max-steps 30"
                " --lr 0.003 --warmup-epochs 0.1 --no-shuffle --threads 2 > %s/full.log 2>&1",
                bin, model_dir, tok_path, corpus, run, dir);
    CHECK(st == 0, "train --method full exit %d (see %s/full.log)", st, dir);
    metrics m;
    read_metrics(run, &m);
    CHECK(m.n == 30, "30 steps, got %d", m.n);
    if (m.n < 30) return;
    double first = field(m.lines[0], "loss"), last = field(m.lines[29], "loss");
    printf("  full pre-training on text: loss %.4f -> %.4f in 30 steps\n", first, last);
    CHECK(last < first - 1.0, "full training must lower the loss a lot: %.4f -> %.4f", first, last);
    char model[500], err[512];
    snprintf(model, sizeof model, "%s/model", run);
    model_weights w;
    CHECK(model_load(model, &w, err, sizeof err) == 0, "the trained model loads: %s", err);
    if (!err[0] || w.layers) model_free(&w);
    snprintf(log, sizeof log, "%s/full_eval.json", dir);
    st = test_sh("%s eval --model %s --tokenizer %s --data %s > %s 2>/dev/null", bin, model, tok_path, corpus, log);
    FILE *f = fopen(log, "r");
    char line[256] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    }
    CHECK(st == 0 && field(line, "loss") < first - 1.0, "eval of the trained model: %s", line);
    /* a full checkpoint refuses to export as an adapter */
    char args[900];
    snprintf(args, sizeof args, "export --adapter %s --format safetensors --out %s/x.safetensors", run, dir);
    expect_fail(args, "holds no adapter");
}

/* Two MPI ranks of batch B == one process of batch B with accum 2 over the same examples:
 * rank r's micro-batch i holds examples (i*B + j)*2 + r, so a file reordered to put rank 0's
 * and then rank 1's examples of each step side by side gives the single process the same
 * micro-batches. Loss per step within float rounding, lr and token counts exactly, the final
 * adapters within 1e-6. */
static void test_data_parallel_equals_accumulation(void) {
    if (test_sh("command -v mpirun > /dev/null 2>&1") != 0) SKIP("mpirun (openmpi-bin) is not installed");
    char reordered[400], a[400], b[400];
    snprintf(reordered, sizeof reordered, "%s/reordered.json", dir);
    FILE *f = fopen(reordered, "w");
    fprintf(f, "[\n");
    for (int i = 0; i < 48; i++) {
        int g = i / 4, k = i % 4, e = g * 4 + (k == 0 ? 0 : k == 1 ? 2 : k == 2 ? 1 : 3);
        const char *w = WORDS[e % 16];
        fprintf(f, "%s{\"instruction\": \"Repeat the word twice.\", \"input\": \"%s\", \"output\": \"%s %s\"}\n", i ? "," : "", w, w, w);
    }
    fprintf(f, "]\n");
    fclose(f);
    snprintf(a, sizeof a, "%s/run_mpi", dir);
    snprintf(b, sizeof b, "%s/run_accum", dir);
    const char *opts = "--adapter-len 2 --adapter-layer 2 --max-seq-len 256 --no-shuffle --epochs 2 --warmup-epochs 0.5 --lr 0.05 --threads 1 --max-steps 6";
    /* Open MPI's own allocations at MPI_Init are never freed: leak checking (make asan) is off for
     * this command only; the single-process runs check the trainer's memory */
    int st = test_sh("ASAN_OPTIONS=detect_leaks=0 mpirun --allow-run-as-root --oversubscribe -np 2 %s train --model %s --tokenizer %s --data %s --batch-size 2 %s --out %s"
                " > %s/mpi.log 2>&1", bin, model_dir, tok_path, data_path, opts, a, dir);
    CHECK(st == 0, "mpirun -np 2 train: exit %d (see %s/mpi.log)", st, dir);
    st = test_sh("%s train --model %s --tokenizer %s --data %s --batch-size 2 --accum-iter 2 %s --out %s > %s/accum.log 2>&1", bin,
            model_dir, tok_path, reordered, opts, b, dir);
    CHECK(st == 0, "single-process accumulation run: exit %d", st);
    metrics ma, mb;
    read_metrics(a, &ma);
    read_metrics(b, &mb);
    CHECK(ma.n == 6 && mb.n == 6, "6 steps each (got %d and %d)", ma.n, mb.n);
    for (int i = 0; i < ma.n && i < mb.n; i++) {
        CHECK_CLOSE(field(ma.lines[i], "loss"), field(mb.lines[i], "loss"), 0, 2e-6, "loss per step");
        CHECK(field(ma.lines[i], "lr") == field(mb.lines[i], "lr"), "lr of step %d", i + 1);
        CHECK(field(ma.lines[i], "tokens") == field(mb.lines[i], "tokens"), "loss tokens of step %d", i + 1);
    }
    char ca[500], cb[500], err[512];
    snprintf(ca, sizeof ca, "%s/ckpt-00000006.h5", a);
    snprintf(cb, sizeof cb, "%s/ckpt-00000006.h5", b);
    train_ckpt x, y;
    if (ckpt_load(ca, &x, err, sizeof err) == 0) {
        if (ckpt_load(cb, &y, err, sizeof err) == 0) {
            double worst = 0;
            for (size_t i = 0; i < x.n_params && x.n_params == y.n_params; i++) worst = fmax(worst, fabs(x.params[i] - y.params[i]));
            CHECK(x.n_params == y.n_params && worst < 1e-6, "adapters differ by %.3g", worst);
            printf("  2 ranks x batch 2 vs 1 process x batch 2 x accum 2: max adapter difference %.2e after 6 steps\n", worst);
            ckpt_free(&y);
        } else {
            CHECK(0, "%s", err);
        }
        ckpt_free(&x);
    } else {
        CHECK(0, "%s", err);
    }
    /* resuming a 2-process run in one process is refused */
    char args[900];
    snprintf(args, sizeof args, "train --resume %s --max-steps 8", a);
    expect_fail(args, "mpirun -np 2");
}

/* Every preset in configs/ is a valid config: the run gets as far as opening the model. */
static void test_presets_parse(void) {
    const char *presets[] = {"alpaca-7b", "tiny-test", "stories260k", "demo-pretrain", "demo-adapter", "demo-full"};
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        char path[300], args[1200];
        snprintf(path, sizeof path, "configs/%s.json", presets[i]);
        if (access(path, R_OK) != 0) {
            CHECK(i >= 3, "%s is missing", path);
            continue;
        }
        snprintf(args, sizeof args, "train --config %s --model %s/no-such-model --tokenizer %s --data %s --out %s/preset", path, dir,
                 tok_path, data_path, dir);
        expect_fail(args, "no-such-model");
    }
}

static void test_validation_loss_is_reported(void) {
    char run[400];
    snprintf(run, sizeof run, "%s/run_val", dir);
    int st = test_sh("%s train " COMMON " --out %s --val-split 8 --epochs 2 --eval-every 3 > %s/val.log 2>&1", bin, model_dir, tok_path,
                data_path, run, dir);
    CHECK(st == 0, "train exit %d", st);
    metrics m;
    read_metrics(run, &m);
    CHECK(m.n == 20, "40 examples / batch 4 = 10 steps per epoch, 2 epochs: got %d lines", m.n);
    int with_val = 0;
    for (int i = 0; i < m.n; i++) with_val += !isnan(field(m.lines[i], "val_loss"));
    CHECK(with_val == 8, "val_loss at steps 3, 6, 9, 10 (epoch end), 12, 15, 18, 20: got %d lines", with_val);
}

int main(void) {
    bin = getenv("LLAMA_ADAPTER_BIN") ? getenv("LLAMA_ADAPTER_BIN") : "build/llama-adapter";
    if (access(bin, X_OK) != 0) {
        printf("FAIL: %s is missing (build it first)\n", bin);
        return 1;
    }
    snprintf(dir, sizeof dir, "/tmp/test_train_XXXXXX");
    if (!mkdtemp(dir) || make_fixture()) {
        printf("FAIL: could not make the fixture in %s\n", dir);
        return 1;
    }
    RUN(test_adamw_step_matches_hand_computation);
    RUN(test_loss_goes_down_and_metrics_are_well_formed);
    RUN(test_schedule_values);
    RUN(test_first_step_moves_only_gates_and_decay);
    RUN(test_resume_is_bit_exact);
    RUN(test_resume_refuses_other_model_or_shape);
    RUN(test_export_round_trip);
    RUN(test_zero_init_eval_equals_base);
    RUN(test_sigint_writes_checkpoint);
    RUN(test_config_file_and_flags);
    RUN(test_validation_loss_is_reported);
    RUN(test_presets_parse);
    RUN(test_full_method_pretrains_on_text);
    RUN(test_data_parallel_equals_accumulation);
    RUN(test_recompute_on_off_bit_identical);
    RUN(test_memory_budget_refusal);
    RUN(test_bf16_precision_tracks_f32);
    RUN(test_prefix_cache_is_bit_exact);
    if (!getenv("KEEP_TMP")) test_rmtree(dir);
    else printf("kept %s\n", dir);
    return TEST_MAIN_END("test_train");
}
