/* Tokenizer: a C API over the sentencepiece library (the C++ lives only in tok_spm.cpp; no C++
 * type or exception crosses this header).
 * Ownership: tok_load() returns a handle the caller frees with tok_free(); returned arrays and
 * strings are malloc'ed and freed by the caller with free(). */
#ifndef DATA_TOK_H
#define DATA_TOK_H
#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;

/* Loads a SentencePiece .model file. NULL with one line in err ("FILE: not a SentencePiece
 * model ...") on failure. */
tok *tok_load(const char *path, char *err, size_t errlen);
void tok_free(tok *t);

int tok_vocab_size(const tok *t);
int tok_bos(const tok *t); /* from the model file */
int tok_eos(const tok *t);
/* A stable hash of the model file bytes (refuses resuming with another tokenizer). */
uint64_t tok_fingerprint(const tok *t);

/* Encodes text (no bos/eos added) into *ids (malloc'ed, *n entries). 0 or -1 with err. */
int tok_encode(const tok *t, const char *text, int **ids, int *n, char *err, size_t errlen);
/* Decodes ids to text (malloc'ed, NUL-terminated); NULL on failure. */
char *tok_decode(const tok *t, const int *ids, int n);

/* Trains a SentencePiece model from a text file (one sentence per line) into
 * `model_prefix`.model (BPE unless model_type says "unigram"; bos 1, eos 2, unk 0, pad off,
 * byte fallback on). Deterministic for the same input. 0 or -1 with err. */
int tok_train(const char *text_path, const char *model_prefix, int vocab_size,
              const char *model_type, char *err, size_t errlen);
#endif
