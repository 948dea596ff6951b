/* The training loop and the `train` subcommand (DESIGN.md §3-§5).
 *
 * One optimizer step = accum_iter micro-batches: the schedule sets lr at the start of each
 * accumulation cycle from the fractional epoch, gradients accumulate (each micro-batch's
 * token-mean loss scaled by 1/accum_iter), then AdamW. A partial cycle at an epoch's end is
 * discarded as in the reference. Checkpoints hold everything a resume needs (adapter or all
 * weights, AdamW moments and step, data cursor, config, base model and tokenizer fingerprints);
 * a resumed run writes the same metrics and ends with the same parameters, bit for bit.
 * SIGINT/SIGTERM finish the current step, write a checkpoint and exit with status 130.
 * Under mpirun every rank trains on its shard of the data and the gradients are averaged before
 * each step (trainer/dist.h); rank 0 alone prints, writes metrics and checkpoints.
 *
 * Nothing lost: the run directory is locked and a new run refuses one holding another run's
 * files (checkpoints/run_dir.h); pruning never deletes the checkpoint just written; a step whose
 * loss or gradient is not finite stops the run before the update (the checkpoints on disk stay
 * the last good ones) and no "nan" reaches metrics.jsonl; a failed write stops with one line.
 * The stored config holds absolute paths, and --resume without --out continues in the resumed
 * checkpoint's folder, so a run resumes from any working directory. A resume is refused when the
 * tokenized training data differs from the checkpoint's (data fingerprint). */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/run_dir.h"
#include "data/alpaca.h"
#include "data/loader.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/dist.h"
#include "trainer/eval.h"
#include "trainer/llama.h"
#include "trainer/memory.h"
#include "trainer/precision.h"
#include "trainer/optim.h"
#include "trainer/params.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM; the only global: a signal handler needs one */

static void on_signal(int sig) { g_stop = sig; }

typedef struct run {
    train_config *c;
    const dist *d;
    model_weights w;
    tok *tk;
    alpaca_set raw, raw_val;
    dataset train, val;
    int has_val;
    trainable tr;
    adamw opt;
    loader ld;
    ag_arena arena;
    ag_tape tape;
    FILE *metrics;
    char *config_json;
    int64_t step;           /* optimizer steps done */
    int epoch;              /* cursor: next micro-batch */
    int64_t micro;
    int64_t last_saved;
    int bf16;               /* GEMM precision (trainer/precision.h) */
    prefix_cache pc;        /* frozen-prefix cache (pc.have == NULL when off) */
    double budget;          /* memory budget in bytes (0: unknown) */
    double plan_total;      /* the memory plan's total */
    int recompute;          /* gradient checkpointing of the recorded layers (from the memory plan) */
    double est_activations; /* the plan's activation bytes for the longest micro-batch */
    uint64_t data_fingerprint; /* of the tokenized training set (refuses a resume on other data) */
    run_dir rd;             /* the locked run directory (rank 0; rd.fd < 0 elsewhere) */
} run;

/* FNV-1a 64 over the tokenized training set (ids, labels, example boundaries): another file, or
 * the same file cut at another max_seq_len, gives another value. */
static uint64_t dataset_fingerprint(const dataset *d) {
    uint64_t h = 0xcbf29ce484222325ull;
    int64_t total = d->n ? d->off[d->n] : 0;
    const int *streams[2] = {d->ids, d->labels};
    for (int s = 0; s < 2; s++)
        for (int64_t i = 0; i < total; i++) {
            h ^= (uint32_t)streams[s][i];
            h *= 0x100000001b3ull;
        }
    for (int i = 0; i <= d->n; i++) {
        h ^= (uint64_t)d->off[i];
        h *= 0x100000001b3ull;
    }
    return h ? h : 1; /* 0 means "not recorded" in a checkpoint */
}

/* Index of the first NaN/Inf of x[0..n) (or negative value when nonneg), -1 when none. */
static long long first_bad(const float *x, size_t n, int nonneg) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || (nonneg && x[i] < 0)) return (long long)i;
    return -1;
}

