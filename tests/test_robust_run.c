/* Runs of the binary that must lose nothing and crash on nothing (issue 15), on the fixture of
 * tests/robust_fixture.h (made here):
 *   values out of range (--threads, --lr, --blr, seed/world_size in a config, --adapter-len,
 *   --config pointing at a directory) and an example too long to tokenize: one line with the range;
 *   a reused --out: refused, every file and metrics line unchanged; --overwrite replaces it;
 *   two trainings into one --out: the second refused with the first's pid, the first unharmed;
 *   a stale lock taken over; a resume from another working directory; a resume on other data
 *   refused; a non-finite loss: stop at that step, exit 1, the checkpoints before it kept and no
 *   "nan" in metrics.jsonl; NaN weights refused at load; a full disk: one line with the reason;
 *   --epochs 1 alone; examples without answer tokens; the max_position_embeddings warning;
 *   --version; the --tokenizer default; generate's streamed text equals the decoded ids.
 * Deliberately not here: file formats (tests/test_robust_files.c), the BLAS build
 * (tests/test_robust_blas.c). */
#include <cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "tests/robust_fixture.h"
#include "tests/test.h"

static robust_fixture fx;
static const char *bin;

#define COMMON "--model %s --tokenizer %s --data %s --batch-size 4 --max-seq-len 256 --adapter-len 2 --adapter-layer 2 --threads 2"
#define FX fx.model, fx.tok, fx.data

static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", fx.dir, name);
    return b;
}

