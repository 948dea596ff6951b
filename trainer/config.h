/* The training configuration: one typed struct with defaults, filled from a JSON preset
 * (--config FILE, keys with underscores) and then from flags (the same names with dashes), and
 * validated in one place. The resolved config is printed at start and stored in checkpoints.
 * Ownership: strings point into argv or into the parsed JSON kept in cfg->json_keep; free with
 * train_config_free(). */
#ifndef TRAINER_CONFIG_H
#define TRAINER_CONFIG_H
#include <stdio.h>

typedef struct train_config {
    const char *model, *tokenizer, *data, *val_data, *out, *init_adapter, *resume;
    const char *method;   /* "adapter" | "full" */
    const char *gate_act; /* "tanh" | "identity" */
    const char *data_format; /* "auto" | "alpaca" | "text" (plain documents, one per line) */
    const char *precision;   /* "auto" | "f32" | "bf16": GEMM precision (trainer/precision.h) */
    const char *prefix_cache; /* "auto" | "on" | "off": cache the frozen layers' output (trainer/prefix_cache.h) */
    const char *recompute;   /* "auto" | "on" | "off": gradient checkpointing of the recorded layers */
    const char *memory_budget; /* "auto" (available at start-up minus a margin) or a size like "20G" */
    int adapter_len, adapter_layer, max_seq_len, batch_size, accum_iter, epochs;
    double warmup_epochs, blr, lr, min_lr, weight_decay, beta1, beta2, eps;
    long long seed, max_steps;
    int no_shuffle, threads, save_every, keep, eval_every, log_every, val_split;
    int overwrite;        /* --overwrite: a new run may replace the run files of --out */
    int world_size;       /* data-parallel processes (from MPI, not a flag) */
    int json_world_size;  /* "world_size" of a config file or resumed checkpoint; 0 when absent */
    void *json_keep;      /* parsed config file (owns the strings taken from it) */
    /* which keys this invocation set itself (a flag or --config FILE), as opposed to defaults
     * or a resumed checkpoint's config */
    int given_out, given_warmup;
} train_config;

/* Upper bounds of the numeric settings (refused above them, with the bound in the message). */
#define CFG_MAX_LR 10.0             /* lr, blr, min_lr; also the effective lr */
#define CFG_MAX_ADAPTER_LEN 1024    /* K: each prompt costs as much as a token of attention */
#define CFG_MAX_SEQ_LEN (1 << 20)
#define CFG_MAX_TOKENS (1 << 30)    /* batch_size * max_seq_len */
#define CFG_MAX_SEED ((1LL << 53) - 1) /* seeds survive the JSON of the config exactly */
#define CFG_MAX_WORLD (1 << 20)


/* Defaults (the reference recipe where it has one). */
void train_config_defaults(train_config *c);
/* Parses argv of `train` (argv[0] = "train"): base_json (a resumed checkpoint's config, named
 * base_name in messages; may be NULL) first, then --config FILE, then flags over both.
 * Returns 0, 1 when --help was printed, -1 after printing one error line. */
int train_config_parse(train_config *c, int argc, char **argv, const char *base_json, const char *base_name);
/* Checks ranges and required paths; -1 with err. n_layers: of the loaded model (adapter_layer
 * is checked against it). */
int train_config_validate(const train_config *c, int n_layers, char *err, size_t errlen);
/* The effective learning rate: lr if given (> 0), else blr * eff_batch / 256 with
 * eff_batch = batch_size * accum_iter * world_size. */
double train_config_lr(const train_config *c);
/* The resolved config as a JSON object (malloc'ed string). */
char *train_config_json(const train_config *c);
void train_config_free(train_config *c);
#endif
