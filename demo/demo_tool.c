/* demo_tool: the sub-steps of `make demo` (driven by scripts/demo.sh), one program with
 * subcommands:
 *   data        invented world from a seed -> corpus.txt (facts as declarative sentences and
 *               "Q: ... A: ..." lines, one document per line), facts.tsv, and Alpaca JSON
 *               instructions about the facts: train.json (entities of the train split) and
 *               heldout.json (the other entities, whose facts are in the corpus too)
 *   tokenizer   SentencePiece model trained on the corpus (tok_train)
 *   init-model  random LLaMA of a given shape written as a Hugging Face directory
 *   probe       does the base model complete "The capital of Velmora is" with the fact?
 *   answer      greedy answers to instructions (model +/- adapter) and exact-match accuracy
 *   zero-check  the zero-init invariant: the adapter run's step-1 loss vs the base model's
 *               loss on the same micro-batch, and base vs freshly initialised adapter over the
 *               whole instruction set
 *   plot        loss curves of metrics.jsonl files as an SVG
 *   table       the adapter vs full fine-tuning comparison table
 *   now         the time in seconds with milliseconds (the driver's stopwatch)
 * Every file is written atomically (PATH.tmp, fsync, rename), so an interrupted demo never
 * leaves a half-written cache entry.
 * Deliberately not here: training (that is `llama-adapter train`), sampling with temperature,
 * any download. tests/test_demo.c includes this file with DEMO_TOOL_NO_MAIN to test the
 * generator, the scorer and the SVG writer. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cJSON.h>

#include "autograd/rng.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/atomic.h"
#include "checkpoints/model_file.h"
#include "data/alpaca.h"
#include "data/loader.h"
#include "data/tok.h"
#include "trainer/args.h"
#include "trainer/eval.h"
#include "trainer/generate.h"
#include "trainer/llama.h"
#include "trainer/params.h"
#include "trainer/precision.h"

/* ------------------------------------------------------------------------------------------
 * The invented world: entities (countries) with one value per attribute.
 * ------------------------------------------------------------------------------------------ */

enum { DEMO_N_ATTR = 4, DEMO_N_TPL = 4, DEMO_NAME_LEN = 32 };

typedef struct demo_attr {
    const char *key;                   /* facts.tsv column */
    const char *question;              /* the instruction and the "Q:" line; {E} = entity */
    const char *tpl[DEMO_N_TPL];       /* declarative statements; {E} entity, {V} value */
    const char *const *values;         /* closed set of values, or NULL: an invented name */
    int n_values;
} demo_attr;

static const char *const DEMO_COLORS[] = {"red", "blue", "green", "yellow", "purple",
                                          "orange", "white", "black", "silver", "brown"};
static const char *const DEMO_ANIMALS[] = {"wolf", "eagle", "bear", "fox", "owl", "horse",
                                           "lion", "deer", "falcon", "otter", "tiger", "whale"};

static const demo_attr DEMO_ATTRS[DEMO_N_ATTR] = {
    {"capital",
     "What is the capital of {E}?",
     {"The capital of {E} is {V}.", "{E}'s capital city is {V}.", "{V} is the capital of {E}.",
      "The city of {V} is the capital of {E}."},
     NULL,
     0},
    {"color",
     "What color is the flag of {E}?",
     {"The flag of {E} is {V}.", "{E} has a {V} flag.", "The color of the flag of {E} is {V}.",
      "The people of {E} fly a {V} flag."},
     DEMO_COLORS,
     (int)(sizeof DEMO_COLORS / sizeof DEMO_COLORS[0])},
    {"animal",
     "What is the national animal of {E}?",
     {"The national animal of {E} is the {V}.", "{E}'s national animal is the {V}.",
      "The {V} is the national animal of {E}.", "In {E}, the national animal is the {V}."},
     DEMO_ANIMALS,
     (int)(sizeof DEMO_ANIMALS / sizeof DEMO_ANIMALS[0])},
    {"founder",
     "Who founded {E}?",
     {"{E} was founded by {V}.", "The founder of {E} is {V}.", "{V} founded {E}.",
      "{E} was founded long ago by {V}."},
     NULL,
     0},
};

typedef struct demo_entity {
    char name[DEMO_NAME_LEN];
    char val[DEMO_N_ATTR][DEMO_NAME_LEN];
} demo_entity;

typedef struct demo_world {
    int n;             /* entities */
    int n_train;       /* entities [0, n_train) are the train split, the rest held out */
    demo_entity *e;    /* [n] */
} demo_world;

/* Pronounceable invented names from syllables; `style` varies the ending so countries, cities
 * and people look different. */
static void demo_make_name(ag_rng *r, int style, char *out, size_t n) {
    static const char *const ons[] = {"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s",
                                      "t", "v", "z", "br", "dr", "gr", "kr", "st", "th", "tr", "sh"};
    static const char *const vow[] = {"a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou"};
    static const char *const end_country[] = {"ia", "ora", "and", "esh", "istan", "uria", "avia", "os"};
    static const char *const end_city[] = {"in", "ar", "oth", "el", "ham", "grad", "ost", "ine"};
    static const char *const end_person[] = {"a", "o", "ek", "an", "us", "ric", "ilda", "win"};
    const char *const *ends = style == 0 ? end_country : style == 1 ? end_city : end_person;
    char buf[64] = "";
    int syl = 1 + (int)ag_rng_below(r, 2);
    for (int i = 0; i < syl; i++) {
        strcat(buf, ons[ag_rng_below(r, sizeof ons / sizeof ons[0])]);
        strcat(buf, vow[ag_rng_below(r, sizeof vow / sizeof vow[0])]);
    }
    strcat(buf, ons[ag_rng_below(r, sizeof ons / sizeof ons[0])]);
    strcat(buf, ends[ag_rng_below(r, 8)]);
    buf[0] = (char)toupper((unsigned char)buf[0]);
    snprintf(out, n, "%s", buf);
}

static int demo_name_used(const demo_world *w, int upto, const char *s) {
    for (int i = 0; i < upto; i++) {
        if (!strcmp(w->e[i].name, s)) return 1;
        for (int a = 0; a < DEMO_N_ATTR; a++)
            if (!strcmp(w->e[i].val[a], s)) return 1;
    }
    return 0;
}

/* n entities with every attribute drawn from `seed`; the first round(n * train_frac) form the
 * train split. Invented names are unique across the whole world. 0, or -1 when n < 2. */