/* `BIN ARGS` fails with exactly one stderr line holding every needle (NULL-terminated). */
static void expect_fail_line(int want_status, const char *args, const char *needle, const char *needle2) {
    char *err = NULL;
    int st = test_run_bin(fx.dir, args, NULL, &err);
    CHECK(want_status ? st == want_status : st != 0, "'%s': exit %d", args, st);
    CHECK(st >= 0 && st < 128, "'%s': crashed (%d)", args, st);
    CHECK(test_count_lines(err) == 1, "'%s': %d stderr lines: %s", args, test_count_lines(err), err ? err : "");
    CHECK(err && strstr(err, needle), "'%s': '%s' lacks '%s'", args, err ? err : "", needle);
    CHECK(!needle2 || (err && strstr(err, needle2)), "'%s': '%s' lacks '%s'", args, err ? err : "", needle2);
    if (err) printf("  e.g. %s", err);
    free(err);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_values_out_of_range_are_refused(void) {
    char a[2000];
    snprintf(a, sizeof a, "train " COMMON " --threads 100000 --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--threads 100000: expected 0..", NULL);
    snprintf(a, sizeof a, "eval --model %s --tokenizer %s --data %s --threads 100000", FX);
    expect_fail_line(2, a, "--threads 100000: expected 0..", NULL);
    snprintf(a, sizeof a, "train " COMMON " --lr inf --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--lr: expected a finite number", NULL);
    snprintf(a, sizeof a, "train " COMMON " --blr 1e30 --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--blr 1e+30: expected 0..10", NULL);
    snprintf(a, sizeof a, "train " COMMON " --adapter-len 100000 --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--adapter-len 100000: expected 1..1024", NULL);
    snprintf(a, sizeof a, "train " COMMON " --seed -3 --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--seed -3: expected 0..", NULL);
    snprintf(a, sizeof a, "train " COMMON " --epochs 1 --warmup-epochs 2 --out %s", FX, tpath("r0"));
    expect_fail_line(2, a, "--warmup-epochs 2: expected 0..1", NULL);
    write_text(tpath("seed.json"), "{\"seed\": 1e300}");
    snprintf(a, sizeof a, "train --config %s " COMMON " --out %s", tpath("seed.json"), FX, tpath("r0"));
    expect_fail_line(2, a, "\"seed\": expected an integer of at most 2^53", NULL);
    write_text(tpath("world.json"), "{\"world_size\": 1e30}");
    snprintf(a, sizeof a, "train --config %s " COMMON " --out %s", tpath("world.json"), FX, tpath("r0"));
    expect_fail_line(0, a, "\"world_size\": expected an integer 1..", NULL);
    write_text(tpath("lr.json"), "{\"lr\": 1e999}");
    snprintf(a, sizeof a, "train --config %s " COMMON " --out %s", tpath("lr.json"), FX, tpath("r0"));
    expect_fail_line(2, a, "\"lr\": expected a finite number", NULL);
    write_text(tpath("null.json"), "{\"gate_act\": null, \"method\": null}"); /* found by scripts/fuzz.py */
    snprintf(a, sizeof a, "train --config %s " COMMON " --out %s", tpath("null.json"), FX, tpath("r0"));
    expect_fail_line(2, a, "--method '(null)': expected adapter or full", NULL);
    snprintf(a, sizeof a, "train --config %s " COMMON " --out %s", fx.dir, FX, tpath("r0"));
    expect_fail_line(2, a, "is a directory", NULL);
    CHECK(access(tpath("r0"), F_OK) != 0, "a refused run leaves no --out behind");
}

static void test_one_example_is_bounded(void) {
    /* 300 KB in one example: refused at once with the bound, not minutes of tokenizing */
    size_t n = 300 * 1024;
    char *big = malloc(n + 200);
    strcpy(big, "[{\"instruction\": \"Say it.\", \"input\": \"\", \"output\": \"");
    size_t at = strlen(big);
    for (size_t i = 0; i < n; i++) big[at + i] = "abcd "[i % 5];
    strcpy(big + at + n, "\"}]");
    write_text(tpath("big.json"), big);
    free(big);
    char a[2000];
    time_t t0 = time(NULL);
    snprintf(a, sizeof a, "train --model %s --tokenizer %s --data %s --out %s", fx.model, fx.tok, tpath("big.json"),
             tpath("r1"));
    expect_fail_line(1, a, "example 0 holds 307", "256 KiB");
    CHECK(time(NULL) - t0 < 20, "refused in %ld s", (long)(time(NULL) - t0));
}

/* The names and contents of every file of dir, as one string ("name size hash\n" sorted). */
static char *listing(const char *dir) {
    char cmd[1200], out[600];
    snprintf(out, sizeof out, "%s.listing", dir);
    snprintf(cmd, sizeof cmd, "cd %s && for f in $(ls -A | sort); do [ -f \"$f\" ] && echo \"$f $(wc -c < \"$f\") "
                              "$(cksum < \"$f\")\"; done > %s 2>/dev/null", dir, out);
    test_sh("%s", cmd);
    return test_read_file(out, NULL);
}

static int count_metrics(const char *dir, int *last_step, int *bad) {
    char p[600];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    char *t = test_read_file(p, NULL);
    int n = 0;
    *bad = 0;
    *last_step = 0;
    for (char *line = t ? strtok(t, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        cJSON *s = cJSON_GetObjectItem(o, "step");
        if (!o || !cJSON_IsNumber(s) || strstr(line, "nan") || strstr(line, "inf")) (*bad)++;
        else if ((int)s->valuedouble != *last_step + 1) (*bad)++;
        if (cJSON_IsNumber(s)) *last_step = (int)s->valuedouble;
        cJSON_Delete(o);
        n++;
    }
    free(t);
    return n;
}

static int ckpt_ok(const char *dir, int step) {
    char p[700], err[512];
    ckpt_path(dir, step, p, sizeof p);
    train_ckpt c;
    if (ckpt_load(p, &c, err, sizeof err)) return 0;
    int ok = c.step == step;
    ckpt_free(&c);
    return ok;
}

static void test_reused_out_loses_nothing(void) {
    const char *run = tpath("reuse");
    int st = test_sh("%s train " COMMON " --out %s --max-steps 3 --save-every 1 --keep 2 > %s.log 2>&1", bin, FX, run, run);
    CHECK(st == 0, "first run: exit %d", st);
    write_text(tpath("reuse/train.log"), "a log the user keeps in the run directory\n");
    char *before = listing(run);
    printf("  before:\n%s", before ? before : "");
    char a[2000];
    snprintf(a, sizeof a, "train " COMMON " --out %s --max-steps 1 --seed 7", FX, run);
    expect_fail_line(1, a, "holds another run", "--overwrite");
    char *after = listing(run);
    CHECK(before && after && !strcmp(before, after), "the refused run changed the directory:\n%s", after ? after : "");
    int last, bad, n = count_metrics(run, &last, &bad);
    CHECK(n == 3 && last == 3 && !bad, "metrics: %d lines, last step %d, %d bad", n, last, bad);
    CHECK(ckpt_ok(run, 3) && ckpt_ok(run, 2), "checkpoints 2 and 3 intact");
    /* --resume DIR continues it (from its newest checkpoint) */
    st = test_sh("%s train --resume %s --max-steps 4 > %s.log2 2>&1", bin, run, run);
    n = count_metrics(run, &last, &bad);
    CHECK(st == 0 && n == 4 && last == 4 && !bad && ckpt_ok(run, 4), "resume: exit %d, %d metrics lines", st, n);
    /* --overwrite replaces its run files, and leaves the user's log */
    st = test_sh("%s train " COMMON " --out %s --max-steps 1 --seed 7 --overwrite > %s.log3 2>&1", bin, FX, run, run);
    n = count_metrics(run, &last, &bad);
    char p[700];
    ckpt_path(run, 4, p, sizeof p);
    CHECK(st == 0 && n == 1 && ckpt_ok(run, 1) && access(p, F_OK) != 0, "--overwrite: exit %d, %d lines", st, n);
    CHECK(access(tpath("reuse/train.log"), F_OK) == 0, "--overwrite keeps files that are not run files");
    free(before);
    free(after);
}

static void test_two_writers_lose_nothing(void) {
    const char *run = tpath("two");
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "exec %s train " COMMON " --out %s --epochs 400 --save-every 100000 --log-every 0 > %s.log 2>&1",
             bin, FX, run, run);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    char metrics[700];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run);
    for (int i = 0; i < 600; i++) { /* until the first run has written a few steps */
        struct stat sb;
        if (stat(metrics, &sb) == 0 && sb.st_size > 400) break;
        usleep(100000);
    }
    char a[2000], pidtxt[32];
    snprintf(a, sizeof a, "train " COMMON " --out %s --max-steps 2", FX, run);
    snprintf(pidtxt, sizeof pidtxt, "pid %d", (int)pid);
    expect_fail_line(1, a, "in use by another training run", pidtxt);
    snprintf(a, sizeof a, "train " COMMON " --out %s --max-steps 2 --overwrite", FX, run);
    expect_fail_line(1, a, "in use by another training run", NULL); /* --overwrite does not take a lock */
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130, "the first run ends by SIGINT with 130 (status %d)", status);
    int last, bad, n = count_metrics(run, &last, &bad);
    CHECK(n > 0 && n == last && !bad, "first run's metrics: %d lines, last step %d, %d bad", n, last, bad);
    CHECK(ckpt_ok(run, last), "its checkpoint at step %d", last);
    char *files = listing(run);
    printf("  after:\n%s", files ? files : "");
    char lock[700];
    snprintf(lock, sizeof lock, "%s/llama-adapter.lock", run);
    CHECK(access(lock, F_OK) != 0, "the lock is removed at exit");
    free(files);
}