static int save_checkpoint(run *r, char *err, size_t errlen) {
    if (r->d->rank != 0) {
        r->last_saved = r->step;
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/ckpt-%08lld.h5", r->c->out, (long long)r->step);
    train_ckpt ck;
    memset(&ck, 0, sizeof ck);
    ck.version = CKPT_VERSION;
    snprintf(ck.method, sizeof ck.method, "%s", r->c->method);
    ck.n_params = r->tr.n;
    ck.params = r->tr.p;
    ck.adam_m = r->opt.m;
    ck.adam_v = r->opt.v;
    if (r->tr.is_adapter) {
        ck.adapter = trainable_adapter_view(&r->tr);
    } else {
        ck.adapter.n_layers = r->w.cfg.n_layers;
        ck.adapter.n_heads = r->w.cfg.n_heads;
        ck.adapter.dim = r->w.cfg.dim;
    }
    ck.step = r->step;
    ck.adam_t = r->opt.t;
    ck.epoch = r->epoch;
    ck.micro_index = r->micro;
    ck.data_seed = (uint64_t)r->c->seed;
    ck.model_fingerprint = r->w.fingerprint;
    ck.tok_fingerprint = tok_fingerprint(r->tk);
    ck.data_fingerprint = r->data_fingerprint;
    ck.config_json = r->config_json;
    if (ckpt_save(path, &ck, err, errlen)) {
        size_t at = strlen(err);
        if (r->last_saved > 0 && at + 1 < errlen) /* say what is safe */
            snprintf(err + at, errlen - at, " (the checkpoint of step %lld is intact)", (long long)r->last_saved);
        return -1;
    }
    ckpt_prune_upto(r->c->out, r->c->keep, r->step);
    r->last_saved = r->step;
    return 0;
}

/* Restores parameters, moments and cursor from a checkpoint; refuses a mismatched one. */
static int restore(run *r, const train_ckpt *ck, const char *file, char *err, size_t errlen) {
    if (strcmp(ck->method, r->c->method) != 0) {
        snprintf(err, errlen, "%s: checkpoint of a --method %s run, this run is --method %s", file, ck->method, r->c->method);
        return -1;
    }
    if (ck->model_fingerprint != r->w.fingerprint) {
        snprintf(err, errlen, "%s: checkpoint was made with another base model than %s (fingerprint %016llx, model %016llx)",
                 file, r->c->model, (unsigned long long)ck->model_fingerprint, (unsigned long long)r->w.fingerprint);
        return -1;
    }
    if (ck->tok_fingerprint != tok_fingerprint(r->tk)) {
        snprintf(err, errlen, "%s: checkpoint was made with another tokenizer than %s", file, r->c->tokenizer);
        return -1;
    }
    if (ck->n_params != r->tr.n ||
        (r->tr.is_adapter && (ck->adapter.adapter_len != r->tr.K || ck->adapter.adapter_layer != r->tr.L ||
                              ck->adapter.gate_act != r->tr.gate_act))) {
        snprintf(err, errlen, "%s: checkpoint adapter is K=%d L=%d gate %s (%zu numbers); this run asks for K=%d L=%d gate %s (%zu)",
                 file, ck->adapter.adapter_len, ck->adapter.adapter_layer, ck->adapter.gate_act ? "identity" : "tanh",
                 ck->n_params, r->tr.K, r->tr.L, r->tr.gate_act ? "identity" : "tanh", r->tr.n);
        return -1;
    }
    if (ck->data_fingerprint && ck->data_fingerprint != r->data_fingerprint) {
        snprintf(err, errlen, "%s: checkpoint was trained on other data than %s (the tokenized examples at max_seq_len %d "
                 "differ): resume with the run's own --data and --max-seq-len, or start a new run from it with "
                 "--init-adapter", file, r->c->data, r->c->max_seq_len);
        return -1;
    }
    const char *blocks[3] = {"params", "adam_m", "adam_v"};
    const float *vals[3] = {ck->params, ck->adam_m, ck->adam_v};
    for (int b = 0; b < 3; b++) {
        long long i = first_bad(vals[b], ck->n_params, b == 2);
        if (i >= 0) {
            snprintf(err, errlen, "%s: checkpoint %s[%lld] is %g: expected finite values%s (a run that diverged before "
                     "this checkpoint, or a damaged file): resume from an earlier checkpoint", file, blocks[b], i,
                     (double)vals[b][i], b == 2 ? " >= 0" : "");
            return -1;
        }
    }
    if (ck->micro_index > (int64_t)loader_steps_per_epoch(&r->ld)) {
        snprintf(err, errlen, "%s: checkpoint cursor at micro-batch %lld of an epoch of %d: a damaged file", file,
                 (long long)ck->micro_index, loader_steps_per_epoch(&r->ld));
        return -1;
    }
    memcpy(r->tr.p, ck->params, r->tr.n * sizeof(float));
    memcpy(r->opt.m, ck->adam_m, r->tr.n * sizeof(float));
    memcpy(r->opt.v, ck->adam_v, r->tr.n * sizeof(float));
    r->opt.t = ck->adam_t;
    r->step = r->last_saved = ck->step;
    r->epoch = ck->epoch;
    r->micro = ck->micro_index;
    return 0;
}

/* Keeps the metrics lines of steps <= step (a resumed run rewrites what came after). */
static FILE *open_metrics(const char *dir, int64_t step, char *err, size_t errlen) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = step > 0 ? fopen(path, "r") : NULL;
    if (in) {
        FILE *out = fopen(tmp, "w");
        char line[8192];
        while (out && fgets(line, sizeof line, in)) {
            long long s = -1;
            if (sscanf(line, "{\"step\":%lld", &s) == 1 && s <= step) fputs(line, out);
        }
        fclose(in);
        if (!out || fclose(out) != 0 || rename(tmp, path) != 0) {
            snprintf(err, errlen, "%s: cannot rewrite: %s", path, strerror(errno));
            return NULL;
        }
    }
    FILE *f = fopen(path, step > 0 ? "a" : "w");
    if (!f) snprintf(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
    return f;
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) snprintf(buf, n, "?");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%.0fs", s);
}

static double file_bytes(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 ? (double)st.st_size : 0;
}

/* Peak resident set of this process so far (VmHWM), bytes; -1 when unknown. */
static double peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* The memory plan of the run, made before the data is read: chooses recomputation (--recompute
 * auto: on when the run would not fit the budget without it) and refuses a run that cannot fit,
 * saying what it needs, what there is and which flags lower it. */