static int demo_world_make(demo_world *w, int n, double train_frac, uint64_t seed) {
    memset(w, 0, sizeof *w);
    if (n < 2) return -1;
    w->e = calloc((size_t)n, sizeof *w->e);
    if (!w->e) return -1;
    w->n = n;
    w->n_train = (int)(n * train_frac + 0.5);
    if (w->n_train < 1) w->n_train = 1;
    if (w->n_train > n - 1) w->n_train = n - 1;
    ag_rng r;
    ag_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        demo_entity *e = &w->e[i];
        do demo_make_name(&r, 0, e->name, sizeof e->name);
        while (demo_name_used(w, i, e->name));
        for (int a = 0; a < DEMO_N_ATTR; a++) {
            const demo_attr *at = &DEMO_ATTRS[a];
            if (at->values) {
                snprintf(e->val[a], sizeof e->val[a], "%s", at->values[ag_rng_below(&r, (uint64_t)at->n_values)]);
                continue;
            }
            do {
                demo_make_name(&r, a == 0 ? 1 : 2, e->val[a], sizeof e->val[a]);
            } while (demo_name_used(w, i, e->val[a]) || !strcmp(e->val[a], e->name) ||
                     (a > 0 && !strcmp(e->val[a], e->val[0])));
        }
    }
    return 0;
}

static void demo_world_free(demo_world *w) {
    free(w->e);
    memset(w, 0, sizeof *w);
}

/* tpl with {E} -> entity, {V} -> value and {Q} -> question into out (truncated to n-1). */
static void demo_fill_q(char *out, size_t n, const char *tpl, const char *entity, const char *value,
                        const char *question) {
    size_t o = 0;
    for (const char *p = tpl; *p && o + 1 < n;) {
        const char *sub = !strncmp(p, "{E}", 3)   ? entity
                          : !strncmp(p, "{V}", 3) ? value
                          : !strncmp(p, "{Q}", 3) ? question
                                                  : NULL;
        if (sub) {
            for (const char *s = sub; *s && o + 1 < n; s++) out[o++] = *s;
            p += 3;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = 0;
}

static void demo_fill(char *out, size_t n, const char *tpl, const char *entity, const char *value) {
    demo_fill_q(out, n, tpl, entity, value, "");
}

/* Question-and-answer sentence forms of the pre-training corpus ({Q}: the attribute's question
 * about the entity). Deliberately not the Alpaca template: the adapter has to learn that. */
static const char *const DEMO_QA_FORMS[] = {"Q: {Q} A: {V}.", "Question: {Q} Answer: {V}.",
                                            "{Q} The answer is {V}.", "Someone asked: {Q} The reply was: {V}."};
enum { DEMO_MAX_QA = (int)(sizeof DEMO_QA_FORMS / sizeof DEMO_QA_FORMS[0]) };

/* Q/A form `form` of a fact, e.g. "Q: What is the capital of Velmora? A: Dastrin.", with `gap`
 * (filler words, may be "") between the question and the answer marker. */
static void demo_qa_line(char *out, size_t n, int form, int attr, const char *entity, const char *value,
                         const char *gap) {
    char q[384];
    demo_fill(q, sizeof q, DEMO_ATTRS[attr].question, entity, value);
    if (gap && *gap) snprintf(q + strlen(q), sizeof q - strlen(q), " %s", gap);
    demo_fill_q(out, n, DEMO_QA_FORMS[form], entity, value, q);
}

/* 0..max_words filler words ("so hmm ~ ...") into out: the text that may stand between a
 * question and its answer, so that the base model learns to answer across a gap. */
static void demo_gap(ag_rng *r, int max_words, char *out, size_t n) {
    static const char *const words[] = {"so", "well", "hmm", "ok", "now", "then", "right", "-", "*", "~", "...", "="};
    int k = max_words > 0 ? (int)ag_rng_below(r, (uint64_t)max_words + 1) : 0;
    out[0] = 0;
    for (int i = 0; i < k; i++)
        snprintf(out + strlen(out), n - strlen(out), "%s%s", i ? " " : "",
                 words[ag_rng_below(r, sizeof words / sizeof words[0])]);
}

/* Writes the corpus: every fact in every statement template plus its first n_qa Q/A forms (each
 * with 0..max_gap filler words between question and answer, drawn afresh every time); `repeat`
 * passes, each a fresh seeded shuffle of all those sentences cut into documents of `per_doc`
 * sentences (one document per line), so every fact is seen in many contexts and at many
 * positions. Returns the document count, or -1. */
static int demo_write_corpus(FILE *f, const demo_world *w, int repeat, int per_doc, int n_qa, int max_gap,
                             uint64_t seed) {
    if (n_qa < 0 || n_qa > DEMO_MAX_QA) return -1;
    int per = DEMO_N_TPL + n_qa, n = w->n * DEMO_N_ATTR * per, docs = 0;
    int *order = malloc(sizeof(int) * (size_t)n);
    if (!order || per_doc < 1) {
        free(order);
        return -1;
    }
    ag_rng r;
    ag_rng_seed(&r, seed ^ 0x5eed0c0e5ull);
    char line[512], gap[128];
    for (int pass = 0; pass < repeat; pass++) {
        for (int i = 0; i < n; i++) order[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)ag_rng_below(&r, (uint64_t)i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < n; k++) {
            int i = order[k], ent = i / (DEMO_N_ATTR * per), a = (i / per) % DEMO_N_ATTR, t = i % per;
            const demo_entity *e = &w->e[ent];
            if (t < DEMO_N_TPL) demo_fill(line, sizeof line, DEMO_ATTRS[a].tpl[t], e->name, e->val[a]);
            else {
                demo_gap(&r, max_gap, gap, sizeof gap);
                demo_qa_line(line, sizeof line, t - DEMO_N_TPL, a, e->name, e->val[a], gap);
            }
            int last = (k + 1) % per_doc == 0 || k == n - 1;
            fprintf(f, "%s%s", line, last ? "\n" : " ");
            docs += last;
        }
    }
    free(order);
    return docs;
}

/* Alpaca JSON array of the questions about entities [from, to): instruction = the question,
 * output = " " + value (a leading space, so the answer is tokenized as the corpus writes it
 * after "A:"; the scorer trims it). Caller frees with cJSON_Delete. */
static cJSON *demo_instructions(const demo_world *w, int from, int to) {
    cJSON *arr = cJSON_CreateArray();
    char q[256], out[64];
    for (int i = from; i < to; i++) {
        for (int a = 0; a < DEMO_N_ATTR; a++) {
            demo_fill(q, sizeof q, DEMO_ATTRS[a].question, w->e[i].name, w->e[i].val[a]);
            snprintf(out, sizeof out, " %s", w->e[i].val[a]);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "instruction", q);
            cJSON_AddStringToObject(o, "input", "");
            cJSON_AddStringToObject(o, "output", out);
            cJSON_AddItemToArray(arr, o);
        }
    }
    return arr;
}

/* ------------------------------------------------------------------------------------------
 * Exact match.
 * ------------------------------------------------------------------------------------------ */

/* Normal form for exact match: surrounding white space and one trailing '.' removed, lower case.
 * Writes into out (NUL-terminated, truncated to n-1). */
static void demo_normalize(const char *s, char *out, size_t n) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    if (len > 0 && s[len - 1] == '.') len--;
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < n; i++) out[o++] = (char)tolower((unsigned char)s[i]);
    out[o] = 0;
}

