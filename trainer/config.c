/* Training configuration: defaults, JSON preset, flags, validation (see config.h). */
#include "trainer/config.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "trainer/args.h"
#include "trainer/memory.h"

void train_config_defaults(train_config *c) {
    memset(c, 0, sizeof *c);
    c->method = "adapter";
    c->gate_act = "tanh";
    c->data_format = "auto";
    c->recompute = "auto";
    c->prefix_cache = "auto";
    c->precision = "auto";
    c->memory_budget = "auto";
    c->out = "runs/latest";
    c->adapter_len = 10;
    c->adapter_layer = 30;
    c->max_seq_len = 512;
    c->batch_size = 4;
    c->accum_iter = 1;
    c->epochs = 5;
    c->warmup_epochs = 2;
    c->blr = 9e-3;
    c->lr = 0;
    c->min_lr = 0;
    c->weight_decay = 0.02;
    c->beta1 = 0.9;
    c->beta2 = 0.95;
    c->eps = 1e-8;
    c->seed = 0;
    c->max_steps = 0;
    c->threads = 0;
    c->save_every = 0;
    c->keep = 3;
    c->eval_every = 0;
    c->log_every = 10;
    c->val_split = 0;
    c->world_size = 1;
}

#define SPECS(c)                                                                                              \
    {"config", ARG_STR, &config_path, "JSON preset (keys as below with underscores); flags override it", 0},  \
    {"model", ARG_STR, &(c)->model, "base model: HF Llama directory or llama2.c .bin", 0},                    \
    {"tokenizer", ARG_STR, &(c)->tokenizer, "SentencePiece .model of the base model", 0},                    \
    {"data", ARG_STR, &(c)->data, "Alpaca-format JSON training data", 0},                                    \
    {"data-format", ARG_STR, &(c)->data_format, "auto (.txt = text) | alpaca | text (one document per line, all tokens trained)", 0}, \
    {"val-data", ARG_STR, &(c)->val_data, "Alpaca-format JSON validation data", 0},                          \
    {"val-split", ARG_INT, &(c)->val_split, "hold out the first N training examples for validation", 0},    \
    {"out", ARG_STR, &(c)->out, "run directory: checkpoints and metrics.jsonl", 0},                          \
    {"method", ARG_STR, &(c)->method, "adapter | full (every weight trains: the baseline)", 0},             \
    {"adapter-len", ARG_INT, &(c)->adapter_len, "K: adaption prompts per adapted layer", 0},                 \
    {"adapter-layer", ARG_INT, &(c)->adapter_layer, "L: adapted top layers (clipped to the model's)", 0},    \
    {"gate-act", ARG_STR, &(c)->gate_act, "tanh (paper training code) | identity (inference release)", 0},  \
    {"max-seq-len", ARG_INT, &(c)->max_seq_len, "truncate examples to this many tokens", 0},                 \
    {"batch-size", ARG_INT, &(c)->batch_size, "examples per micro-batch", 0},                                \
    {"accum-iter", ARG_INT, &(c)->accum_iter, "micro-batches per optimizer step", 0},                        \
    {"epochs", ARG_INT, &(c)->epochs, "passes over the training data", 0},                                   \
    {"warmup-epochs", ARG_DOUBLE, &(c)->warmup_epochs, "linear warm-up length in (fractional) epochs", 0},    \
    {"blr", ARG_DOUBLE, &(c)->blr, "base lr: lr = blr * eff_batch / 256", 0},                                \
    {"lr", ARG_DOUBLE, &(c)->lr, "absolute lr (overrides blr when > 0)", 0},                                  \
    {"min-lr", ARG_DOUBLE, &(c)->min_lr, "floor of the cosine schedule", 0},                                  \
    {"weight-decay", ARG_DOUBLE, &(c)->weight_decay, "AdamW decoupled weight decay", 0},                      \
    {"beta1", ARG_DOUBLE, &(c)->beta1, "AdamW beta1", 0},                                                      \
    {"beta2", ARG_DOUBLE, &(c)->beta2, "AdamW beta2", 0},                                                      \
    {"eps", ARG_DOUBLE, &(c)->eps, "AdamW epsilon", 0},                                                        \
    {"seed", ARG_I64, &(c)->seed, "seed of the adapter init and the data order", 0},                         \
    {"no-shuffle", ARG_FLAG, &(c)->no_shuffle, "file order instead of a seeded permutation per epoch", 0},   \
    {"max-steps", ARG_I64, &(c)->max_steps, "stop after this many optimizer steps (0: no limit)", 0},       \
    {"init-adapter", ARG_STR, &(c)->init_adapter, "start from an exported adapter (any format)", 0},        \
    {"resume", ARG_STR, &(c)->resume, "continue a run: checkpoint file or run directory", 0},              \
    {"overwrite", ARG_FLAG, &(c)->overwrite, "a new run may replace the checkpoints and metrics of another run in --out", 0}, \
    {"save-every", ARG_INT, &(c)->save_every, "checkpoint every N steps (0: at epoch ends and the end)", 0}, \
    {"keep", ARG_INT, &(c)->keep, "keep the newest N checkpoints (0: all)", 0},                             \
    {"eval-every", ARG_INT, &(c)->eval_every, "validation loss every N steps too (0: epoch ends only)", 0},  \
    {"log-every", ARG_INT, &(c)->log_every, "a progress line every N steps when not on a terminal", 0},     \
    {"threads", ARG_INT, &(c)->threads, "OpenMP/OpenBLAS threads (0: all cores)", 0},                       \
    {"precision", ARG_STR, &(c)->precision, "auto | f32 | bf16: GEMMs of the linear layers in bf16 with f32 sums (auto: bf16 where the CPU has AVX512-BF16; f32 is the exact path)", 0}, \
    {"prefix-cache", ARG_STR, &(c)->prefix_cache, "auto | on | off: keep the output of the frozen layers below the adapter after epoch 1 and reuse it (auto: on when there is more than one epoch and the result is bit-exact, i.e. bf16 compute)", 0}, \
    {"recompute", ARG_STR, &(c)->recompute, "auto | on | off: keep only each adapted layer's input and recompute the layer in backward (auto: on when the run would not fit the memory budget)", 0}, \
    {"memory-budget", ARG_STR, &(c)->memory_budget, "auto (memory available at start-up minus 5%) or a size such as 20G: a run whose estimate exceeds it stops before loading the data", 0}, \