static int plan_memory(run *r, char *err, size_t errlen) {
    train_config *c = r->c;
    int full = !strcmp(c->method, "full"), L = full ? r->w.cfg.n_layers : c->adapter_layer;
    int T = c->batch_size * c->max_seq_len, threads = omp_get_max_threads();
    double data = file_bytes(c->data) + file_bytes(c->val_data);
    mem_plan off = mem_plan_train(&r->w, c->adapter_len, L, full, T, 0, threads, data);
    mem_plan on = mem_plan_train(&r->w, c->adapter_len, L, full, T, 1, threads, data);
    double budget = 0;
    mem_parse_size(c->memory_budget, &budget); /* validated already */
    int from_flag = budget > 0;
    if (!from_flag) budget = mem_default_budget();
    r->recompute = !strcmp(c->recompute, "on") ? 1 : !strcmp(c->recompute, "off") ? 0 : budget > 0 && off.total > budget;
    const mem_plan *p = r->recompute ? &on : &off;
    r->est_activations = p->activations;
    r->budget = budget > 0 ? budget : 0;
    r->plan_total = p->total;
    double mapped = 0;
    mem_weight_bytes(&r->w, &mapped);
    char b[8][32];
    mem_human(b[0], 32, p->weights);
    mem_human(b[1], 32, mapped);
    mem_human(b[2], 32, p->activations);
    mem_human(b[3], 32, p->trainable + p->workspace + p->data + p->base);
    mem_human(b[4], 32, p->total);
    mem_human(b[5], 32, budget > 0 ? budget : 0);
    mem_human(b[6], 32, (r->recompute ? off : on).activations);
    printf("memory plan: weights %s (%s mapped from the file), activations %s for %d x %d tokens, other %s: %s in all\n",
           b[0], b[1], b[2], c->batch_size, c->max_seq_len, b[3], b[4]);
    printf("recompute: %s (%s%s; %s of activations %s)\n", r->recompute ? "on" : "off", !strcmp(c->recompute, "auto") ? "auto, " : "",
           !strcmp(c->recompute, "auto") ? (r->recompute ? "the run does not fit the budget without it" : "the run fits without it")
                                         : "--recompute",
           b[6], r->recompute ? "without it" : "with it");
    if (budget > 0)
        printf("memory budget: %s (%s)\n", b[5], from_flag ? "--memory-budget" : "available at start-up minus 5%");
    fflush(stdout);
    if (budget > 0 && p->total > budget) {
        snprintf(err, errlen,
                 "this run needs about %s (weights %s, activations %s%s) but the memory budget is %s (%s): lower it with %s"
                 "--batch-size (now %d) or --max-seq-len (now %d)%s",
                 b[4], b[0], b[2], r->recompute ? " with recomputation" : "", b[5],
                 from_flag ? "--memory-budget" : "available memory minus 5%", r->recompute ? "" : "--recompute on, ",
                 c->batch_size, c->max_seq_len, from_flag ? ", or raise --memory-budget" : "");
        return -1;
    }
    return 0;
}

/* --prefix-cache: decides, sizes and places the frozen-prefix cache, and says so. */
static int setup_prefix_cache(run *r, char *err, size_t errlen) {
    train_config *c = r->c;
    int frozen = r->tr.is_adapter ? r->w.cfg.n_layers - r->tr.L : 0;
    const char *why = NULL;
    if (!strcmp(c->prefix_cache, "off")) why = "--prefix-cache off";
    else if (frozen == 0) why = "no frozen layer below the adapter";
    else if (!strcmp(c->prefix_cache, "auto") && c->epochs < 2) why = "one epoch: nothing to reuse";
    else if (!strcmp(c->prefix_cache, "auto") && !r->bf16)
        why = "f32 sgemm rounds a row by its place in the batch, so reuse would change the last bits (--prefix-cache on "
              "forces it)";
    if (why) {
        printf("prefix cache: off (%s)\n", why);
        return 0;
    }
    double bytes = (double)r->train.off[r->train.n] * r->w.cfg.dim * sizeof(float) / r->d->world;
    double room = r->budget > 0 ? 0.8 * (r->budget - r->plan_total) : 0;
    int in_memory = bytes <= room;
    if (prefix_cache_init(&r->pc, &r->train, r->w.cfg.dim, frozen, in_memory ? NULL : c->out, err, errlen)) return -1;
    char b[32];
    mem_human(b, sizeof b, bytes);
    printf("prefix cache: the output of the %d frozen layer%s for %d examples (%s f32) %s, reused from epoch 2\n", frozen,
           frozen > 1 ? "s" : "", r->train.n / r->d->world, b, in_memory ? "in memory" : "in a file in the run directory");
    return 0;
}