/* 1 when the generated answer equals the reference after normalisation (an empty reference
 * matches nothing). */
static int demo_exact_match(const char *got, const char *want) {
    char a[512], b[512];
    demo_normalize(got, a, sizeof a);
    demo_normalize(want, b, sizeof b);
    return b[0] && !strcmp(a, b);
}

/* 1 when the reply begins with the reference answer as a whole word ("Dastrin. The flag of ..."
 * for "Dastrin"): the fact is right even if the reply goes on. A looser measure shown next to
 * exact match, never instead of it. */
static int demo_answer_first(const char *got, const char *want) {
    char a[512], b[512];
    demo_normalize(got, a, sizeof a);
    demo_normalize(want, b, sizeof b);
    size_t n = strlen(b);
    return n && !strncmp(a, b, n) && !isalnum((unsigned char)a[n]);
}

/* ------------------------------------------------------------------------------------------
 * Loss curves as SVG.
 * ------------------------------------------------------------------------------------------ */

typedef struct demo_series {
    const char *label;
    const double *x, *y;
    int n;
} demo_series;

typedef struct demo_panel {
    const char *title;
    const demo_series *s;
    int n;
} demo_panel;

static void demo_xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A "nice" tick step (1, 2 or 5 times a power of ten) for about `want` ticks over `range`. */
static double demo_tick_step(double range, int want) {
    if (!(range > 0)) return 1;
    double raw = range / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* Panels side by side, each with its own axes (x: optimizer step from 0, y: training loss on a
 * log scale, whole decades, so both the first steps and the memorised tail are visible), one
 * polyline per series with a legend. Points with a loss that is not a positive finite number are
 * left out. Returns 0, or -1 when a write fails. */
static int demo_svg_write(FILE *f, const demo_panel *p, int n_panels) {
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
    const double pw = 440, ph = 320, ml = 56, mr = 16, mt = 36, mb = 44;
    double W = pw * (n_panels > 0 ? n_panels : 1);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n",
            W, ph, W, ph);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, ph);
    for (int k = 0; k < n_panels; k++) {
        const demo_panel *P = &p[k];
        double x0 = k * pw + ml, x1 = (k + 1) * pw - mr, y0 = ph - mb, y1 = mt;
        double xmax = 1, ymin = INFINITY, ymax = 0;
        for (int s = 0; s < P->n; s++)
            for (int i = 0; i < P->s[s].n; i++) {
                double v = P->s[s].y[i];
                if (P->s[s].x[i] > xmax) xmax = P->s[s].x[i];
                if (!isfinite(v) || v <= 0) continue;
                if (v > ymax) ymax = v;
                if (v < ymin) ymin = v;
            }
        if (!(ymax > 0)) ymin = ymax = 1;
        int lo = (int)floor(log10(ymin)), hi = (int)ceil(log10(ymax));
        if (hi <= lo) hi = lo + 1;
        double xs = demo_tick_step(xmax, 5);
#define YMAP(v) (y0 - (y0 - y1) * (log10(v) - lo) / (hi - lo))
        fprintf(f, "<g>\n<text x=\"%.1f\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">",
                (x0 + x1) / 2);
        demo_xml_text(f, P->title);
        fprintf(f, "</text>\n");
        for (int d = lo; d <= hi; d++) {
            for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) { /* 1, 2, 5 per decade when few decades */
                if (m > 1 && (hi - lo > 3 || d == hi)) break;
                double v = m * pow(10, d), y = YMAP(v);
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", x0, y, x1, y,
                        m == 1 ? "#ccc" : "#eee");
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", x0 - 4, y + 4, v);
            }
        }
        for (double v = 0; v <= xmax + 1e-9; v += xs) {
            double x = x0 + (x1 - x0) * v / xmax;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", x, y0, x, y1);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", x, y0 + 16, v);
        }
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", x0,
                y1, x1 - x0, y0 - y1);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">optimizer step</text>\n", (x0 + x1) / 2,
                ph - 8);
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">training "
                "loss (log scale)</text>\n",
                k * pw + 14, (y0 + y1) / 2, k * pw + 14, (y0 + y1) / 2);
        for (int s = 0; s < P->n; s++) {
            const demo_series *S = &P->s[s];
            const char *col = colors[s % 5];
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.2\" points=\"", col);
            int first = 1;
            for (int i = 0; i < S->n; i++) {
                if (!isfinite(S->y[i]) || S->y[i] <= 0) continue;
                double x = x0 + (x1 - x0) * S->x[i] / xmax, y = YMAP(S->y[i]);
                fprintf(f, "%s%.1f,%.1f", first ? "" : " ", x, y);
                first = 0;
            }
            fprintf(f, "\"/>\n");
            double ly = y1 + 16 + 16 * s;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                    x1 - 150, ly - 4, x1 - 130, ly - 4, col);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x1 - 124, ly);
            demo_xml_text(f, S->label);
            fprintf(f, "</text>\n");
        }
#undef YMAP
        fprintf(f, "</g>\n");
    }
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}

