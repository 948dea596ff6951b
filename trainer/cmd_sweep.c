/* `llama-adapter sweep [--config FILE] [train flags] --adapter-len 5,10,20 --adapter-layer 2,4,8
 * --out DIR [--score exact|contains]`: one adapter training per (K, L) pair with everything else
 * equal, one after the other, then a table and a plot of the results.
 *
 * Each training is this binary run as a child process (`/proc/self/exe train FLAGS
 * --adapter-len K --adapter-layer L --out DIR/K{K}_L{L}`, output in DIR/K{K}_L{L}/train.log), so
 * a run of the sweep is exactly the run `train` would make with those flags. The pairs go L by L,
 * K by K within an L. After a training: `export --format safetensors` into the pair's folder (its
 * size is the export column), with --score the validation examples answered greedily by the
 * trained adapter (DIR/K{K}_L{L}/answers.jsonl, .md; trainer/answers.h) and scored against their
 * reference outputs, and DIR/K{K}_L{L}/result.json holding the pair's row. Then DIR/results.csv,
 * DIR/results.md and DIR/sweep.svg are rewritten from every finished pair.
 *
 * Resuming: a pair with result.json is finished and not rerun (its answers are redone only when
 * --score or --max-new-tokens changed); a pair with checkpoints but no result.json is continued
 * with `train --resume` (bit for bit, so the table comes out the same); DIR/sweep.json records
 * the resolved train config (less out, K, L, threads, log_every) and, once a run has trained,
 * a rerun with other train settings is refused rather than mixed into the same table.
 * Ctrl-C (SIGINT/SIGTERM): forwarded to the running child, which finishes its step, writes a
 * checkpoint and exits 130; the sweep then writes the tables of the finished pairs and exits 130.
 * Progress: a line per pair (pair i of n, its step, the ETA of the whole sweep from the wall time
 * per step so far), redrawn in place on a terminal.
 * Deliberately not here: running pairs in parallel (they would share the cores), MPI (run the
 * sweep without mpirun), other swept flags (lr, epochs: one sweep per setting). */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/atomic.h"
#include "data/alpaca.h"
#include "trainer/answers.h"
#include "trainer/args.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/precision.h"
#include "trainer/runlog.h"
#include "trainer/svg.h"

#define CMD "sweep"
#define MAX_VALUES 32

static const char USAGE_LINE[] =
    "[--config FILE.json] [train flags] --adapter-len 5,10,20 --adapter-layer 2,4,8 --out DIR\n"
    "       [--score exact|contains] [--max-new-tokens N]\n"
    "\n"
    "Trains one adapter per (adapter_len K, adapter_layer L) pair with every other setting equal\n"
    "(same seed, data order, steps), one after the other, each by `llama-adapter train FLAGS\n"
    "--adapter-len K --adapter-layer L --out DIR/K{K}_L{L}`: every flag not listed below (and the\n"
    "--config file) goes to train unchanged (see llama-adapter train --help); --resume, --init-adapter\n"
    "and --method full are refused. A list flag left out takes the config's single value.\n"
    "Writes DIR/results.csv, DIR/results.md (K, L, trainable parameters, export bytes, steps, wall\n"
    "time, loss tokens/s, final train loss, best validation loss and its step, held-out accuracy) and\n"
    "DIR/sweep.svg (validation loss against trainable parameters, one line per L; every run's loss\n"
    "curve). Run it again to continue: finished pairs are kept, an interrupted one resumes from its\n"
    "checkpoint. Ctrl-C stops cleanly (exit 130). --score answers the validation examples (--val-data\n"
    "or --val-split) with each trained adapter, greedily, and scores them against their outputs.";

static volatile sig_atomic_t g_signals; /* SIGINT/SIGTERM received; the handler's only state */
static void on_signal(int sig) {
    (void)sig;
    g_signals++;
}

static int usage(const char *msg) {
    fprintf(stderr, "llama-adapter " CMD ": %s (see llama-adapter " CMD " --help)\n", msg);
    return 2;
}

static int fail(const char *msg) {
    fprintf(stderr, "llama-adapter " CMD ": %s\n", msg);
    return 1;
}

/* "5,10,20" -> values (each >= 1, no repeats). 0, or -1 with err. */
static int parse_list(const char *flag, const char *s, int *v, int *n, char *err, size_t errlen) {
    *n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 1 || x > 1000000 || (*end && *end != ',')) {
            snprintf(err, errlen, "--%s '%s': item %d: expected a comma-separated list of positive integers (like 5,10,20)",
                     flag, s, *n + 1);
            return -1;
        }
        for (int i = 0; i < *n; i++)
            if (v[i] == (int)x) {
                snprintf(err, errlen, "--%s '%s': %ld is listed twice", flag, s, x);
                return -1;
            }
        if (*n == MAX_VALUES) {
            snprintf(err, errlen, "--%s '%s': more than %d values", flag, s, MAX_VALUES);
            return -1;
        }
        v[(*n)++] = (int)x;
        if (!*end) return 0;
        p = end + 1;
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_secs(char *b, size_t n, double s) {
    if (!(s >= 0) || s > 1e8) snprintf(b, n, "?");
    else if (s >= 3600) snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else if (s >= 10) snprintf(b, n, "%.0fs", s);
    else snprintf(b, n, "%.1fs", s);
}

/* A small text file's contents (malloc'ed), NULL when it cannot be read. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                b = NULL;
            } else {
                b = nb;
            }
        }
    }
    fclose(f);
    if (b) b[n] = 0;
    return b;
}

static int write_text(const char *path, const char *text, char *err, size_t errlen) {
    atomic_file af;
    if (atomic_open(&af, path, err, errlen)) return -1;
    fputs(text, af.f);
    return atomic_commit(&af, err, errlen);
}

/* Layers of the base model from its config.json (HF directory) or its llama2.c header, without
 * loading the weights; 0 when that cannot be read (train then reports the problem). */
