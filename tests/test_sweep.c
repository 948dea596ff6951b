/* The experiment commands through the real binary, on a fixture made here (a SentencePiece model
 * trained on a small text, a random 4-layer HF Llama, Alpaca JSON):
 *   sweep  a 3 x 3 sweep (K = 1,2,4 x L = 1,2,4) finishes; results.csv's columns and values
 *          equal what the runs' own metrics.jsonl, checkpoints, exports and answer sheets say;
 *          sweep.svg is well-formed XML with one loss curve per run and one line per L; a sweep
 *          interrupted mid-run (SIGINT to the sweep process alone: it must forward it) and run
 *          again gives the same results.csv except the wall_s and loss_tokens_per_s columns;
 *          other train settings in the same directory are refused.
 *   plot   well-formed SVG with a train, validation and lr curve per run; bad input.
 *   generate --data  answer sheets: fields, the Markdown beside them, the parallel path gives
 *          the same bytes as one-at-a-time (greedy and seeded sampling), and the scoring equals
 *          the demo's: demo_tool answer and generate --data --score exact count the same hits on
 *          references built from the model's own answers (so the hits are not all 0).
 *   svg    tick positions and labels; the metrics reader's error names the line.
 * Well-formedness is checked by a small XML checker here and, when python3 is present, by its
 * xml module as well (skipped with a printed reason otherwise). */
#include <cJSON.h>
#include <ctype.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "autograd/rng.h"
#include "checkpoints/model_file.h"
#include "data/tok.h"
#include "tests/test.h"
#include "trainer/answers.h"
#include "trainer/runlog.h"
#include "trainer/svg.h"

static char dir[256], model_dir[300], tok_path[300], data_path[300], sweep_a[300], sweep_b[300];
static const char *bin;
static int fixture_ok;

enum { DIM = 32, HEADS = 4, LAYERS = 4 };

static const char *WORDS[] = {"apple", "river", "stone", "cloud", "green", "table", "music", "light",
                              "paper", "glass", "horse", "bread", "ocean", "chair", "tiger", "honey"};