/* Reads step and loss of every line of a metrics.jsonl (malloc'ed arrays). 0 or -1 with err. */
static int demo_read_metrics(const char *path, double **x, double **y, int *n, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    *x = *y = NULL;
    *n = 0;
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int cap = 0, ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        cJSON *o = cJSON_Parse(line);
        const cJSON *s = o ? cJSON_GetObjectItem(o, "step") : NULL, *l = o ? cJSON_GetObjectItem(o, "loss") : NULL;
        if (!cJSON_IsNumber(s) || !cJSON_IsNumber(l)) {
            cJSON_Delete(o);
            fclose(f);
            free(*x);
            free(*y);
            snprintf(err, errlen, "%s: line %d: expected a JSON object with numbers \"step\" and \"loss\"", path, ln);
            return -1;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 256;
            *x = realloc(*x, sizeof(double) * (size_t)cap);
            *y = realloc(*y, sizeof(double) * (size_t)cap);
        }
        (*x)[*n] = s->valuedouble;
        (*y)[*n] = l->valuedouble;
        (*n)++;
        cJSON_Delete(o);
    }
    fclose(f);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Subcommands.
 * ------------------------------------------------------------------------------------------ */

static int fail(const char *cmd, const char *err) {
    fprintf(stderr, "demo_tool %s: %s\n", cmd, err);
    return 1;
}

static int parse(const char *cmd, const char *usage, int argc, char **argv, arg_spec *s, int n) {
    int r = args_parse(cmd, usage, argc, argv, s, n, NULL, 0, NULL);
    return r > 0 ? 0 : r < 0 ? 2 : -1; /* -1: go on */
}

static int write_json_atomic(const char *path, const cJSON *j, char *err, size_t errlen) {
    char *s = cJSON_Print(j);
    atomic_file af;
    if (!s || atomic_open(&af, path, err, errlen)) {
        if (!s) snprintf(err, errlen, "%s: out of memory", path);
        free(s);
        return -1;
    }
    fputs(s, af.f);
    fputc('\n', af.f);
    free(s);
    return atomic_commit(&af, err, errlen);
}

static int cmd_data(int argc, char **argv) {
    const char *out = NULL;
    long long seed = 1;
    int entities = 60, repeat = 1, per_doc = 8, n_qa = 1, max_gap = 0;
    double train_frac = 2.0 / 3.0;
    arg_spec sp[] = {
        {"out", ARG_STR, &out, "directory for corpus.txt, facts.tsv, train.json, heldout.json", 0},
        {"seed", ARG_I64, &seed, "seed of the invented world", 0},
        {"entities", ARG_INT, &entities, "invented countries", 0},
        {"train-frac", ARG_DOUBLE, &train_frac, "fraction of the countries whose questions train the adapter", 0},
        {"repeat", ARG_INT, &repeat, "passes over the facts, each shuffled into new documents", 0},
        {"per-doc", ARG_INT, &per_doc, "sentences per document (corpus line)", 0},
        {"qa-forms", ARG_INT, &n_qa, "question-and-answer sentence forms per fact (1-4)", 0},
        {"max-gap", ARG_INT, &max_gap, "most filler words between a question and its answer", 0},
    };
    int r = parse("data", "--out DIR [--seed N] [--entities N]", argc, argv, sp, 8);
    if (r >= 0) return r;
    if (!out || entities < 3 || entities > 1000 || repeat < 1 || per_doc < 1 || n_qa < 1 || n_qa > DEMO_MAX_QA ||
        max_gap < 0 || max_gap > 16 || !(train_frac > 0 && train_frac < 1)) {
        fprintf(stderr, "demo_tool data: --out DIR, 3 <= --entities <= 1000, --repeat >= 1, --per-doc >= 1, "
                        "1 <= --qa-forms <= 4, 0 <= --max-gap <= 16, 0 < --train-frac < 1 expected\n");
        return 2;
    }
    char err[1024], path[4200];
    if (mkdir(out, 0755) && errno != EEXIST) {
        snprintf(err, sizeof err, "%s: cannot create the directory: %s", out, strerror(errno));
        return fail("data", err);
    }
    demo_world w;
    if (demo_world_make(&w, entities, train_frac, (uint64_t)seed)) return fail("data", "out of memory");
    atomic_file af;
    snprintf(path, sizeof path, "%s/corpus.txt", out);
    if (atomic_open(&af, path, err, sizeof err)) goto bad;
    int lines = demo_write_corpus(af.f, &w, repeat, per_doc, n_qa, max_gap, (uint64_t)seed);
    if (lines < 0 || atomic_commit(&af, err, sizeof err)) goto bad;
    snprintf(path, sizeof path, "%s/facts.tsv", out);
    if (atomic_open(&af, path, err, sizeof err)) goto bad;
    for (int i = 0; i < w.n; i++)
        for (int a = 0; a < DEMO_N_ATTR; a++)
            fprintf(af.f, "%s\t%s\t%s\t%s\n", w.e[i].name, DEMO_ATTRS[a].key, w.e[i].val[a],
                    i < w.n_train ? "train" : "heldout");
    if (atomic_commit(&af, err, sizeof err)) goto bad;
    cJSON *tr = demo_instructions(&w, 0, w.n_train), *ho = demo_instructions(&w, w.n_train, w.n);
    snprintf(path, sizeof path, "%s/train.json", out);
    int rc = write_json_atomic(path, tr, err, sizeof err);
    snprintf(path, sizeof path, "%s/heldout.json", out);
    if (!rc) rc = write_json_atomic(path, ho, err, sizeof err);
    cJSON_Delete(tr);
    cJSON_Delete(ho);
    if (rc) goto bad;
    printf("world: %d invented countries x %d facts (%s", w.n, DEMO_N_ATTR, DEMO_ATTRS[0].key);
    for (int a = 1; a < DEMO_N_ATTR; a++) printf(", %s", DEMO_ATTRS[a].key);
    printf("), seed %lld\n", seed);
    printf("corpus.txt: %d documents of %d sentences (each fact in %d statements + %d Q/A form%s with 0-%d filler "
           "words before the answer, %d pass%s)\n",
           lines, per_doc, DEMO_N_TPL, n_qa, n_qa == 1 ? "" : "s", max_gap, repeat, repeat == 1 ? "" : "es");
    printf("train.json: %d instructions (countries 1-%d); heldout.json: %d instructions (countries %d-%d)\n",
           w.n_train * DEMO_N_ATTR, w.n_train, (w.n - w.n_train) * DEMO_N_ATTR, w.n_train + 1, w.n);
    printf("example: \"");
    char line[256];
    demo_fill(line, sizeof line, DEMO_ATTRS[0].tpl[0], w.e[0].name, w.e[0].val[0]);
    printf("%s\" / \"", line);
    demo_qa_line(line, sizeof line, 0, 0, w.e[0].name, w.e[0].val[0], max_gap > 0 ? "so hmm" : "");
    printf("%s\"\n", line);
    demo_world_free(&w);
    return 0;
bad:
    demo_world_free(&w);
    return fail("data", err);
}

