/* The `export` and `inspect` subcommands: adapter exports from checkpoints, and descriptions of
 * model files, checkpoints and adapter files (data files go to cmd_inspect_data). */
#include <omp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "trainer/args.h"
#include "trainer/cli.h"
#include "trainer/memory.h"

/* The export format an --out name implies: .safetensors/.st, .pth/.pt, .h5/.hdf5; -1 for any other. */
static int format_of_name(const char *path, export_format *f) {
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) return -1;
    const char *ext = dot + 1;
    if (!strcmp(ext, "safetensors") || !strcmp(ext, "st")) *f = EXPORT_SAFETENSORS;
    else if (!strcmp(ext, "pth") || !strcmp(ext, "pt")) *f = EXPORT_PTH;
    else if (!strcmp(ext, "h5") || !strcmp(ext, "hdf5")) *f = EXPORT_HDF5;
    else return -1;
    return 0;
}

static const char *format_name(export_format f) {
    return f == EXPORT_SAFETENSORS ? "safetensors" : f == EXPORT_PTH ? "pth" : "hdf5";
}

int cmd_export(int argc, char **argv) {
    const char *adapter = NULL, *format = NULL, *out = NULL;
    int adapter_len = 10;
    arg_spec specs[] = {
        {"adapter", ARG_STR, &adapter, "training checkpoint, run directory (its newest checkpoint) or adapter file", 0},
        {"format", ARG_STR, &format, "safetensors | pth | hdf5 (default: from the --out extension .safetensors, .pth, .h5; else safetensors)", 0},
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
    export_format by_name;
    int named = format_of_name(out, &by_name) == 0;
    if (format && export_format_parse(format, &fmt)) {
        fprintf(stderr, "llama-adapter export: --format '%s': expected safetensors, pth or hdf5\n", format);
        return 2;
    }
    if (format && named && fmt != by_name) {
        fprintf(stderr, "llama-adapter export: --format %s contradicts the extension of --out %s (a %s file): change one "
                "of them\n", format, out, format_name(by_name));
        return 2;
    }
    if (!format) fmt = named ? by_name : EXPORT_SAFETENSORS;
    format = format_name(fmt);
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
    int threads = omp_get_max_threads(), T = seq * batch;
    mem_plan off = mem_plan_train(&w, K, L, 0, T, 0, threads, 0), on = mem_plan_train(&w, K, L, 0, T, 1, threads, 0);
    mem_plan ev = mem_plan_eval(&w, T, threads, 0);
    double mapped = 0, wbytes = mem_weight_bytes(&w, &mapped);
    /* which tensors are served from the file mapping and which were converted at load */
    const char *kinds[9] = {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"};
    char mapped_list[256] = "", conv_list[256] = "";
    for (int k = 0; k < 11; k++) {
        const ag_tensor *t = k < 9 ? (const ag_tensor *[9]){&w.layers[0].attn_norm, &w.layers[0].wq, &w.layers[0].wk,
                                                            &w.layers[0].wv, &w.layers[0].wo, &w.layers[0].ffn_norm,
                                                            &w.layers[0].w1, &w.layers[0].w2, &w.layers[0].w3}[k]
                               : k == 9 ? &w.tok_emb : &w.cls;
        const char *name = k < 9 ? kinds[k] : k == 9 ? "embedding" : "output";
        if (k == 10 && c->tied) continue;
        char *dst = model_is_mapped(&w, t) ? mapped_list : conv_list;
        size_t at = strlen(dst);
        snprintf(dst + at, sizeof mapped_list - at, "%s%s", at ? " " : "", name);
    }
    char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32], b7[32], b8[32];
    mem_human(b1, sizeof b1, wbytes);
    mem_human(b2, sizeof b2, mapped);
    mem_human(b3, sizeof b3, off.trainable);
    mem_human(b4, sizeof b4, off.activations);
    mem_human(b5, sizeof b5, on.activations);
    mem_human(b6, sizeof b6, off.total);
    mem_human(b7, sizeof b7, on.total);
    mem_human(b8, sizeof b8, ev.total);
    printf("model:        %s (%s)\n", path, w.format);
    printf("architecture: dim %d, %d layers, %d heads, %d kv heads (head dim %d), hidden %d, vocab %d%s\n", c->dim,
           c->n_layers, c->n_heads, c->n_kv_heads, c->dim / c->n_heads, c->hidden_dim, c->vocab_size,
           c->tied ? ", tied output" : "");
    printf("numerics:     weights %s, rms_norm_eps %g, rope_theta %g, max_seq_len %d\n", dtype_name(w.dtype), c->norm_eps,
           c->rope_theta, c->max_seq_len);
    printf("parameters:   %zu frozen; adapter K=%d L=%d: %zu trainable (%.4f%%)\n", frozen, K, L, trainable,
           100.0 * trainable / (double)frozen);
    printf("weights:      %s in memory, %s of it mapped from the file (%s); converted at load: %s\n", b1, b2,
           mapped_list[0] ? mapped_list : "none", conv_list[0] ? conv_list : "none");
    printf("memory:       training at batch %d x %d tokens, K=%d L=%d: activations %s (recompute off) or %s (recompute on); "
           "adapter + grads + AdamW %s\n", batch, seq, K, L, b4, b5, b3);
    printf("              whole run ~%s (recompute off), ~%s (recompute on); eval/generate ~%s\n", b6, b7, b8);
    printf("fingerprint:  %016llx\n", (unsigned long long)w.fingerprint);
    model_free(&w);
    return 0;
}

static int inspect_checkpoint(const char *file, char *err, size_t errlen) {
    train_ckpt ck;
    if (ckpt_load(file, &ck, err, errlen)) return -1;
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
        if (access(cfg, F_OK) != 0 && ckpt_resolve(pos[0], file, sizeof file, err, sizeof err) == 0) {
            if (inspect_checkpoint(file, err, sizeof err) == 0) return 0;
            fprintf(stderr, "llama-adapter inspect: %s\n", err); /* the run's newest checkpoint is damaged */
            return 1;
        }
    }
    if (S_ISREG(st.st_mode)) {
        /* the bytes say what the file is; its own reader's message is the real reason it fails */
        unsigned char head[16] = {0};
        FILE *f = fopen(pos[0], "rb");
        size_t got = f ? fread(head, 1, sizeof head, f) : 0;
        if (f) fclose(f);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | head[i];
        int is_h5 = got >= 8 && !memcmp(head, "\x89HDF\r\n\x1a\n", 8), is_zip = got >= 4 && !memcmp(head, "PK\3\4", 4);
        int is_st = got >= 9 && head[8] == '{' && hl >= 2 && hl <= (uint64_t)st.st_size - 8;
        char err[1024], aerr[1024];
        if (is_h5) {
            if (inspect_checkpoint(pos[0], err, sizeof err) == 0) return 0;
            if (!strstr(err, "not a llama-adapter training checkpoint")) { /* a damaged checkpoint */
                fprintf(stderr, "llama-adapter inspect: %s\n", err);
                return 1;
            }
        }
        size_t n = strlen(pos[0]);
        int named_pth = (n > 4 && !strcmp(pos[0] + n - 4, ".pth")) || (n > 3 && !strcmp(pos[0] + n - 3, ".pt"));
        adapter_data a;
        if (is_h5 || is_zip || is_st || named_pth) {
            if (adapter_import(pos[0], K, -1, -1, -1, &a, aerr, sizeof aerr) == 0) {
                printf("adapter:      %s\n", pos[0]);
                printf("shape:        adapter_query [%d, %d], K=%d L=%d of %d layers, %d heads, gate %s\n",
                       a.adapter_layer * a.adapter_len, a.dim, a.adapter_len, a.adapter_layer, a.n_layers, a.n_heads,
                       a.gate_act ? "identity" : "tanh");
                adapter_data_free(&a);
                return 0;
            }
            int no_adapter = strstr(aerr, "no tensor adapter_query.weight") != NULL;
            if (!(is_st && no_adapter)) { /* else a model's safetensors: the model reader below says more */
                if (no_adapter && !is_h5)
                    fprintf(stderr, "llama-adapter inspect: %s (Meta consolidated .pth models are not read)\n", aerr);
                else
                    fprintf(stderr, "llama-adapter inspect: %s\n", aerr);
                return 1;
            }
        }
    }
    return inspect_model(pos[0], K, L, seq, batch);
}