static int make_fixture(void) {
    char p[400], err[512];
    snprintf(p, sizeof p, "%s/corpus.txt", dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
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
    llama_config c = {.dim = DIM, .n_layers = LAYERS, .n_heads = HEADS, .n_kv_heads = 2, .hidden_dim = 64,
                      .vocab_size = vocab, .max_seq_len = 256, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    model_weights w;
    snprintf(model_dir, sizeof model_dir, "%s/model", dir);
    if (model_init_random(&w, &c, 1, 0.2f) || model_save_hf(model_dir, &w, AG_F32, 0, err, sizeof err)) return -1;
    model_free(&w);
    return 0;
}

/* ---- small helpers ------------------------------------------------------------------------- */

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A minimal XML well-formedness check: tags closed in order, attributes quoted, entities
 * terminated, one root. Returns how many elements have the attribute class="cls" (any element
 * when cls is NULL: the element count), or -1 with the reason in why. */
static int xml_check(const char *s, const char *cls, char *why, size_t n) {
    char stack[64][32];
    int depth = 0, count = 0, roots = 0;
    const char *p = s;
    if (!strncmp(p, "<?xml", 5)) {
        p = strstr(p, "?>");
        if (!p) return snprintf(why, n, "unterminated declaration"), -1;
        p += 2;
    }
    char want[128];
    snprintf(want, sizeof want, "class=\"%s\"", cls ? cls : "");
    while (*p) {
        if (*p == '&') {
            const char *e = strchr(p, ';');
            if (!e || e - p > 6) return snprintf(why, n, "bare '&' at byte %ld", (long)(p - s)), -1;
            p = e + 1;
            continue;
        }
        if (*p != '<') {
            if (depth == 0 && !isspace((unsigned char)*p)) return snprintf(why, n, "text outside the root"), -1;
            p++;
            continue;
        }
        int closing = p[1] == '/';
        const char *q = p + 1 + closing;
        char name[32];
        int k = 0;
        while (*q && (isalnum((unsigned char)*q) || *q == '-' || *q == ':') && k < 31) name[k++] = *q++;
        name[k] = 0;
        if (!k) return snprintf(why, n, "bad tag at byte %ld", (long)(p - s)), -1;
        const char *attrs = q;
        while (*q && *q != '>' && !(*q == '/' && q[1] == '>')) {
            if (isspace((unsigned char)*q)) {
                q++;
                continue;
            }
            while (*q && *q != '=' && *q != '>' && !isspace((unsigned char)*q)) q++;
            if (*q != '=' || q[1] != '"') return snprintf(why, n, "unquoted attribute in <%s>", name), -1;
            const char *e = strchr(q + 2, '"');
            if (!e) return snprintf(why, n, "unterminated attribute in <%s>", name), -1;
            for (const char *c = q + 2; c < e; c++)
                if (*c == '<') return snprintf(why, n, "'<' inside an attribute of <%s>", name), -1;
            q = e + 1;
        }
        if (!*q) return snprintf(why, n, "unterminated tag <%s>", name), -1;
        int self = *q == '/';
        if (!closing) {
            char *tag = strndup(attrs, (size_t)(q - attrs));
            if (!cls || (tag && strstr(tag, want))) count++;
            free(tag);
        }
        p = q + (self ? 2 : 1);
        if (closing) {
            if (depth == 0 || strcmp(stack[depth - 1], name))
                return snprintf(why, n, "</%s> closes <%s>", name, depth ? stack[depth - 1] : "nothing"), -1;
            depth--;
            continue;
        }
        if (depth == 0) roots++;
        if (!self) {
            if (depth == 64) return snprintf(why, n, "too deep"), -1;
            snprintf(stack[depth++], 32, "%s", name);
        }
    }
    if (depth) return snprintf(why, n, "<%s> never closed", stack[depth - 1]), -1;
    if (roots != 1) return snprintf(why, n, "%d root elements", roots), -1;
    return count;
}

/* python3's XML parser on the file: 1 parsed, 0 refused (the reason printed), -1 no python3. */
static int python_xml_ok(const char *path) {
    if (test_sh("command -v python3 > /dev/null 2>&1") != 0) return -1;
    int st = test_sh("python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' '%s'", path);
    return st == 0;
}

/* Checks an SVG file: well-formed by both checkers, and the number of elements of each class. */
static void check_svg(const char *path, const char *const *classes, const int *want, int n) {
    char *s = test_read_file(path, NULL), why[256] = "";
    CHECK(s != NULL, "%s missing", path);
    if (!s) return;
    int total = xml_check(s, NULL, why, sizeof why);
    CHECK(total > 0, "%s is not well-formed XML: %s", path, why);
    CHECK(strstr(s, "<svg xmlns=\"http://www.w3.org/2000/svg\"") != NULL, "%s: svg root with its namespace", path);
    CHECK(!strstr(s, "nan") && !strstr(s, "inf"), "%s: nan/inf in the drawing", path);
    for (int i = 0; i < n; i++) {
        int got = xml_check(s, classes[i], why, sizeof why);
        CHECK(got == want[i], "%s: %d elements of class %s, want %d", path, got, classes[i], want[i]);
    }
    int py = python_xml_ok(path);
    if (py < 0) printf("  python3 is missing: the xml-module cross-check of %s is skipped\n", path);
    else CHECK(py == 1, "python3's XML parser refuses %s", path);
    free(s);
}

/* The raw text of "key" in a JSON line (metrics values compared as text). */
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

/* CSV: rows of fields (no quoting: the sweep writes none). */
typedef struct csv {
    int rows, cols;
    char cell[16][16][48];
} csv;

static int read_csv(const char *path, csv *c) {
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[2048];
    while (c->rows < 16 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        int k = 0;
        char *p = line;
        for (;;) {
            size_t l = strcspn(p, ",");
            if (k < 16) snprintf(c->cell[c->rows][k], 48, "%.*s", (int)l, p);
            k++;
            if (!p[l]) break;
            p += l + 1;
        }
        if (c->rows == 0) c->cols = k;
        c->rows++;
    }
    fclose(f);
    return 0;
}

static int col_of(const csv *c, const char *name) {
    for (int k = 0; k < c->cols; k++)
        if (!strcmp(c->cell[0][k], name)) return k;
    return -1;
}

#define SWEEP_FLAGS                                                                                           \
    "--model %s --tokenizer %s --data %s --val-split 8 --batch-size 2 --max-seq-len 200 --epochs 2 "          \
    "--warmup-epochs 1 --lr 0.05 --seed 7 --eval-every 10 --threads 1 --adapter-len 1,2,4 --adapter-layer 1,2,4 " \
    "--score exact --max-new-tokens 6"

/* ---- sweep --------------------------------------------------------------------------------- */

static const char *const CSV_HEADER =
    "K,L,trainable_params,export_bytes,steps,wall_s,loss_tokens_per_s,final_train_loss,best_val_loss,"
    "best_val_step,heldout_correct,heldout_total,heldout_accuracy";

static void test_sweep_3x3_table_matches_the_runs_metrics(void) {
    if (!fixture_ok) SKIP("no fixture");
    snprintf(sweep_a, sizeof sweep_a, "%s/sweep_a", dir);
    double t0 = wall_now();
    int st = test_sh("%s sweep " SWEEP_FLAGS " --out %s > %s/sweep_a.log 2>&1", bin, model_dir, tok_path, data_path,
                     sweep_a, dir);
    printf("  3 x 3 sweep in %.1f s\n", wall_now() - t0);
    CHECK(st == 0, "sweep exit %d (see %s/sweep_a.log)", st, dir);
    char p[600];
    snprintf(p, sizeof p, "%s/results.csv", sweep_a);
    csv c;
    CHECK(read_csv(p, &c) == 0, "%s missing", p);
    char *head = test_read_file(p, NULL);
    CHECK(head && !strncmp(head, CSV_HEADER, strlen(CSV_HEADER)) && head[strlen(CSV_HEADER)] == '\n',
          "CSV header:\n%s", head ? head : "");
    free(head);
    CHECK(c.rows == 10, "9 rows after the header, got %d", c.rows - 1);
    int Ks[3] = {1, 2, 4}, Ls[3] = {1, 2, 4};
    long long steps0 = -1;
    for (int r = 1; r < c.rows && r <= 9; r++) {
        int K = Ks[(r - 1) % 3], L = Ls[(r - 1) / 3]; /* L by L, K by K within an L */
#define COL(name) c.cell[r][col_of(&c, name) < 0 ? 15 : col_of(&c, name)]
        CHECK(atoi(COL("K")) == K && atoi(COL("L")) == L, "row %d: K=%s L=%s, want %d %d", r, COL("K"), COL("L"), K, L);
        CHECK(atoll(COL("trainable_params")) == (long long)L * K * DIM + L * HEADS, "row %d: trainable %s, want %d", r,
              COL("trainable_params"), L * K * DIM + L * HEADS);
        char run[600], f[700];
        snprintf(run, sizeof run, "%s/K%d_L%d", sweep_a, K, L);
        snprintf(f, sizeof f, "%s/adapter.safetensors", run);
        struct stat sb;
        CHECK(stat(f, &sb) == 0 && atoll(COL("export_bytes")) == (long long)sb.st_size, "row %d: export bytes %s vs %s",
              r, COL("export_bytes"), f);
        /* against the run's own metrics.jsonl */
        snprintf(f, sizeof f, "%s/metrics.jsonl", run);
        char *m = test_read_file(f, NULL);
        CHECK(m != NULL, "%s missing", f);
        if (!m) continue;
        int lines = test_count_lines(m);
        CHECK(atoi(COL("steps")) == lines, "row %d: steps %s, metrics lines %d", r, COL("steps"), lines);
        if (steps0 < 0) steps0 = lines;
        CHECK(lines == steps0 && lines == 40, "every run trains the same 40 steps (got %d)", lines);
        double best = INFINITY, ntok = 0, secs = 0;
        char best_step[32] = "", last_loss[64] = "", bestv[64] = "";
        for (char *line = m; *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            char v[64], s[32], t[64], tt[64], tts[64];
            raw_field(line, "loss", last_loss, sizeof last_loss);
            raw_field(line, "step", s, sizeof s);
            raw_field(line, "tokens", t, sizeof t);
            raw_field(line, "total_tokens", tt, sizeof tt);
            raw_field(line, "total_tokens_per_s", tts, sizeof tts);
            ntok += atof(t);
            secs += atof(tt) / atof(tts);
            raw_field(line, "val_loss", v, sizeof v);
            if (v[0] && atof(v) < best) {
                best = atof(v);
                snprintf(best_step, sizeof best_step, "%s", s);
                snprintf(bestv, sizeof bestv, "%s", v);
            }
            line = nl ? nl + 1 : line + strlen(line);
        }
        free(m);
        CHECK(!strcmp(COL("final_train_loss"), last_loss), "row %d: final loss %s, last metrics loss %s", r,
              COL("final_train_loss"), last_loss);
        CHECK(bestv[0] && !strcmp(COL("best_val_loss"), bestv) && !strcmp(COL("best_val_step"), best_step),
              "row %d: best val %s at %s, metrics say %s at %s", r, COL("best_val_loss"), COL("best_val_step"), bestv,
              best_step);
        CHECK_CLOSE(atof(COL("loss_tokens_per_s")), ntok / secs, 0.051, 1e-6, "loss tokens/s from the metrics");
        CHECK(atof(COL("wall_s")) > 0, "row %d: wall time %s", r, COL("wall_s"));
        /* held-out accuracy against the pair's own answer sheet */
        snprintf(f, sizeof f, "%s/answers.jsonl", run);
        char *a = test_read_file(f, NULL);
        CHECK(a && test_count_lines(a) == 8, "%s: 8 held-out answers", f);
        int hits = 0, rescored = 0;
        for (char *line = a; a && *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            cJSON *o = cJSON_Parse(line);
            cJSON *ads = cJSON_GetObjectItem(o, "adapters"), *ans = ads ? ads->child : NULL;
            cJSON *corr = cJSON_GetObjectItem(o, "correct");
            hits += corr && corr->child && cJSON_IsTrue(corr->child);
            rescored += ans && score_match(SCORE_EXACT, ans->valuestring, cJSON_GetObjectItem(o, "reference")->valuestring);
            CHECK(o && !cJSON_GetObjectItem(o, "base") && ans && !strcmp(ans->string, run), "answers line: %s", line);
            cJSON_Delete(o);
            line = nl ? nl + 1 : line + strlen(line);
        }
        free(a);
        CHECK(atoi(COL("heldout_total")) == 8 && atoi(COL("heldout_correct")) == hits && hits == rescored,
              "row %d: held-out %s/%s, the answer sheet says %d (rescored %d)", r, COL("heldout_correct"),
              COL("heldout_total"), hits, rescored);
#undef COL
    }
    snprintf(p, sizeof p, "%s/results.md", sweep_a);
    char *md = test_read_file(p, NULL);
    int rows = 0;
    for (char *q = md; q && (q = strstr(q, "\n| ")); q++) rows++;
    CHECK(md && rows == 10, "results.md: header + 9 rows, got %d", rows);
    free(md);
    snprintf(p, sizeof p, "%s/sweep.svg", sweep_a);
    const char *cls[] = {"run-loss", "run-val", "by-L"};
    int want[] = {9, 0, 3};
    check_svg(p, cls, want, 3);
    char *svg = test_read_file(p, NULL);
    CHECK(svg && strstr(svg, "trainable parameters (count, log scale)") && strstr(svg, "step (optimizer steps)") &&
              strstr(svg, "best validation loss (nats per loss token)") && strstr(svg, "L = 4 layers") &&
              strstr(svg, "K=4, L=2"),
          "axis labels, units and legend entries");
    int vpts = 0;
    for (char *q = svg; q && (q = strstr(q, "class=\"run-val-points\"")); q++) vpts++;
    CHECK(vpts == 9, "validation points of every run: %d groups", vpts);
    free(svg);
}

/* The same sweep, interrupted by SIGINT to the sweep process alone while a run trains, then run
 * again: results.csv equals the uninterrupted sweep's in every column but wall_s and
 * loss_tokens_per_s. */
static void test_interrupted_sweep_resumes_to_the_same_table(void) {
    if (!fixture_ok) SKIP("no fixture");
    snprintf(sweep_b, sizeof sweep_b, "%s/sweep_b", dir);
    char cmd[2000], logp[600], probe[600];
    snprintf(cmd, sizeof cmd, "exec %s sweep " SWEEP_FLAGS " --out %s > %s/sweep_b1.log 2>&1", bin, model_dir, tok_path,
             data_path, sweep_b, dir);
    snprintf(probe, sizeof probe, "%s/K2_L2/metrics.jsonl", sweep_b); /* pair 5 of 9 */
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int lines = 0;
    for (int t = 0; t < 60000; t++) { /* until pair 5 has trained a few steps (10 min at most: sanitizer builds) */
        char *m = test_read_file(probe, NULL);
        lines = test_count_lines(m);
        free(m);
        if (lines >= 3) break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (waitpid(pid, NULL, WNOHANG) == pid) { /* ended by itself: nothing to interrupt */
            CHECK(0, "the sweep ended before pair 5 trained (see %s/sweep_b1.log)", dir);
            return;
        }
    }
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    snprintf(logp, sizeof logp, "%s/sweep_b1.log", dir);
    CHECK(rc == 130, "interrupted sweep: exit %d, want 130 (see %s)", rc, logp);
    char p[600];
    snprintf(p, sizeof p, "%s/K2_L2/result.json", sweep_b);
    CHECK(access(p, F_OK) != 0, "the interrupted pair has no result yet");
    char *m = test_read_file(probe, NULL);
    int at_stop = test_count_lines(m);
    free(m);
    printf("  interrupted at step %d of 40 of pair 5/9 (K=2, L=2)\n", at_stop);
    CHECK(at_stop >= 3 && at_stop < 40, "the signal must land mid-run (stopped at step %d)", at_stop);
    csv part;
    snprintf(p, sizeof p, "%s/results.csv", sweep_b);
    CHECK(read_csv(p, &part) == 0 && part.rows == 5, "after the interruption the table has the 4 finished pairs (%d rows)",
          part.rows - 1);
    int st = test_sh("%s sweep " SWEEP_FLAGS " --out %s > %s/sweep_b2.log 2>&1", bin, model_dir, tok_path, data_path,
                     sweep_b, dir);
    CHECK(st == 0, "resumed sweep: exit %d", st);
    snprintf(logp, sizeof logp, "%s/sweep_b2.log", dir);
    char *log = test_read_file(logp, NULL);
    CHECK(log && strstr(log, "4 finished, 1 interrupted (will resume), 4 to start") && strstr(log, "resuming from its checkpoint"),
          "the rerun keeps 4 pairs and resumes one:\n%s", log ? log : "");
    free(log);
    csv a, b;
    char pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/results.csv", sweep_a);
    snprintf(pb, sizeof pb, "%s/results.csv", sweep_b);
    CHECK(read_csv(pa, &a) == 0 && read_csv(pb, &b) == 0 && a.rows == 10 && b.rows == 10, "both tables complete");
    int wall = col_of(&a, "wall_s"), speed = col_of(&a, "loss_tokens_per_s"), compared = 0;
    for (int r = 0; r < a.rows && r < b.rows; r++)
        for (int k = 0; k < a.cols; k++) {
            if (r > 0 && (k == wall || k == speed)) continue;
            CHECK(!strcmp(a.cell[r][k], b.cell[r][k]), "row %d column %s: %s (uninterrupted) vs %s (resumed)", r,
                  a.cell[0][k], a.cell[r][k], b.cell[r][k]);
            compared++;
        }
    printf("  compared %d cells (every column but wall_s and loss_tokens_per_s)\n", compared);
}

static void expect_fail(const char *args, int want_status, const char *needle) {
    char *err = NULL;
    int st = test_run_bin(dir, args, NULL, &err);
    CHECK(st == want_status, "'%s': exit %d, want %d", args, st, want_status);
    CHECK(test_count_lines(err) == 1, "'%s': %d stderr lines:\n%s", args, test_count_lines(err), err ? err : "");
    CHECK(err && strstr(err, needle), "'%s': message '%s' lacks '%s'", args, err ? err : "", needle);
    free(err);
}

static void test_sweep_refuses_other_settings_and_bad_flags(void) {
    if (!fixture_ok) SKIP("no fixture");
    char args[2000];
    /* the finished sweep with another seed: refused, names the key */
    snprintf(args, sizeof args, "sweep " SWEEP_FLAGS " --seed 8 --out %s", model_dir, tok_path, data_path, sweep_a);
    expect_fail(args, 1, "seed = 7, now 8");
    /* the same settings again: nothing to train, the table is rewritten */
    char *out = NULL;
    snprintf(args, sizeof args, "sweep " SWEEP_FLAGS " --out %s", model_dir, tok_path, data_path, sweep_a);
    int st = test_run_bin(dir, args, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "9 finished, 0 interrupted"), "rerun of a finished sweep: exit %d\n%s", st,
          out ? out : "");
    free(out);
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1,x --out %s/bad", model_dir,
             tok_path, data_path, dir);
    expect_fail(args, 2, "--adapter-len '1,x': item 2");
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1,2 --adapter-layer 2 --score exact --out %s/bad",
             model_dir, tok_path, data_path, dir);
    expect_fail(args, 2, "--val-data FILE or --val-split N");
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --resume x --out %s/bad", model_dir, tok_path,
             data_path, dir);
    expect_fail(args, 2, "--resume");
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1", model_dir, tok_path, data_path);
    expect_fail(args, 2, "missing --out DIR");
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1 --adapter-layer 2,9 --out %s/bad",
             model_dir, tok_path, data_path, dir);
    expect_fail(args, 2, "--adapter-layer 9: ");
    /* a pair whose training fails (a memory budget it cannot meet): one line naming the pair and its log */
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1 --adapter-layer 2 --memory-budget 1K --out %s/bad_run",
             model_dir, tok_path, data_path, dir);
    expect_fail(args, 1, "K=1 L=2: train exited with status 1");
    /* no run trained a step there yet, so other settings are taken (the record is rewritten) */
    snprintf(args, sizeof args, "sweep --model %s --tokenizer %s --data %s --adapter-len 1 --adapter-layer 2 --max-steps 2 "
             "--max-seq-len 200 --threads 1 --out %s/bad_run", model_dir, tok_path, data_path, dir);
    st = test_run_bin(dir, args, NULL, NULL);
    CHECK(st == 0, "the fixed sweep in the failed one's directory: exit %d", st);
    out = NULL;
    st = test_run_bin(dir, "sweep --help", &out, NULL);
    CHECK(st == 0 && out && strstr(out, "--adapter-len") && strstr(out, "--score") && strstr(out, "(default: 64)"),
          "sweep --help lists its flags and defaults");
    free(out);
}