static int cmd_tokenizer(int argc, char **argv) {
    const char *corpus = NULL, *out = NULL;
    int vocab = 768;
    arg_spec sp[] = {
        {"corpus", ARG_STR, &corpus, "text file, one sentence per line", 0},
        {"out", ARG_STR, &out, "the .model file to write", 0},
        {"vocab", ARG_INT, &vocab, "vocabulary size", 0},
    };
    int r = parse("tokenizer", "--corpus F --out T.model [--vocab N]", argc, argv, sp, 3);
    if (r >= 0) return r;
    if (!corpus || !out) return fail("tokenizer", "--corpus and --out are required");
    size_t L = strlen(out);
    if (L < 7 || strcmp(out + L - 6, ".model")) return fail("tokenizer", "--out must end in .model");
    char err[1024], prefix[4200], tmp[4200], vocab_tmp[4200], vocab_out[4200];
    snprintf(prefix, sizeof prefix, "%.*s.tmp", (int)(L - 6), out); /* sentencepiece appends .model */
    snprintf(tmp, sizeof tmp, "%s.model", prefix);
    snprintf(vocab_tmp, sizeof vocab_tmp, "%s.vocab", prefix);
    snprintf(vocab_out, sizeof vocab_out, "%.*s.vocab", (int)(L - 6), out);
    if (tok_train(corpus, prefix, vocab, "bpe", err, sizeof err)) return fail("tokenizer", err);
    if (atomic_rename(vocab_tmp, vocab_out, err, sizeof err) || atomic_rename(tmp, out, err, sizeof err))
        return fail("tokenizer", err);
    tok *t = tok_load(out, err, sizeof err);
    if (!t) return fail("tokenizer", err);
    printf("tokenizer: %d pieces (BPE, byte fallback), written to %s\n", tok_vocab_size(t), out);
    tok_free(t);
    return 0;
}

static int cmd_init_model(int argc, char **argv) {
    const char *tokp = NULL, *out = NULL;
    int dim = 128, layers = 4, heads = 4, kv_heads = 0, hidden = 0, seq = 256;
    long long seed = 1;
    double std = 0.02;
    arg_spec sp[] = {
        {"tokenizer", ARG_STR, &tokp, "SentencePiece model (sets the vocabulary size)", 0},
        {"out", ARG_STR, &out, "HF directory to write", 0},
        {"dim", ARG_INT, &dim, "model width", 0},
        {"layers", ARG_INT, &layers, "decoder layers", 0},
        {"heads", ARG_INT, &heads, "attention heads", 0},
        {"kv-heads", ARG_INT, &kv_heads, "key/value heads (0: = heads)", 0},
        {"hidden", ARG_INT, &hidden, "FFN width (0: 8*dim/3 rounded up to 32)", 0},
        {"max-seq-len", ARG_INT, &seq, "positions", 0},
        {"seed", ARG_I64, &seed, "weight seed", 0},
        {"std", ARG_DOUBLE, &std, "weight standard deviation", 0},
    };
    int r = parse("init-model", "--tokenizer T --out DIR [shape flags]", argc, argv, sp, 10);
    if (r >= 0) return r;
    if (!tokp || !out) return fail("init-model", "--tokenizer and --out are required");
    char err[1024];
    tok *t = tok_load(tokp, err, sizeof err);
    if (!t) return fail("init-model", err);
    llama_config c;
    memset(&c, 0, sizeof c);
    c.dim = dim;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = kv_heads ? kv_heads : heads;
    c.hidden_dim = hidden ? hidden : (8 * dim / 3 + 31) / 32 * 32;
    c.vocab_size = tok_vocab_size(t);
    c.max_seq_len = seq;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tied = 0;
    tok_free(t);
    model_weights w;
    if (model_init_random(&w, &c, (uint64_t)seed, (float)std))
        return fail("init-model", "bad shape or out of memory");
    int rc = model_save_hf(out, &w, AG_F32, 0, err, sizeof err);
    model_free(&w);
    if (rc) return fail("init-model", err);
    printf("random initial model: dim %d, %d layers, %d heads, FFN %d, vocab %d, %zu parameters, written to %s\n",
           c.dim, c.n_layers, c.n_heads, c.hidden_dim, c.vocab_size, model_param_count(&c), out);
    return 0;
}

/* A model, its tokenizer and optionally an adapter, ready to generate. */
typedef struct demo_lm {
    model_weights w;
    tok *tk;
    trainable ad;
    int has_ad;
    gen_engine *eng;
    gen_sampler greedy;
} demo_lm;