static void test_stale_lock_is_taken_over(void) {
    const char *run = tpath("stale");
    mkdir(run, 0755);
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char lock[700], text[64];
    snprintf(lock, sizeof lock, "%s/llama-adapter.lock", run);
    snprintf(text, sizeof text, "pid %d\n", (int)dead);
    write_text(lock, text);
    char *out = NULL;
    char a[2000];
    snprintf(a, sizeof a, "train " COMMON " --out %s --max-steps 1", FX, run);
    int st = test_run_bin(fx.dir, a, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "taking it over"), "stale lock: exit %d", st);
    CHECK(access(lock, F_OK) != 0 && ckpt_ok(run, 1), "lock released, checkpoint written");
    free(out);
}

static void test_resume_from_another_directory_and_other_data(void) {
    char work[600];
    snprintf(work, sizeof work, "%s/cwd", fx.dir);
    mkdir(work, 0755);
    /* relative paths, from inside `work` */
    int st = test_sh("cd %s && %s train --model ../model --tokenizer ../tok.model --data ../data.json --batch-size 4 "
                     "--max-seq-len 256 --adapter-len 2 --adapter-layer 2 --out run --max-steps 2 --save-every 1 > ../cwd.log 2>&1",
                     work, bin);
    CHECK(st == 0, "relative run: exit %d", st);
    /* resumed from the root directory: the stored paths are absolute, --out is the checkpoint's folder */
    st = test_sh("cd / && %s train --resume %s/run --max-steps 3 > %s/cwd2.log 2>&1", bin, work, fx.dir);
    char run[700];
    snprintf(run, sizeof run, "%s/run", work);
    int last, bad, n = count_metrics(run, &last, &bad);
    CHECK(st == 0 && n == 3 && last == 3 && !bad && ckpt_ok(run, 3), "resume from /: exit %d, %d lines", st, n);
    /* the same run on other data is refused */
    robust_write_data(tpath("other.json"), 24);
    char a[2000];
    snprintf(a, sizeof a, "train --resume %s --data %s --max-steps 4", run, tpath("other.json"));
    expect_fail_line(1, a, "trained on other data", NULL);
}

