/* Alpaca-format data (DESIGN.md §2): JSON array of {instruction, input (optional), output}
 * -> prompt templates -> token ids and labels.
 * Ownership: alpaca_load()/dataset_build() fill structs the caller frees with
 * alpaca_free()/dataset_free(). */
#ifndef DATA_ALPACA_H
#define DATA_ALPACA_H
#include <stdint.h>
#include <stdio.h>
#include "data/tok.h"

typedef struct alpaca_example {
    char *instruction;
    char *input;  /* "" when absent */
    char *output;
} alpaca_example;

typedef struct alpaca_set {
    alpaca_example *ex;
    int n;
    int plain_text; /* 1: examples are plain-text documents (in `output`), no template */
} alpaca_set;

/* The most text one example (instruction + input + output, or one line of a text file) may
 * hold: SentencePiece's cost grows faster than linearly with the length (about 0.2 s at this
 * bound, 47 s at 4 MB), and only the first max_seq_len tokens are ever trained, so a longer
 * example is refused with this bound rather than left to run for minutes. */
#define ALPACA_MAX_EXAMPLE_BYTES ((size_t)256 * 1024)

/* Parses the file. 0, or -1 with one line in err: "FILE: example 12: field \"output\": expected
 * a string", "FILE: line 3, byte 57: not valid JSON", "FILE: invalid UTF-8 in example 4 ...".
 * Example indices in messages are 0-based (the array's first element is "example 0").
 * "input" may be absent (stored as ""); when present it must be a string. An empty file or an
 * empty array is an error. */
int alpaca_load(const char *path, alpaca_set *s, char *err, size_t errlen);
void alpaca_free(alpaca_set *s);

/* Plain-text documents for language-model training (pre-training, the demo's base model): one
 * document per non-empty line of a UTF-8 text file, each trained on every token:
 * ids = [bos] + encode(line) + [eos], labels = ids (the bos position is never a target).
 * Fills s with plain_text = 1 (the line in `output`). 0 or -1 with err ("FILE: line 7: invalid
 * UTF-8 ..."). */
int text_load(const char *path, alpaca_set *s, char *err, size_t errlen);

/* format "alpaca", "text", or "auto"/NULL (".txt" files are text, anything else Alpaca JSON). */
int data_load(const char *path, const char *format, alpaca_set *s, char *err, size_t errlen);

/* The template text of DESIGN.md §2 for one example (malloc'ed). */
char *alpaca_prompt(const char *instruction, const char *input);

/* Tokenized examples, concatenated without padding. */
typedef struct dataset {
    int n;              /* examples */
    int *ids;           /* example_ids of every example back to back */
    int *labels;        /* same layout: example_ids with the prompt positions set to 0 */
    int64_t *off;       /* [n+1]: example i is ids[off[i] .. off[i+1]) */
    /* summary counters */
    int n_with_input;
    int n_truncated;    /* examples cut at max_seq_len */
    int n_no_loss;      /* examples whose labels are all 0 after truncation */
    int64_t n_loss_tokens; /* non-zero labels after the first position, all examples */
    int max_seq_len;    /* the truncation length the set was built with */
    unsigned char *flags; /* [n] per example: DATASET_HAS_INPUT | DATASET_TRUNCATED */
} dataset;

enum { DATASET_HAS_INPUT = 1, DATASET_TRUNCATED = 2 };

/* example_ids = [bos] + encode(prompt + output) + [eos], truncated to max_seq_len; the first
 * len([bos] + encode(prompt)) labels are 0. 0 or -1 with err naming the example. */
int dataset_build(dataset *d, const alpaca_set *s, const tok *t, int max_seq_len, char *err,
                  size_t errlen);
void dataset_free(dataset *d);
/* Writes the tokenized examples as JSON for other tools (the PyTorch peer of the tests and
 * benchmarks): {"bos","eos","vocab","max_seq_len","tokenizer","n","examples":[[n_prompt, id0,
 * id1, ...], ...]}; an example's labels are its ids with the first n_prompt set to 0. 0 or -1
 * with err. */
int dataset_write_json(const dataset *d, const tok *t, const char *tokenizer_name, const char *path, char *err,
                       size_t errlen);
/* Moves the first n_val examples of d into val (the --val-split rule); 0 <= n_val < d->n.
 * Both sets get their counters recomputed; val is a fresh set the caller frees. */
int dataset_split(dataset *d, dataset *val, int n_val, char *err, size_t errlen);
/* The summary printed at the start of training: examples, with/without input, token length
 * mean/p50/p95/max, truncated, without loss tokens, loss tokens per epoch. */
void dataset_summary(const dataset *d, const char *name, FILE *f);
#endif