/* ---- plot ---------------------------------------------------------------------------------- */

static void test_plot_draws_train_val_and_lr_of_each_run(void) {
    if (!fixture_ok) SKIP("no fixture");
    char args[2000], svg[600];
    snprintf(svg, sizeof svg, "%s/two.svg", dir);
    snprintf(args, sizeof args, "plot %s/K1_L1 %s/K4_L4/metrics.jsonl --out %s --title 'two <runs> & more'", sweep_a,
             sweep_a, svg);
    char *out = NULL;
    int st = test_run_bin(dir, args, &out, NULL);
    CHECK(st == 0, "plot exit %d", st);
    free(out);
    const char *cls[] = {"train-loss", "val-loss", "lr"};
    int want[] = {2, 2, 2};
    check_svg(svg, cls, want, 3);
    char *s = test_read_file(svg, NULL);
    CHECK(s && strstr(s, "K1_L1") && strstr(s, "K4_L4") && strstr(s, "two &lt;runs&gt; &amp; more") &&
              strstr(s, "loss (nats per loss token)") && strstr(s, "learning rate"),
          "legend names, escaped title, axis labels");
    free(s);
    /* the first train-loss polyline has one point per step */
    s = test_read_file(svg, NULL);
    char *pl = s ? strstr(s, "class=\"train-loss\"") : NULL, *pts = pl ? strstr(pl, "points=\"") : NULL;
    int npts = 0;
    for (char *q = pts ? pts + 8 : NULL; q && *q && *q != '"'; q++) npts += *q == ',';
    CHECK(npts == 40, "train-loss points %d, want 40", npts);
    free(s);
    snprintf(args, sizeof args, "plot %s/nothing_here --out %s/x.svg", dir, dir);
    expect_fail(args, 1, "nothing_here");
    snprintf(args, sizeof args, "plot %s/K1_L1", sweep_a);
    expect_fail(args, 2, "missing --out");
    char bad[600];
    snprintf(bad, sizeof bad, "%s/bad_metrics.jsonl", dir);
    FILE *f = fopen(bad, "w");
    fprintf(f, "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":1.5}\n{\"step\":3}\n{\"step\":4,\"loss\":1}\n");
    fclose(f);
    snprintf(args, sizeof args, "plot %s --out %s/x.svg", bad, dir);
    expect_fail(args, 1, "line 3: field \"loss\"");
}

