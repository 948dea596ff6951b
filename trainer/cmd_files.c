/* The `export` and `inspect` subcommands: adapter exports from checkpoints, and descriptions of
 * model files, checkpoints and adapter files (data files go to cmd_inspect_data). */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "trainer/args.h"
#include "trainer/cli.h"

int cmd_export(int argc, char **argv) {
    const char *adapter = NULL, *format = "safetensors", *out = NULL;
    int adapter_len = 10;
    arg_spec specs[] = {
        {"adapter", ARG_STR, &adapter, "training checkpoint, run directory (its newest checkpoint) or adapter file", 0},
        {"format", ARG_STR, &format, "safetensors | pth | hdf5", 0},
        {"out", ARG_STR, &out, "file to write (atomically)", 0},
        {"adapter-len", ARG_INT, &adapter_len, "K for adapter files without metadata", 0},
    };
    int r = args_parse("export", "--adapter CKPT --format safetensors|pth|hdf5 --out FILE", argc, argv, specs,
                       (int)(sizeof specs / sizeof specs[0]), NULL, 0, NULL);
    if (r) return r > 0 ? 0 : 2;
    export_format fmt;
    if (!adapter || !out) {
        fprintf(stderr, "llama-adapter export: --adapter and --out are required (see --help)\n");
        return 2;
    }
    if (export_format_parse(format, &fmt)) {
        fprintf(stderr, "llama-adapter export: --format '%s': expected safetensors, pth or hdf5\n", format);
        return 2;
    }
    char err[1024], file[4096];
    if (ckpt_resolve(adapter, file, sizeof file, err, sizeof err)) {
        fprintf(stderr, "llama-adapter export: %s\n", err);
        return 1;
    }
    /* a checkpoint knows its model's shape; read it back as an adapter with that shape */
    train_ckpt ck;
    adapter_data a;
    int is_ckpt = ckpt_load(file, &ck, err, sizeof err) == 0;
    if (is_ckpt) {
        if (strcmp(ck.method, "adapter") != 0) {
            fprintf(stderr, "llama-adapter export: %s: a --method %s checkpoint holds no adapter (its model is in the run's model/ directory)\n",
                    file, ck.method);
            ckpt_free(&ck);
            return 1;
        }
        a = ck.adapter;
    } else if (adapter_import(file, adapter_len, -1, -1, -1, &a, err, sizeof err)) {
        fprintf(stderr, "llama-adapter export: %s\n", err);
        return 1;
    }
    int rc = adapter_export(out, fmt, &a, err, sizeof err);
    if (rc) fprintf(stderr, "llama-adapter export: %s\n", err);
    else printf("exported %s: adapter_query [%d, %d], gates of %d layers (%d adapted), K=%d, gate %s -> %s (%s)\n", file,
                a.adapter_layer * a.adapter_len, a.dim, a.n_layers, a.adapter_layer, a.adapter_len,
                a.gate_act ? "identity" : "tanh", out, format);
    if (is_ckpt) ckpt_free(&ck);
    else adapter_data_free(&a);
    return rc ? 1 : 0;
}

static const char *dtype_name(ag_dtype d) { return d == AG_F32 ? "f32" : d == AG_F16 ? "f16" : "bf16"; }

static void human(char *buf, size_t n, double bytes) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) {
        bytes /= 1024;
        i++;
    }
    snprintf(buf, n, "%.1f %s", bytes, u[i]);
}

static int inspect_model(const char *path, int K, int L, int seq, int batch) {
    char err[1024];
    model_weights w;
    if (model_load(path, &w, err, sizeof err)) {
        fprintf(stderr, "llama-adapter inspect: %s\n", err);
        return 1;
    }
    const llama_config *c = &w.cfg;
    if (L > c->n_layers) L = c->n_layers;
    size_t frozen = model_param_count(c), trainable = (size_t)L * K * c->dim + (size_t)L * c->n_heads;
    size_t wbytes = 0;
    wbytes += ag_numel(&w.tok_emb) * ag_dtype_size(w.tok_emb.dtype);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *y = &w.layers[l];
        const ag_tensor *t[] = {&y->attn_norm, &y->wq, &y->wk, &y->wv, &y->wo, &y->ffn_norm, &y->w1, &y->w2, &y->w3};
        for (int i = 0; i < 9; i++) wbytes += ag_numel(t[i]) * ag_dtype_size(t[i]->dtype);
    }
    wbytes += ag_numel(&w.norm) * 4 + (c->tied ? 0 : ag_numel(&w.cls) * ag_dtype_size(w.cls.dtype));
    /* activations kept for backward per token and adapted layer (f32): x, norms, q,k,v, roped
     * q,k, attention out, wo out, residual, w1/w3/swiglu outputs, w2 out, gradients alike */
    int kvd = c->n_kv_heads * (c->dim / c->n_heads);
    double per_tok_layer = 4.0 * (8.0 * c->dim + 4.0 * kvd + 3.0 * c->hidden_dim) * 2;
    double act = per_tok_layer * seq * batch * L;
    char b1[32], b2[32], b3[32];
    human(b1, sizeof b1, (double)wbytes);
    human(b2, sizeof b2, act);
    human(b3, sizeof b3, 16.0 * trainable);
    printf("model:        %s (%s)\n", path, w.format);
    printf("architecture: dim %d, %d layers, %d heads, %d kv heads (head dim %d), hidden %d, vocab %d%s\n", c->dim,
           c->n_layers, c->n_heads, c->n_kv_heads, c->dim / c->n_heads, c->hidden_dim, c->vocab_size,
           c->tied ? ", tied output" : "");
    printf("numerics:     weights %s, rms_norm_eps %g, rope_theta %g, max_seq_len %d\n", dtype_name(w.dtype), c->norm_eps,
           c->rope_theta, c->max_seq_len);
    printf("parameters:   %zu frozen; adapter K=%d L=%d: %zu trainable (%.4f%%)\n", frozen, K, L, trainable,
           100.0 * trainable / (double)frozen);
    printf("memory:       weights %s; adapter + grads + AdamW %s; activations ~%s at batch %d x %d tokens\n", b1, b3,
           b2, batch, seq);
    printf("fingerprint:  %016llx\n", (unsigned long long)w.fingerprint);
    model_free(&w);
    return 0;
}

