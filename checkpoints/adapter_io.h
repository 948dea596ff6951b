/* Internal to the adapter files (adapter_file.c, torch_pth.c, ckpt_hdf5.c): a list of named
 * f32 tensors with string metadata, the common currency between the export formats and the
 * shape checks of adapter_import(); plus the per-format readers and writers of such a list.
 * Not a public API: the CLI and trainer use adapter_file.h.
 * Ownership: a tensor_set owns its names, data and metadata strings; ts_free() releases them. */
#ifndef CKPT_ADAPTER_IO_H
#define CKPT_ADAPTER_IO_H
#include <stddef.h>
#include <stdint.h>

#define TS_MAX_DIMS 8

typedef struct ts_tensor {
    char *name;
    int ndim;
    int64_t shape[TS_MAX_DIMS];
    float *data;        /* [prod(shape)] f32, owned */
} ts_tensor;

typedef struct tensor_set {
    ts_tensor *t;
    int n, cap;
    char **keys, **vals; /* metadata (string values) */
    int n_meta, meta_cap;
} tensor_set;

/* Appends a tensor; takes ownership of `data` (freed on failure too). 0 or -1 (out of memory). */
int ts_add(tensor_set *s, const char *name, int ndim, const int64_t *shape, float *data);
int ts_add_meta(tensor_set *s, const char *key, const char *val);
const ts_tensor *ts_find(const tensor_set *s, const char *name);
const char *ts_meta(const tensor_set *s, const char *key);
size_t ts_numel(const ts_tensor *t);
void ts_free(tensor_set *s);

/* PyTorch zip checkpoints (torch_pth.c). pth_write: a dict name -> float32 tensor, no
 * metadata, written atomically. pth_read: the float tensors (f32/f16/bf16/f64 storages, any
 * strides and storage offsets) of the top-level dict, or of its "model"/"state_dict" dict
 * when the top level holds no tensor; converted to f32. 0 or -1 with one line in err. */
int pth_write(const char *path, const tensor_set *s, char *err, size_t errlen);
int pth_read(const char *path, tensor_set *s, char *err, size_t errlen);
/* Non-zero when the first bytes are a pre-1.6 (non-zip) torch.save stream. */
int pth_is_legacy(const void *head, size_t n);

/* HDF5 adapter exports (ckpt_hdf5.c): one f32 dataset per tensor, metadata as root string
 * attributes. h5_adapter_read also accepts a training checkpoint (its adapter). */
int h5_adapter_write(const char *path, const tensor_set *s, char *err, size_t errlen);
int h5_adapter_read(const char *path, tensor_set *s, char *err, size_t errlen);

/* The export names. */
#define ADAPTER_QUERY_NAME "adapter_query.weight"
#define ADAPTER_GATE_FMT "layers.%d.attention.gate"
#endif