static int model_layers(const char *model) {
    struct stat st;
    char path[4200];
    if (stat(model, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode) || (strlen(model) >= 11 && !strcmp(model + strlen(model) - 11, "config.json"))) {
        if (S_ISDIR(st.st_mode)) snprintf(path, sizeof path, "%s/config.json", model);
        else snprintf(path, sizeof path, "%s", model);
        char *t = read_text(path);
        cJSON *o = t ? cJSON_Parse(t) : NULL;
        free(t);
        cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "num_hidden_layers");
        int n = cJSON_IsNumber(v) ? (int)v->valuedouble : 0;
        cJSON_Delete(o);
        return n;
    }
    FILE *f = fopen(model, "rb"); /* llama2.c: int32 {dim, hidden_dim, n_layers, ...} */
    int32_t h[3] = {0, 0, 0};
    if (f) {
        if (fread(h, sizeof h, 1, f) != 1) h[2] = 0;
        fclose(f);
    }
    return h[2] > 0 && h[2] < 100000 ? h[2] : 0;
}

/* ---- one pair ------------------------------------------------------------------------------ */

typedef struct pair {
    int K, L;
    char dir[4200];
    int finished;           /* result.json read or written */
    long long trainable, export_bytes, steps, best_val_step;
    double wall_s, tok_per_s, final_loss, best_val;
    int acc_correct, acc_total; /* acc_total 0: not scored */
    char score[16];         /* rule its answers were scored with ("none") */
    int max_new;            /* answers' max_new_tokens */
    long long steps_before; /* metrics lines when this sweep started (progress) */
    runlog log;             /* curves for the plot (finished pairs) */
} pair;

static void pair_path(const pair *p, const char *name, char *out, size_t n) { snprintf(out, n, "%s/%s", p->dir, name); }

static int has_checkpoint(const pair *p) {
    char f[4400], err[256];
    return ckpt_resolve(p->dir, f, sizeof f, err, sizeof err) == 0;
}

/* Lines of the pair's metrics.jsonl (0 when absent). */
static long long metrics_lines(const pair *p) {
    char f[4400];
    pair_path(p, "metrics.jsonl", f, sizeof f);
    FILE *fp = fopen(f, "r");
    if (!fp) return 0;
    long long n = 0;
    int ch;
    while ((ch = getc(fp)) != EOF) n += ch == '\n';
    fclose(fp);
    return n;
}

/* The run's total steps from the last "training: ... N steps" line of its train.log, or -1. */
static long long log_total_steps(const pair *p) {
    char f[4400];
    pair_path(p, "train.log", f, sizeof f);
    char *t = read_text(f);
    if (!t) return -1;
    long long total = -1;
    for (char *l = strstr(t, "training: "); l; l = strstr(l + 1, "training: ")) {
        if (l != t && l[-1] != '\n') continue;
        char *s = strstr(l, " steps/epoch, ");
        char *eol = strchr(l, '\n');
        if (s && (!eol || s < eol)) total = strtoll(s + 14, NULL, 10);
    }
    free(t);
    return total;
}

static int read_result(pair *p) {
    char f[4400];
    pair_path(p, "result.json", f, sizeof f);
    char *t = read_text(f);
    if (!t) return -1;
    cJSON *o = cJSON_Parse(t);
    free(t);
    if (!o) return -1;
#define NUM(key) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, key)) ? cJSON_GetObjectItemCaseSensitive(o, key)->valuedouble : NAN)
    int ok = NUM("K") == p->K && NUM("L") == p->L && isfinite(NUM("steps"));
    if (ok) {
        p->trainable = (long long)NUM("trainable_params");
        p->export_bytes = (long long)NUM("export_bytes");
        p->steps = (long long)NUM("steps");
        p->wall_s = NUM("wall_s");
        p->tok_per_s = NUM("loss_tokens_per_s");
        p->final_loss = NUM("final_train_loss");
        p->best_val = NUM("best_val_loss");
        p->best_val_step = isfinite(NUM("best_val_step")) ? (long long)NUM("best_val_step") : 0;
        p->acc_correct = isfinite(NUM("heldout_correct")) ? (int)NUM("heldout_correct") : 0;
        p->acc_total = isfinite(NUM("heldout_total")) ? (int)NUM("heldout_total") : 0;
        p->max_new = isfinite(NUM("max_new_tokens")) ? (int)NUM("max_new_tokens") : 0;
        cJSON *sc = cJSON_GetObjectItemCaseSensitive(o, "score");
        snprintf(p->score, sizeof p->score, "%s", cJSON_IsString(sc) ? sc->valuestring : "none");
    }
#undef NUM
    cJSON_Delete(o);
    return ok ? 0 : -1;
}

static void add_num(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

static int write_result(const pair *p, char *err, size_t errlen) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "K", p->K);
    cJSON_AddNumberToObject(o, "L", p->L);
    cJSON_AddNumberToObject(o, "trainable_params", (double)p->trainable);
    cJSON_AddNumberToObject(o, "export_bytes", (double)p->export_bytes);
    cJSON_AddNumberToObject(o, "steps", (double)p->steps);
    add_num(o, "wall_s", p->wall_s);
    add_num(o, "loss_tokens_per_s", p->tok_per_s);
    add_num(o, "final_train_loss", p->final_loss);
    add_num(o, "best_val_loss", p->best_val);
    add_num(o, "best_val_step", isfinite(p->best_val) ? (double)p->best_val_step : NAN);
    add_num(o, "heldout_correct", p->acc_total ? p->acc_correct : NAN);
    add_num(o, "heldout_total", p->acc_total ? p->acc_total : NAN);
    cJSON_AddStringToObject(o, "score", p->score);
    cJSON_AddNumberToObject(o, "max_new_tokens", p->max_new);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    char f[4400];
    pair_path(p, "result.json", f, sizeof f);
    int rc = s ? write_text(f, s, err, errlen) : -1;
    if (!s) snprintf(err, errlen, "out of memory");
    free(s);
    return rc;
}

/* ---- the sweep ----------------------------------------------------------------------------- */

typedef struct sweep {
    const char *out;
    pair *pairs;
    int n;
    char **targs;           /* pass-through train flags */
    int n_targs;
    train_config *cfg;
    score_rule score;
    int max_new;
    const alpaca_set *val;  /* validation examples (scoring), or NULL */
    int n_val;
    const char *val_name;
    int bf16;
    int tty;
    /* progress */
    double t_train;         /* wall seconds of training in this process */
    long long steps_trained;/* steps those covered */
    long long total_steps;  /* steps of one run (all pairs train the same number), -1 unknown */
    double last_draw;
} sweep;

