/* Answer sheets (see answers.h): prompts encoded once, then one column at a time (base model,
 * then each adapter: only one adapter's engines are alive at a time), the answers decoded, the
 * sheet written as JSON lines and Markdown. */
#include "trainer/answers.h"

#include <cJSON.h>
#include <ctype.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/atomic.h"
#include "checkpoints/model_file.h"
#include "data/tok.h"
#include "trainer/generate.h"
#include "trainer/params.h"
#include "trainer/precision.h"

/* ---- scoring ------------------------------------------------------------------------------- */

int score_rule_parse(const char *s, score_rule *r) {
    if (s && !strcmp(s, "exact")) *r = SCORE_EXACT;
    else if (s && !strcmp(s, "contains")) *r = SCORE_CONTAINS;
    else return -1;
    return 0;
}

const char *score_rule_name(score_rule r) {
    return r == SCORE_EXACT ? "exact" : r == SCORE_CONTAINS ? "contains" : "none";
}

char *score_normalize(const char *s) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    if (len > 0 && s[len - 1] == '.') len--;
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    char *o = malloc(len + 1);
    if (!o) return NULL;
    for (size_t i = 0; i < len; i++) o[i] = (char)tolower((unsigned char)s[i]);
    o[len] = 0;
    return o;
}

/* b occurs in a with no letter or digit glued to either end (when that end of b is one). */
static int contains_phrase(const char *a, const char *b) {
    size_t lb = strlen(b);
    for (const char *p = strstr(a, b); p; p = strstr(p + 1, b)) {
        int left = p == a || !isalnum((unsigned char)p[-1]) || !isalnum((unsigned char)b[0]);
        int right = !isalnum((unsigned char)p[lb]) || !isalnum((unsigned char)b[lb - 1]);
        if (left && right) return 1;
    }
    return 0;
}

int score_match(score_rule r, const char *got, const char *want) {
    char *a = score_normalize(got ? got : ""), *b = score_normalize(want ? want : "");
    int hit = 0;
    if (a && b && b[0]) hit = r == SCORE_EXACT ? !strcmp(a, b) : r == SCORE_CONTAINS ? contains_phrase(a, b) : 0;
    free(a);
    free(b);
    return hit;
}

/* ---- answering ----------------------------------------------------------------------------- */

void answer_sheet_free(answer_sheet *s) {
    for (int c = 0; c < s->n_cols && s->col_name; c++) free(s->col_name[c]);
    for (int i = 0; s->text && i < s->n_cols * s->n; i++) free(s->text[i]);
    free(s->col_name);
    free(s->text);
    free(s->hit);
    free(s->correct);
    memset(s, 0, sizeof *s);
}

typedef struct progress {
    FILE *f;
    int tty, every, total, done;
    double t0, last_draw;
} progress;

static void fmt_secs(char *b, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) snprintf(b, n, "?");
    else if (s >= 3600) snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(b, n, "%.0fs", s);
}

/* One more answer done in column `col`; draws the bar (terminal) or a line every `every`. */
static void progress_step(progress *p, const char *col) {
    p->done++;
    if (!p->f) return;
    double now = omp_get_wtime(), el = now - p->t0;
    int last = p->done == p->total;
    char eta[32], elapsed[32];
    fmt_secs(eta, sizeof eta, p->done ? el / p->done * (p->total - p->done) : -1);
    fmt_secs(elapsed, sizeof elapsed, el);
    if (p->tty) {
        if (!last && now - p->last_draw < 0.1) return;
        p->last_draw = now;
        int w = 30, fill = (int)((double)w * p->done / p->total);
        fprintf(p->f, "\r\033[K[");
        for (int i = 0; i < w; i++) fputc(i < fill ? '#' : '.', p->f);
        fprintf(p->f, "] %d/%d answers | %s | %s elapsed | ETA %s", p->done, p->total, col, elapsed, eta);
        if (last) fputc('\n', p->f);
        fflush(p->f);
    } else if ((p->every > 0 && p->done % p->every == 0) || last) {
        fprintf(p->f, "answers: %d/%d (%s) | %s elapsed | ETA %s\n", p->done, p->total, col, elapsed, eta);
        fflush(p->f);
    }
}