/* ---- answer sheets ------------------------------------------------------------------------- */

static void test_answer_sheet_fields_markdown_and_parallel_equality(void) {
    if (!fixture_ok) SKIP("no fixture");
    char args[3000], o1[600], o2[600], small[600];
    snprintf(o1, sizeof o1, "%s/ans1.jsonl", dir);
    snprintf(o2, sizeof o2, "%s/ans2.jsonl", dir);
    /* 12 examples. One at a time runs on one thread here: with 2 threads inside the kernels every
     * decode step of this tiny model is a few thread barriers, which take seconds on a busy
     * machine (the kernels give the same numbers on any thread count either way). */
    snprintf(small, sizeof small, "%s/small.json", dir);
    FILE *sf = fopen(small, "w");
    fprintf(sf, "[\n");
    for (int i = 0; i < 12; i++)
        fprintf(sf, "%s{\"instruction\": \"Repeat the word twice.\", \"input\": \"%s\", \"output\": \"%s %s\"}\n",
                i ? "," : "", WORDS[i], WORDS[i], WORDS[i]);
    fprintf(sf, "]\n");
    fclose(sf);
    const char *common = "--max-new-tokens 8 --precision f32";
    for (int mode = 0; mode < 2; mode++) { /* greedy, then seeded sampling */
        const char *samp = mode ? "--temperature 0.9 --top-p 0.95 --seed 11" : "";
        snprintf(args, sizeof args,
                 "generate --model %s --tokenizer %s --data %s --adapter %s/K1_L1 --adapter %s/K4_L4 --out %s %s %s --parallel 1 --threads 1 --score contains",
                 model_dir, tok_path, small, sweep_a, sweep_a, o1, common, samp);
        char *out = NULL, *err = NULL;
        int st = test_run_bin(dir, args, &out, &err);
        CHECK(st == 0, "generate --data: exit %d\n%s", st, err ? err : "");
        CHECK(out && test_count_lines(out) == 3 && strstr(out, "score (contains): base ") &&
                  strstr(out, "/K4_L4 "),
              "one score line per column:\n%s", out ? out : "");
        free(out);
        free(err);
        snprintf(args, sizeof args,
                 "generate --model %s --tokenizer %s --data %s --adapter %s/K1_L1 --adapter %s/K4_L4 --out %s %s %s --parallel 2 --threads 2 --score contains",
                 model_dir, tok_path, small, sweep_a, sweep_a, o2, common, samp);
        st = test_run_bin(dir, args, NULL, NULL);
        CHECK(st == 0, "generate --data --parallel 2: exit %d", st);
        size_t n1 = 0, n2 = 0;
        char *a = test_read_file(o1, &n1), *b = test_read_file(o2, &n2);
        CHECK(a && b && n1 == n2 && !memcmp(a, b, n1), "%s: the answers of 2 examples at once differ from one at a time",
              mode ? "sampling" : "greedy");
        free(b);
        CHECK(a && test_count_lines(a) == 12, "12 lines");
        cJSON *o = a ? cJSON_Parse(a) : NULL; /* the first line (cJSON stops at its end) */
        if (a) {
            char *nl = strchr(a, '\n');
            if (nl) *nl = 0;
            cJSON_Delete(o);
            o = cJSON_Parse(a);
        }
        cJSON *ads = cJSON_GetObjectItem(o, "adapters");
        CHECK(o && cJSON_GetObjectItem(o, "index")->valueint == 0 &&
                  !strcmp(cJSON_GetObjectItem(o, "instruction")->valuestring, "Repeat the word twice.") &&
                  !strcmp(cJSON_GetObjectItem(o, "input")->valuestring, "apple") &&
                  !strcmp(cJSON_GetObjectItem(o, "reference")->valuestring, "apple apple") &&
                  cJSON_IsString(cJSON_GetObjectItem(o, "base")) && cJSON_GetArraySize(ads) == 2 &&
                  cJSON_IsObject(cJSON_GetObjectItem(o, "correct")),
              "first line: %s", a ? a : "");
        cJSON_Delete(o);
        free(a);
    }
    char md[600];
    snprintf(md, sizeof md, "%s/ans1.md", dir);
    char *m = test_read_file(md, NULL);
    int sections = 0;
    for (char *q = m; q && (q = strstr(q, "\n## ")); q++) sections++;
    CHECK(m && sections == 12 && strstr(m, "| reference | base |") && strstr(m, "contains match"),
          "answers.md: a table per instruction (%d)", sections);
    free(m);
    /* bad input: one line, non-zero */
    snprintf(args, sizeof args, "generate --model %s --tokenizer %s --data %s", model_dir, tok_path, data_path);
    expect_fail(args, 2, "--data needs --out");
    snprintf(args, sizeof args, "generate --model %s --tokenizer %s --data %s/none.json --out %s/x.jsonl", model_dir,
             tok_path, dir, dir);
    expect_fail(args, 1, "none.json");
    snprintf(args, sizeof args, "generate --model %s --tokenizer %s --instruction hi --adapter %s/K1_L1 --adapter %s/K1_L2",
             model_dir, tok_path, sweep_a, sweep_a);
    expect_fail(args, 2, "several adapters go with --data");
    snprintf(args, sizeof args, "generate --model %s --tokenizer %s --data %s --out %s/x.jsonl --score near", model_dir,
             tok_path, data_path, dir);
    expect_fail(args, 2, "--score 'near'");
}