/* A copy of the fixture model whose embedding rows of the pieces of "Ω" (after the first) hold
 * +-v: finite weights that overflow once an example with Ω comes. */
static int model_with_huge_rows(const char *dir, float v) {
    char err[512];
    model_weights w;
    if (model_load(fx.model, &w, err, sizeof err) || model_to_f32(&w, err, sizeof err)) return -1;
    tok *t = tok_load(fx.tok, err, sizeof err);
    int *ids = NULL, n = 0;
    if (!t || tok_encode(t, "Ω", &ids, &n, err, sizeof err)) return -1;
    for (int i = 1; i < n; i++) {
        float *row = (float *)w.tok_emb.data + (size_t)ids[i] * w.cfg.dim;
        for (int k = 0; k < w.cfg.dim; k++) row[k] = k % 2 ? -v : v;
    }
    free(ids);
    tok_free(t);
    int rc = model_save_hf(dir, &w, AG_F32, 0, err, sizeof err);
    model_free(&w);
    return rc;
}

static void test_nonfinite_loss_stops_and_keeps_the_good_checkpoints(void) {
    const char *model = tpath("model_huge"), *data = tpath("omega.json"), *run = tpath("nan");
    CHECK(model_with_huge_rows(model, 1e30f) == 0, "model with huge rows");
    FILE *f = fopen(data, "w");
    fprintf(f, "[\n");
    for (int i = 0; i < 16; i++) { /* examples 8.. (steps 3..) carry Ω */
        const char *w = i < 8 ? ROBUST_WORDS[i] : "Ω";
        fprintf(f, "%s{\"instruction\": \"Repeat the word twice.\", \"input\": \"%s\", \"output\": \"%s %s\"}\n",
                i ? "," : "", w, w, w);
    }
    fprintf(f, "]\n");
    fclose(f);
    char a[2000];
    snprintf(a, sizeof a, "train --model %s --tokenizer %s --data %s --batch-size 4 --max-seq-len 256 --adapter-len 2 "
             "--adapter-layer 2 --no-shuffle --save-every 1 --epochs 1 --warmup-epochs 0 --lr 0.01 --out %s",
             model, fx.tok, data, run);
    expect_fail_line(1, a, "step 3: the ", "last good checkpoint is step 2");
    int last, bad, n = count_metrics(run, &last, &bad);
    CHECK(n == 2 && last == 2 && !bad, "metrics: %d valid lines up to step %d (%d bad), no nan", n, last, bad);
    CHECK(ckpt_ok(run, 2), "checkpoint 2 kept");
    char p[700];
    ckpt_path(run, 3, p, sizeof p);
    CHECK(access(p, F_OK) != 0, "no checkpoint of the bad step");
    /* weights holding a NaN never load */
    model_weights w;
    char err[512];
    CHECK(model_load(fx.model, &w, err, sizeof err) == 0 && model_to_f32(&w, err, sizeof err) == 0, "%s", err);
    ((float *)w.layers[0].wv.data)[3] = NAN;
    CHECK(model_save_hf(tpath("model_nan"), &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    model_free(&w);
    snprintf(a, sizeof a, "train --model %s --tokenizer %s --data %s --out %s", tpath("model_nan"), fx.tok, fx.data,
             tpath("r2"));
    expect_fail_line(1, a, "layer 0 wv holds 1 non-finite", NULL);
    snprintf(a, sizeof a, "eval --model %s --tokenizer %s --data %s", tpath("model_nan"), fx.tok, fx.data);
    expect_fail_line(1, a, "non-finite", NULL);
}

/* Runs `sh -c "PREFIX; BIN train ... --out DIR"`; the run writes into dir until the disk (a
 * tmpfs of 128 KB) or the file size limit stops it. */
static void test_full_disk_is_one_line(void) {
    char a[3000], *err = NULL;
    /* a file-size limit (EFBIG): works everywhere */
    const char *run = tpath("fsize");
    int st = test_sh("trap '' XFSZ; ulimit -f 10; %s train " COMMON " --out %s --save-every 1 --keep 0 --epochs 3 "
                     "> %s.out 2> %s.err", bin, FX, run, run, run);
    snprintf(a, sizeof a, "%s.err", run);
    err = test_read_file(a, NULL);
    CHECK(st == 1 && test_count_lines(err) == 1 && err && strstr(err, "File too large"), "file size limit: exit %d, '%s'",
          st, err ? err : "");
    if (err) printf("  e.g. %s", err);
    free(err);
    /* a full disk (ENOSPC), in a private mount namespace when the system allows one */
    if (test_sh("unshare -rm true > /dev/null 2>&1") != 0) SKIP("no user/mount namespace (unshare -rm) for a small tmpfs");
    const char *mnt = tpath("full");
    mkdir(mnt, 0755);
    st = test_sh("unshare -rm sh -c 'mount -t tmpfs -o size=128k tmpfs %s && head -c 108000 /dev/zero > %s/filler && "
                 "%s train " COMMON " --out %s/run --save-every 1 --keep 0 --epochs 3 > %s.out 2> %s.err; "
                 "echo $? > %s.rc; ls %s/run > %s.ls'", mnt, mnt, bin, FX, mnt, mnt, mnt, mnt, mnt, mnt);
    snprintf(a, sizeof a, "%s.err", mnt);
    err = test_read_file(a, NULL);
    snprintf(a, sizeof a, "%s.rc", mnt);
    char *rc = test_read_file(a, NULL);
    snprintf(a, sizeof a, "%s.ls", mnt);
    char *ls = test_read_file(a, NULL);
    CHECK(rc && atoi(rc) == 1 && test_count_lines(err) == 1 && err && strstr(err, "No space left on device"),
          "full disk: exit %s, '%s'", rc ? rc : "?", err ? err : "");
    CHECK(ls && !strstr(ls, ".tmp"), "no temporary left behind: %s", ls ? ls : "");
    if (err) printf("  e.g. %s", err);
    free(err);
    free(rc);
    free(ls);
}

static void test_defaults_that_used_to_fail(void) {
    /* --epochs 1 alone: the default warm-up of 2 epochs is clamped to the run, and said so */
    char a[2000], *out = NULL;
    snprintf(a, sizeof a, "train " COMMON " --epochs 1 --max-steps 1 --out %s", FX, tpath("e1"));
    int st = test_run_bin(fx.dir, a, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "warming up over the whole run"), "--epochs 1: exit %d", st);
    CHECK(out && strstr(out, "max_position_embeddings 128"), "the warning for --max-seq-len 256 > 128 positions");
    free(out);
    /* every example loses its answer to truncation */
    snprintf(a, sizeof a, "train " COMMON " --max-seq-len 16 --out %s", FX, tpath("e2"));
    expect_fail_line(1, a, "none of the 32 training examples keeps an answer token", "--max-seq-len 16");
    /* --version */
    st = test_run_bin(fx.dir, "--version", &out, NULL);
    CHECK(st == 0 && out && !strncmp(out, "llama-adapter ", 14) && strstr(out, "blas:"), "--version: %s", out ? out : "");
    free(out);
    /* --tokenizer defaults to MODEL_DIR/tokenizer.model for train, eval and generate */
    test_sh("cp -r %s %s && cp %s %s/tokenizer.model", fx.model, tpath("model_tok"), fx.tok, tpath("model_tok"));
    snprintf(a, sizeof a, "train --model %s --data %s --batch-size 4 --max-seq-len 256 --adapter-len 2 --adapter-layer 2 "
             "--max-steps 1 --out %s", tpath("model_tok"), fx.data, tpath("e3"));
    st = test_run_bin(fx.dir, a, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "--tokenizer defaults to"), "train without --tokenizer: exit %d", st);
    free(out);
    snprintf(a, sizeof a, "eval --model %s --data %s --max-seq-len 256", tpath("model_tok"), fx.data);
    st = test_run_bin(fx.dir, a, &out, NULL);
    CHECK(st == 0 && out && strstr(out, "\"loss\""), "eval without --tokenizer: exit %d", st);
    free(out);
}

