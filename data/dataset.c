/* Tokenized Alpaca examples (DESIGN.md §2): ids and labels of every example back to back, the
 * validation split, and the summary printed before training.
 *   prompt_ids  = [bos] + encode(prompt)
 *   example_ids = [bos] + encode(prompt + output) + [eos], cut to max_seq_len
 *   labels      = example_ids with the first len(prompt_ids) positions (clipped) set to 0
 * The prompt is encoded on its own only to count its tokens, as the reference does; the ids
 * come from the encoding of the whole string. Examples are encoded in parallel (OpenMP over
 * examples; SentencePiece's Encode is const), the result does not depend on the thread count.
 * Deliberately not here: padding (there is none), batching and order (loader.c). */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "data/alpaca.h"
#include "data/err.h"


/* Example i's ids (malloc'ed, *len entries) and the number of leading masked labels. */
static int encode_example(const alpaca_example *x, int plain, int i, const tok *t, int max_seq_len, int **ids,
                          int *len, int *n_prompt, int *truncated, char *err, size_t errlen) {
    *ids = NULL;
    char *prompt = plain ? calloc(1, 1) : alpaca_prompt(x->instruction, x->input);
    size_t pl = prompt ? strlen(prompt) : 0, ol = strlen(x->output);
    char *full = prompt ? malloc(pl + ol + 1) : NULL;
    int *pids = NULL, *fids = NULL, np = 0, nf = 0, rc = -1;
    char e2[256];
    if (!full) {
        data_set_err(err, errlen, "example %d: out of memory", i);
        goto done;
    }
    memcpy(full, prompt, pl);
    memcpy(full + pl, x->output, ol + 1);
    if (tok_encode(t, prompt, &pids, &np, e2, sizeof e2) ||
        tok_encode(t, full, &fids, &nf, e2, sizeof e2)) {
        data_set_err(err, errlen, "example %d: %s", i, e2);
        goto done;
    }
    int L = nf + 2;
    *truncated = L > max_seq_len;
    if (L > max_seq_len) L = max_seq_len;
    int *out = malloc((size_t)L * sizeof *out);
    if (!out) {
        data_set_err(err, errlen, "example %d: out of memory", i);
        goto done;
    }
    out[0] = tok_bos(t);
    for (int k = 1; k < L; k++) out[k] = k - 1 < nf ? fids[k - 1] : tok_eos(t);
    *ids = out;
    *len = L;
    *n_prompt = np + 1 < L ? np + 1 : L;
    rc = 0;
done:
    free(prompt);
    free(full);
    free(pids);
    free(fids);
    return rc;
}

/* Recomputes the counters from flags, labels and offsets. */
static void dataset_recount(dataset *d) {
    d->n_with_input = d->n_truncated = d->n_no_loss = 0;
    d->n_loss_tokens = 0;
    for (int i = 0; i < d->n; i++) {
        d->n_with_input += (d->flags[i] & DATASET_HAS_INPUT) != 0;
        d->n_truncated += (d->flags[i] & DATASET_TRUNCATED) != 0;
        int64_t c = 0;
        for (int64_t k = d->off[i] + 1; k < d->off[i + 1]; k++) c += d->labels[k] != 0;
        d->n_no_loss += c == 0;
        d->n_loss_tokens += c;
    }
}

int dataset_build(dataset *d, const alpaca_set *s, const tok *t, int max_seq_len, char *err,
                  size_t errlen) {
    memset(d, 0, sizeof *d);
    if (max_seq_len < 2) {
        data_set_err(err, errlen, "max_seq_len %d: expected at least 2", max_seq_len);
        return -1;
    }
    if (tok_bos(t) < 0 || tok_eos(t) < 0) {
        data_set_err(err, errlen, "tokenizer: the model defines no %s token: expected bos and eos ids",
                tok_bos(t) < 0 ? "bos" : "eos");
        return -1;
    }
    int n = s->n;
    int **ids = calloc((size_t)n + 1, sizeof *ids);
    int *len = calloc((size_t)n + 1, sizeof *len), *np = calloc((size_t)n + 1, sizeof *np);
    d->flags = calloc((size_t)n + 1, 1);
    d->off = calloc((size_t)n + 1, sizeof *d->off);
    int bad = n; /* lowest failing example */
    if (!ids || !len || !np || !d->flags || !d->off) {
        data_set_err(err, errlen, "dataset: out of memory for %d examples", n);
        goto fail;
    }
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < n; i++) {
        int tr = 0;
        if (encode_example(&s->ex[i], s->plain_text, i, t, max_seq_len, &ids[i], &len[i], &np[i], &tr, NULL, 0)) {
#pragma omp critical(dataset_bad)
            if (i < bad) bad = i;
        }
        d->flags[i] = (unsigned char)((s->ex[i].input[0] ? DATASET_HAS_INPUT : 0) |
                                      (tr ? DATASET_TRUNCATED : 0));
    }
    if (bad < n) { /* again, serially, for the message */
        int *tmp = NULL, l, p, tr;
        if (!encode_example(&s->ex[bad], s->plain_text, bad, t, max_seq_len, &tmp, &l, &p, &tr, err, errlen))
            data_set_err(err, errlen, "example %d: encoding failed", bad);
        free(tmp);
        goto fail;
    }
    for (int i = 0; i < n; i++) d->off[i + 1] = d->off[i] + len[i];
    int64_t total = d->off[n];
    d->ids = malloc((size_t)(total ? total : 1) * sizeof *d->ids);
    d->labels = malloc((size_t)(total ? total : 1) * sizeof *d->labels);
    if (!d->ids || !d->labels) {
        data_set_err(err, errlen, "dataset: out of memory for %lld tokens", (long long)total);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        int *di = d->ids + d->off[i], *dl = d->labels + d->off[i];
        memcpy(di, ids[i], (size_t)len[i] * sizeof *di);
        for (int k = 0; k < len[i]; k++) dl[k] = k < np[i] ? 0 : di[k];
    }
    d->n = n;
    d->max_seq_len = max_seq_len;
    dataset_recount(d);
    for (int i = 0; i < n; i++) free(ids[i]);
    free(ids);
    free(len);
    free(np);
    return 0;
