/* `llama-adapter inspect DATA.json --tokenizer T.model [--max-seq-len N]`: loads and tokenizes an
 * Alpaca file exactly as training would and prints the dataset summary (and the time taken).
 * Exit status: 0 on success, 1 on bad input (one line on stderr naming the file and the place),
 * 2 on a usage error. Deliberately not here: model/checkpoint inspection (cmd_inspect
 * dispatches .json data files here), printing individual examples. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/alpaca.h"
#include "data/tok.h"
#include "trainer/cli.h"

static const char USAGE[] =
    "usage: llama-adapter inspect DATA.json --tokenizer T.model [--max-seq-len N]\n"
    "\n"
    "Loads an Alpaca JSON file (array of {instruction, input, output}), tokenizes it with the\n"
    "prompt templates used for training and prints: examples with/without input, tokens per\n"
    "example (mean, p50, p95, max), examples truncated at max_seq_len, examples without loss\n"
    "tokens, loss tokens per epoch.\n"
    "\n"
    "  --tokenizer FILE    SentencePiece .model (required)\n"
    "  --max-seq-len N    truncation length in tokens (default 512)\n";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int usage_error(const char *what, const char *arg) {
    fprintf(stderr, "llama-adapter inspect: %s%s%s (see llama-adapter inspect DATA.json --help)\n",
            what, arg ? " " : "", arg ? arg : "");
    return 2;
}

int cmd_inspect_data(int argc, char **argv) {
    const char *data = NULL, *tok_path = NULL;
    int max_seq_len = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer")) {
            if (++i >= argc) return usage_error("--tokenizer needs a value", NULL);
            tok_path = argv[i];
        } else if (!strcmp(a, "--max-seq-len")) {
            if (++i >= argc) return usage_error("--max-seq-len needs a value", NULL);
            char *end;
            long v = strtol(argv[i], &end, 10);
            if (*end || end == argv[i] || v < 2 || v > 1 << 24)
                return usage_error("--max-seq-len: expected an integer >= 2, got", argv[i]);
            max_seq_len = (int)v;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option", a);
        } else if (!data) {
            data = a;
        } else {
            return usage_error("more than one data file:", a);
        }
    }
    if (!data) return usage_error("missing DATA.json", NULL);
    if (!tok_path) return usage_error("missing --tokenizer T.model", NULL);

    char err[512];
    double t0 = now_s();
    alpaca_set s;
    if (alpaca_load(data, &s, err, sizeof err)) {
        fprintf(stderr, "llama-adapter inspect: %s\n", err);
        return 1;
    }
    tok *t = tok_load(tok_path, err, sizeof err);
    if (!t) {
        fprintf(stderr, "llama-adapter inspect: %s\n", err);
        alpaca_free(&s);
        return 1;
    }
    dataset d;
    if (dataset_build(&d, &s, t, max_seq_len, err, sizeof err)) {
        fprintf(stderr, "llama-adapter inspect: %s: %s\n", data, err);
        tok_free(t);
        alpaca_free(&s);
        return 1;
    }
    double dt = now_s() - t0;
    dataset_summary(&d, data, stdout);
    printf("  tokenizer            %s (vocab %d, bos %d, eos %d)\n", tok_path, tok_vocab_size(t),
           tok_bos(t), tok_eos(t));
    printf("  load + tokenize      %.3f s\n", dt);
    dataset_free(&d);
    tok_free(t);
    alpaca_free(&s);
    return 0;
}