/* JSON keys: flag names with '-' -> '_'. `path` names the source in messages. The parsed tree
 * is kept (chained in json_keep) because string values point into it. `explicit`: the keys are
 * this invocation's own (--config FILE), not a resumed checkpoint's. */
static int load_json_text(train_config *c, arg_spec *specs, int n, const char *path, const char *buf, size_t got,
                          int explicit) {
    cJSON *root = cJSON_ParseWithLength(buf, got);
    if (!root || !cJSON_IsObject(root)) {
        const char *ep = cJSON_GetErrorPtr();
        long off = root ? 0 : (ep && ep >= buf && ep <= buf + got ? (long)(ep - buf) : -1);
        fprintf(stderr, "llama-adapter train: %s: %s (byte %ld)\n", path,
                root ? "expected a JSON object of config keys" : "not valid JSON", off);
        cJSON_Delete(root);
        return -1;
    }
    cJSON *keep = c->json_keep ? c->json_keep : cJSON_CreateArray();
    cJSON_AddItemToArray(keep, root);
    c->json_keep = keep;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "world_size")) { /* a record of the run, checked by the trainer */
            if (!cJSON_IsNumber(it) || !(it->valuedouble >= 1 && it->valuedouble <= CFG_MAX_WORLD) ||
                it->valuedouble != floor(it->valuedouble)) {
                fprintf(stderr, "llama-adapter train: %s: key \"world_size\": expected an integer 1..%d (processes)\n",
                        path, CFG_MAX_WORLD);
                return -1;
            }
            c->json_world_size = (int)it->valuedouble;
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%s", it->string);
        for (char *p = name; *p; p++)
            if (*p == '_') *p = '-';
        arg_spec *s = args_find(specs, n, name);
        if (!s || !strcmp(name, "config") || !strcmp(name, "overwrite")) {
            fprintf(stderr, "llama-adapter train: %s: unknown key \"%s\" (see llama-adapter train --help)\n", path, it->string);
            return -1;
        }
        int ok = 1;
        switch (s->type) {
        case ARG_STR:
            if (cJSON_IsNull(it)) *(const char **)s->dst = NULL;
            else if (cJSON_IsString(it)) *(const char **)s->dst = it->valuestring;
            else ok = 0;
            break;
        case ARG_INT:
            if (cJSON_IsNumber(it) && it->valuedouble == floor(it->valuedouble) && fabs(it->valuedouble) < 2e9) *(int *)s->dst = (int)it->valuedouble;
            else ok = 0;
            break;
        case ARG_I64: /* exact integers only: |v| <= 2^53 */
            if (cJSON_IsNumber(it) && it->valuedouble == floor(it->valuedouble) && fabs(it->valuedouble) <= 9007199254740992.0)
                *(long long *)s->dst = (long long)it->valuedouble;
            else ok = 0;
            break;
        case ARG_FLOAT:
        case ARG_DOUBLE:
            if (cJSON_IsNumber(it) && isfinite(it->valuedouble)) *(double *)s->dst = it->valuedouble;
            else ok = 0;
            break;
        case ARG_FLAG:
            if (cJSON_IsBool(it)) *(int *)s->dst = cJSON_IsTrue(it);
            else ok = 0;
            break;
        }
        if (!ok) {
            fprintf(stderr, "llama-adapter train: %s: key \"%s\": expected %s\n", path, it->string,
                    s->type == ARG_STR ? "a string" : s->type == ARG_FLAG ? "true or false" :
                    s->type == ARG_DOUBLE ? "a finite number" : s->type == ARG_I64 ? "an integer of at most 2^53" :
                    "an integer");
            return -1;
        }
        if (explicit && !strcmp(name, "out")) c->given_out = 1;
        if (explicit && !strcmp(name, "warmup-epochs")) c->given_warmup = 1;
    }
    return 0;
}