static int setup(run *r, char *err, size_t errlen) {
    train_config *c = r->c;
    if (model_load(c->model, &r->w, err, errlen)) return -1;
    if (c->adapter_layer > r->w.cfg.n_layers) {
        printf("note: adapter_layer %d > %d layers of the model: adapting all %d\n", c->adapter_layer,
               r->w.cfg.n_layers, r->w.cfg.n_layers);
        c->adapter_layer = r->w.cfg.n_layers;
    }
    if (train_config_validate(c, r->w.cfg.n_layers, err, errlen)) return -1;
    char pdesc[200];
    if (precision_resolve(c->precision, &r->bf16, pdesc, sizeof pdesc, err, errlen)) return -1;
    printf("%s\n", pdesc);
    if (plan_memory(r, err, errlen)) return -1;
    if (!(r->tk = tok_load(c->tokenizer, err, errlen))) return -1;
    if (tok_vocab_size(r->tk) > r->w.cfg.vocab_size) {
        snprintf(err, errlen, "%s: tokenizer has %d pieces but the model's vocabulary is %d", c->tokenizer,
                 tok_vocab_size(r->tk), r->w.cfg.vocab_size);
        return -1;
    }
    if (data_load(c->data, c->data_format, &r->raw, err, errlen) ||
        dataset_build(&r->train, &r->raw, r->tk, c->max_seq_len, err, errlen))
        return -1;
    if (c->val_split) {
        if (dataset_split(&r->train, &r->val, c->val_split, err, errlen)) return -1;
        r->has_val = 1;
    } else if (c->val_data) {
        if (data_load(c->val_data, c->data_format, &r->raw_val, err, errlen) ||
            dataset_build(&r->val, &r->raw_val, r->tk, c->max_seq_len, err, errlen))
            return -1;
        r->has_val = 1;
    }
    if (r->train.n / c->batch_size / c->accum_iter / c->world_size < 1) {
        snprintf(err, errlen, "%s: %d training examples make no full optimizer step of batch %d x accum %d x %d processes",
                 c->data, r->train.n, c->batch_size, c->accum_iter, c->world_size);
        return -1;
    }
    dataset_summary(&r->train, "train", stdout);
    if (r->has_val) dataset_summary(&r->val, "validation", stdout);
    const dataset *sets[2] = {&r->train, &r->val};
    for (int k = 0; k < 1 + r->has_val; k++)
        if (sets[k]->n_loss_tokens == 0) {
            snprintf(err, errlen, "%s: none of the %d %s examples keeps an answer token after truncation at --max-seq-len %d "
                     "(the prompts fill it): nothing to learn; raise --max-seq-len or shorten the prompts",
                     k ? (c->val_data ? c->val_data : c->data) : c->data, sets[k]->n, k ? "validation" : "training",
                     c->max_seq_len);
            return -1;
        }
    if (r->w.cfg.max_seq_len > 0 && c->max_seq_len > r->w.cfg.max_seq_len) {
        int longer = 0;
        for (int i = 0; i < r->train.n; i++) longer += r->train.off[i + 1] - r->train.off[i] > r->w.cfg.max_seq_len;
        if (longer)
            printf("warning: --max-seq-len %d exceeds the model's max_position_embeddings %d: %d training examples are "
                   "longer than %d tokens and train positions the model was never trained at\n",
                   c->max_seq_len, r->w.cfg.max_seq_len, longer, r->w.cfg.max_seq_len);
    }
    r->data_fingerprint = dataset_fingerprint(&r->train);
    int gate = !strcmp(c->gate_act, "identity") ? GATE_IDENTITY : GATE_TANH;
    if (!strcmp(c->method, "full")) {
        if (trainable_full_init(&r->tr, &r->w, err, errlen)) return -1;
    } else if (c->init_adapter) {
        if (load_adapter_for(c->init_adapter, &r->w, c->adapter_len, &r->tr, err, errlen)) return -1;
        if (r->tr.K != c->adapter_len || r->tr.L != c->adapter_layer || r->tr.gate_act != gate)
            printf("note: --init-adapter %s sets K=%d L=%d gate %s\n", c->init_adapter, r->tr.K, r->tr.L,
                   r->tr.gate_act ? "identity" : "tanh");
        c->adapter_len = r->tr.K;
        c->adapter_layer = r->tr.L;
        c->gate_act = r->tr.gate_act ? "identity" : "tanh";
    } else if (trainable_adapter_init(&r->tr, &r->w.cfg, c->adapter_len, c->adapter_layer, gate, (uint64_t)c->seed,
                                      err, errlen)) {
        return -1;
    }
    if (adamw_init(&r->opt, r->tr.n, c->beta1, c->beta2, c->eps, c->weight_decay)) {
        snprintf(err, errlen, "out of memory for the AdamW moments of %zu parameters", r->tr.n);
        return -1;
    }
    if (!r->tr.is_adapter) { /* as the reference's param groups: no decay on 1-D weights (norms) */
        int nl = r->w.cfg.n_layers;
        r->opt.no_decay = malloc(sizeof *r->opt.no_decay * (size_t)(2 * nl + 1));
        for (int l = 0; l < nl; l++) {
            const llama_layer_weights *L = &r->w.layers[l];
            const ag_tensor *norms[2] = {&L->attn_norm, &L->ffn_norm};
            for (int k = 0; k < 2; k++) {
                r->opt.no_decay[r->opt.n_no_decay][0] = (size_t)((float *)norms[k]->data - r->tr.p);
                r->opt.no_decay[r->opt.n_no_decay++][1] = ag_numel(norms[k]);
            }
        }
        r->opt.no_decay[r->opt.n_no_decay][0] = (size_t)((float *)r->w.norm.data - r->tr.p);
        r->opt.no_decay[r->opt.n_no_decay++][1] = ag_numel(&r->w.norm);
    }
    if (r->d->rank != 0) /* rank 0 made it (run_dir_claim); the prefix cache files of other ranks go there too */
        for (char *p = strchr(r->c->out + 1, '/');; p = strchr(p + 1, '/')) {
            char part[4096];
            snprintf(part, sizeof part, "%.*s", p ? (int)(p - r->c->out) : (int)strlen(r->c->out), r->c->out);
            mkdir(part, 0777);
            if (!p) break;
        }
    if (setup_prefix_cache(r, err, errlen)) return -1;
    if (loader_init(&r->ld, &r->train, c->batch_size, !c->no_shuffle, (uint64_t)c->seed) ||
        loader_set_shard(&r->ld, r->d->rank, r->d->world)) {
        snprintf(err, errlen, "out of memory for the data loader");
        return -1;
    }
    ag_arena_init(&r->arena, 1 << 24);
    ag_tape_init(&r->tape, &r->arena);
    r->tape.checkpoint = r->recompute;
    r->tape.bf16 = r->bf16;
    return 0;
}

