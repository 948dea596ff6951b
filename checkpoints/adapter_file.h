/* Adapter exports (safetensors, PyTorch .pth, HDF5), adapter import from any of them, and the
 * HDF5 training checkpoint (DESIGN.md §4).
 *
 * Export names (the reference's): "adapter_query.weight" [L*K, dim] f32 and
 * "layers.{i}.attention.gate" [1, H, 1, 1] f32 for i over ALL n_layers (zeros below the
 * adapted ones). Metadata adapter_len, adapter_layer, gate_act: safetensors __metadata__,
 * HDF5 attributes; the .pth carries no metadata (as the reference's own files).
 * Every write goes to PATH.tmp, is fsync'ed and renamed over PATH: a crash never leaves a
 * half-written file where a good one was.
 * Ownership: *_load functions fill structs whose arrays the caller frees with the matching
 * *_free. */
#ifndef ADAPTER_FILE_H
#define ADAPTER_FILE_H
#include <stddef.h>
#include <stdint.h>

enum { GATE_TANH = 0, GATE_IDENTITY = 1 };
typedef enum { EXPORT_SAFETENSORS, EXPORT_PTH, EXPORT_HDF5 } export_format;

typedef struct adapter_data {
    int adapter_len;    /* K */
    int adapter_layer;  /* L: the top L layers are adapted */
    int n_layers;       /* layers of the base model */
    int n_heads;        /* H */
    int dim;
    int gate_act;       /* GATE_TANH or GATE_IDENTITY */
    float *query;       /* [L*K, dim]; row block j belongs to layer n_layers-L+j */
    float *gates;       /* [L, H]; row j belongs to layer n_layers-L+j */
} adapter_data;

#define ADAPTER_ERR_LEN 512

/* "safetensors" | "pth" | "hdf5" -> format; -1 when unknown. */
int export_format_parse(const char *s, export_format *f);
int adapter_export(const char *path, export_format fmt, const adapter_data *a, char *err, size_t errlen);

/* Reads an exported adapter in any format (detected from the bytes, not the name).
 * default_len: adapter_len for a file without metadata (then adapter_layer = rows / len).
 * n_layers/n_heads/dim: of the base model, checked against the file. gate_act of a file
 * without metadata is GATE_TANH. Gates of layers below the adapted ones are ignored.
 * A training checkpoint (ckpt-*.h5) of method "adapter" is accepted too (its adapter).
 * n_layers/n_heads/dim <= 0: not checked, taken from the file (metadata, else the tensors). */
int adapter_import(const char *path, int default_len, int n_layers, int n_heads, int dim,
                   adapter_data *out, char *err, size_t errlen);
void adapter_data_free(adapter_data *a);

/* Everything a resume needs, bit for bit. */
typedef struct train_ckpt {
    int version;            /* CKPT_VERSION */
    char method[16];        /* "adapter" or "full" */
    /* trainable state: flat blocks of n_params floats */
    size_t n_params;
    float *params, *adam_m, *adam_v;
    adapter_data adapter;   /* shape and metadata of the adapter (query/gates alias params when
                               method is "adapter"; NULL pointers for "full") */
    int64_t step;           /* optimizer steps done */
    int64_t adam_t;         /* AdamW step count */
    int epoch;              /* data cursor: next micro-batch is (epoch, micro_index) */
    int64_t micro_index;
    uint64_t data_seed;     /* shuffle seed (per-epoch permutations derive from it) */
    uint64_t rng_state[4];  /* any other RNG in use (saved verbatim) */
    uint64_t model_fingerprint, tok_fingerprint;
    uint64_t data_fingerprint; /* of the tokenized training set (0: not recorded, older files) */
    char *config_json;      /* the full resolved training config */
} train_ckpt;

#define CKPT_VERSION 1

/* Writes c (version CKPT_VERSION, whatever c->version says) to PATH.tmp, fsyncs, renames. */
int ckpt_save(const char *path, const train_ckpt *c, char *err, size_t errlen);
/* Fills c (params, adam_m, adam_v, config_json malloc'ed; config_json "" when none was
 * saved); refuses another CKPT_VERSION, a missing field, a field out of range (negative step,
 * sizes whose product overflows), dataset dims that disagree with the checkpoint's own sizes
 * (checked before anything is allocated) and non-finite parameters or moments. Free with
 * ckpt_free. */
int ckpt_load(const char *path, train_ckpt *c, char *err, size_t errlen);
void ckpt_free(train_ckpt *c);
/* PATH is a checkpoint file, or a run directory whose newest ckpt-*.h5 is taken (by step).
 * Writes the file path into out. 0 or -1 with err. */
int ckpt_resolve(const char *path, char *out, size_t outlen, char *err, size_t errlen);
/* Keeps the newest `keep` ckpt-*.h5 files of dir (keep <= 0: keep all). */
void ckpt_prune(const char *dir, int keep);
/* The pruning of a run that just wrote step `step`: among the checkpoints of steps <= step
 * keeps the newest `keep` (so the one just written always stays); checkpoints of later steps
 * (another history) are never deleted. */
void ckpt_prune_upto(const char *dir, int keep, int64_t step);
/* adapter_data view of a checkpoint (for export and eval --adapter CKPT): the struct is
 * copied, query/gates alias c->params (valid until ckpt_free). -1 with err (naming `path`,
 * may be NULL) when the checkpoint's method is not "adapter". */
int ckpt_adapter_view(const train_ckpt *c, adapter_data *view, const char *path, char *err, size_t errlen);
/* "DIR/ckpt-%08lld.h5": the file name ckpt_resolve() and ckpt_prune() look for. */
void ckpt_path(const char *dir, int64_t step, char *out, size_t outlen);
#endif