/* A config file is small: anything above this is refused before it is read. */
#define CFG_MAX_FILE (1 << 20)

static int load_json_file(train_config *c, arg_spec *specs, int n, const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "llama-adapter train: %s: cannot open config file: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CFG_MAX_FILE) {
        fprintf(stderr, "llama-adapter train: %s: %s: expected a JSON config file (at most 1 MB)\n", path,
                S_ISDIR(st.st_mode) ? "is a directory" : !S_ISREG(st.st_mode) ? "not a regular file" : "too large");
        fclose(f);
        return -1;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        fprintf(stderr, "llama-adapter train: %s: %s\n", path, buf ? "read error" : "out of memory");
        free(buf);
        return -1;
    }
    buf[got] = 0;
    int r = load_json_text(c, specs, n, path, buf, got, 1);
    free(buf);
    return r;
}

static const char USAGE[] = "--model M --tokenizer T --data D [--config FILE.json] [options]";

int train_config_parse(train_config *c, int argc, char **argv, const char *base_json, const char *base_name) {
    const char *config_path = NULL;
    arg_spec specs[] = {SPECS(c)};
    int n = (int)(sizeof specs / sizeof specs[0]);
    /* pass 1: only --config (and --help, printed with the defaults) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            args_help(stdout, "train", USAGE, specs, n);
            return 1;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config_path = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9)) config_path = argv[i] + 9;
    }
    if (base_json && load_json_text(c, specs, n, base_name, base_json, strlen(base_json), 0)) return -1;
    if (config_path && load_json_file(c, specs, n, config_path)) return -1;
    /* pass 2: every flag over the file */
    int r = args_parse("train", USAGE, argc, argv, specs, n, NULL, 0, NULL);
    if (r == 0) {
        c->given_out |= args_find(specs, n, "out")->seen;
        c->given_warmup |= args_find(specs, n, "warmup-epochs")->seen;
    }
    return r;
}