static void teardown(run *r) {
    if (r->metrics) fclose(r->metrics);
    ag_tape_free(&r->tape);
    ag_arena_free(&r->arena);
    loader_free(&r->ld);
    prefix_cache_free(&r->pc);
    adamw_free(&r->opt);
    trainable_free(&r->tr);
    dataset_free(&r->train);
    dataset_free(&r->val);
    alpaca_free(&r->raw);
    alpaca_free(&r->raw_val);
    tok_free(r->tk);
    model_free(&r->w);
    free(r->config_json);
}

static double validate(run *r, int64_t *tokens) {
    eval_result er = eval_dataset(&r->tape, &r->w, r->tr.is_adapter ? &r->tr : NULL, &r->val, r->c->batch_size);
    *tokens = er.tokens;
    return er.loss;
}

/* One forward and backward pass on the longest possible micro-batch (the batch_size longest
 * examples) before the first step, its gradients discarded: the arena reaches its high-water
 * size once, at start-up (no page-fault stalls when a long batch first comes, and a run that
 * cannot fit fails now rather than hours in). Changes no parameter and no random state. */
static void warm_up(run *r) {
    const dataset *d = &r->train;
    int B = r->c->batch_size < d->n ? r->c->batch_size : d->n;
    int *idx = malloc(sizeof(int) * (size_t)d->n);
    for (int i = 0; i < d->n; i++) idx[i] = i;
    for (int k = 0; k < B; k++) /* partial selection of the B longest */
        for (int i = k + 1; i < d->n; i++)
            if (d->off[idx[i] + 1] - d->off[idx[i]] > d->off[idx[k] + 1] - d->off[idx[k]]) {
                int t = idx[k];
                idx[k] = idx[i];
                idx[i] = t;
            }
    double t0 = omp_get_wtime();
    const microbatch *mb = loader_pack(&r->ld, idx, B);
    free(idx);
    if (!mb) return;
    ag_tape_reset(&r->tape);
    ag_arena_reset(&r->arena);
    int n_loss = 0;
    ag_tensor *loss = llama_loss(&r->tape, &r->w, r->tr.is_adapter ? &r->tr : NULL, mb, &n_loss);
    if (loss->requires_grad && n_loss > 0) ag_backward(&r->tape, loss, 1.0f);
    trainable_zero_grad(&r->tr);
    ag_tape_reset(&r->tape);
    ag_arena_reset(&r->arena);
    double est = mem_activation_bytes(&r->w.cfg, mb->T, mb->n_loss, r->tr.is_adapter ? r->tr.L : r->w.cfg.n_layers,
                                      r->recompute, r->tr.is_adapter ? r->tr.K : 0);
    printf("memory: %.1f MB of activations for the longest micro-batch (%d tokens; estimate %.1f MB), peak RSS %.1f MB, %.2f s\n",
           r->arena.high / 1e6, mb->T, est / 1e6, peak_rss() / 1e6, omp_get_wtime() - t0);
}