/* The streamed text of a sampled generation is the decoding of its ids, byte for byte. */
static void test_generate_streams_the_decoded_text(void) {
    char a[2000], *text = NULL, *ids = NULL;
    for (int seed = 1; seed <= 3; seed++) {
        snprintf(a, sizeof a, "generate --model %s --tokenizer %s --prompt 'The river' --temperature 1.5 --top-p 1 "
                 "--seed %d --max-new-tokens 100", fx.model, fx.tok, seed);
        int st = test_run_bin(fx.dir, a, &text, NULL);
        snprintf(a + strlen(a), sizeof a - strlen(a), " --print-ids");
        int st2 = test_run_bin(fx.dir, a, &ids, NULL);
        CHECK(st == 0 && st2 == 0 && text && ids, "generate: exit %d / %d", st, st2);
        if (!text || !ids) break;
        int v[200], n = 0;
        for (char *p = strtok(ids, " \n"); p && n < 200; p = strtok(NULL, " \n")) v[n++] = atoi(p);
        char err[256];
        tok *t = tok_load(fx.tok, err, sizeof err);
        int m = n > 0 && v[n - 1] == tok_eos(t) ? n - 1 : n;
        char *want = tok_decode(t, v, m);
        size_t lt = strlen(text);
        if (lt && text[lt - 1] == '\n') text[--lt] = 0;
        CHECK(want && !strcmp(want, text), "seed %d: streamed '%s' vs decoded '%s'", seed, text, want ? want : "");
        free(want);
        tok_free(t);
        free(text);
        free(ids);
        text = ids = NULL;
    }
}