/* Steps still to train in the whole sweep (the running pair counted at `cur_steps`). */
static double steps_left(const sweep *sw, int cur, long long cur_steps) {
    if (sw->total_steps < 0) return NAN;
    double left = 0;
    for (int i = 0; i < sw->n; i++) {
        if (sw->pairs[i].finished) continue;
        long long done = i == cur ? cur_steps : sw->pairs[i].steps_before;
        left += (double)(sw->total_steps > done ? sw->total_steps - done : 0);
    }
    return left;
}

static void progress(sweep *sw, int i, long long step, double pair_t0, int force_line) {
    double now = now_s();
    if (!force_line && (!sw->tty || now - sw->last_draw < 0.5)) return;
    sw->last_draw = now;
    const pair *p = &sw->pairs[i];
    long long trained = sw->steps_trained + (step - p->steps_before > 0 ? step - p->steps_before : 0);
    double spent = sw->t_train + (pair_t0 > 0 ? now - pair_t0 : 0);
    double per = trained > 0 ? spent / (double)trained : NAN;
    char eta[32], total[32];
    fmt_secs(eta, sizeof eta, per * steps_left(sw, i, step));
    if (sw->total_steps >= 0) snprintf(total, sizeof total, "%lld", sw->total_steps);
    else snprintf(total, sizeof total, "?");
    printf("%ssweep: pair %d/%d (K=%d, L=%d) | step %lld/%s | sweep ETA %s%s", sw->tty ? "\r\033[K" : "", i + 1,
           sw->n, p->K, p->L, step, total, eta, sw->tty && !force_line ? "" : "\n");
    fflush(stdout);
}

/* Runs `/proc/self/exe ARGV...` with stdout and stderr appended to log. While it runs, SIGINT/
 * SIGTERM received by the sweep are forwarded to it, and (pair_i >= 0) progress is redrawn from
 * its metrics.jsonl. Returns its exit status, 128 + signal when it was killed, -1 when it could not
 * start (err). */
static int run_child(sweep *sw, char **argv, const char *log, int pair_i, double pair_t0, char *err, size_t errlen) {
    fflush(NULL);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", log, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        snprintf(err, errlen, "cannot start %s: %s", argv[1], strerror(errno));
        return -1;
    }
    if (pid == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execv("/proc/self/exe", argv);
        fprintf(stderr, "llama-adapter sweep: cannot run /proc/self/exe: %s\n", strerror(errno));
        _exit(127);
    }
    close(fd);
    int forwarded = 0, status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) {
            snprintf(err, errlen, "waiting for %s: %s", argv[1], strerror(errno));
            return -1;
        }
        while (forwarded < g_signals) { /* every Ctrl-C the sweep gets, the child gets */
            kill(pid, SIGINT);
            forwarded++;
        }
        if (pair_i >= 0 && sw->tty) {
            if (sw->total_steps < 0) sw->total_steps = log_total_steps(&sw->pairs[pair_i]);
            progress(sw, pair_i, metrics_lines(&sw->pairs[pair_i]), pair_t0, 0);
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* The last non-empty line of a log (its error line), for messages. */
static void last_line(const char *path, char *out, size_t n) {
    char *t = read_text(path);
    out[0] = 0;
    if (!t) return;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == '\n' || t[len - 1] == '\r' || t[len - 1] == ' ')) t[--len] = 0;
    char *l = strrchr(t, '\n');
    l = l ? l + 1 : t;
    if (!strncmp(l, "\r\033[K", 4)) l += 4;
    snprintf(out, n, "%s", l);
    free(t);
}

static double read_wall(const pair *p) {
    char f[4400];
    pair_path(p, "wall_seconds", f, sizeof f);
    char *t = read_text(f);
    double w = t ? atof(t) : 0;
    free(t);
    return w;
}

static void add_wall(const pair *p, double dt) {
    char f[4400], v[64], err[256];
    pair_path(p, "wall_seconds", f, sizeof f);
    snprintf(v, sizeof v, "%.3f\n", read_wall(p) + dt);
    write_text(f, v, err, sizeof err); /* best effort: only the wall-time column depends on it */
}

/* Trains pair i (or continues it). 0 done, 130 interrupted, 1 failed (message printed). */
static int train_pair(sweep *sw, int i) {
    pair *p = &sw->pairs[i];
    char ks[16], ls[16], log[4400], err[1024], msg[6000];
    snprintf(ks, sizeof ks, "%d", p->K);
    snprintf(ls, sizeof ls, "%d", p->L);
    pair_path(p, "train.log", log, sizeof log);
    int resume = has_checkpoint(p);
    char **argv = calloc((size_t)sw->n_targs + 12, sizeof(char *));
    if (!argv) return fail("out of memory");
    int a = 0;
    argv[a++] = "llama-adapter";
    argv[a++] = "train";
    if (resume) {
        argv[a++] = "--resume";
        argv[a++] = p->dir;
    }
    for (int k = 0; k < sw->n_targs; k++) argv[a++] = sw->targs[k];
    argv[a++] = "--adapter-len";
    argv[a++] = ks;
    argv[a++] = "--adapter-layer";
    argv[a++] = ls;
    argv[a++] = "--out";
    argv[a++] = p->dir;
    argv[a] = NULL;
    if (!sw->tty || resume) {
        if (resume)
            printf("sweep: pair %d/%d (K=%d, L=%d): resuming from its checkpoint (%lld steps in its metrics) -> %s\n",
                   i + 1, sw->n, p->K, p->L, p->steps_before, p->dir);
        else
            printf("sweep: pair %d/%d (K=%d, L=%d): training -> %s\n", i + 1, sw->n, p->K, p->L, p->dir);
        fflush(stdout);
    }
    double t0 = now_s();
    int st = run_child(sw, argv, log, i, t0, err, sizeof err);
    free(argv);
    double dt = now_s() - t0;
    add_wall(p, dt);
    long long done = metrics_lines(p);
    sw->t_train += dt;
    sw->steps_trained += done > p->steps_before ? done - p->steps_before : 0;
    p->steps_before = done;
    if (sw->total_steps < 0) sw->total_steps = log_total_steps(p);
    if (st < 0) return fail(err);
    if (st == 0) return 0;
    if (st == 130 || (g_signals && st == 128 + SIGINT) || (g_signals && st == 128 + SIGTERM)) {
        if (sw->tty) printf("\n");
        printf("sweep: interrupted in pair %d/%d (K=%d, L=%d) at step %lld; its checkpoint is kept: run the same "
               "command again to continue\n", i + 1, sw->n, p->K, p->L, done);
        fflush(stdout);
        return 130;
    }
    char last[2048];
    last_line(log, last, sizeof last);
    snprintf(msg, sizeof msg, "K=%d L=%d: train exited with status %d (%s: \"%s\")", p->K, p->L, st, log, last);
    if (sw->tty) printf("\n");
    return fail(msg);
}

