/* safetensors files: 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str: str}}, then the data.
 * Reading memory-maps the file and validates every entry (dtype known, shape product times
 * dtype size equals end-begin, offsets inside the file, no overlap); writing is atomic.
 * Ownership: st_open() fills an st_file the caller closes with st_close(); tensor data points
 * into the mapping and lives until then. */
#ifndef CKPT_SAFETENSORS_H
#define CKPT_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    char dtype[8];          /* "F32", "F16", "BF16", "I32", "I64", ... as in the file */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;       /* into the mapping */
} st_tensor;

typedef struct st_file {
    char path[4096];
    void *map;
    size_t size;
    st_tensor *t;
    int n;
    char **meta_keys, **meta_vals; /* __metadata__ (string values) */
    int n_meta;
} st_file;

int st_open(const char *path, st_file *f, char *err, size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key); /* NULL when absent */
/* Bytes per element of a safetensors dtype name; 0 when unknown. */
size_t st_dtype_size(const char *dtype);

typedef struct st_out {
    const char *name;
    const char *dtype;       /* "F32", "F16", "BF16" */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;        /* nbytes = product(shape) * st_dtype_size(dtype) */
} st_out;

/* Writes n tensors (in the given order) and n_meta string pairs as __metadata__, atomically.
 * 0 or -1 with err. */
int st_write(const char *path, const st_out *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta, char *err, size_t errlen);

/* Streaming variant for tensors too big to hold converted all at once: a tensor whose st_out.data
 * is NULL gets its bytes from fill(ctx, index, buf, nbytes), called in file order into a scratch
 * buffer of nbytes; fill returns 0, or non-zero to abort the write (the file is not replaced). */
typedef int (*st_fill_fn)(void *ctx, int index, void *buf, size_t nbytes);
int st_write_stream(const char *path, const st_out *t, int n, const char *const *meta_keys,
                    const char *const *meta_vals, int n_meta, st_fill_fn fill, void *ctx, char *err,
                    size_t errlen);
#endif