/* Returns 0 when done, 130 when interrupted (after the checkpoint), -1 on error. */
static int loop(run *r, const train_ckpt *resume_ck, const char *resume_file, char *err, size_t errlen) {
    train_config *c = r->c;
    int micro_per_epoch = loader_steps_per_epoch(&r->ld);
    int steps_per_epoch = micro_per_epoch / c->accum_iter;
    int64_t total = (int64_t)steps_per_epoch * c->epochs;
    if (c->max_steps > 0 && c->max_steps < total) total = c->max_steps;
    double lr_peak = train_config_lr(c);
    if (resume_ck && restore(r, resume_ck, resume_file, err, errlen)) return -1;
    if (r->d->rank == 0 && !(r->metrics = open_metrics(c->out, r->step, err, errlen))) return -1;
    printf("training: %s, %zu trainable parameters (%s), %d micro-batches/epoch%s, %d steps/epoch, %lld steps, lr %.6g (eff batch %d)\n",
           c->method, r->tr.n, r->tr.is_adapter ? "adaption prompts + gates" : "every weight", micro_per_epoch,
           r->d->world > 1 ? " per process" : "", steps_per_epoch, (long long)total, lr_peak,
           c->batch_size * c->accum_iter * c->world_size);
    if (r->d->world > 1) printf("data parallel: %d processes, %d threads each\n", r->d->world, omp_get_max_threads());
    if (r->step > 0) printf("resumed at step %lld (epoch %d, micro-batch %lld)\n", (long long)r->step, r->epoch, (long long)r->micro);
    fflush(stdout);
    if (r->step < total) warm_up(r);
    int tty = isatty(fileno(stdout));
    double t_start = omp_get_wtime();
    int64_t steps_this_run = 0;
    int stop = 0; /* agreed by every rank after each step */
    while (r->step < total && !stop) {
        if (r->micro + c->accum_iter > (int64_t)steps_per_epoch * c->accum_iter) { /* partial cycle: discard */
            r->epoch++;
            r->micro = 0;
            continue;
        }
        double e = (double)r->micro / micro_per_epoch + r->epoch;
        double lr = sched_lr(e, lr_peak, c->min_lr, c->warmup_epochs, c->epochs);
        double t0 = omp_get_wtime(), loss_sum = 0;
        int64_t tokens = 0, all_tokens = 0;
        trainable_zero_grad(&r->tr);
        for (int a = 0; a < c->accum_iter; a++) {
            const microbatch *mb = loader_get(&r->ld, r->epoch, (int)(r->micro + a));
            ag_tape_reset(&r->tape);
            ag_arena_reset(&r->arena);
            int n_loss = 0;
            ag_tensor *loss = llama_loss_cached(&r->tape, &r->w, r->tr.is_adapter ? &r->tr : NULL, mb, &n_loss,
                                                r->pc.have ? &r->pc : NULL);
            if (loss->requires_grad && n_loss > 0)
                ag_backward(&r->tape, loss, 1.0f / (float)(c->accum_iter * c->world_size));
            loss_sum += ag_f32(loss)[0];
            tokens += n_loss;
            all_tokens += mb->T;
        }
        if (r->d->world > 1) { /* the mean over ranks: gradients were scaled by 1/world above */
            dist_sum_f32(r->d, r->tr.g, r->tr.n);
            loss_sum = dist_sum_f64(r->d, loss_sum) / r->d->world;
            tokens = dist_sum_i64(r->d, tokens);
            all_tokens = dist_sum_i64(r->d, all_tokens);
        }
        float step_loss = (float)(loss_sum / c->accum_iter);
        long long bad_g = first_bad(r->tr.g, r->tr.n, 0);
        if (!isfinite(step_loss) || bad_g >= 0) { /* every rank sees the same sums: they all stop here */
            char last[64] = "no checkpoint was written yet";
            if (r->last_saved > 0) snprintf(last, sizeof last, "the last good checkpoint is step %lld", (long long)r->last_saved);
            snprintf(err, errlen, "step %lld: the %s is %s (lr %.3g): stopped before updating the parameters; %s in %s "
                     "(lower --lr/--blr, or check the data and model)", (long long)r->step + 1,
                     isfinite(step_loss) ? "gradient" : "loss",
                     isfinite(step_loss) ? "not finite (NaN or Inf)" : isnan(step_loss) ? "NaN" : "infinite", lr, last, c->out);
            return -1;
        }
        adamw_step(&r->opt, r->tr.p, r->tr.g, lr);
        r->step++;
        steps_this_run++;
        r->micro += c->accum_iter;
        double dt = omp_get_wtime() - t0;
        if (!(dt > 1e-9)) dt = 1e-9; /* rates stay finite */
        int epoch_end = r->micro + c->accum_iter > (int64_t)steps_per_epoch * c->accum_iter;
        double val_loss = NAN;
        int64_t val_tokens = 0;
        if (r->has_val && (epoch_end || (c->eval_every && r->step % c->eval_every == 0) || r->step == total)) {
            val_loss = validate(r, &val_tokens);
            if (!isfinite(val_loss)) {
                snprintf(err, errlen, "step %lld: the validation loss is not finite (%g): stopped; the checkpoints in %s are "
                         "those of earlier steps", (long long)r->step, val_loss, c->out);
                return -1;
            }
        }
        stop = dist_max_int(r->d, (int)g_stop);
        if (r->metrics) { /* every number here is finite: the line is valid JSON */
            fprintf(r->metrics, "{\"step\":%lld,\"epoch\":%.9g,\"lr\":%.17g,\"loss\":%.9g,\"tokens\":%lld,\"total_tokens\":%lld,"
                                "\"tokens_per_s\":%.1f,\"total_tokens_per_s\":%.1f",
                    (long long)r->step, e, lr, step_loss, (long long)tokens, (long long)all_tokens, tokens / dt, all_tokens / dt);
            if (!isnan(val_loss)) fprintf(r->metrics, ",\"val_loss\":%.9g,\"val_tokens\":%lld", val_loss, (long long)val_tokens);
            fputs("}\n", r->metrics);
            if (fflush(r->metrics) != 0 || ferror(r->metrics)) {
                snprintf(err, errlen, "%s/metrics.jsonl: write failed at step %lld: %s", c->out, (long long)r->step,
                         strerror(errno));
                return -1;
            }
        }
        double elapsed = omp_get_wtime() - t_start;
        char eta[32];
        fmt_duration(eta, sizeof eta, elapsed / steps_this_run * (double)(total - r->step));
        if (tty || (c->log_every && (r->step % c->log_every == 0 || r->step == total)) || !isnan(val_loss)) {
            printf("%sstep %lld/%lld | epoch %.2f | loss %.4f | lr %.3e | %.0f tok/s (%.0f with label) | ETA %s", tty ? "\r\033[K" : "",
                   (long long)r->step, (long long)total, e, step_loss, lr, all_tokens / dt, tokens / dt, eta);
            if (!isnan(val_loss)) printf(" | val_loss %.4f", val_loss);
            if (!tty || !isnan(val_loss)) printf("\n");
            fflush(stdout);
        }
        if (epoch_end) {
            r->epoch++;
            r->micro = 0;
        }
        if ((c->save_every && r->step % c->save_every == 0) || (!c->save_every && epoch_end)) {
            if (save_checkpoint(r, err, errlen)) return -1;
        }
    }
    if (tty) printf("\n");
    if (r->last_saved != r->step && save_checkpoint(r, err, errlen)) return -1;
    printf("checkpoint: %s/ckpt-%08lld.h5\n", c->out, (long long)r->step);
    printf("peak RSS: %.1f MB\n", peak_rss() / 1e6);
    if (r->pc.have)
        printf("prefix cache: %lld micro-batches served from the cache, %lld computed\n", (long long)r->pc.hits,
               (long long)r->pc.misses);
    if (stop) {
        printf("interrupted by signal %d at step %lld; continue with: llama-adapter train --resume %s\n", stop,
               (long long)r->step, c->out);
        return 130;
    }
    return 0;
}