/* Export, answers (with --score), metrics summary, result.json. 0, 130 or 1. */
static int finish_pair(sweep *sw, int i, int trained_now) {
    pair *p = &sw->pairs[i];
    char err[4600], f[4400], log[4400];
    /* trainable parameters: from the final checkpoint (L*K*dim + L*n_heads) */
    train_ckpt ck;
    if (ckpt_resolve(p->dir, f, sizeof f, err, sizeof err) || ckpt_load(f, &ck, err, sizeof err)) return fail(err);
    p->trainable = (long long)ck.n_params;
    ckpt_free(&ck);
    if (trained_now || !p->finished) {
        char out[4400];
        pair_path(p, "adapter.safetensors", out, sizeof out);
        pair_path(p, "export.log", log, sizeof log);
        char *argv[] = {"llama-adapter", "export", "--adapter", p->dir, "--format", "safetensors", "--out", out, NULL};
        int st = run_child(sw, argv, log, -1, 0, err, sizeof err);
        if (st < 0) return fail(err);
        if (st != 0) {
            if (g_signals) return 130;
            char last[2048], msg[6000];
            last_line(log, last, sizeof last);
            snprintf(msg, sizeof msg, "K=%d L=%d: export exited with status %d (%s: \"%s\")", p->K, p->L, st, log, last);
            return fail(msg);
        }
        struct stat sb;
        p->export_bytes = stat(out, &sb) == 0 ? (long long)sb.st_size : 0;
    }
    runlog r;
    if (runlog_load(p->dir, &r, err, sizeof err)) return fail(err);
    runlog_summary s;
    runlog_summarize(&r, &s);
    runlog_free(&r);
    p->steps = s.steps;
    p->final_loss = s.final_loss;
    p->best_val = s.best_val_loss;
    p->best_val_step = s.best_val_step;
    p->tok_per_s = s.loss_tokens_per_s;
    p->wall_s = read_wall(p);
    snprintf(p->score, sizeof p->score, "%s", score_rule_name(sw->score));
    p->max_new = sw->max_new;
    p->acc_correct = p->acc_total = 0;
    if (sw->score) {
        const char *ad[1] = {p->dir};
        answer_opts o = {0};
        o.model = sw->cfg->model;
        o.tokenizer = sw->cfg->tokenizer;
        o.data = sw->val;
        o.n = sw->n_val;
        o.data_name = sw->val_name;
        o.adapters = ad;
        o.n_adapters = 1;
        o.max_new = sw->max_new;
        o.adapter_len = p->K;
        o.top_p = 1.0f;
        o.bf16 = sw->bf16;
        o.score = sw->score;
        o.stop = &g_signals;
        answer_sheet sh;
        if (answers_run(&o, &sh, err, sizeof err)) return fail(err);
        if (sh.stopped) {
            answer_sheet_free(&sh);
            printf("sweep: interrupted while answering for K=%d L=%d; run the same command again to continue\n", p->K,
                   p->L);
            return 130;
        }
        pair_path(p, "answers.jsonl", f, sizeof f);
        int rc = answers_write(f, &o, &sh, err, sizeof err);
        p->acc_correct = sh.correct[0];
        p->acc_total = sh.n;
        answer_sheet_free(&sh);
        if (rc) return fail(err);
    }
    if (write_result(p, err, sizeof err)) return fail(err);
    p->finished = 1;
    return 0;
}

/* ---- tables and plot ----------------------------------------------------------------------- */

/* A CSV number: digits = 1 for "%.1f", 9 for "%.9g" (the metrics' own precision); empty when
 * not finite. */
static void csv_num(FILE *f, double v, int digits) {
    if (!isfinite(v)) return;
    if (digits == 1) fprintf(f, "%.1f", v);
    else fprintf(f, "%.9g", v);
}