int train_config_validate(const train_config *c, int n_layers, char *err, size_t errlen) {
#define NEED(cond, ...)                          \
    do {                                         \
        if (!(cond)) {                           \
            snprintf(err, errlen, __VA_ARGS__);  \
            return -1;                           \
        }                                        \
    } while (0)
    NEED(c->model, "--model is required (a HF Llama directory or a llama2.c .bin)");
    NEED(c->data, "--data is required (Alpaca-format JSON)");
    NEED(c->tokenizer, "--tokenizer is required (SentencePiece .model)");
    NEED(c->out && *c->out, "--out must name a run directory");
    /* a config file may set a string key to null */
    NEED(c->method && (!strcmp(c->method, "adapter") || !strcmp(c->method, "full")), "--method '%s': expected adapter or full",
         c->method ? c->method : "(null)");
    NEED(c->gate_act && (!strcmp(c->gate_act, "tanh") || !strcmp(c->gate_act, "identity")),
         "--gate-act '%s': expected tanh or identity", c->gate_act ? c->gate_act : "(null)");
    NEED(c->data_format && (!strcmp(c->data_format, "auto") || !strcmp(c->data_format, "alpaca") || !strcmp(c->data_format, "text")),
         "--data-format '%s': expected auto, alpaca or text", c->data_format ? c->data_format : "(null)");
    NEED(c->adapter_len >= 1 && c->adapter_len <= CFG_MAX_ADAPTER_LEN,
         "--adapter-len %d: expected 1..%d (each prompt costs as much as a token of attention; the paper uses 10)",
         c->adapter_len, CFG_MAX_ADAPTER_LEN);
    NEED(c->adapter_layer >= 1, "--adapter-layer %d: expected >= 1", c->adapter_layer);
    NEED(n_layers <= 0 || c->adapter_layer <= n_layers, "--adapter-layer %d: the model has %d layers", c->adapter_layer, n_layers);
    NEED(c->max_seq_len >= 2 && c->max_seq_len <= CFG_MAX_SEQ_LEN, "--max-seq-len %d: expected 2..%d", c->max_seq_len,
         CFG_MAX_SEQ_LEN);
    NEED(c->batch_size >= 1, "--batch-size %d: expected >= 1", c->batch_size);
    NEED((long long)c->batch_size * c->max_seq_len <= CFG_MAX_TOKENS,
         "--batch-size %d x --max-seq-len %d: expected at most %d tokens per micro-batch", c->batch_size, c->max_seq_len,
         CFG_MAX_TOKENS);
    NEED(c->accum_iter >= 1, "--accum-iter %d: expected >= 1", c->accum_iter);
    NEED((long long)c->batch_size * c->accum_iter * c->world_size <= 2147483647LL,
         "--batch-size %d x --accum-iter %d x %d processes: the effective batch must fit in 2^31", c->batch_size,
         c->accum_iter, c->world_size);
    NEED(c->epochs >= 1, "--epochs %d: expected >= 1", c->epochs);
    NEED(c->warmup_epochs >= 0 && c->warmup_epochs <= c->epochs,
         "--warmup-epochs %g: expected 0..%d (--epochs)", c->warmup_epochs, c->epochs);
    NEED(isfinite(c->lr) && c->lr >= 0 && c->lr <= CFG_MAX_LR, "--lr %g: expected 0..%g (0: from --blr)", c->lr, CFG_MAX_LR);
    NEED(isfinite(c->blr) && c->blr >= 0 && c->blr <= CFG_MAX_LR, "--blr %g: expected 0..%g", c->blr, CFG_MAX_LR);
    NEED(isfinite(c->min_lr) && c->min_lr >= 0 && c->min_lr <= CFG_MAX_LR, "--min-lr %g: expected 0..%g", c->min_lr,
         CFG_MAX_LR);
    NEED(train_config_lr(c) <= CFG_MAX_LR,
         "--blr %g x effective batch %lld / 256 = lr %g: expected an lr of at most %g (lower --blr or give --lr)", c->blr,
         (long long)c->batch_size * c->accum_iter * c->world_size, train_config_lr(c), CFG_MAX_LR);
    NEED(isfinite(c->weight_decay) && c->weight_decay >= 0 && c->weight_decay <= 1,
         "--weight-decay %g: expected 0..1", c->weight_decay);
    NEED(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1, "AdamW --beta1 %g, --beta2 %g: expected 0 <= beta < 1",
         c->beta1, c->beta2);
    NEED(c->eps > 0 && c->eps <= 1, "AdamW --eps %g: expected 0 < eps <= 1", c->eps);
    NEED(c->seed >= 0 && c->seed <= CFG_MAX_SEED, "--seed %lld: expected 0..%lld (2^53 - 1)", c->seed, CFG_MAX_SEED);
    NEED(c->max_steps >= 0 && c->max_steps <= CFG_MAX_SEED, "--max-steps %lld: expected 0..%lld (0: no limit)",
         c->max_steps, CFG_MAX_SEED);
    NEED(c->save_every >= 0 && c->keep >= 0 && c->eval_every >= 0 && c->log_every >= 0 && c->val_split >= 0,
         "counts (save-every, keep, eval-every, log-every, val-split) must be >= 0");
    NEED(c->threads >= 0 && c->threads <= args_max_threads(), "--threads %d: expected 0..%d (0: all cores)", c->threads,
         args_max_threads());
    NEED(!(c->val_data && c->val_split), "give --val-data or --val-split, not both");
    NEED(c->precision && (!strcmp(c->precision, "auto") || !strcmp(c->precision, "f32") || !strcmp(c->precision, "bf16")),
         "--precision '%s': expected auto, f32 or bf16", c->precision ? c->precision : "(null)");
    NEED(c->prefix_cache && (!strcmp(c->prefix_cache, "auto") || !strcmp(c->prefix_cache, "on") || !strcmp(c->prefix_cache, "off")),
         "--prefix-cache '%s': expected auto, on or off", c->prefix_cache ? c->prefix_cache : "(null)");
    NEED(c->recompute && (!strcmp(c->recompute, "auto") || !strcmp(c->recompute, "on") || !strcmp(c->recompute, "off")),
         "--recompute '%s': expected auto, on or off", c->recompute ? c->recompute : "(null)");
    double budget;
    NEED(mem_parse_size(c->memory_budget, &budget) == 0, "--memory-budget '%s': expected auto or a size such as 20G, 512M",
         c->memory_budget ? c->memory_budget : "(null)");
    NEED(!(c->resume && c->init_adapter), "--resume continues a run; --init-adapter starts a new one: not both");
    return 0;
#undef NEED
}