/* p as an absolute path (relative paths are taken from base, or the working directory); a new
 * string goes to owned. NULL and absolute paths are returned as they are. */
static const char *absolute(const char *p, const char *base, char **owned, int *n_owned) {
    char cwd[PATH_MAX];
    if (!p || !*p || p[0] == '/' || *n_owned >= 16) return p;
    if (!base) base = getcwd(cwd, sizeof cwd);
    if (!base) return p;
    while (p[0] == '.' && p[1] == '/') p += 2;
    size_t n = strlen(base) + strlen(p) + 2;
    char *s = malloc(n);
    if (!s) return p;
    snprintf(s, n, "%s/%s", base, !strcmp(p, ".") ? "" : p);
    owned[(*n_owned)++] = s;
    return s;
}

static int path_exists(const char *p) {
    struct stat st;
    return p && stat(p, &st) == 0;
}

/* Before validation: paths become absolute (so the stored config resumes from any working
 * directory); a resumed run without --out continues in its checkpoint's folder; relative paths of
 * a checkpoint written by an older build are found again from the folder the run was started
 * in; --tokenizer defaults to MODEL_DIR/tokenizer.model; the default warm-up is clamped to a
 * shorter run. Each change that the user did not ask for is printed as a note. */
static void resolve_paths(train_config *c, const char *resume_file, char **owned, int *n_owned) {
    char base_buf[PATH_MAX], *base = NULL;
    if (resume_file) {
        char ckdir[4096], real[PATH_MAX];
        snprintf(ckdir, sizeof ckdir, "%s", resume_file);
        const char *dir = dirname(ckdir);
        if (!c->given_out && *n_owned < 16 && (owned[*n_owned] = strdup(dir))) c->out = owned[(*n_owned)++];
        /* an old config with a relative out "runs/x" whose checkpoint sits in /w/runs/x was
         * started in /w: its other relative paths are relative to /w */
        const char *out0 = c->out;
        if (realpath(dir, real) && out0 && out0[0] != '/') {
            size_t lr = strlen(real), lo = strlen(out0);
            if (lo < lr && !strcmp(real + lr - lo, out0) && real[lr - lo - 1] == '/') {
                snprintf(base_buf, sizeof base_buf, "%.*s", (int)(lr - lo - 1), real);
                base = base_buf;
            }
        }
    }
    const char **paths[5] = {&c->model, &c->tokenizer, &c->data, &c->val_data, &c->init_adapter};
    for (int i = 0; i < 5; i++) {
        const char *p = *paths[i];
        if (!p) continue;
        if (base && p[0] != '/' && !path_exists(p)) *paths[i] = absolute(p, base, owned, n_owned);
        else *paths[i] = absolute(p, NULL, owned, n_owned);
    }
    c->out = absolute(c->out, NULL, owned, n_owned);
    struct stat st;
    if (!c->tokenizer && c->model && stat(c->model, &st) == 0 && S_ISDIR(st.st_mode)) {
        char tp[PATH_MAX];
        snprintf(tp, sizeof tp, "%s/tokenizer.model", c->model);
        if (path_exists(tp) && *n_owned < 16 && (owned[*n_owned] = strdup(tp))) { /* c->model is absolute already */
            c->tokenizer = owned[(*n_owned)++];
            printf("note: --tokenizer defaults to %s (the model directory's)\n", c->tokenizer);
        }
    }
    if (!c->given_warmup && c->warmup_epochs > c->epochs && c->epochs >= 1) {
        printf("note: the default warm-up of %g epochs is longer than --epochs %d: warming up over the whole run "
               "(--warmup-epochs %d; give --warmup-epochs to choose)\n", c->warmup_epochs, c->epochs, c->epochs);
        c->warmup_epochs = c->epochs;
    }
}