static int write_tables(const sweep *sw, char *err, size_t errlen) {
    char path[4200];
    atomic_file af;
    snprintf(path, sizeof path, "%s/results.csv", sw->out);
    if (atomic_open(&af, path, err, errlen)) return -1;
    fprintf(af.f, "K,L,trainable_params,export_bytes,steps,wall_s,loss_tokens_per_s,final_train_loss,best_val_loss,"
                  "best_val_step,heldout_correct,heldout_total,heldout_accuracy\n");
    for (int i = 0; i < sw->n; i++) {
        const pair *p = &sw->pairs[i];
        if (!p->finished) continue;
        fprintf(af.f, "%d,%d,%lld,%lld,%lld,", p->K, p->L, p->trainable, p->export_bytes, p->steps);
        csv_num(af.f, p->wall_s, 1);
        fputc(',', af.f);
        csv_num(af.f, p->tok_per_s, 1);
        fputc(',', af.f);
        csv_num(af.f, p->final_loss, 9);
        fputc(',', af.f);
        csv_num(af.f, p->best_val, 9);
        fputc(',', af.f);
        if (isfinite(p->best_val)) fprintf(af.f, "%lld", p->best_val_step);
        fputc(',', af.f);
        if (p->acc_total) fprintf(af.f, "%d,%d,%.6f", p->acc_correct, p->acc_total, (double)p->acc_correct / p->acc_total);
        else fputs(",,", af.f);
        fputc('\n', af.f);
    }
    if (atomic_commit(&af, err, errlen)) return -1;

    snprintf(path, sizeof path, "%s/results.md", sw->out);
    if (atomic_open(&af, path, err, errlen)) return -1;
    FILE *f = af.f;
    int done = 0;
    for (int i = 0; i < sw->n; i++) done += sw->pairs[i].finished;
    fprintf(f, "# Sweep: adapter_len x adapter_layer\n\n");
    fprintf(f, "Model `%s`, data `%s`%s%s%s; %d of %d runs finished. Plot: `sweep.svg`.\n\n", sw->cfg->model,
            sw->cfg->data, sw->val_name ? ", held-out answers on `" : "", sw->val_name ? sw->val_name : "",
            sw->val_name ? "`" : "", done, sw->n);
    fprintf(f, "| K | L | trainable params | export | steps | wall time | loss tokens/s | final train loss | "
               "best val loss (step) | held-out accuracy |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < sw->n; i++) {
        const pair *p = &sw->pairs[i];
        if (!p->finished) {
            fprintf(f, "| %d | %d | | | | | | | | (not finished) |\n", p->K, p->L);
            continue;
        }
        char wall[32];
        if (p->wall_s < 60) snprintf(wall, sizeof wall, "%.1f s", p->wall_s);
        else fmt_secs(wall, sizeof wall, p->wall_s);
        fprintf(f, "| %d | %d | %lld | %.1f KB | %lld | %s | %.0f | %.4f | ", p->K, p->L, p->trainable,
                p->export_bytes / 1000.0, p->steps, wall, isfinite(p->tok_per_s) ? p->tok_per_s : 0.0, p->final_loss);
        if (isfinite(p->best_val)) fprintf(f, "%.4f (%lld) | ", p->best_val, p->best_val_step);
        else fprintf(f, "- | ");
        if (p->acc_total)
            fprintf(f, "%.1f%% (%d/%d, %s) |\n", 100.0 * p->acc_correct / p->acc_total, p->acc_correct, p->acc_total,
                    p->score);
        else fprintf(f, "- |\n");
    }
    fprintf(f, "\nTrainable parameters = L*K*dim + L*n_heads (prompts and gates); export = the safetensors file; "
               "wall time = the `train` processes of the run; loss tokens/s = loss tokens / step time from "
               "metrics.jsonl.\n");
    return atomic_commit(&af, err, errlen);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int write_plot(const sweep *sw, int *Ls, int nL, int *Ks, int nK, char *err, size_t errlen) {
    int any_val = 0, n_runs = 0;
    for (int i = 0; i < sw->n; i++)
        if (sw->pairs[i].finished) {
            n_runs++;
            any_val |= isfinite(sw->pairs[i].best_val);
        }
    /* left: one line per L over the finished pairs, sorted by parameters */
    svg_series *byL = calloc((size_t)nL + 1, sizeof *byL);
    double *px = calloc((size_t)sw->n + 1, sizeof(double)), *py = calloc((size_t)sw->n + 1, sizeof(double));
    const char **plab = calloc((size_t)sw->n + 1, sizeof(char *));
    char (*labtxt)[48] = calloc((size_t)sw->n + 1, sizeof *labtxt);
    char (*ltxt)[48] = calloc((size_t)nL + 1, sizeof *ltxt);
    svg_series *runs = calloc((size_t)2 * sw->n + 1, sizeof *runs);
    char (*rtxt)[48] = calloc((size_t)sw->n + 1, sizeof *rtxt);
    double **vx = calloc((size_t)sw->n + 1, sizeof(double *)), **vy = calloc((size_t)sw->n + 1, sizeof(double *));
    svg_key *keys = calloc((size_t)nK + 2, sizeof *keys);
    char (*ktxt)[48] = calloc((size_t)nK + 1, sizeof *ktxt);
    int rc = -1;
    if (!byL || !px || !py || !plab || !labtxt || !ltxt || !runs || !rtxt || !vx || !vy || !keys || !ktxt) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    int m = 0;
    for (int li = 0; li < nL; li++) {
        int start = m;
        double tmp[2 * MAX_VALUES][2];
        int nt = 0;
        for (int i = 0; i < sw->n; i++) {
            const pair *p = &sw->pairs[i];
            if (!p->finished || p->L != Ls[li]) continue;
            tmp[nt][0] = (double)p->trainable;
            tmp[nt][1] = any_val ? p->best_val : p->final_loss;
            snprintf(labtxt[start + nt], sizeof labtxt[0], "K=%d", p->K);
            nt++;
        }
        /* sort by parameter count (K order already is, but keep it robust), labels along */
        for (int a = 1; a < nt; a++)
            for (int b = a; b > 0 && cmp_double(tmp[b - 1], tmp[b]) > 0; b--) {
                double t0 = tmp[b][0], t1 = tmp[b][1];
                tmp[b][0] = tmp[b - 1][0], tmp[b][1] = tmp[b - 1][1];
                tmp[b - 1][0] = t0, tmp[b - 1][1] = t1;
                char tl[48];
                memcpy(tl, labtxt[start + b], sizeof tl);
                memcpy(labtxt[start + b], labtxt[start + b - 1], sizeof tl);
                memcpy(labtxt[start + b - 1], tl, sizeof tl);
            }
        for (int a = 0; a < nt; a++) {
            px[m] = tmp[a][0];
            py[m] = tmp[a][1];
            plab[m] = labtxt[m];
            m++;
        }
        snprintf(ltxt[li], sizeof ltxt[0], "L = %d layer%s", Ls[li], Ls[li] == 1 ? "" : "s");
        byL[li] = (svg_series){ltxt[li], px + start, py + start, nt, svg_color(li), NULL, 1, 1, "by-L", plab + start};
    }
    /* right: every finished run's train loss (color = L, dash = K) and its validation points */
    int nr = 0;
    for (int i = 0; i < sw->n; i++) {
        const pair *p = &sw->pairs[i];
        if (!p->finished || p->log.n == 0) continue;
        int li = 0, ki = 0;
        while (li < nL && Ls[li] != p->L) li++;
        while (ki < nK && Ks[ki] != p->K) ki++;
        snprintf(rtxt[i], sizeof rtxt[0], "K=%d, L=%d", p->K, p->L);
        runs[nr++] = (svg_series){rtxt[i], p->log.step, p->log.loss, p->log.n, svg_color(li), svg_dash(ki), 1, 0,
                                  "run-loss", NULL};
        int nv = 0;
        for (int j = 0; j < p->log.n; j++) nv += isfinite(p->log.val_loss[j]);
        if (nv) {
            vx[i] = malloc((size_t)nv * sizeof(double));
            vy[i] = malloc((size_t)nv * sizeof(double));
            if (!vx[i] || !vy[i]) {
                snprintf(err, errlen, "out of memory");
                goto done;
            }
            nv = 0;
            for (int j = 0; j < p->log.n; j++)
                if (isfinite(p->log.val_loss[j])) vx[i][nv] = p->log.step[j], vy[i][nv++] = p->log.val_loss[j];
            runs[nr++] = (svg_series){NULL, vx[i], vy[i], nv, svg_color(li), NULL, 0, 1, "run-val", NULL};
        }
    }
    int nk = 0;
    if (nK > 1)
        for (int ki = 0; ki < nK && ki < 4; ki++) {
            snprintf(ktxt[ki], sizeof ktxt[0], "line style: K = %d", Ks[ki]);
            keys[nk++] = (svg_key){ktxt[ki], "#333", svg_dash(ki), 0};
        }
    if (any_val) keys[nk++] = (svg_key){"validation loss", "#333", NULL, 1};
    for (int k = 0; k < nk; k++) /* dots only for the validation key */
        if (keys[k].markers) keys[k].dash = "0 100";
    /* a log loss axis when the curves span more than a factor 20 (the first steps against the tail) */
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < runs[i].n; j++)
            if (isfinite(runs[i].y[j])) lo = fmin(lo, runs[i].y[j]), hi = fmax(hi, runs[i].y[j]);
    int log_loss = lo > 0 && hi / lo > 20;
    char title[200];
    snprintf(title, sizeof title, "Sweep of adapter_len K x adapter_layer L: %d of %d runs", n_runs, sw->n);
    svg_panel panels[2] = {
        {any_val ? "Best validation loss vs trainable parameters" : "Final train loss vs trainable parameters (no validation data)",
         {"trainable parameters (count, log scale)", 1, NAN, NAN},
         {any_val ? "best validation loss (nats per loss token)" : "final train loss (nats per loss token)", 0, NAN, NAN},
         byL, nL, NULL, 0, "no finished run yet"},
        {"Training loss of every run", {"step (optimizer steps)", 0, 0, NAN},
         {log_loss ? "train loss (nats per loss token, log scale)" : "train loss (nats per loss token)", log_loss, NAN, NAN},
         runs, nr, keys, nk, "no finished run yet"},
    };
    svg_figure fig = {title, 2, 640, 420, panels, 2};
    char path[4200];
    snprintf(path, sizeof path, "%s/sweep.svg", sw->out);
    rc = svg_write_file(path, &fig, err, errlen);
done:
    for (int i = 0; i < sw->n && vx && vy; i++) free(vx[i]), free(vy[i]);
    free(vx);
    free(vy);
    free(byL);
    free(px);
    free(py);
    free(plab);
    free(labtxt);
    free(ltxt);
    free(runs);
    free(rtxt);
    free(keys);
    free(ktxt);
    return rc;
}