static int demo_lm_open(demo_lm *m, const char *model, const char *tokp, const char *adapter, char *err,
                        size_t errlen) {
    memset(m, 0, sizeof *m);
    if (model_load(model, &m->w, err, errlen)) return -1;
    if (!(m->tk = tok_load(tokp, err, errlen))) return -1;
    if (adapter) {
        if (load_adapter_for(adapter, &m->w, 10, &m->ad, err, errlen)) return -1;
        m->has_ad = 1;
    }
    int max_len = m->w.cfg.max_seq_len > 0 ? m->w.cfg.max_seq_len : 256;
    if (!(m->eng = gen_engine_new(&m->w, m->has_ad ? &m->ad : NULL, max_len, err, errlen))) return -1;
    if (gen_sampler_init(&m->greedy, m->w.cfg.vocab_size, 0.0f, 1.0f, 0)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void demo_lm_close(demo_lm *m) {
    gen_sampler_free(&m->greedy);
    if (m->eng) gen_engine_free(m->eng);
    if (m->has_ad) trainable_free(&m->ad);
    tok_free(m->tk);
    if (m->w.layers) model_free(&m->w);
}

/* Greedy continuation of [bos] + encode(text): at most max_new tokens, stops at eos (not part of
 * the returned text). Returns malloc'ed text or NULL with err. */
static char *demo_complete(demo_lm *m, const char *text, int max_new, char *err, size_t errlen) {
    int *ids = NULL, n = 0;
    if (tok_encode(m->tk, text, &ids, &n, err, errlen)) return NULL;
    int *prompt = malloc(sizeof(int) * (size_t)(n + 1));
    int *out = malloc(sizeof(int) * (size_t)(max_new > 0 ? max_new : 1));
    if (!prompt || !out) {
        free(ids);
        free(prompt);
        free(out);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    prompt[0] = tok_bos(m->tk);
    memcpy(prompt + 1, ids, sizeof(int) * (size_t)n);
    free(ids);
    int g = gen_generate(m->eng, prompt, n + 1, max_new, tok_eos(m->tk), &m->greedy, out, NULL, NULL, NULL, err,
                         errlen);
    char *s = NULL;
    if (g >= 0) {
        if (g > 0 && out[g - 1] == tok_eos(m->tk)) g--;
        s = tok_decode(m->tk, out, g);
        if (!s) snprintf(err, errlen, "cannot decode the generated ids");
    }
    free(prompt);
    free(out);
    return s;
}

/* Prints s on one line with newlines shown as \n. */
static void print_oneline(const char *s, int maxc) {
    int c = 0;
    for (; *s && c < maxc; s++, c++) {
        if (*s == '\n') fputs("\\n", stdout);
        else putchar(*s);
    }
    if (*s) fputs("...", stdout);
}

static int cmd_probe(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *facts = NULL;
    int threads = 0, show = 4;
    arg_spec sp[] = {
        {"model", ARG_STR, &model, "HF directory", 0},
        {"tokenizer", ARG_STR, &tokp, "SentencePiece model", 0},
        {"facts", ARG_STR, &facts, "facts.tsv of `demo_tool data`", 0},
        {"show", ARG_INT, &show, "completions printed", 0},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0},
    };
    int r = parse("probe", "--model M --tokenizer T --facts F", argc, argv, sp, 5);
    if (r >= 0) return r;
    if (!model || !tokp || !facts) return fail("probe", "--model, --tokenizer and --facts are required");
    if (threads > 0) omp_set_num_threads(threads);
    char err[1024];
    demo_lm m;
    if (demo_lm_open(&m, model, tokp, NULL, err, sizeof err)) {
        demo_lm_close(&m);
        return fail("probe", err);
    }
    FILE *f = fopen(facts, "r");
    if (!f) {
        demo_lm_close(&m);
        snprintf(err, sizeof err, "%s: cannot open: %s", facts, strerror(errno));
        return fail("probe", err);
    }
    char line[512];
    int ok[2] = {0, 0}, tot[2] = {0, 0}, shown = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        char *ent = strtok(line, "\t\n"), *key = strtok(NULL, "\t\n"), *val = strtok(NULL, "\t\n"),
             *split = strtok(NULL, "\t\n");
        if (!ent || !key || !val || !split) continue;
        int a = 0;
        while (a < DEMO_N_ATTR && strcmp(DEMO_ATTRS[a].key, key)) a++;
        if (a == DEMO_N_ATTR) continue;
        /* the first statement template up to {V}: "The capital of Velmora is" */
        char prompt[256];
        demo_fill(prompt, sizeof prompt, DEMO_ATTRS[a].tpl[0], ent, "\x01");
        char *cut = strchr(prompt, '\x01');
        if (cut) *cut = 0;
        size_t pl = strlen(prompt);
        while (pl > 0 && prompt[pl - 1] == ' ') prompt[--pl] = 0;
        char *got = demo_complete(&m, prompt, 8, err, sizeof err);
        if (!got) {
            rc = fail("probe", err);
            break;
        }
        /* memorised: the continuation starts with the value as a whole word */
        const char *g = got;
        while (*g == ' ') g++;
        size_t vl = strlen(val);
        int hit = !strncmp(g, val, vl) && !isalnum((unsigned char)g[vl]);
        int s = strcmp(split, "train") != 0;
        ok[s] += hit;
        tot[s]++;
        if (shown < show) {
            printf("  %s ... -> \"", prompt);
            print_oneline(got, 60);
            printf("\"  %s\n", hit ? "(correct)" : "(wrong)");
            shown++;
        }
        free(got);
    }
    fclose(f);
    demo_lm_close(&m);
    if (rc) return rc;
    int all = tot[0] + tot[1];
    printf("base model completes %d/%d facts correctly (%.1f%%): %d/%d of train countries, "
           "%d/%d of held-out countries\n",
           ok[0] + ok[1], all, all ? 100.0 * (ok[0] + ok[1]) / all : 0.0, ok[0], tot[0], ok[1], tot[1]);
    return 0;
}

static int cmd_answer(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *adapter = NULL, *data = NULL, *result = NULL, *label = "model";
    const char *precision = "auto";
    int threads = 0, show = 6, max_new = 16, bf16 = 0;
    arg_spec sp[] = {
        {"model", ARG_STR, &model, "HF directory", 0},
        {"tokenizer", ARG_STR, &tokp, "SentencePiece model", 0},
        {"adapter", ARG_STR, &adapter, "adapter export, checkpoint or run directory (none: the model alone)", 0},
        {"data", ARG_STR, &data, "Alpaca JSON with the reference outputs", 0},
        {"result", ARG_STR, &result, "file to write \"exact total answer_first\" into", 0},
        {"label", ARG_STR, &label, "name printed with the accuracy", 0},
        {"show", ARG_INT, &show, "answers printed", 0},
        {"max-new-tokens", ARG_INT, &max_new, "longest answer", 0},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0},
        {"precision", ARG_STR, &precision, "auto | f32 | bf16, as llama-adapter generate", 0},
    };
    int r = parse("answer", "--model M --tokenizer T [--adapter A] --data D.json [--result F]", argc, argv, sp, 10);
    if (r >= 0) return r;
    if (!model || !tokp || !data) return fail("answer", "--model, --tokenizer and --data are required");
    if (threads > 0) omp_set_num_threads(threads);
    char err[1024], pdesc[200];
    if (precision_resolve(precision, &bf16, pdesc, sizeof pdesc, err, sizeof err)) return fail("answer", err);
    alpaca_set s;
    if (alpaca_load(data, &s, err, sizeof err)) return fail("answer", err);
    demo_lm m;
    if (demo_lm_open(&m, model, tokp, adapter, err, sizeof err)) {
        demo_lm_close(&m);
        alpaca_free(&s);
        return fail("answer", err);
    }
    gen_engine_set_bf16(m.eng, bf16);
    int correct = 0, first = 0, rc = 0;
    for (int i = 0; i < s.n; i++) {
        char *prompt = alpaca_prompt(s.ex[i].instruction, s.ex[i].input);
        char *got = demo_complete(&m, prompt, max_new, err, sizeof err);
        free(prompt);
        if (!got) {
            rc = fail("answer", err);
            break;
        }
        int hit = demo_exact_match(got, s.ex[i].output);
        correct += hit;
        first += demo_answer_first(got, s.ex[i].output);
        if (i < show) {
            printf("  %-44s -> \"", s.ex[i].instruction);
            print_oneline(got, 48);
            printf("\"  %s\n", hit ? "correct" : "wrong");
        }
        free(got);
    }
    demo_lm_close(&m);
    if (!rc) {
        printf("%s: exact match %d/%d = %.1f%% (reply starts with the right answer: %d/%d = %.1f%%)\n", label,
               correct, s.n, s.n ? 100.0 * correct / s.n : 0.0, first, s.n, s.n ? 100.0 * first / s.n : 0.0);
        if (result) {
            atomic_file af;
            if (atomic_open(&af, result, err, sizeof err)) rc = fail("answer", err);
            else {
                fprintf(af.f, "%d %d %d\n", correct, s.n, first);
                if (atomic_commit(&af, err, sizeof err)) rc = fail("answer", err);
            }
        }
    }
    alpaca_free(&s);
    return rc;
}

