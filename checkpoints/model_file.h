/* Frozen base-model weights and the readers/writers of model files.
 *
 * Formats: a Hugging Face Llama directory (config.json + model.safetensors, or sharded
 * model-XXXXX-of-YYYYY.safetensors with model.safetensors.index.json; F32/F16/BF16), and a
 * llama2.c checkpoint (.bin: legacy header of 7 int32 {dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, max_seq_len}; negative vocab_size = untied classifier).
 * Loaded weights are in Meta's layout (DESIGN.md §1): HF wq/wk rows are converted from the
 * rotate-half permutation back to interleaved pairs on load.
 * Files are memory-mapped; 16-bit tensors stay 16-bit unless converted with model_to_f32().
 * Ownership: model_load() fills a model_weights that the caller frees with model_free(). */
#ifndef MODEL_FILE_H
#define MODEL_FILE_H
#include "autograd/tensor.h"

typedef struct llama_config {
    int dim;          /* model width */
    int n_layers;
    int n_heads;      /* query heads H */
    int n_kv_heads;   /* key/value heads Hkv, H % Hkv == 0 */
    int hidden_dim;   /* FFN width */
    int vocab_size;
    int max_seq_len;  /* from the file; 0 when unknown */
    float norm_eps;   /* RMSNorm eps: HF rms_norm_eps (1e-6 when absent), llama2.c 1e-5 */
    float rope_theta; /* 10000 unless the config says otherwise */
    int tied;         /* 1: the classifier is the embedding table */
} llama_config;

typedef struct llama_layer_weights {
    ag_tensor attn_norm; /* [1, dim] */
    ag_tensor wq;        /* [dim, dim]  (Meta pair layout) */
    ag_tensor wk;        /* [kv_dim, dim], kv_dim = n_kv_heads * dim / n_heads (Meta pair layout) */
    ag_tensor wv;        /* [kv_dim, dim] */
    ag_tensor wo;        /* [dim, dim] */
    ag_tensor ffn_norm;  /* [1, dim] */
    ag_tensor w1;        /* [hidden, dim] gate projection */
    ag_tensor w2;        /* [dim, hidden] down projection */
    ag_tensor w3;        /* [hidden, dim] up projection */
} llama_layer_weights;

typedef struct model_weights {
    llama_config cfg;
    ag_tensor tok_emb;            /* [vocab, dim] */
    llama_layer_weights *layers;  /* [n_layers] */
    ag_tensor norm;               /* [1, dim] final RMSNorm */
    ag_tensor cls;                /* [vocab, dim]; same data as tok_emb when cfg.tied */
    ag_dtype dtype;               /* dtype of the big matrices as stored in memory */
    uint64_t fingerprint;         /* config + sampled weight bytes: refuses mismatched resumes */
    char format[16];              /* "hf" or "llama2c" */
    void *priv;                   /* mappings and owned buffers */
} model_weights;

#define MODEL_ERR_LEN 512

/* Loads a HF directory (or its config.json / model.safetensors path) or a llama2.c .bin file,
 * chosen by what `path` is. Returns 0, or -1 with one line in err naming the file, the tensor
 * and what was expected. */
int model_load(const char *path, model_weights *w, char *err, size_t errlen);
void model_free(model_weights *w);

/* Converts every tensor to owned, writable f32 memory (full fine-tuning, tests). 0 or -1. */
int model_to_f32(model_weights *w, char *err, size_t errlen);

/* Allocates an f32 model of the given config with deterministic N(0, std) weights (norm
 * weights 1 + small noise) from `seed`; for tests and the demo. Free with model_free(). */
int model_init_random(model_weights *w, const llama_config *cfg, uint64_t seed, float std);

/* Writers. HF: a directory with config.json and model.safetensors (shard_bytes > 0 splits into
 * shards with an index), dtype AG_F32/AG_F16/AG_BF16, wq/wk permuted to HF's layout.
 * llama2.c: legacy header, f32, negative vocab when untied. Written atomically. 0 or -1. */
int model_save_hf(const char *dir, const model_weights *w, ag_dtype dtype, size_t shard_bytes,
                  char *err, size_t errlen);
int model_save_llama2c(const char *path, const model_weights *w, char *err, size_t errlen);

/* 1 when t's data points into a file mapping (shared page cache, no copy), 0 when it is a
 * buffer the loader converted or copied (HF q/k un-permutation, f32 norms, mixed dtypes). */
int model_is_mapped(const model_weights *w, const ag_tensor *t);

/* Parameter counts. */
size_t model_param_count(const llama_config *cfg);
#endif