static int inspect_checkpoint(const char *file) {
    char err[1024];
    train_ckpt ck;
    if (ckpt_load(file, &ck, err, sizeof err)) return -1;
    printf("checkpoint:   %s (version %d)\n", file, ck.version);
    printf("method:       %s, %zu trainable numbers\n", ck.method, ck.n_params);
    if (!strcmp(ck.method, "adapter"))
        printf("adapter:      K=%d L=%d gate %s on %d layers, dim %d, %d heads\n", ck.adapter.adapter_len,
               ck.adapter.adapter_layer, ck.adapter.gate_act ? "identity" : "tanh", ck.adapter.n_layers, ck.adapter.dim,
               ck.adapter.n_heads);
    printf("progress:     step %lld (AdamW t %lld), next micro-batch %lld of epoch %d\n", (long long)ck.step,
           (long long)ck.adam_t, (long long)ck.micro_index, ck.epoch);
    printf("fingerprints: model %016llx, tokenizer %016llx\n", (unsigned long long)ck.model_fingerprint,
           (unsigned long long)ck.tok_fingerprint);
    printf("config:       %s\n", ck.config_json ? ck.config_json : "(none)");
    ckpt_free(&ck);
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    if (argc >= 2) {
        const char *p = argv[1];
        size_t n = strlen(p);
        struct stat st;
        if (n > 5 && !strcmp(p + n - 5, ".json") && strcmp(p + (n >= 11 ? n - 11 : 0), "config.json") != 0 &&
            stat(p, &st) == 0 && S_ISREG(st.st_mode))
            return cmd_inspect_data(argc, argv);
    }
    int K = 10, L = 30, seq = 512, batch = 4;
    arg_spec specs[] = {
        {"adapter-len", ARG_INT, &K, "K for the trainable-parameter count", 0},
        {"adapter-layer", ARG_INT, &L, "L for the trainable-parameter count", 0},
        {"max-seq-len", ARG_INT, &seq, "sequence length for the activation estimate", 0},
        {"batch-size", ARG_INT, &batch, "batch size for the activation estimate", 0},
    };
    const char *pos[1] = {NULL};
    int np = 0;
    int r = args_parse("inspect", "FILE_OR_DIR  (a model, a checkpoint, an adapter export, or an Alpaca .json with --tokenizer)",
                       argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), pos, 1, &np);
    if (r) return r > 0 ? 0 : 2;
    if (np != 1) {
        fprintf(stderr, "llama-adapter inspect: give one FILE_OR_DIR (see --help)\n");
        return 2;
    }
    struct stat st;
    if (stat(pos[0], &st) != 0) {
        fprintf(stderr, "llama-adapter inspect: %s: no such file or directory\n", pos[0]);
        return 1;
    }
    if (S_ISDIR(st.st_mode)) { /* a run directory (checkpoints, no config.json): its newest checkpoint */
        char cfg[4200], file[4096], err[1024];
        snprintf(cfg, sizeof cfg, "%s/config.json", pos[0]);
        if (access(cfg, F_OK) != 0 && ckpt_resolve(pos[0], file, sizeof file, err, sizeof err) == 0 &&
            inspect_checkpoint(file) == 0)
            return 0;
    }
    if (S_ISREG(st.st_mode)) {
        if (inspect_checkpoint(pos[0]) == 0) return 0;
        char err[1024];
        adapter_data a;
        if (adapter_import(pos[0], K, -1, -1, -1, &a, err, sizeof err) == 0) {
            printf("adapter:      %s\n", pos[0]);
            printf("shape:        adapter_query [%d, %d], K=%d L=%d of %d layers, %d heads, gate %s\n",
                   a.adapter_layer * a.adapter_len, a.dim, a.adapter_len, a.adapter_layer, a.n_layers, a.n_heads,
                   a.gate_act ? "identity" : "tanh");
            adapter_data_free(&a);
            return 0;
        }
    }
    return inspect_model(pos[0], K, L, seq, batch);
}