fail:
    if (ids)
        for (int i = 0; i < n; i++) free(ids[i]);
    free(ids);
    free(len);
    free(np);
    dataset_free(d);
    return -1;
}

void dataset_free(dataset *d) {
    if (!d) return;
    free(d->ids);
    free(d->labels);
    free(d->off);
    free(d->flags);
    memset(d, 0, sizeof *d);
}

/* A new set holding examples [a, b) of d. */
static int dataset_slice(dataset *out, const dataset *d, int a, int b) {
    memset(out, 0, sizeof *out);
    int n = b - a;
    int64_t t0 = d->off[a], T = d->off[b] - t0;
    out->off = malloc(((size_t)n + 1) * sizeof *out->off);
    out->flags = malloc((size_t)n + 1);
    out->ids = malloc((size_t)(T ? T : 1) * sizeof *out->ids);
    out->labels = malloc((size_t)(T ? T : 1) * sizeof *out->labels);
    if (!out->off || !out->flags || !out->ids || !out->labels) {
        dataset_free(out);
        return -1;
    }
    for (int i = 0; i <= n; i++) out->off[i] = d->off[a + i] - t0;
    if (n) memcpy(out->flags, d->flags + a, (size_t)n);
    if (T) {
        memcpy(out->ids, d->ids + t0, (size_t)T * sizeof *out->ids);
        memcpy(out->labels, d->labels + t0, (size_t)T * sizeof *out->labels);
    }
    out->n = n;
    out->max_seq_len = d->max_seq_len;
    dataset_recount(out);
    return 0;
}

int dataset_split(dataset *d, dataset *val, int n_val, char *err, size_t errlen) {
    memset(val, 0, sizeof *val);
    if (n_val < 0 || n_val >= d->n) {
        data_set_err(err, errlen, "validation split of %d examples out of %d: expected 0 <= n < %d",
                n_val, d->n, d->n);
        return -1;
    }
    dataset rest;
    if (dataset_slice(val, d, 0, n_val) || dataset_slice(&rest, d, n_val, d->n)) {
        dataset_free(val);
        data_set_err(err, errlen, "validation split: out of memory");
        return -1;
    }
    dataset_free(d);
    *d = rest;
    return 0;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Percentiles by nearest rank: the smallest length with at least q of the examples at or
 * below it. */
void dataset_summary(const dataset *d, const char *name, FILE *f) {
    int n = d->n;
    int *len = malloc((size_t)(n ? n : 1) * sizeof *len);
    double mean = 0;
    int p50 = 0, p95 = 0, mx = 0;
    if (len && n) {
        for (int i = 0; i < n; i++) len[i] = (int)(d->off[i + 1] - d->off[i]);
        qsort(len, (size_t)n, sizeof *len, cmp_int);
        mean = (double)d->off[n] / n;
        int r50 = (int)((50LL * n + 99) / 100), r95 = (int)((95LL * n + 99) / 100);
        p50 = len[r50 - 1];
        p95 = len[r95 - 1];
        mx = len[n - 1];
    }
    free(len);
    fprintf(f, "dataset %s\n", name ? name : "");
    fprintf(f, "  examples             %d (%d with input, %d without)\n", n, d->n_with_input,
            n - d->n_with_input);
    fprintf(f, "  tokens per example   mean %.1f  p50 %d  p95 %d  max %d\n", mean, p50, p95, mx);
    fprintf(f, "  truncated            %d (at max_seq_len %d)\n", d->n_truncated, d->max_seq_len);
    fprintf(f, "  without loss tokens  %d\n", d->n_no_loss);
    fprintf(f, "  loss tokens / epoch  %lld (of %lld tokens)\n", (long long)d->n_loss_tokens,
            (long long)(n ? d->off[n] : 0));
}

int dataset_write_json(const dataset *d, const tok *t, const char *tokenizer_name, const char *path, char *err,
                       size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) {
        data_set_err(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\"bos\":%d,\"eos\":%d,\"vocab\":%d,\"max_seq_len\":%d,\"tokenizer\":\"%s\",\"n\":%d,\"examples\":[\n",
            tok_bos(t), tok_eos(t), tok_vocab_size(t), d->max_seq_len, tokenizer_name, d->n);
    for (int i = 0; i < d->n; i++) {
        int64_t a = d->off[i], b = d->off[i + 1], np = 0;
        while (a + np < b && d->labels[a + np] == 0) np++;
        fprintf(f, "%s[%lld", i ? ",\n" : "", (long long)np);
        for (int64_t k = a; k < b; k++) fprintf(f, ",%d", d->ids[k]);
        fputc(']', f);
    }
    fputs("\n]}\n", f);
    if (ferror(f) | fclose(f)) {
        data_set_err(err, errlen, "%s: write failed", path);
        return -1;
    }
    return 0;
}