/* References taken from the model's own answers for every other example: the demo's scorer
 * (demo_tool answer) and generate --data --score exact must count the same hits, base and
 * adapter, and that count is the number of those examples with a non-empty answer. */
static void test_scores_equal_the_demo_tool_on_the_same_answers(void) {
    if (!fixture_ok) SKIP("no fixture");
    char tool[600];
    snprintf(tool, sizeof tool, "%s", bin);
    char *slash = strrchr(tool, '/');
    snprintf(slash ? slash + 1 : tool, sizeof tool - (size_t)(slash ? slash + 1 - tool : 0), "demo/demo_tool");
    if (access(tool, X_OK) != 0) SKIP("%s is not built (make tests-build builds it)", tool);
    char sheet[600], args[3000];
    snprintf(sheet, sizeof sheet, "%s/own.jsonl", dir);
    snprintf(args, sizeof args,
             "generate --model %s --tokenizer %s --data %s --adapter %s/K4_L4 --out %s --max-new-tokens 16 --precision f32 --threads 1",
             model_dir, tok_path, data_path, sweep_a, sheet);
    int st = test_run_bin(dir, args, NULL, NULL);
    CHECK(st == 0, "first sheet: exit %d", st);
    char *a = test_read_file(sheet, NULL);
    if (!a) return;
    for (int col = 0; col < 2; col++) { /* references from the base answers, then the adapter's */
        char ref_path[600];
        snprintf(ref_path, sizeof ref_path, "%s/own_ref%d.json", dir, col);
        cJSON *arr = cJSON_CreateArray();
        int want = 0, i = 0;
        char *copy = strdup(a);
        for (char *line = copy; *line; i++) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            cJSON *o = cJSON_Parse(line);
            const char *ans = col == 0 ? cJSON_GetObjectItem(o, "base")->valuestring
                                       : cJSON_GetObjectItem(o, "adapters")->child->valuestring;
            cJSON *ex = cJSON_CreateObject();
            cJSON_AddStringToObject(ex, "instruction", cJSON_GetObjectItem(o, "instruction")->valuestring);
            cJSON_AddStringToObject(ex, "input", cJSON_GetObjectItem(o, "input")->valuestring);
            char *norm = score_normalize(ans);
            if (i % 2 == 0) {
                cJSON_AddStringToObject(ex, "output", ans);
                want += norm && norm[0];
            } else {
                cJSON_AddStringToObject(ex, "output", "  zebra crossing.");
            }
            free(norm);
            cJSON_AddItemToArray(arr, ex);
            cJSON_Delete(o);
            line = nl ? nl + 1 : line + strlen(line);
        }
        free(copy);
        char *txt = cJSON_Print(arr);
        cJSON_Delete(arr);
        FILE *f = fopen(ref_path, "w");
        fputs(txt, f);
        fclose(f);
        free(txt);
        char res[600], adapter_flag[700] = "";
        snprintf(res, sizeof res, "%s/demo_result%d.txt", dir, col);
        if (col) snprintf(adapter_flag, sizeof adapter_flag, "--adapter %s/K4_L4", sweep_a);
        st = test_sh("%s answer --precision f32 --model %s --tokenizer %s %s --data %s --result %s --show 0 --threads 1 > %s/demo_answer.log 2>&1",
                     tool, model_dir, tok_path, adapter_flag, ref_path, res, dir);
        CHECK(st == 0, "demo_tool answer: exit %d", st);
        char *r = test_read_file(res, NULL);
        int demo_hits = -1, demo_total = -1;
        if (r) sscanf(r, "%d %d", &demo_hits, &demo_total);
        free(r);
        char *out = NULL, sheet2[600];
        snprintf(sheet2, sizeof sheet2, "%s/own_scored%d.jsonl", dir, col);
        snprintf(args, sizeof args,
                 "generate --model %s --tokenizer %s --data %s %s %s --out %s --max-new-tokens 16 --precision f32 --threads 1 --score exact",
                 model_dir, tok_path, ref_path, col ? "--no-base" : "", adapter_flag, sheet2);
        st = test_run_bin(dir, args, &out, NULL);
        CHECK(st == 0, "scored sheet: exit %d", st);
        int hits = -1, total = -1;
        const char *line = out ? strstr(out, "score (exact): ") : NULL;
        if (line) {
            line = strchr(line + 15, ' ');
            if (line) sscanf(line, " %d/%d", &hits, &total);
        }
        printf("  %s: demo_tool %d/%d, generate --data %d/%d, expected %d/48\n", col ? "adapter" : "base", demo_hits,
               demo_total, hits, total, want);
        CHECK(demo_hits == want && hits == want && demo_total == 48 && total == 48, "scores differ: %s", out ? out : "");
        CHECK(want >= 12, "the fixture must give non-trivial hits (%d)", want);
        free(out);
    }
    free(a);
}