/* The generated ids as text: the final eos dropped, ids the tokenizer does not know skipped. */
static char *decode_answer(const tok *tk, const int *ids, int n, int eos) {
    if (n > 0 && ids[n - 1] == eos) n--;
    int V = tok_vocab_size(tk), m = 0;
    int *keep = malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!keep) return NULL;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < V) keep[m++] = ids[i];
    char *s = tok_decode(tk, keep, m);
    free(keep);
    return s;
}

/* How many examples to answer at once: explicit, or (auto) every thread when one decode step is
 * small (weights up to 64 MB: thread start-up then costs more than the step's arithmetic), else
 * one at a time with every thread inside the kernels. */
static int pick_threads(const answer_opts *o, const model_weights *w) {
    int T = omp_get_max_threads();
    if (o->parallel > 0) return o->parallel < o->n ? o->parallel : (o->n > 0 ? o->n : 1);
    double bytes = (double)model_param_count(&w->cfg) * (w->dtype == AG_F32 ? 4 : 2);
    if (T > 1 && bytes <= 64e6 && o->n >= 2 * T) return T;
    return 1;
}

int answers_run(const answer_opts *o, answer_sheet *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    char e2[1024];
    int rc = -1;
    tok *tk = NULL;
    model_weights w;
    memset(&w, 0, sizeof w);
    int **pids = NULL, *plen = NULL, **gen = NULL, *glen = NULL;
    int n = o->n;
    double t_start = omp_get_wtime();
    if (model_load(o->model, &w, err, errlen)) return -1;
    if (!(tk = tok_load(o->tokenizer, err, errlen))) goto done;
    const llama_config *c = &w.cfg;
    int bos = tok_bos(tk), eos = tok_eos(tk);
    s->n = n;
    s->n_cols = (o->base ? 1 : 0) + o->n_adapters;
    s->col_name = calloc((size_t)s->n_cols, sizeof(char *));
    s->text = calloc((size_t)s->n_cols * n + 1, sizeof(char *));
    pids = calloc((size_t)n + 1, sizeof(int *));
    plen = calloc((size_t)n + 1, sizeof(int));
    gen = calloc((size_t)n + 1, sizeof(int *));
    glen = calloc((size_t)n + 1, sizeof(int));
    if (o->score) {
        s->hit = calloc((size_t)s->n_cols * n + 1, sizeof(int));
        s->correct = calloc((size_t)s->n_cols + 1, sizeof(int));
    }
    if (!s->col_name || !s->text || !pids || !plen || !gen || !glen || (o->score && (!s->hit || !s->correct))) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int k = 0; k < s->n_cols; k++)
        if (!(s->col_name[k] = strdup(o->base && k == 0 ? "base" : o->adapters[k - (o->base ? 1 : 0)]))) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    /* prompts -> ids, checked against the model */
    int max_prompt = 1;
    for (int i = 0; i < n; i++) {
        char *text = alpaca_prompt(o->data->ex[i].instruction, o->data->ex[i].input);
        int *ids = NULL, m = 0;
        if (!text || tok_encode(tk, text, &ids, &m, e2, sizeof e2)) {
            free(text);
            snprintf(err, errlen, "%s: example %d: %s", o->data_name, i, text ? e2 : "out of memory");
            goto done;
        }
        free(text);
        pids[i] = malloc((size_t)(m + 1) * sizeof(int));
        if (!pids[i]) {
            free(ids);
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        pids[i][0] = bos;
        if (m) memcpy(pids[i] + 1, ids, (size_t)m * sizeof(int));
        free(ids);
        plen[i] = m + 1;
        if (c->max_seq_len > 0 && plen[i] >= c->max_seq_len) {
            snprintf(err, errlen, "%s: example %d: the prompt has %d tokens: the model's max_seq_len %d leaves no room to answer",
                     o->data_name, i, plen[i], c->max_seq_len);
            goto done;
        }
        if (plen[i] > max_prompt) max_prompt = plen[i];
    }
    long long want = (long long)max_prompt + o->max_new;
    int max_len = (int)(want > 1 << 30 ? 1 << 30 : want);
    if (c->max_seq_len > 0 && max_len > c->max_seq_len) max_len = c->max_seq_len;
    int T = pick_threads(o, &w);
    s->threads = T;
    progress pg = {o->progress, o->progress ? isatty(fileno(o->progress)) : 0, o->progress_every, n * s->n_cols, 0,
                   omp_get_wtime(), 0};

    for (int col = 0; col < s->n_cols; col++) {
        const char *adapter = o->base && col == 0 ? NULL : s->col_name[col];
        trainable ad;
        int have_ad = 0;
        if (adapter) {
            char resolved[4096];
            adapter_data a;
            if (ckpt_resolve(adapter, resolved, sizeof resolved, e2, sizeof e2) ||
                adapter_import(resolved, o->adapter_len, c->n_layers, c->n_heads, c->dim, &a, e2, sizeof e2)) {
                snprintf(err, errlen, "%s", e2);
                goto done;
            }
            int r = trainable_adapter_from(&ad, c, &a, e2, sizeof e2);
            adapter_data_free(&a);
            if (r) {
                snprintf(err, errlen, "%s: %s", resolved, e2);
                goto done;
            }
            have_ad = 1;
        }
        /* one engine, sampler and output buffer per thread */
        gen_engine **eng = calloc((size_t)T, sizeof *eng);
        gen_sampler *smp = calloc((size_t)T, sizeof *smp);
        int ok = eng && smp;
        for (int t = 0; ok && t < T; t++) {
            eng[t] = gen_engine_new(&w, have_ad ? &ad : NULL, max_len, e2, sizeof e2);
            if (!eng[t]) {
                snprintf(err, errlen, "%s", e2);
                ok = 0;
                break;
            }
            gen_engine_set_bf16(eng[t], o->bf16);
            if (gen_sampler_init(&smp[t], c->vocab_size, o->temperature, o->top_p, (uint64_t)o->seed)) {
                snprintf(err, errlen, "out of memory");
                ok = 0;
            }
        }
        if (!eng || !smp) snprintf(err, errlen, "out of memory");
        int failed = !ok;
        if (ok) {
            const char *label = s->col_name[col];
#pragma omp parallel for schedule(dynamic, 1) num_threads(T) if (T > 1)
            for (int i = 0; i < n; i++) {
                int t = omp_get_thread_num();
                if (failed || (o->stop && *o->stop)) continue;
                int *out = malloc((size_t)(o->max_new > 0 ? o->max_new : 1) * sizeof(int));
                char lerr[1024] = "";
                int g = -1;
                if (out) {
                    ag_rng_seed(&smp[t].rng, (uint64_t)(o->seed + i));
                    g = gen_generate(eng[t], pids[i], plen[i], o->max_new, eos, &smp[t], out, NULL, NULL, NULL, lerr,
                                     sizeof lerr);
                } else {
                    snprintf(lerr, sizeof lerr, "out of memory");
                }
#pragma omp critical(answers_progress)
                {
                    if (g < 0) {
                        if (!failed) snprintf(err, errlen, "%s: example %d (%s): %s", o->data_name, i, label, lerr);
                        failed = 1;
                        free(out);
                    } else {
                        gen[i] = out;
                        glen[i] = g;
                        progress_step(&pg, label);
                    }
                }
            }
        }
        for (int t = 0; eng && t < T; t++) gen_engine_free(eng[t]);
        for (int t = 0; smp && t < T; t++) gen_sampler_free(&smp[t]);
        free(eng);
        free(smp);
        if (have_ad) trainable_free(&ad);
        if (failed) goto done;
        /* decode (one thread: the tokenizer is not shared across threads) and score */
        for (int i = 0; i < n; i++) {
            if (!gen[i]) { /* stopped before this one */
                s->stopped = 1;
                continue;
            }
            char *txt = decode_answer(tk, gen[i], glen[i], eos);
            free(gen[i]);
            gen[i] = NULL;
            if (!txt) {
                snprintf(err, errlen, "%s: example %d (%s): cannot decode the generated ids", o->data_name, i,
                         s->col_name[col]);
                goto done;
            }
            s->text[(size_t)col * n + i] = txt;
            if (o->score) {
                int h = score_match(o->score, txt, o->data->ex[i].output);
                s->hit[(size_t)col * n + i] = h;
                s->correct[col] += h;
            }
        }
        if (s->stopped) break;
    }
    for (size_t i = 0; i < (size_t)s->n_cols * n; i++) /* columns never reached when stopped */
        if (!s->text[i] && !(s->text[i] = strdup(""))) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    rc = 0;
done:
    for (int i = 0; i < n; i++) {
        if (pids) free(pids[i]);
        if (gen) free(gen[i]);
    }
    free(pids);
    free(plen);
    free(gen);
    free(glen);
    tok_free(tk);
    model_free(&w);
    s->seconds = omp_get_wtime() - t_start;
    if (rc) answer_sheet_free(s);
    return rc;
}