static int write_outputs(sweep *sw, int *Ls, int nL, int *Ks, int nK) {
    char err[4600];
    for (int i = 0; i < sw->n; i++) { /* curves of the finished pairs */
        pair *p = &sw->pairs[i];
        if (!p->finished || p->log.n) continue;
        if (runlog_load(p->dir, &p->log, err, sizeof err)) return fail(err);
    }
    if (write_tables(sw, err, sizeof err) || write_plot(sw, Ls, nL, Ks, nK, err, sizeof err)) return fail(err);
    return 0;
}

/* ---- settings record ----------------------------------------------------------------------- */

/* The resolved train config that must be equal across the pairs and across reruns. */
static char *settings_json(train_config *c) {
    train_config k = *c;
    k.out = "";
    k.adapter_len = 0;
    k.adapter_layer = 0;
    k.threads = 0;
    k.log_every = 0;
    k.resume = NULL;
    return train_config_json(&k);
}

/* 1 when some DIR/K*_L* folder holds a metrics.jsonl (a run has trained at least one step). */
static int any_run_started(const char *out) {
    DIR *d = opendir(out);
    if (!d) return 0;
    int started = 0;
    struct dirent *e;
    while (!started && (e = readdir(d))) {
        int k, l, used = 0;
        if (sscanf(e->d_name, "K%d_L%d%n", &k, &l, &used) != 2 || e->d_name[used]) continue;
        char f[4600];
        snprintf(f, sizeof f, "%s/%s/metrics.jsonl", out, e->d_name);
        started = access(f, F_OK) == 0;
    }
    closedir(d);
    return started;
}

/* 0 when DIR/sweep.json is absent, records the same settings, or records others but no run has
 * started yet (then it is (re)written); -1 with err when runs made with other settings are there. */
static int check_settings(const char *out, const char *settings, int started, char **targs, int n_targs, char *err,
                          size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/sweep.json", out);
    char *old = started ? read_text(path) : NULL;
    if (old) {
        cJSON *o = cJSON_Parse(old), *want = cJSON_Parse(settings);
        free(old);
        cJSON *have = o ? cJSON_GetObjectItemCaseSensitive(o, "train_config") : NULL;
        if (!have || !want) {
            cJSON_Delete(o);
            cJSON_Delete(want);
            snprintf(err, errlen, "%s: not a sweep record (expected {\"train_config\": {...}}); use another --out", path);
            return -1;
        }
        int rc = 0;
        for (cJSON *it = want->child; it && !rc; it = it->next) {
            cJSON *h = cJSON_GetObjectItemCaseSensitive(have, it->string);
            char *a = cJSON_PrintUnformatted(it), *b = h ? cJSON_PrintUnformatted(h) : strdup("absent");
            if (!a || !b || strcmp(a, b)) {
                snprintf(err, errlen, "%s: this sweep was made with %s = %s, now %s: use another --out for other train settings",
                         path, it->string, b ? b : "?", a ? a : "?");
                rc = -1;
            }
            free(a);
            free(b);
        }
        cJSON_Delete(o);
        cJSON_Delete(want);
        return rc;
    }
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddNumberToObject(rec, "version", 1);
    cJSON_AddItemToObject(rec, "train_config", cJSON_Parse(settings));
    cJSON *args = cJSON_AddArrayToObject(rec, "train_flags");
    for (int i = 0; i < n_targs; i++) cJSON_AddItemToArray(args, cJSON_CreateString(targs[i]));
    char *s = cJSON_Print(rec);
    cJSON_Delete(rec);
    int rc = s ? write_text(path, s, err, errlen) : -1;
    free(s);
    return rc;
}

