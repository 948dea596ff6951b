/* Answer sheets: every instruction of an Alpaca-format set answered by the base model and by
 * one or more adapters (columns), written as answers.jsonl (one JSON object per example) and
 * answers.md (a side-by-side table per instruction), optionally scored against the reference
 * outputs. Driven by `generate --data` and by `sweep --score` (held-out accuracy of each run).
 *
 * Answers: the prompt is [bos] + encode(alpaca_prompt(instruction, input)); generation runs
 * until eos or max_new tokens with the KV-cache engine (trainer/generate.h); the answer text is
 * the decoded generated ids without the final eos — exactly what demo/demo_tool.c's `answer`
 * does, so the scores equal the demo's for the same model, adapter, max_new and precision.
 * Sampling (temperature > 0) seeds example i's sampler with seed + i, so an answer does not
 * depend on which other examples run or in which order.
 *
 * Scoring (score_match): both strings normalised as the demo does (surrounding white space and
 * one trailing '.' removed, then lower case); "exact": equal and the reference not empty;
 * "contains": the normalised reference occurs in the normalised answer as a whole phrase (not
 * inside a longer word).
 *
 * Examples run one after another with all threads in the kernels, or, for models small enough
 * that one decode step is mostly thread start-up, several at once, one engine per thread with
 * single-threaded kernels (the numbers are the same: every kernel here gives the same result on
 * any thread count).
 * Deliberately not here: batching several sequences into one forward (it would change the
 * GEMM path of a decode step and with it the last bits of the logits), stop strings, resuming a
 * half-written sheet.
 * Ownership: answers_run() fills a sheet freed with answer_sheet_free(); options are borrowed. */
#ifndef TRAINER_ANSWERS_H
#define TRAINER_ANSWERS_H
#include <signal.h>
#include <stddef.h>
#include <stdio.h>

#include "data/alpaca.h"

typedef enum { SCORE_NONE = 0, SCORE_EXACT, SCORE_CONTAINS } score_rule;

/* "exact" | "contains" -> rule; -1 for anything else. */
int score_rule_parse(const char *s, score_rule *r);
const char *score_rule_name(score_rule r);
/* The demo's normal form: surrounding white space and one trailing '.' (and the white space
 * before it) removed, ASCII lower case. Malloc'ed; NULL when out of memory. */
char *score_normalize(const char *s);
/* 1 when `got` answers `want` under the rule (an empty reference matches nothing), else 0. */
int score_match(score_rule r, const char *got, const char *want);

typedef struct answer_opts {
    const char *model, *tokenizer;
    const alpaca_set *data;        /* examples [0, n) are answered */
    int n;
    const char *data_name;         /* the file, for messages and answers.md */
    const char *const *adapters;   /* adapter paths (export, checkpoint or run directory); the
                                      strings are the column names */
    int n_adapters;
    int base;                      /* 1: the base model is the first column ("base") */
    float temperature, top_p;      /* temperature 0: greedy */
    long long seed;
    int max_new;                   /* most tokens per answer */
    int adapter_len;               /* K of an adapter file without metadata */
    int bf16;                      /* multi-token forwards in bf16 (trainer/precision.h) */
    score_rule score;
    int parallel;                  /* examples at once: 0 = auto, 1 = one at a time, N */
    FILE *progress;                /* progress output (NULL: none); a bar when it is a terminal */
    int progress_every;            /* not a terminal: a line every N answers (0: only the end) */
    volatile sig_atomic_t *stop;   /* optional: when it becomes non-zero, stop between answers */
} answer_opts;

typedef struct answer_sheet {
    int n, n_cols;
    char **col_name;   /* [n_cols]: "base" or the adapter string (malloc'ed copies) */
    char **text;       /* [n_cols * n], column-major: text[c * n + i] */
    int *hit;          /* [n_cols * n] scores (0/1) when scored, else NULL */
    int *correct;      /* [n_cols] totals when scored, else NULL */
    int stopped;       /* 1 when o->stop ended the run early (the sheet is incomplete) */
    int threads;       /* examples answered at once */
    double seconds;
} answer_sheet;

/* 0, or -1 with err (naming the model, adapter, or data file and example). */
int answers_run(const answer_opts *o, answer_sheet *s, char *err, size_t errlen);
void answer_sheet_free(answer_sheet *s);
/* answers.jsonl and, beside it, answers.md (md_path: "X.jsonl" -> "X.md", otherwise the path
 * with ".md" appended); both written atomically. 0 or -1 with err. */
int answers_write(const char *jsonl_path, const answer_opts *o, const answer_sheet *s, char *err, size_t errlen);
void answers_md_path(const char *jsonl_path, char *out, size_t n);
/* Accuracy lines "score (exact): base 5/80 = 6.2%", one per column, to f. */
void answers_print_scores(FILE *f, const answer_opts *o, const answer_sheet *s);

/* `generate --data FILE --out answers.jsonl ...` after cmd_generate parsed its flags. Returns the
 * exit status (0, 1 bad input, 2 usage). */
typedef struct answers_cli {
    const char *model, *tokenizer, *data, *out, *score, *precision;
    const char *const *adapters;
    int n_adapters, no_base, max_new, adapter_len, threads, parallel, progress_every;
    float temperature, top_p;
    long long seed;
} answers_cli;
int answers_cmd(const answers_cli *a);
#endif
