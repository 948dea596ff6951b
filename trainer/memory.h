/* Memory of a run, predicted from the shapes before anything big is allocated, and the budget
 * it must fit (DESIGN.md §7).
 *
 * The activation part mirrors what the ops take from the step arena (trainer/llama.c): per
 * recorded layer its saved activations, or with recomputation only its input plus one layer's
 * activations and gradients at a time; the frozen layers' transient; the loss head at the
 * labelled positions. tests/test_memory.c holds the formula to the measured arena high-water
 * mark. What it does not count: the C library's and MPI's own heap (a fixed allowance). */
#ifndef TRAINER_MEMORY_H
#define TRAINER_MEMORY_H
#include <stddef.h>

#include "checkpoints/model_file.h"

typedef struct mem_plan {
    double weights;     /* frozen weights resident in this process (mapped pages + converted copies) */
    double trainable;   /* parameters, gradients and AdamW moments */
    double activations; /* step arena high-water for the micro-batch */
    double workspace;   /* per-op scratch (16-bit weight tiles, attention), BLAS buffers */
    double data;        /* raw and tokenized training data */
    double base;        /* libraries, tokenizer, runtime */
    double total;
} mem_plan;

/* Arena bytes of one forward (+ backward when recorded > 0) over T tokens of which n_label carry
 * a label, with `recorded` layers on the tape (the top ones) out of cfg->n_layers. */
double mem_activation_bytes(const llama_config *cfg, int T, int n_label, int recorded, int recompute, int K);

/* The whole plan of a training run (recorded = adapter_layer, or n_layers when full) for
 * micro-batches of up to T tokens; data_file_bytes: size of the data file (0 unknown). */
mem_plan mem_plan_train(const model_weights *w, int K, int recorded, int full, int T, int recompute, int threads,
                        double data_file_bytes);
/* Evaluation / generation: no tape. */
mem_plan mem_plan_eval(const model_weights *w, int T, int threads, double data_file_bytes);

/* Bytes of the frozen weights resident once loaded; *mapped gets the part served from the file
 * mapping (may be NULL). */
double mem_weight_bytes(const model_weights *w, double *mapped);

/* MemAvailable of /proc/meminfo in bytes, or -1 when unknown. */
double mem_available(void);
/* The default budget: available memory minus a margin (5%, at least 512 MiB). -1 when unknown. */
double mem_default_budget(void);
/* "auto" (-> *bytes = 0), or a size: a number with an optional K, M, G or T suffix (powers of
 * 1024; "GiB"/"GB" spellings accepted). 0 or -1 when unreadable. */
int mem_parse_size(const char *s, double *bytes);
/* "12.3 GiB" style. */
void mem_human(char *buf, size_t n, double bytes);
#endif