static int train_main(const dist *d, int argc, char **argv);

int cmd_train(int argc, char **argv) {
    dist d;
    dist_init(&d, &argc, &argv);
    if (d.rank != 0) { /* only rank 0 reports */
        FILE *devnull = freopen("/dev/null", "w", stdout);
        (void)devnull;
    }
    int status = train_main(&d, argc, argv);
    if (status != 0 && status != 130 && d.world > 1) {
        fflush(stderr);
        dist_abort(&d, status);
    }
    dist_finalize(&d);
    return status;
}

static int train_main(const dist *d, int argc, char **argv) {
    train_config c;
    train_config_defaults(&c);
    c.world_size = d->world;
    char err[1024], resume_file[4096] = "";
    train_ckpt ck;
    memset(&ck, 0, sizeof ck);
    int have_ck = 0;
    /* --resume: the checkpoint's config is the base the flags override */
    for (int i = 1; i < argc; i++) {
        const char *v = !strcmp(argv[i], "--resume") && i + 1 < argc ? argv[i + 1]
                        : !strncmp(argv[i], "--resume=", 9)          ? argv[i] + 9
                                                                     : NULL;
        if (!v) continue;
        if (ckpt_resolve(v, resume_file, sizeof resume_file, err, sizeof err) ||
            ckpt_load(resume_file, &ck, err, sizeof err)) {
            fprintf(stderr, "llama-adapter train: %s\n", err);
            return 1;
        }
        have_ck = 1;
    }
    int pr = train_config_parse(&c, argc, argv, have_ck ? ck.config_json : NULL, resume_file);
    if (pr) {
        if (have_ck) ckpt_free(&ck);
        train_config_free(&c);
        return pr > 0 ? 0 : 2;
    }
    if (have_ck) c.init_adapter = NULL; /* the checkpoint supersedes the run's starting adapter */
    run r;
    memset(&r, 0, sizeof r);
    r.c = &c;
    r.d = d;
    r.rd.fd = -1;
    int status = 1;
    char *owned[16]; /* path strings made here (freed at the end) */
    int n_owned = 0;
    resolve_paths(&c, have_ck ? resume_file : NULL, owned, &n_owned);
    if (c.json_world_size && c.json_world_size != d->world) {
        fprintf(stderr, "llama-adapter train: %s: made for %d process%s, this run has %d (start it with mpirun -np %d)\n",
                have_ck ? resume_file : "config", c.json_world_size, c.json_world_size > 1 ? "es" : "", d->world,
                c.json_world_size);
        goto done;
    }
    if (train_config_validate(&c, 0, err, sizeof err)) { /* a usage error: exit 2 */
        fprintf(stderr, "llama-adapter train: %s\n", err);
        status = 2;
        goto done;
    }
    if (c.threads > 0) omp_set_num_threads(c.threads);
    else if (d->local_world > 1) omp_set_num_threads(omp_get_num_procs() / d->local_world > 1 ? omp_get_num_procs() / d->local_world : 1);
    if (d->rank == 0) { /* lock --out and make sure it holds no other run before anything is loaded */
        char note[1200];
        int64_t own = -1;
        if (have_ck) {
            char a[PATH_MAX], b[PATH_MAX], ckdir[4096];
            snprintf(ckdir, sizeof ckdir, "%s", resume_file);
            if (realpath(dirname(ckdir), a) && realpath(c.out, b) && !strcmp(a, b)) own = ck.step;
        }
        if (run_dir_claim(&r.rd, c.out, own, c.overwrite, note, sizeof note, err, sizeof err)) {
            fprintf(stderr, "llama-adapter train: %s\n", err);
            goto done;
        }
        fputs(note, stdout);
    }
    if (setup(&r, err, sizeof err)) {
        fprintf(stderr, "llama-adapter train: %s\n", err);
        goto done;
    }
    {
        const char *keep_resume = c.resume;
        c.resume = NULL; /* the stored config describes the run, not how this process started */
        r.config_json = train_config_json(&c);
        c.resume = keep_resume;
    }
    printf("config: %s\n", r.config_json);
    fflush(stdout);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int lr = loop(&r, have_ck ? &ck : NULL, resume_file, err, sizeof err);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (lr < 0) {
        fprintf(stderr, "llama-adapter train: %s\n", err);
        goto done;
    }
    if (!r.tr.is_adapter && d->rank == 0) { /* full fine-tuning: the result is a model; write it as a HF directory */
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/model", c.out);
        if (model_save_hf(dir, &r.w, AG_F32, 0, err, sizeof err)) {
            fprintf(stderr, "llama-adapter train: %s\n", err);
            goto done;
        }
        printf("model: %s\n", dir);
    }
    status = lr;
done:
    teardown(&r);
    run_dir_release(&r.rd);
    if (have_ck) ckpt_free(&ck);
    train_config_free(&c);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    return status;
}