/* ---- writing ------------------------------------------------------------------------------- */

void answers_md_path(const char *jsonl_path, char *out, size_t n) {
    size_t l = strlen(jsonl_path);
    if (l > 6 && !strcmp(jsonl_path + l - 6, ".jsonl")) snprintf(out, n, "%.*s.md", (int)(l - 6), jsonl_path);
    else snprintf(out, n, "%s.md", jsonl_path);
}

/* A Markdown table cell: '|' escaped, HTML-special characters as entities, line breaks as <br>,
 * surrounding white space trimmed; an empty text is shown as such. */
static void md_cell(FILE *f, const char *s) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    if (!len) {
        fputs("*(empty)*", f);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        switch (ch) {
        case '|': fputs("\\|", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '\n': fputs("<br>", f); break;
        case '\r': break;
        default:
            if ((unsigned char)ch < 0x20) fprintf(f, "\\x%02x", (unsigned char)ch); /* control bytes shown, not sent */
            else fputc(ch, f);
        }
    }
}

static void md_line(FILE *f, const char *s) { /* a heading: one line, Markdown-escaped */
    for (; *s; s++) {
        if (*s == '\n' || *s == '\r') fputc(' ', f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

static int write_jsonl(const char *path, const answer_opts *o, const answer_sheet *s, char *err, size_t errlen) {
    atomic_file af;
    if (atomic_open(&af, path, err, errlen)) return -1;
    for (int i = 0; i < s->n; i++) {
        const alpaca_example *ex = &o->data->ex[i];
        cJSON *obj = cJSON_CreateObject(), *ads = NULL, *sc = NULL;
        cJSON_AddNumberToObject(obj, "index", i);
        cJSON_AddStringToObject(obj, "instruction", ex->instruction);
        cJSON_AddStringToObject(obj, "input", ex->input ? ex->input : "");
        cJSON_AddStringToObject(obj, "reference", ex->output);
        for (int c = 0; c < s->n_cols; c++) {
            const char *txt = s->text[(size_t)c * s->n + i];
            if (o->base && c == 0) cJSON_AddStringToObject(obj, "base", txt);
            else {
                if (!ads) ads = cJSON_AddObjectToObject(obj, "adapters");
                cJSON_AddStringToObject(ads, s->col_name[c], txt);
            }
        }
        if (!ads) ads = cJSON_AddObjectToObject(obj, "adapters"); /* always present, {} without adapters */
        if (s->hit) {
            sc = cJSON_AddObjectToObject(obj, "correct");
            for (int c = 0; c < s->n_cols; c++) cJSON_AddBoolToObject(sc, s->col_name[c], s->hit[(size_t)c * s->n + i]);
        }
        char *line = cJSON_PrintUnformatted(obj);
        cJSON_Delete(obj);
        if (!line) {
            atomic_abort(&af);
            snprintf(err, errlen, "%s: out of memory", path);
            return -1;
        }
        fputs(line, af.f);
        fputc('\n', af.f);
        free(line);
    }
    return atomic_commit(&af, err, errlen);
}

/* The short name of column c in the per-instruction tables: the last path component of the
 * adapter ("runs/K10_L30/" -> "K10_L30") when no other column has the same, else the whole string. */
static const char *short_name(const answer_sheet *s, int c, char *buf, size_t n) {
    const char *name = s->col_name[c];
    size_t len = strlen(name);
    while (len > 1 && name[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && name[start - 1] != '/') start--;
    snprintf(buf, n, "%.*s", (int)(len - start), name + start);
    for (int k = 0; k < s->n_cols; k++) {
        if (k == c) continue;
        char other[256];
        const char *on = s->col_name[k];
        size_t ol = strlen(on), os;
        while (ol > 1 && on[ol - 1] == '/') ol--;
        for (os = ol; os > 0 && on[os - 1] != '/'; os--) {}
        snprintf(other, sizeof other, "%.*s", (int)(ol - os), on + os);
        if (!strcmp(other, buf)) return name;
    }
    return buf;
}

static int write_md(const char *path, const answer_opts *o, const answer_sheet *s, char *err, size_t errlen) {
    atomic_file af;
    if (atomic_open(&af, path, err, errlen)) return -1;
    FILE *f = af.f;
    char sbuf[256];
    fprintf(f, "# Answer sheet\n\n");
    fprintf(f, "%d instructions of `%s`; model `%s`; ", s->n, o->data_name, o->model);
    if (o->temperature > 0)
        fprintf(f, "sampled (temperature %g, top-p %g, seed %lld + example index)", (double)o->temperature,
                (double)o->top_p, o->seed);
    else
        fprintf(f, "greedy");
    fprintf(f, ", at most %d new tokens per answer.%s\n\n", o->max_new,
            s->stopped ? " **Stopped early: some answers are missing.**" : "");
    fprintf(f, "| column | model |%s\n|---|---|%s\n", s->correct ? " score |" : "", s->correct ? "---|" : "");
    for (int c = 0; c < s->n_cols; c++) {
        fprintf(f, "| ");
        md_cell(f, short_name(s, c, sbuf, sizeof sbuf));
        fputs(" | ", f);
        if (o->base && c == 0) fputs("base model", f);
        else {
            fputs("base model + adapter `", f);
            md_line(f, s->col_name[c]);
            fputs("`", f);
        }
        fputs(" |", f);
        if (s->correct)
            fprintf(f, " %s match %d/%d = %.1f%% |", score_rule_name(o->score), s->correct[c], s->n,
                    s->n ? 100.0 * s->correct[c] / s->n : 0.0);
        fputc('\n', f);
    }
    for (int i = 0; i < s->n; i++) {
        const alpaca_example *ex = &o->data->ex[i];
        fprintf(f, "\n## %d. ", i + 1);
        md_line(f, ex->instruction);
        fputs("\n\n", f);
        if (ex->input && ex->input[0]) {
            fputs("Input: ", f);
            md_line(f, ex->input);
            fputs("\n\n", f);
        }
        fputs("| reference |", f);
        for (int c = 0; c < s->n_cols; c++) {
            fputc(' ', f);
            md_cell(f, short_name(s, c, sbuf, sizeof sbuf));
            fputs(" |", f);
        }
        fputs("\n|---|", f);
        for (int c = 0; c < s->n_cols; c++) fputs("---|", f);
        fputs("\n| ", f);
        md_cell(f, ex->output);
        fputs(" |", f);
        for (int c = 0; c < s->n_cols; c++) {
            fputc(' ', f);
            md_cell(f, s->text[(size_t)c * s->n + i]);
            if (s->hit) fputs(s->hit[(size_t)c * s->n + i] ? " ✓" : " ✗", f);
            fputs(" |", f);
        }
        fputc('\n', f);
    }
    return atomic_commit(&af, err, errlen);
}

int answers_write(const char *jsonl_path, const answer_opts *o, const answer_sheet *s, char *err, size_t errlen) {
    char md[4200];
    answers_md_path(jsonl_path, md, sizeof md);
    if (write_jsonl(jsonl_path, o, s, err, errlen)) return -1;
    return write_md(md, o, s, err, errlen);
}

void answers_print_scores(FILE *f, const answer_opts *o, const answer_sheet *s) {
    if (!s->correct) return;
    for (int c = 0; c < s->n_cols; c++)
        fprintf(f, "score (%s): %s %d/%d = %.1f%%\n", score_rule_name(o->score), s->col_name[c], s->correct[c], s->n,
                s->n ? 100.0 * s->correct[c] / s->n : 0.0);
}

/* ---- `generate --data` --------------------------------------------------------------------- */

static int cli_usage(const char *msg) {
    fprintf(stderr, "llama-adapter generate: %s (see llama-adapter generate --help)\n", msg);
    return 2;
}

int answers_cmd(const answers_cli *a) {
    char msg[1200];
    if (!a->out) return cli_usage("--data needs --out FILE.jsonl (the answer sheet; FILE.md is written beside it)");
    if (!a->model) return cli_usage("missing --model M");
    if (!a->tokenizer) return cli_usage("missing --tokenizer T (answers are decoded to text)");
    if (a->no_base && a->n_adapters == 0) return cli_usage("--no-base leaves no column: give at least one --adapter");
    if (!(a->temperature >= 0.0f) || a->temperature > 1e6f) return cli_usage("--temperature: expected a number >= 0");
    if (!(a->top_p > 0.0f && a->top_p <= 1.0f)) return cli_usage("--top-p: expected a number in (0, 1]");
    if (a->max_new < 0) return cli_usage("--max-new-tokens: expected an integer >= 0");
    if (a->adapter_len < 1) return cli_usage("--adapter-len: expected an integer >= 1");
    if (a->threads < 0) return cli_usage("--threads: expected an integer >= 0");
    if (a->parallel < 0) return cli_usage("--parallel: expected an integer >= 0 (0 = auto)");
    if (a->progress_every < 0) return cli_usage("--progress-every: expected an integer >= 0");
    score_rule rule = SCORE_NONE;
    if (a->score && score_rule_parse(a->score, &rule)) {
        snprintf(msg, sizeof msg, "--score '%s': expected exact or contains", a->score);
        return cli_usage(msg);
    }
    for (int i = 0; i < a->n_adapters; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(a->adapters[i], a->adapters[j])) {
                snprintf(msg, sizeof msg, "--adapter %s is given twice (each adapter is one column)", a->adapters[i]);
                return cli_usage(msg);
            }
    int bf16 = 0;
    char pdesc[200], perr[300];
    if (precision_resolve(a->precision ? a->precision : "auto", &bf16, pdesc, sizeof pdesc, perr, sizeof perr))
        return cli_usage(perr);
    if (a->threads > 0) omp_set_num_threads(a->threads);

    alpaca_set data;
    char err[4600];
    if (alpaca_load(a->data, &data, err, sizeof err)) {
        fprintf(stderr, "llama-adapter generate: %s\n", err);
        return 1;
    }
    answer_opts o = {0};
    o.model = a->model;
    o.tokenizer = a->tokenizer;
    o.data = &data;
    o.n = data.n;
    o.data_name = a->data;
    o.adapters = a->adapters;
    o.n_adapters = a->n_adapters;
    o.base = !a->no_base;
    o.temperature = a->temperature;
    o.top_p = a->top_p;
    o.seed = a->seed;
    o.max_new = a->max_new;
    o.adapter_len = a->adapter_len;
    o.bf16 = bf16;
    o.score = rule;
    o.parallel = a->parallel;
    o.progress = stderr;
    o.progress_every = a->progress_every;
    fprintf(stderr, "generate: answering %d instructions of %s with %s%s%d adapter%s -> %s\n", data.n, a->data,
            o.base ? "the base model" : "", o.base ? " and " : "", a->n_adapters, a->n_adapters == 1 ? "" : "s", a->out);
    fprintf(stderr, "generate: %s; %s; max_new_tokens %d; threads %d\n", pdesc,
            a->temperature > 0 ? "sampling" : "greedy", a->max_new, omp_get_max_threads());
    if (a->temperature > 0)
        fprintf(stderr, "generate: temperature %g, top_p %g, seed %lld (+ example index)\n", (double)a->temperature,
                (double)a->top_p, a->seed);
    answer_sheet s;
    int status = 1;
    if (answers_run(&o, &s, err, sizeof err)) {
        fprintf(stderr, "llama-adapter generate: %s\n", err);
    } else {
        if (answers_write(a->out, &o, &s, err, sizeof err)) {
            fprintf(stderr, "llama-adapter generate: %s\n", err);
        } else {
            char md[4200];
            answers_md_path(a->out, md, sizeof md);
            fprintf(stderr, "generate: %d answers x %d columns in %.1f s (%d at once) -> %s, %s\n", s.n, s.n_cols,
                    s.seconds, s.threads, a->out, md);
            answers_print_scores(stdout, &o, &s);
            status = 0;
        }
        answer_sheet_free(&s);
    }
    alpaca_free(&data);
    return status;
}
