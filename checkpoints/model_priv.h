/* Internal to the model readers/writers (model_file.c, model_hf.c, model_llama2c.c): the private
 * state behind model_weights.priv and the "slot" enumeration every reader and writer shares.
 *
 * Slots, in this fixed order: 0 tok_emb; 1 + 9*l + k for layer l with k = 0 attn_norm, 1 wq,
 * 2 wk, 3 wv, 4 wo, 5 ffn_norm, 6 w1, 7 w2, 8 w3; 1 + 9*L the final norm; 2 + 9*L cls (only
 * when untied). Not part of the public API. */
#ifndef CKPT_MODEL_PRIV_H
#define CKPT_MODEL_PRIV_H
#include "checkpoints/model_file.h"
#include "checkpoints/safetensors.h"

typedef struct model_priv {
    st_file *st;      /* [n_st] open safetensors shards (HF) */
    int n_st;
    void *map;        /* llama2.c mapping */
    size_t map_size;
    void **owned;     /* [n_owned] malloc'd buffers (converted / permuted / random tensors) */
    int n_owned, cap_owned;
} model_priv;

typedef struct mf_slot_info {
    int rows, cols;
    int is_norm;    /* a [1, dim] RMSNorm weight vector */
    int perm_heads; /* > 0: wq/wk with this many heads (HF rotate-half permutation applies) */
} mf_slot_info;

int mf_n_slots(const llama_config *c);
mf_slot_info mf_slot(const llama_config *c, int i);
ag_tensor *mf_slot_tensor(model_weights *w, int i);

/* Checks a config for internal consistency; 0, or -1 with the reason (no file name) in why. */
int mf_check_config(const llama_config *c, char *why, size_t n);
/* Allocates priv and the layer array of w (cfg already set). 0 or -1 (out of memory). */
int mf_begin(model_weights *w);
/* A 64-byte aligned buffer owned by w (freed by model_free); NULL when out of memory. */
void *mf_alloc(model_weights *w, size_t bytes);
/* n elements of src (dtype sd, any alignment) into dst (dtype dd, any alignment). */
void mf_convert(void *dst, ag_dtype dd, const void *src, ag_dtype sd, size_t n);
/* Fingerprint of config and sampled values (see model_file.c). */
uint64_t mf_fingerprint(model_weights *w);

/* Meta row index of HF row r within a head of hd rows (the HF conversion interleaves pairs
 * (2i, 2i+1) into the halves i and hd/2 + i). */
static inline int mf_hf_to_meta_row(int r, int hd) {
    int h = r / hd, q = r % hd, half = hd / 2;
    int j = q / half, i = q % half;
    return h * hd + 2 * i + j;
}
static inline int mf_meta_to_hf_row(int m, int hd) {
    int h = m / hd, q = m % hd;
    int i = q / 2, j = q % 2;
    return h * hd + j * (hd / 2) + i;
}

int mf_load_hf(const char *dir, model_weights *w, char *err, size_t errlen);
int mf_load_llama2c(const char *path, model_weights *w, char *err, size_t errlen);
/* 1 when the first 28 bytes of a file of `size` bytes are a llama2.c header that accounts for
 * exactly `size` bytes. */
int mf_llama2c_plausible(const unsigned char *hdr28, uint64_t size);
#endif
