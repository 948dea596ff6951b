/* The fixture of the tests/test_robust_*.c binaries and of scripts/fuzz.sh: a SentencePiece
 * tokenizer trained on a small corpus, a tiny random HF Llama model (dim 32, 2 layers, GQA),
 * Alpaca JSON, all written into a directory by robust_fixture(). Everything is made here, from
 * a fixed seed; nothing is read from ../shared. Static functions: included once per binary. */
#ifndef TESTS_ROBUST_FIXTURE_H
#define TESTS_ROBUST_FIXTURE_H
#include <stdio.h>

#include "autograd/rng.h"
#include "checkpoints/model_file.h"
#include "data/tok.h"

typedef struct robust_fixture {
    char dir[256];
    char tok[320], model[320], data[320], corpus[320];
    int vocab;
} robust_fixture;

static const char *const ROBUST_WORDS[] = {"apple", "river", "stone", "cloud", "green", "table", "music", "light",
                                           "paper", "glass", "horse", "bread", "ocean", "chair", "tiger", "honey"};

/* Writes n Alpaca examples ("Repeat the word twice.") to path. */
static int robust_write_data(const char *path, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "[\n");
    for (int i = 0; i < n; i++) {
        const char *a = ROBUST_WORDS[i % 16];
        fprintf(f, "%s{\"instruction\": \"Repeat the word twice.\", \"input\": \"%s\", \"output\": \"%s %s\"}\n",
                i ? "," : "", a, a, a);
    }
    fprintf(f, "]\n");
    return fclose(f);
}

/* Fills fx->dir (must exist) with corpus.txt, tok.model, model/ (HF, f32) and data.json. */
static int robust_fixture_make(robust_fixture *fx) {
    char err[512], prefix[300];
    snprintf(fx->corpus, sizeof fx->corpus, "%s/corpus.txt", fx->dir);
    FILE *f = fopen(fx->corpus, "w");
    if (!f) return -1;
    ag_rng r;
    ag_rng_seed(&r, 1);
    for (int i = 0; i < 300; i++) {
        const char *a = ROBUST_WORDS[ag_rng_below(&r, 16)], *b = ROBUST_WORDS[ag_rng_below(&r, 16)];
        fprintf(f, "Below is an instruction that describes a task. Repeat the word %s twice: %s %s. The %s is near the %s.\n",
                a, a, a, a, b);
    }
    fclose(f);
    snprintf(prefix, sizeof prefix, "%s/tok", fx->dir);
    if (tok_train(fx->corpus, prefix, 300, "bpe", err, sizeof err)) {
        printf("fixture: %s\n", err);
        return -1;
    }
    snprintf(fx->tok, sizeof fx->tok, "%s/tok.model", fx->dir);
    tok *t = tok_load(fx->tok, err, sizeof err);
    if (!t) return -1;
    fx->vocab = tok_vocab_size(t);
    tok_free(t);
    snprintf(fx->data, sizeof fx->data, "%s/data.json", fx->dir);
    if (robust_write_data(fx->data, 32)) return -1;
    llama_config c = {.dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .hidden_dim = 64, .vocab_size = fx->vocab,
                      .max_seq_len = 128, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1};
    model_weights w;
    snprintf(fx->model, sizeof fx->model, "%s/model", fx->dir);
    if (model_init_random(&w, &c, 1, 0.2f)) return -1;
    int rc = model_save_hf(fx->model, &w, AG_F32, 0, err, sizeof err);
    model_free(&w);
    if (rc) printf("fixture: %s\n", err);
    return rc;
}
#endif