/* ---- entry --------------------------------------------------------------------------------- */

int cmd_sweep(int argc, char **argv) {
    const char *k_list = NULL, *l_list = NULL, *out = NULL, *score_s = NULL;
    int max_new = 64;
    arg_spec specs[] = {
        {"adapter-len", ARG_STR, &k_list, "K values, comma-separated (default: the config's adapter_len)", 0},
        {"adapter-layer", ARG_STR, &l_list, "L values, comma-separated (default: the config's adapter_layer)", 0},
        {"out", ARG_STR, &out, "sweep directory: DIR/K{K}_L{L} per run, results.csv, results.md, sweep.svg (required)", 0},
        {"score", ARG_STR, &score_s, "exact | contains: held-out accuracy of each run on the validation examples", 0},
        {"max-new-tokens", ARG_INT, &max_new, "longest answer when scoring", 0},
    };
    int n_specs = (int)(sizeof specs / sizeof specs[0]);
    /* split argv: the sweep's own flags, everything else for train */
    char **targs = calloc((size_t)argc + 1, sizeof(char *));
    if (!targs) return fail("out of memory");
    int n_targs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            args_help(stdout, CMD, USAGE_LINE, specs, n_specs);
            printf("  (any other flag)         passed to every `train` run (llama-adapter train --help)\n");
            free(targs);
            return 0;
        }
        char name[64] = "";
        if (!strncmp(a, "--", 2)) {
            size_t len = strcspn(a + 2, "=");
            snprintf(name, sizeof name, "%.*s", (int)(len < 63 ? len : 63), a + 2);
            for (char *c = name; *c; c++)
                if (*c == '_') *c = '-';
        }
        arg_spec *s = name[0] ? args_find(specs, n_specs, name) : NULL;
        if (!s) {
            targs[n_targs++] = argv[i];
            continue;
        }
        const char *eq = strchr(a, '=');
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            free(targs);
            fprintf(stderr, "llama-adapter " CMD ": --%s needs a value\n", name);
            return 2;
        }
        if (s->type == ARG_INT) {
            char *end;
            errno = 0;
            long x = strtol(v, &end, 10);
            if (!*v || *end || errno || x < 0 || x > 1 << 20) {
                free(targs);
                fprintf(stderr, "llama-adapter " CMD ": --%s: expected an integer >= 0, got '%s'\n", name, v);
                return 2;
            }
            *(int *)s->dst = (int)x;
        } else {
            *(const char **)s->dst = v;
        }
    }
    int status = 2;
    train_config c;
    train_config_defaults(&c);
    char err[4600], msg[6000];
    int Ks[MAX_VALUES], Ls[MAX_VALUES], nK = 0, nL = 0;
    pair *pairs = NULL;
    alpaca_set data = {0}, vdata = {0};
    int have_data = 0, have_vdata = 0;
    sweep sw = {0};
    char **pargv = calloc((size_t)n_targs + 2, sizeof(char *));
    if (!pargv) {
        free(targs);
        return fail("out of memory");
    }
    pargv[0] = "train";
    for (int i = 0; i < n_targs; i++) pargv[i + 1] = targs[i];
    int pr = train_config_parse(&c, n_targs + 1, pargv, NULL, NULL); /* prints its own error line */
    free(pargv);
    if (pr) {
        status = pr > 0 ? 0 : 2;
        goto done;
    }
    if (!out) {
        usage("missing --out DIR");
        goto done;
    }
    if (c.resume) {
        usage("--resume is the sweep's job: run the same sweep command again to continue it");
        goto done;
    }
    if (c.init_adapter) {
        usage("--init-adapter cannot go with a sweep (every pair has its own adapter shape)");
        goto done;
    }
    if (strcmp(c.method, "adapter")) {
        usage("--method full has no adapter_len or adapter_layer to sweep");
        goto done;
    }
    if (k_list ? parse_list("adapter-len", k_list, Ks, &nK, err, sizeof err) : (Ks[nK++] = c.adapter_len, 0)) {
        usage(err);
        goto done;
    }
    if (l_list ? parse_list("adapter-layer", l_list, Ls, &nL, err, sizeof err) : (Ls[nL++] = c.adapter_layer, 0)) {
        usage(err);
        goto done;
    }
    int n_layers = model_layers(c.model);
    for (int i = 0; n_layers > 0 && i < nL; i++)
        if (Ls[i] > n_layers) {
            snprintf(msg, sizeof msg, "--adapter-layer %d: %s has %d layers (train would adapt all %d, the same run as "
                     "L=%d)", Ls[i], c.model, n_layers, n_layers, n_layers);
            usage(msg);
            goto done;
        }
    c.out = out;
    c.adapter_len = Ks[0];
    c.adapter_layer = Ls[0];
    if (train_config_validate(&c, 0, err, sizeof err)) {
        usage(err);
        goto done;
    }
    score_rule rule = SCORE_NONE;
    if (score_s && score_rule_parse(score_s, &rule)) {
        snprintf(msg, sizeof msg, "--score '%s': expected exact or contains", score_s);
        usage(msg);
        goto done;
    }
    if (rule && !c.val_data && !c.val_split) {
        usage("--score answers the validation examples: give --val-data FILE or --val-split N");
        goto done;
    }
    int bf16 = 0;
    char pdesc[200];
    if (precision_resolve(c.precision, &bf16, pdesc, sizeof pdesc, err, sizeof err)) {
        usage(err);
        goto done;
    }
    status = 1;
    /* the held-out examples: --val-data, or the first --val-split examples of --data */
    if (rule) {
        const char *vpath = c.val_data ? c.val_data : c.data;
        if (data_load(vpath, c.data_format, c.val_data ? &vdata : &data, err, sizeof err)) {
            fail(err);
            goto done;
        }
        if (c.val_data) have_vdata = 1;
        else have_data = 1;
        const alpaca_set *v = c.val_data ? &vdata : &data;
        if (v->plain_text) {
            snprintf(msg, sizeof msg, "%s: plain-text documents have no reference answers to score (--score needs "
                     "Alpaca JSON)", vpath);
            fail(msg);
            goto done;
        }
        if (!c.val_data && c.val_split >= v->n) {
            snprintf(msg, sizeof msg, "--val-split %d: %s has only %d examples", c.val_split, vpath, v->n);
            fail(msg);
            goto done;
        }
        sw.val = v;
        sw.n_val = c.val_data ? v->n : c.val_split;
        sw.val_name = vpath;
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        snprintf(msg, sizeof msg, "%s: cannot create the sweep directory: %s", out, strerror(errno));
        fail(msg);
        goto done;
    }
    char *settings = settings_json(&c);
    if (!settings) {
        fail("out of memory");
        goto done;
    }
    int sr = check_settings(out, settings, any_run_started(out), targs, n_targs, err, sizeof err);
    free(settings);
    if (sr) {
        fail(err);
        goto done;
    }
    if (c.threads > 0) omp_set_num_threads(c.threads);

    /* the pairs, L by L; what is finished, what was interrupted */
    int n = nK * nL;
    pairs = calloc((size_t)n, sizeof *pairs);
    if (!pairs) {
        fail("out of memory");
        goto done;
    }
    int n_done = 0, n_partial = 0;
    for (int li = 0; li < nL; li++)
        for (int ki = 0; ki < nK; ki++) {
            pair *p = &pairs[li * nK + ki];
            p->K = Ks[ki];
            p->L = Ls[li];
            snprintf(p->dir, sizeof p->dir, "%s/K%d_L%d", out, p->K, p->L);
            p->finished = read_result(p) == 0;
            p->steps_before = p->finished ? p->steps : metrics_lines(p);
            n_done += p->finished;
            n_partial += !p->finished && has_checkpoint(p);
        }
    sw.out = out;
    sw.pairs = pairs;
    sw.n = n;
    sw.targs = targs;
    sw.n_targs = n_targs;
    sw.cfg = &c;
    sw.score = rule;
    sw.max_new = max_new;
    sw.bf16 = bf16;
    sw.tty = isatty(fileno(stdout));
    sw.total_steps = -1;
    for (int i = 0; i < n && sw.total_steps < 0; i++)
        if (pairs[i].finished) sw.total_steps = pairs[i].steps;
    printf("sweep: %d x %d = %d runs (adapter_len %s x adapter_layer %s) -> %s: %d finished, %d interrupted (will "
           "resume), %d to start\n",
           nK, nL, n, k_list ? k_list : "(config)", l_list ? l_list : "(config)", out, n_done, n_partial,
           n - n_done - n_partial);
    printf("sweep: train flags for every run:");
    for (int i = 0; i < n_targs; i++) printf(" %s", targs[i]);
    printf("\n");
    if (rule)
        printf("sweep: held-out accuracy: %d examples of %s, greedy, max_new_tokens %d, %s match\n", sw.n_val,
               sw.val_name, max_new, score_rule_name(rule));
    fflush(stdout);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    status = 0;
    for (int i = 0; i < n && !status; i++) {
        pair *p = &pairs[i];
        if (g_signals) {
            status = 130;
            break;
        }
        int rescore = p->finished && (strcmp(p->score, score_rule_name(rule)) || (rule && p->max_new != max_new));
        if (p->finished && !rescore) continue;
        int trained_now = 0;
        if (!p->finished) {
            if (mkdir(p->dir, 0755) && errno != EEXIST) {
                snprintf(msg, sizeof msg, "%s: cannot create: %s", p->dir, strerror(errno));
                status = fail(msg);
                break;
            }
            status = train_pair(&sw, i);
            if (status) break;
            trained_now = 1;
        }
        status = finish_pair(&sw, i, trained_now);
        if (status) break;
        if (sw.tty) printf("\r\033[K");
        char wall[32], eta[32];
        fmt_secs(wall, sizeof wall, p->wall_s);
        double per = sw.steps_trained > 0 ? sw.t_train / (double)sw.steps_trained : NAN;
        fmt_secs(eta, sizeof eta, per * steps_left(&sw, -1, 0));
        printf("sweep: pair %d/%d (K=%d, L=%d) done: %lld steps in %s, final loss %.4f", i + 1, n, p->K, p->L, p->steps,
               wall, p->final_loss);
        if (isfinite(p->best_val)) printf(", best val loss %.4f (step %lld)", p->best_val, p->best_val_step);
        if (p->acc_total)
            printf(", held-out %d/%d = %.1f%%", p->acc_correct, p->acc_total, 100.0 * p->acc_correct / p->acc_total);
        printf(" | sweep ETA %s\n", eta);
        fflush(stdout);
        if (write_outputs(&sw, Ls, nL, Ks, nK)) {
            status = 1;
            break;
        }
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (status == 0 || status == 130) {
        if (write_outputs(&sw, Ls, nL, Ks, nK)) status = 1;
        else
            printf("sweep: %s/results.csv, %s/results.md, %s/sweep.svg%s\n", out, out, out,
                   status == 130 ? " (finished pairs only)" : "");
    }
    if (status == 130) printf("sweep: stopped by a signal; run the same command again to continue\n");
done:
    for (int i = 0; pairs && i < nK * nL; i++) runlog_free(&pairs[i].log);
    free(pairs);
    if (have_data) alpaca_free(&data);
    if (have_vdata) alpaca_free(&vdata);
    train_config_free(&c);
    free(targs);
    return status;
}