/* ---- units --------------------------------------------------------------------------------- */

static void test_svg_ticks_labels_and_score_rules(void) {
    double t[64];
    int n = svg_ticks(0, 1, 0, t, 64);
    CHECK(n == 6 && t[0] == 0 && fabs(t[5] - 1) < 1e-12, "0..1: %d ticks", n);
    n = svg_ticks(-0.37, 2.2, 0, t, 64);
    CHECK(n >= 3 && t[0] >= -0.37 && t[n - 1] <= 2.2, "linear ticks inside the range");
    n = svg_ticks(100, 2e6, 1, t, 64);
    CHECK(n == 5 && t[0] == 100 && t[4] == 1e6, "log decades 100..1e6: %d ticks", n);
    n = svg_ticks(90, 5000, 1, t, 64);
    CHECK(n == 6 && t[0] == 100 && t[1] == 200 && t[2] == 500 && t[3] == 1000 && t[5] == 5000, "log 1-2-5: %d", n);
    n = svg_ticks(31, 39, 1, t, 64);
    CHECK(n >= 2, "narrow log range still gets ticks (%d)", n);
    char b[32];
    svg_tick_label(20000, b, sizeof b);
    CHECK(!strcmp(b, "20k"), "20000 -> %s", b);
    svg_tick_label(1.5e6, b, sizeof b);
    CHECK(!strcmp(b, "1.5M"), "1.5e6 -> %s", b);
    svg_tick_label(5e-5, b, sizeof b);
    CHECK(!strcmp(b, "5e-5"), "5e-5 -> %s", b);
    svg_tick_label(1e-4, b, sizeof b);
    CHECK(!strcmp(b, "1e-4"), "1e-4 -> %s", b);
    svg_tick_label(2.5e-7, b, sizeof b);
    CHECK(!strcmp(b, "2.5e-7"), "2.5e-7 -> %s", b);
    svg_tick_label(0.25, b, sizeof b);
    CHECK(!strcmp(b, "0.25"), "0.25 -> %s", b);
    /* the demo's normal form: space, one final period, case */
    CHECK(score_match(SCORE_EXACT, "  Dastrin.\n", " dastrin"), "exact after normalisation");
    CHECK(!score_match(SCORE_EXACT, "Dastrin is", " Dastrin"), "exact is whole");
    CHECK(!score_match(SCORE_EXACT, "", "  "), "an empty reference matches nothing");
    CHECK(score_match(SCORE_CONTAINS, "The capital is Dastrin, of course", "Dastrin"), "contains");
    CHECK(!score_match(SCORE_CONTAINS, "Dastrinia", "Dastrin"), "contains needs a whole word");
    CHECK(score_match(SCORE_CONTAINS, "it is red-ish", "red"), "a hyphen ends a word");
    /* the metrics reader: a truncated last line is ignored, a bad middle line names the line */
    char p[600], err[700];
    snprintf(p, sizeof p, "%s/m.jsonl", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "{\"step\":1,\"loss\":2,\"val_loss\":3}\n{\"step\":2,\"loss\":1.5}\n{\"step\":3,\"lo");
    fclose(f);
    runlog r;
    CHECK(runlog_load(p, &r, err, sizeof err) == 0 && r.n == 2 && r.val_loss[0] == 3 && isnan(r.val_loss[1]),
          "reader: %s", err);
    runlog_summary s;
    runlog_summarize(&r, &s);
    CHECK(s.steps == 2 && s.final_loss == 1.5 && s.best_val_loss == 3 && s.best_val_step == 1, "summary");
    runlog_free(&r);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/test_sweep_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    bin = test_bin();
    fixture_ok = bin && make_fixture() == 0;
    if (!fixture_ok) printf("fixture could not be made in %s\n", dir);
    RUN(test_svg_ticks_labels_and_score_rules);
    RUN(test_sweep_3x3_table_matches_the_runs_metrics);
    RUN(test_interrupted_sweep_resumes_to_the_same_table);
    RUN(test_sweep_refuses_other_settings_and_bad_flags);
    RUN(test_plot_draws_train_val_and_lr_of_each_run);
    RUN(test_answer_sheet_fields_markdown_and_parallel_equality);
    RUN(test_scores_equal_the_demo_tool_on_the_same_answers);
    if (getenv("TEST_KEEP")) printf("kept %s\n", dir);
    else test_rmtree(dir);
    return TEST_MAIN_END("test_sweep");
}