/* The environment of a `train` blocked reading its --data from a FIFO, as seen in
 * /proc/PID/environ once it holds the FIFO open (the process re-executes itself before it reads
 * anything). This side holds the FIFO open read-write, so the trainer's open never blocks and
 * its read ends (empty data: it fails) when this side closes; a trainer that is still running
 * after 60 s is killed. */
static char *environ_of_blocked_train(const char *env_prefix, char *buf, size_t n) {
    const char *fifo = tpath("data.fifo");
    buf[0] = 0;
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0) return buf;
    int hold = open(fifo, O_RDWR | O_CLOEXEC);
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "exec env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY -u LLAMA_ADAPTER_SPINCOUNT %s %s train "
             "--model %s --tokenizer %s --data %s --out %s > /dev/null 2>&1", env_prefix, bin, fx.model, fx.tok, fifo,
             tpath("fifo_run"));
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) { /* until one of its descriptors is the FIFO (60 s at most) */
        char fd_dir[64], cmdline[600];
        snprintf(fd_dir, sizeof fd_dir, "/proc/%d/fd", (int)pid);
        snprintf(cmdline, sizeof cmdline, "ls -l %s 2>/dev/null | grep -q 'data.fifo'", fd_dir);
        if (test_sh("%s", cmdline) == 0) {
            char p[64];
            snprintf(p, sizeof p, "/proc/%d/environ", (int)pid);
            FILE *f = fopen(p, "r");
            size_t m = f ? fread(buf, 1, n - 1, f) : 0;
            if (f) fclose(f);
            for (size_t k = 0; k < m; k++) buf[k] = buf[k] ? buf[k] : '\n';
            buf[m] = 0;
            break;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) { /* it ended before reading its data */
            pid = -1;
            break;
        }
        usleep(100000);
    }
    if (hold >= 0) close(hold);
    for (int i = 0; pid > 0 && i < 600; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) pid = -1;
        else usleep(100000);
    }
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        CHECK(0, "the trainer reading the FIFO did not end");
    }
    return buf;
}