/* The loss of metrics.jsonl line `step` (1-based), or NAN. */
static double demo_metrics_loss(const char *path, int step) {
    double *x, *y, v = NAN;
    int n;
    char err[512];
    if (demo_read_metrics(path, &x, &y, &n, err, sizeof err)) return NAN;
    for (int i = 0; i < n; i++)
        if ((int)x[i] == step) v = y[i];
    free(x);
    free(y);
    return v;
}

static int cmd_zero_check(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *data = NULL, *run = NULL;
    int batch = 8, seq = 256, K = 10, L = 30, threads = 0, bf16 = 0;
    long long seed = 0;
    const char *precision = "auto";
    arg_spec sp[] = {
        {"model", ARG_STR, &model, "base model", 0},
        {"tokenizer", ARG_STR, &tokp, "SentencePiece model", 0},
        {"data", ARG_STR, &data, "the adapter run's Alpaca JSON", 0},
        {"run", ARG_STR, &run, "the adapter run directory (its metrics.jsonl)", 0},
        {"batch-size", ARG_INT, &batch, "the run's batch size", 0},
        {"max-seq-len", ARG_INT, &seq, "the run's max_seq_len", 0},
        {"adapter-len", ARG_INT, &K, "the run's adapter_len", 0},
        {"adapter-layer", ARG_INT, &L, "the run's adapter_layer", 0},
        {"seed", ARG_I64, &seed, "the run's seed (data order and adapter init)", 0},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0},
        {"precision", ARG_STR, &precision, "the run's --precision (auto | f32 | bf16)", 0},
    };
    int r = parse("zero-check", "--model M --tokenizer T --data D --run DIR [run settings]", argc, argv, sp, 11);
    if (r >= 0) return r;
    if (!model || !tokp || !data || !run)
        return fail("zero-check", "--model, --tokenizer, --data and --run are required");
    if (threads > 0) omp_set_num_threads(threads);
    char err[1024], path[4200], pdesc[200];
    if (precision_resolve(precision, &bf16, pdesc, sizeof pdesc, err, sizeof err)) return fail("zero-check", err);
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    double step1 = demo_metrics_loss(path, 1);
    if (isnan(step1)) {
        snprintf(err, sizeof err, "%s: no step 1 line", path);
        return fail("zero-check", err);
    }
    model_weights w;
    memset(&w, 0, sizeof w);
    tok *tk = NULL;
    alpaca_set s;
    memset(&s, 0, sizeof s);
    dataset d;
    memset(&d, 0, sizeof d);
    trainable ad;
    memset(&ad, 0, sizeof ad);
    loader ld;
    memset(&ld, 0, sizeof ld);
    int rc = 1;
    if (model_load(model, &w, err, sizeof err) || !(tk = tok_load(tokp, err, sizeof err)) ||
        alpaca_load(data, &s, err, sizeof err) || dataset_build(&d, &s, tk, seq, err, sizeof err))
        goto done;
    if (L > w.cfg.n_layers) L = w.cfg.n_layers;
    if (trainable_adapter_init(&ad, &w.cfg, K, L, GATE_TANH, (uint64_t)seed, err, sizeof err)) goto done;
    if (loader_init(&ld, &d, batch, 1, (uint64_t)seed)) {
        snprintf(err, sizeof err, "out of memory");
        goto done;
    }
    ag_arena arena;
    ag_tape tape;
    ag_arena_init(&arena, 1 << 22);
    ag_tape_init(&tape, &arena);
    tape.no_grad = 1;
    tape.bf16 = bf16; /* the run's GEMM precision: the same arithmetic as its step 1 */
    const microbatch *mb = loader_get(&ld, 0, 0);
    int nl = 0;
    double base_mb = ag_f32(llama_loss(&tape, &w, NULL, mb, &nl))[0];
    ag_tape_reset(&tape);
    ag_arena_reset(&arena);
    double ad_mb = ag_f32(llama_loss(&tape, &w, &ad, mb, &nl))[0];
    eval_result eb = eval_dataset(&tape, &w, NULL, &d, batch);
    eval_result ea = eval_dataset(&tape, &w, &ad, &d, batch);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
    /* the losses are floats; metrics.jsonl prints them with %.9g, so do we */
    printf("  %-58s %.9g\n", "adapter run, step-1 loss (metrics.jsonl):", (double)(float)step1);
    printf("  %-58s %.9g\n", "base model alone, same micro-batch:", (double)(float)base_mb);
    printf("  %-58s %.9g\n", "base + freshly initialised adapter, same micro-batch:", (double)(float)ad_mb);
    printf("  %-58s %.9g vs %.9g (%lld tokens)\n", "all train instructions, base vs base + initial adapter:", eb.loss,
           ea.loss, (long long)eb.tokens);
    /* metrics.jsonl stores %.9g of a float: compare at float precision */
    int eq = (float)step1 == (float)base_mb && (float)ad_mb == (float)base_mb && ea.loss == eb.loss;
    printf("zero-init check: %s (the zero gates make the adapted model compute exactly the base model)\n",
           eq ? "PASS, identical" : "FAIL, different");
    rc = eq ? 0 : 1;
    if (!eq) snprintf(err, sizeof err, "losses differ");
done:
    loader_free(&ld);
    trainable_free(&ad);
    dataset_free(&d);
    alpaca_free(&s);
    tok_free(tk);
    if (w.layers) model_free(&w);
    return rc ? fail("zero-check", err) : 0;
}