double train_config_lr(const train_config *c) {
    if (c->lr > 0) return c->lr;
    double eff = (double)c->batch_size * c->accum_iter * c->world_size;
    return c->blr * eff / 256.0;
}

char *train_config_json(const train_config *c) {
    const char *config_path = NULL;
    arg_spec specs[] = {SPECS((train_config *)c)};
    int n = (int)(sizeof specs / sizeof specs[0]);
    cJSON *o = cJSON_CreateObject();
    for (int i = 1; i < n; i++) { /* skip "config" */
        if (!strcmp(specs[i].name, "overwrite")) continue; /* how this process started, not the run */
        char key[64];
        snprintf(key, sizeof key, "%s", specs[i].name);
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_';
        switch (specs[i].type) {
        case ARG_STR: {
            const char *v = *(const char **)specs[i].dst;
            if (v) cJSON_AddStringToObject(o, key, v);
            else cJSON_AddNullToObject(o, key);
            break;
        }
        case ARG_INT: cJSON_AddNumberToObject(o, key, *(int *)specs[i].dst); break;
        case ARG_I64: cJSON_AddNumberToObject(o, key, (double)*(long long *)specs[i].dst); break;
        case ARG_FLOAT:
        case ARG_DOUBLE: {
            char buf[32];
            snprintf(buf, sizeof buf, "%.15g", *(double *)specs[i].dst); /* round-trips decimal input */
            cJSON_AddRawToObject(o, key, buf);
            break;
        }
        case ARG_FLAG: cJSON_AddBoolToObject(o, key, *(int *)specs[i].dst); break;
        }
    }
    (void)config_path;
    cJSON_AddNumberToObject(o, "world_size", c->world_size);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void train_config_free(train_config *c) {
    cJSON_Delete(c->json_keep);
    c->json_keep = NULL;
}