static void test_compute_commands_get_a_short_spin(void) {
    static char env[65536];
    environ_of_blocked_train("", env, sizeof env);
    const char *g = strstr(env, "GOMP_SPINCOUNT=");
    printf("  train's environment holds %.*s\n", g ? (int)strcspn(g, "\n") : 4, g ? g : "none");
    CHECK(strstr(env, "\nGOMP_SPINCOUNT=10000\n") || !strncmp(env, "GOMP_SPINCOUNT=10000\n", 21),
          "train runs with GOMP_SPINCOUNT=10000 when no policy is set");
    environ_of_blocked_train("OMP_WAIT_POLICY=active", env, sizeof env);
    CHECK(strstr(env, "OMP_WAIT_POLICY=active") && !strstr(env, "GOMP_SPINCOUNT"), "a policy the user set is kept");
}

/* Runs the tests whose name holds argv[1] (all without it). */
#define RUN_IF(fn) \
    if (!only || strstr(#fn, only)) RUN(fn)

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--fixture")) { /* scripts/fuzz.py: the fixture alone, in DIR */
        snprintf(fx.dir, sizeof fx.dir, "%s", argv[2]);
        mkdir(fx.dir, 0755);
        return robust_fixture_make(&fx) ? 1 : 0;
    }
    const char *only = argc > 1 ? argv[1] : NULL;
    snprintf(fx.dir, sizeof fx.dir, "/tmp/test_robust_run_XXXXXX");
    if (!mkdtemp(fx.dir) || robust_fixture_make(&fx)) {
        printf("fixture failed\n");
        return 1;
    }
    static char abs_bin[4096];
    bin = test_bin();
    if (!bin || !realpath(bin, abs_bin)) return TEST_MAIN_END("test_robust_run");
    bin = abs_bin; /* some runs start in other directories */
    RUN_IF(test_values_out_of_range_are_refused);
    RUN_IF(test_one_example_is_bounded);
    RUN_IF(test_reused_out_loses_nothing);
    RUN_IF(test_two_writers_lose_nothing);
    RUN_IF(test_stale_lock_is_taken_over);
    RUN_IF(test_resume_from_another_directory_and_other_data);
    RUN_IF(test_nonfinite_loss_stops_and_keeps_the_good_checkpoints);
    RUN_IF(test_full_disk_is_one_line);
    RUN_IF(test_defaults_that_used_to_fail);
    RUN_IF(test_generate_streams_the_decoded_text);
    RUN_IF(test_compute_commands_get_a_short_spin);
    test_rmtree(fx.dir);
    return TEST_MAIN_END("test_robust_run");
}