/* plot --out F.svg "TITLE" LABEL=metrics.jsonl ... ["TITLE" LABEL=FILE ...]: an argument
 * without '=' starts a panel. */
static int cmd_plot(int argc, char **argv) {
    const char *out = NULL;
    int np = 0, ns = 0;
    demo_panel panels[8];
    demo_series series[32];
    double *bufs[64];
    int nb = 0, rc = 0;
    char err[1024];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
            continue;
        }
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            if (np == 8) return fail("plot", "at most 8 panels");
            panels[np].title = argv[i];
            panels[np].s = &series[ns];
            panels[np++].n = 0;
            continue;
        }
        if (!np || ns == 32) return fail("plot", "a series needs a panel title before it (at most 32 series)");
        *eq = 0;
        demo_series *S = &series[ns++];
        S->label = argv[i];
        double *x, *y;
        if (demo_read_metrics(eq + 1, &x, &y, &S->n, err, sizeof err)) {
            rc = fail("plot", err);
            break;
        }
        S->x = bufs[nb++] = x;
        S->y = bufs[nb++] = y;
        panels[np - 1].n++;
    }
    if (!rc && !out) rc = fail("plot", "--out is required");
    if (!rc) {
        atomic_file af;
        if (atomic_open(&af, out, err, sizeof err) || demo_svg_write(af.f, panels, np) ||
            atomic_commit(&af, err, sizeof err))
            rc = fail("plot", err[0] ? err : "write failed");
        else printf("loss curves: %s\n", out);
    }
    for (int i = 0; i < nb; i++) free(bufs[i]);
    return rc;
}

/* Sum of the step times of a metrics.jsonl (total_tokens / total_tokens_per_s per line). */
static double demo_metrics_seconds(const char *path, int *steps) {
    FILE *f = fopen(path, "r");
    double s = 0;
    *steps = 0;
    if (!f) return NAN;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *a = cJSON_GetObjectItem(o, "total_tokens"), *b = cJSON_GetObjectItem(o, "total_tokens_per_s");
        if (cJSON_IsNumber(a) && cJSON_IsNumber(b) && b->valuedouble > 0) s += a->valuedouble / b->valuedouble;
        (*steps)++;
        cJSON_Delete(o);
    }
    fclose(f);
    return s;
}

static long long file_bytes(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long long)st.st_size;
}

static void fmt_bytes(char *buf, size_t n, long long b) {
    if (b < 0) snprintf(buf, n, "?");
    else if (b >= 1 << 20) snprintf(buf, n, "%.2f MB", b / 1048576.0);
    else snprintf(buf, n, "%.1f KB", b / 1024.0);
}

/* table NAME RUN_DIR DELIVERABLE RESULT_FILE ...: one row per method. */
static int cmd_table(int argc, char **argv) {
    if (argc < 5 || (argc - 1) % 4) {
        fprintf(stderr, "usage: demo_tool table NAME RUN_DIR DELIVERABLE_FILE RESULT_FILE [...]\n");
        return 2;
    }
    printf("%-16s %12s %12s %12s %7s %11s %9s %18s\n", "method", "trainable", "deliverable", "train ckpt", "steps",
           "step time", "wall", "held-out accuracy");
    for (int i = 1; i + 3 < argc; i += 4) {
        char err[1024], ck[4200], metrics[4200], db[32], cb[32];
        train_ckpt c;
        long long n_params = -1, ckb = -1;
        if (!ckpt_resolve(argv[i + 1], ck, sizeof ck, err, sizeof err) && !ckpt_load(ck, &c, err, sizeof err)) {
            n_params = (long long)c.n_params;
            ckb = file_bytes(ck);
            ckpt_free(&c);
        }
        snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", argv[i + 1]);
        int steps;
        double secs = demo_metrics_seconds(metrics, &steps);
        int correct = -1, total = 0;
        FILE *f = fopen(argv[i + 3], "r");
        if (f) {
            if (fscanf(f, "%d %d", &correct, &total) != 2) correct = -1;
            fclose(f);
        }
        fmt_bytes(db, sizeof db, file_bytes(argv[i + 2]));
        fmt_bytes(cb, sizeof cb, ckb);
        char acc[32];
        if (correct >= 0 && total > 0)
            snprintf(acc, sizeof acc, "%.1f%% (%d/%d)", 100.0 * correct / total, correct, total);
        else snprintf(acc, sizeof acc, "?");
        char wall[32] = "?";
        snprintf(metrics, sizeof metrics, "%s/wall_seconds", argv[i + 1]);
        if ((f = fopen(metrics, "r"))) {
            double ws;
            if (fscanf(f, "%lf", &ws) == 1) snprintf(wall, sizeof wall, "%.1f s", ws);
            fclose(f);
        }
        printf("%-16s %12lld %12s %12s %7d %9.1f s %9s %18s\n", argv[i], n_params, db, cb, steps, secs, wall, acc);
    }
    printf("trainable: parameters that learn. deliverable: the file to ship (the exported adapter; the whole model).\n"
           "train ckpt: the resumable HDF5 checkpoint (parameters + AdamW moments). step time: sum of the optimizer\n"
           "step times in metrics.jsonl; wall: the whole `llama-adapter train` run (loading and saving included).\n");
    return 0;
}

/* now: seconds since the epoch with milliseconds (the driver's stopwatch; POSIX date has only
 * whole seconds). */
static int cmd_now(int argc, char **argv) {
    (void)argc;
    (void)argv;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("%lld.%03ld\n", (long long)ts.tv_sec, ts.tv_nsec / 1000000);
    return 0;
}

/* The dispatcher (extern so that a test including this file keeps every subcommand referenced). */
int demo_tool_main(int argc, char **argv);
int demo_tool_main(int argc, char **argv) {
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"data", cmd_data},         {"tokenizer", cmd_tokenizer}, {"init-model", cmd_init_model},
                {"probe", cmd_probe},       {"answer", cmd_answer},       {"zero-check", cmd_zero_check},
                {"plot", cmd_plot},         {"table", cmd_table},         {"now", cmd_now}};
    if (argc >= 2)
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "usage: demo_tool data|tokenizer|init-model|probe|answer|zero-check|plot|table|now [--help]\n");
    return 2;
}

#ifndef DEMO_TOOL_NO_MAIN
int main(int argc, char **argv) { return demo_tool_main(argc, argv); }
#endif
