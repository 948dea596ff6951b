/* metrics.jsonl reader and run summary (see runlog.h). */
#include "trainer/runlog.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { F_STEP, F_EPOCH, F_LR, F_LOSS, F_TOKENS, F_TPS, F_TOTAL, F_TOTAL_TPS, F_VAL, F_VAL_TOKENS, N_FIELDS };
static const char *const FIELD_NAMES[N_FIELDS] = {"step",          "epoch",        "lr",
                                                  "loss",          "tokens",       "tokens_per_s",
                                                  "total_tokens",  "total_tokens_per_s", "val_loss",
                                                  "val_tokens"};

static double **field_ptr(runlog *r, int k) {
    double **p[N_FIELDS] = {&r->step,         &r->epoch,        &r->lr,       &r->loss,     &r->tokens,
                            &r->tokens_per_s, &r->total_tokens, &r->total_tokens_per_s, &r->val_loss,
                            &r->val_tokens};
    return p[k];
}

void runlog_free(runlog *r) {
    for (int k = 0; k < N_FIELDS; k++) {
        free(*field_ptr(r, k));
        *field_ptr(r, k) = NULL;
    }
    r->n = 0;
}

static int grow(runlog *r, int cap) {
    for (int k = 0; k < N_FIELDS; k++) {
        double *p = realloc(*field_ptr(r, k), (size_t)cap * sizeof(double));
        if (!p) return -1;
        *field_ptr(r, k) = p;
    }
    return 0;
}

int runlog_load(const char *path, runlog *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    char file[4200];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) snprintf(file, sizeof file, "%s/metrics.jsonl", path);
    else snprintf(file, sizeof file, "%s", path);
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s (expected a run directory or a metrics.jsonl file)", file,
                 strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rcap = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        int complete = len > 0 && line[len - 1] == '\n';
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
        if (len == 0) continue;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const char *bad = NULL;
        if (!o || !cJSON_IsObject(o)) bad = "not a JSON object";
        else if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "step"))) bad = "field \"step\": expected a number";
        else if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "loss"))) bad = "field \"loss\": expected a number";
        if (bad) {
            cJSON_Delete(o);
            if (!complete) break; /* a line cut short at the end of a file still being written */
            snprintf(err, errlen, "%s: line %d: %s", file, lineno, bad);
            rc = -1;
            break;
        }
        if (r->n == rcap) {
            rcap = rcap ? 2 * rcap : 256;
            if (grow(r, rcap)) {
                cJSON_Delete(o);
                snprintf(err, errlen, "%s: out of memory", file);
                rc = -1;
                break;
            }
        }
        for (int k = 0; k < N_FIELDS; k++) {
            cJSON *v = cJSON_GetObjectItemCaseSensitive(o, FIELD_NAMES[k]);
            (*field_ptr(r, k))[r->n] = cJSON_IsNumber(v) ? v->valuedouble : NAN;
        }
        r->n++;
        cJSON_Delete(o);
    }
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: read error", file);
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc) runlog_free(r);
    return rc;
}

void runlog_summarize(const runlog *r, runlog_summary *s) {
    memset(s, 0, sizeof *s);
    s->final_loss = NAN;
    s->best_val_loss = NAN;
    s->loss_tokens_per_s = NAN;
    if (r->n == 0) return;
    s->steps = (long long)r->step[r->n - 1];
    s->final_loss = r->loss[r->n - 1];
    double tok_timed = 0;
    for (int i = 0; i < r->n; i++) {
        if (isfinite(r->tokens[i])) s->loss_tokens += r->tokens[i];
        double dt = r->total_tokens[i] / r->total_tokens_per_s[i];
        if (isfinite(dt) && dt > 0 && isfinite(r->tokens[i])) {
            s->step_seconds += dt;
            tok_timed += r->tokens[i];
        }
        if (isfinite(r->val_loss[i]) && !(r->val_loss[i] >= s->best_val_loss)) {
            s->best_val_loss = r->val_loss[i];
            s->best_val_step = (long long)r->step[i];
        }
    }
    if (s->step_seconds > 0) s->loss_tokens_per_s = tok_timed / s->step_seconds;
}
