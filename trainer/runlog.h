/* Reader of a run's metrics.jsonl (written by `train`: one JSON object per optimizer step with
 * step, epoch, lr, loss, tokens, tokens_per_s, total_tokens, total_tokens_per_s, and val_loss /
 * val_tokens when validation ran at that step), and the per-run summary the sweep tabulates.
 * Used by `plot` and `sweep`; it only reads.
 * A line that is not a JSON object, or lacks a numeric "step" or "loss", is an error naming the
 * file and line; a last line without its newline (a run killed while writing) is ignored.
 * Missing optional fields are NAN.
 * Ownership: runlog_load() fills arrays the caller frees with runlog_free(). */
#ifndef TRAINER_RUNLOG_H
#define TRAINER_RUNLOG_H
#include <stddef.h>

typedef struct runlog {
    int n;                  /* steps (lines) */
    double *step, *epoch, *lr, *loss;
    double *tokens;         /* loss tokens of the step */
    double *tokens_per_s;
    double *total_tokens, *total_tokens_per_s;
    double *val_loss;       /* NAN where validation did not run */
    double *val_tokens;
} runlog;

/* path: a metrics.jsonl file, or a run directory holding one. 0, or -1 with err. A file with
 * no complete line gives n = 0 (not an error here: callers decide). */
int runlog_load(const char *path, runlog *r, char *err, size_t errlen);
void runlog_free(runlog *r);

typedef struct runlog_summary {
    long long steps;        /* the last line's step (0 when empty) */
    double final_loss;      /* the last line's loss (NAN when empty) */
    double best_val_loss;   /* the smallest val_loss (NAN when none) */
    long long best_val_step;/* its step (the first on ties; 0 when none) */
    double loss_tokens;     /* sum of tokens */
    double step_seconds;    /* sum over steps of total_tokens / total_tokens_per_s (the step times
                               train measured; steps without them are skipped) */
    double loss_tokens_per_s; /* loss_tokens / step_seconds of the steps that have both (NAN when
                                 none) */
} runlog_summary;

void runlog_summarize(const runlog *r, runlog_summary *s);
#endif
