/* HDF5 files (DESIGN.md §4): the training checkpoint (ckpt_save/ckpt_load, bit for bit), the
 * checkpoint directory helpers (ckpt_resolve, ckpt_prune, ckpt_path) and the HDF5 adapter
 * export (h5_adapter_write/h5_adapter_read of adapter_io.h).
 *
 * Checkpoint layout (version CKPT_VERSION), all at the root group:
 *   attributes  version, n_params, step, adam_t, epoch, micro_index (int64); data_seed,
 *               model_fingerprint, tok_fingerprint (uint64); rng_state (uint64 [4]);
 *               adapter_len, adapter_layer, n_layers, n_heads, dim (int64); method, gate_act
 *               (strings)
 *   datasets    params, adam_m, adam_v (f32 [n_params]); config_json (scalar string)
 * For method "adapter", params = [adapter_query (L*K*dim) | gates (L*H)].
 * Adapter export: datasets adapter_query.weight [L*K, dim] and layers.{i}.attention.gate
 * [1, H, 1, 1] (f32), metadata as root attributes (integers as int64, strings as strings).
 * Files are written to PATH.tmp and renamed into place with atomic_rename (fsync'ed): a crash
 * or SIGKILL mid-write leaves the previous file intact.
 * HDF5's own error printing is switched off; failures become one line naming the file, with
 * the innermost message of HDF5's error stack.
 * Deliberately not: chunking or compression (checkpoints are written whole and often), reading
 * checkpoints of other versions (refused with a hint). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoints/adapter_file.h"
#include "checkpoints/adapter_io.h"
#include "checkpoints/atomic.h"

/* ---------------------------------------------------------------- HDF5 helpers */

/* Called first by every entry point: HDF5's automatic error printing off, and no clean-up of
 * HDF5 at exit. That clean-up closes files still open, and a checkpoint abandoned after a write
 * error (full disk) can stay open (its close fails); HDF5 1.10 then crashes at exit. Every file
 * this module opens is closed explicitly, so nothing is lost without it. */
static void h5_quiet(void) {
    static int once;
    if (!once) {
        once = 1;
        H5dont_atexit(); /* fails harmlessly when the library was initialised already */
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* Walks HDF5's error stack: the innermost message, and the errno of a failed system call
 * (HDF5's file drivers write "errno = 28, error message = '...'" into their message). */
typedef struct h5_err_walk {
    char first[160];
    int sys_errno;
} h5_err_walk;

static herr_t walk_err(unsigned n, const H5E_error2_t *e, void *data) {
    h5_err_walk *w = data;
    if (!e->desc) return 0;
    if (n == 0 && e->desc[0]) snprintf(w->first, sizeof w->first, "%s", e->desc);
    const char *en = strstr(e->desc, "errno = ");
    if (en && !w->sys_errno) w->sys_errno = atoi(en + 8);
    return 0;
}

/* Why the last HDF5 call failed, as " (reason)" for one-line messages: the system error when
 * a system call failed (a full disk is "No space left on device"), else HDF5's innermost
 * message cut to one short line ("(HDF5: ...)"), or "". Clears the stack. */
static const char *h5_why(char *buf) {
    h5_err_walk w;
    memset(&w, 0, sizeof w);
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_err, &w); /* n == 0: where it was detected */
    H5Eclear2(H5E_DEFAULT);
    if (w.sys_errno > 0) {
        snprintf(buf, 160, ": %s", strerror(w.sys_errno));
    } else if (w.first[0]) {
        for (char *p = w.first; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        snprintf(buf, 160, " (HDF5: %.120s)", w.first);
    }
    return buf;
}

static int h5_write_f32(hid_t loc, const char *name, int ndim, const int64_t *shape, const float *data) {
    hsize_t dims[TS_MAX_DIMS];
    for (int d = 0; d < ndim; d++) dims[d] = (hsize_t)shape[d];
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    if (sp < 0) return -1;
    hid_t ds = H5Dcreate2(loc, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Sclose(sp);
    if (ds < 0) return -1;
    herr_t rc = H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (H5Dclose(ds) < 0) rc = -1;
    return rc < 0 ? -1 : 0;
}

static int h5_attr(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int n, const void *v) {
    hsize_t dims[1] = {(hsize_t)n};
    hid_t sp = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    if (sp < 0) return -1;
    hid_t a = H5Acreate2(loc, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Sclose(sp);
    if (a < 0) return -1;
    herr_t rc = H5Awrite(a, mem_type, v);
    if (H5Aclose(a) < 0) rc = -1;
    return rc < 0 ? -1 : 0;
}

static int h5_attr_i64(hid_t loc, const char *name, int64_t v) {
    return h5_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &v);
}
static int h5_attr_u64(hid_t loc, const char *name, const uint64_t *v, int n) {
    return h5_attr(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, n, v);
}

static hid_t str_type(size_t len) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return -1;
    if (H5Tset_size(t, len ? len : 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLPAD) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

static int h5_attr_str(hid_t loc, const char *name, const char *s) {
    hid_t t = str_type(strlen(s));
    if (t < 0) return -1;
    const char *v = *s ? s : "";
    char zero[1] = {0};
    int rc = h5_attr(loc, name, t, t, 1, *s ? (const void *)v : zero);
    H5Tclose(t);
    return rc;
}

static int h5_dataset_str(hid_t loc, const char *name, const char *s) {
    hid_t t = str_type(strlen(s));
    if (t < 0) return -1;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t ds = sp < 0 ? -1 : H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = -1;
    char zero[1] = {0};
    if (ds >= 0) {
        rc = H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, *s ? (const void *)s : zero);
        if (H5Dclose(ds) < 0) rc = -1;
    }
    if (sp >= 0) H5Sclose(sp);
    H5Tclose(t);
    return rc < 0 ? -1 : 0;
}

/* Number of elements of an attribute or dataset space; -1 on error. */
static int64_t space_npoints(hid_t sp) {
    if (sp < 0) return -1;
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    return n;
}

/* Integer attribute of n elements read as int64/uint64 (mem_type): 0, 1 when absent, -1 when
 * it has the wrong class or size. */
static int h5_read_int_attr(hid_t loc, const char *name, hid_t mem_type, int n, void *out) {
    if (H5Aexists(loc, name) <= 0) return 1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    int ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && space_npoints(H5Aget_space(a)) == n &&
             H5Aread(a, mem_type, out) >= 0;
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return ok ? 0 : -1;
}

/* String of a fixed- or variable-length string attribute (obj_is_attr) or dataset; malloc'ed,
 * NULL when it is not a scalar string. */
static char *h5_read_str(hid_t obj, int obj_is_attr) {
    hid_t t = obj_is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
    hid_t sp = obj_is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    char *res = NULL;
    if (t < 0 || H5Tget_class(t) != H5T_STRING || space_npoints(sp) != 1) goto done;
    if (H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        char *v = NULL;
        herr_t rc = obj_is_attr ? H5Aread(obj, mt, &v) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
        if (rc >= 0 && v) {
            res = strdup(v);
            H5free_memory(v);
        }
        H5Tclose(mt);
    } else {
        size_t len = H5Tget_size(t);
        res = calloc(len + 1, 1);
        if (!res) goto done;
        herr_t rc = obj_is_attr ? H5Aread(obj, t, res) : H5Dread(obj, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, res);
        if (rc < 0) {
            free(res);
            res = NULL;
        }
    }
done:
    if (t >= 0) H5Tclose(t);
    return res;
}

static char *h5_read_str_attr(hid_t loc, const char *name) {
    if (H5Aexists(loc, name) <= 0) return NULL;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return NULL;
    char *s = h5_read_str(a, 1);
    H5Aclose(a);
    return s;
}

/* Chunked (possibly compressed) datasets are not bounded by the file size; they may still
 * hold at most this many elements (1 GiB of f32). */
#define H5_MAX_CHUNKED_NUMEL ((uint64_t)1 << 28)

/* Float dataset -> malloc'ed f32 with its shape: 0, 1 when absent, -1 when not a float dataset
 * of at most TS_MAX_DIMS dimensions, -2 (shape filled, nothing allocated) when its dims
 * overflow or declare more than max_numel elements, or more bytes than a contiguous dataset can
 * hold in a file of file_size bytes. Sizes are checked before anything is allocated: a small
 * damaged file cannot ask for gigabytes. */
static int h5_read_f32(hid_t loc, const char *name, uint64_t max_numel, uint64_t file_size, float **out, int *ndim,
                       int64_t *shape) {
    *out = NULL;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return 1;
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t t = H5Dget_type(ds), sp = H5Dget_space(ds);
    int rc = -1, nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[TS_MAX_DIMS];
    if (t < 0 || H5Tget_class(t) != H5T_FLOAT || nd < 0 || nd > TS_MAX_DIMS ||
        H5Sget_simple_extent_dims(sp, dims, NULL) < 0)
        goto done;
    uint64_t n = 1;
    int wrap = 0;
    for (int d = 0; d < nd; d++) {
        shape[d] = dims[d] > (hsize_t)INT64_MAX ? INT64_MAX : (int64_t)dims[d];
        wrap |= __builtin_mul_overflow(n, (uint64_t)dims[d], &n);
    }
    *ndim = nd;
    hid_t dcpl = H5Dget_create_plist(ds);
    int chunked = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED;
    if (dcpl >= 0) H5Pclose(dcpl);
    size_t esz = H5Tget_size(t);
    uint64_t bytes = 0;
    wrap |= __builtin_mul_overflow(n, (uint64_t)(esz ? esz : 1), &bytes);
    if (wrap || n > max_numel || (chunked ? n > H5_MAX_CHUNKED_NUMEL : bytes > file_size)) {
        rc = -2;
        goto done;
    }
    *out = malloc((n ? (size_t)n : 1) * sizeof(float));
    if (!*out) goto done;
    if (n && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0) {
        free(*out);
        *out = NULL;
        goto done;
    }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    return rc;
}

/* Creates PATH.tmp for writing; tmp receives its name. */
static hid_t create_tmp(const char *path, char *tmp, size_t tmplen, char *err, size_t errlen) {
    char why[160];
    if (snprintf(tmp, tmplen, "%s.tmp", path) >= (int)tmplen) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        int e = errno;
        const char *w = h5_why(why);
        if (w[0] == ':') snprintf(err, errlen, "%s: cannot create%s", tmp, w);
        else snprintf(err, errlen, "%s: cannot create: %s%s", tmp, strerror(e), w);
        unlink(tmp); /* HDF5 may have created it before failing */
    }
    return f;
}

/* Closes a file being abandoned after a write error. HDF5 flushes its metadata on close; on a
 * full disk that fails again, the file stays open, and HDF5's own clean-up at exit then
 * crashes on it (seen with HDF5 1.10). The file's descriptor is pointed at an anonymous memory
 * file first (writes and truncation succeed there), so the close succeeds and the disk is not
 * touched again; the temporary is removed by the caller. */
static void h5_abandon(hid_t f) {
    void *handle = NULL;
    if (H5Fget_vfd_handle(f, H5P_DEFAULT, &handle) >= 0 && handle) {
        int mem = memfd_create("llama-adapter-abandoned", MFD_CLOEXEC);
        if (mem >= 0) {
            dup2(mem, *(int *)handle);
            close(mem);
        }
    }
    /* a dataset whose close failed is still open, and would keep the file open */
    hid_t ids[64];
    ssize_t n = H5Fget_obj_ids(f, H5F_OBJ_DATASET | H5F_OBJ_GROUP | H5F_OBJ_DATATYPE | H5F_OBJ_ATTR, 64, ids);
    for (ssize_t i = 0; i < n; i++) {
        H5I_type_t t = H5Iget_type(ids[i]);
        if (t == H5I_ATTR) H5Aclose(ids[i]);
        else if (t == H5I_DATASET) H5Dclose(ids[i]);
        else if (t == H5I_GROUP) H5Gclose(ids[i]);
        else if (t == H5I_DATATYPE) H5Tclose(ids[i]);
    }
    H5Fclose(f); /* may still fail (a flush that failed once stays failed): see h5_quiet */
    H5Eclear2(H5E_DEFAULT);
}

/* Closes f and renames tmp over path; on any earlier failure (bad) removes tmp. */
static int finish_tmp(hid_t f, int bad, const char *what, const char *tmp, const char *path, char *err,
                      size_t errlen) {
    char why[160];
    if (bad) {
        snprintf(err, errlen, "%s: writing %s failed%s", tmp, what, h5_why(why));
        h5_abandon(f);
        unlink(tmp);
        return -1;
    }
    if (H5Fclose(f) < 0) {
        snprintf(err, errlen, "%s: closing the HDF5 file failed%s", tmp, h5_why(why));
        if (H5Iis_valid(f) > 0) h5_abandon(f);
        unlink(tmp);
        return -1;
    }
    return atomic_rename(tmp, path, err, errlen);
}

/* ---------------------------------------------------------------- adapter export */

int h5_adapter_write(const char *path, const tensor_set *s, char *err, size_t errlen) {
    h5_quiet();
    char tmp[4200];
    hid_t f = create_tmp(path, tmp, sizeof tmp, err, errlen);
    if (f < 0) return -1;
    const char *what = "";
    int bad = 0;
    for (int i = 0; i < s->n && !bad; i++) {
        what = s->t[i].name;
        bad = h5_write_f32(f, s->t[i].name, s->t[i].ndim, s->t[i].shape, s->t[i].data) != 0;
    }
    for (int i = 0; i < s->n_meta && !bad; i++) {
        what = s->keys[i];
        /* integers as int64 attributes, everything else as strings */
        char *end;
        long long v = strtoll(s->vals[i], &end, 10);
        if (*s->vals[i] && !*end) bad = h5_attr_i64(f, s->keys[i], (int64_t)v) != 0;
        else bad = h5_attr_str(f, s->keys[i], s->vals[i]) != 0;
    }
    return finish_tmp(f, bad, what, tmp, path, err, errlen);
}

static herr_t collect_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    tensor_set *s = data;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return 0;
    hid_t t = H5Aget_type(a);
    char *v = NULL, num[32];
    if (t >= 0 && H5Tget_class(t) == H5T_INTEGER && space_npoints(H5Aget_space(a)) == 1) {
        long long x;
        if (H5Aread(a, H5T_NATIVE_LLONG, &x) >= 0) {
            snprintf(num, sizeof num, "%lld", x);
            v = strdup(num);
        }
    } else if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
        v = h5_read_str(a, 1);
    }
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    int bad = v && ts_add_meta(s, name, v) != 0;
    free(v);
    return bad ? -1 : 0;
}

typedef struct collect_ctx {
    tensor_set *s;
    const char *path;
    char *err;
    size_t errlen;
    uint64_t file_size;
} collect_ctx;

static int wanted_name(const char *name) {
    if (!strcmp(name, ADAPTER_QUERY_NAME)) return 1;
    int i;
    char tail[32];
    return sscanf(name, "layers.%d.%31s", &i, tail) == 2 && !strcmp(tail, "attention.gate");
}

static herr_t collect_dataset(hid_t loc, const char *name, const H5L_info_t *info, void *data) {
    collect_ctx *c = data;
    if (!wanted_name(name)) return 0;
    float *x;
    int ndim = 0;
    int64_t shape[TS_MAX_DIMS];
    char why[160];
    int r = h5_read_f32(loc, name, UINT64_MAX, c->file_size, &x, &ndim, shape);
    if (r == -2) {
        snprintf(c->err, c->errlen, "%s: dataset %s declares more data than the %" PRIu64 "-byte file holds "
                 "(damaged file)", c->path, name, c->file_size);
        H5Eclear2(H5E_DEFAULT);
        return -1;
    }
    if (r != 0) {
        snprintf(c->err, c->errlen, "%s: dataset %s is not a readable float array%s", c->path, name, h5_why(why));
        return -1;
    }
    if (ts_add(c->s, name, ndim, shape, x)) {
        snprintf(c->err, c->errlen, "%s: out of memory", c->path);
        return -1;
    }
    return 0;
}

static int ckpt_adapter_set(const char *path, tensor_set *s, char *err, size_t errlen);
static int ckpt_load_direct(const char *path, train_ckpt *c, char *err, size_t errlen);
static int h5_adapter_read_direct(const char *path, tensor_set *s, char *err, size_t errlen);

/* ---------------------------------------------------------------- reading untrusted files
 * h5_probe: 0 when the file reads cleanly (read it here), -1 with err otherwise.
 * The HDF5 library (1.10 as Debian ships it) is not safe on damaged files: fuzzing found
 * out-of-bounds reads and crashes in its attribute parsing (H5Aexists, H5Aiterate2),
 * allocations of 2^56 bytes in its metadata cache, and leaks when an open fails. So a file is
 * read first in a forked child (stderr silenced) by the same code. When the child finds the file
 * bad, its one-line reason is the result and this process never hands the file to HDF5; when
 * the child reads it whole, this process reads it again (the same reads then behave the same);
 * a child that dies (a crash, or a sanitizer's abort) is reported as a damaged file in one line.
 * The cost is a fork and a second read of a good file, from the page cache. */
enum { PROBE_CKPT, PROBE_ADAPTER };

static int h5_probe(const char *path, int kind, char *err, size_t errlen) {
    int fds[2];
    if (pipe(fds) != 0) return 0; /* cannot isolate: read in this process */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return 0;
    }
    if (pid == 0) {
        close(fds[0]);
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 2);
        char e[1024];
        int rc;
        if (kind == PROBE_CKPT) {
            train_ckpt c;
            rc = ckpt_load_direct(path, &c, e, sizeof e);
            if (rc == 0) ckpt_free(&c);
        } else {
            tensor_set t;
            rc = h5_adapter_read_direct(path, &t, e, sizeof e);
            if (rc == 0) ts_free(&t);
        }
        char msg[1 + sizeof e];
        msg[0] = rc ? '1' : '0';
        size_t len = rc ? strlen(e) : 0;
        memcpy(msg + 1, e, len);
        ssize_t w = write(fds[1], msg, 1 + len);
        _exit(w > 0 ? 0 : 1); /* no atexit handlers, no leak report */
    }
    close(fds[1]);
    char msg[1 + 1024];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fds[0], msg + got, sizeof msg - 1 - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
        if (got == sizeof msg - 1) break;
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (got >= 1 && msg[0] == '0') return 0;
    if (got >= 1 && msg[0] == '1') { /* a clean refusal: the child's reason */
        msg[got] = 0;
        snprintf(err, errlen, "%s", msg + 1);
        return -1;
    }
    snprintf(err, errlen, "%s: damaged HDF5 file: the HDF5 library failed reading it (%s)", path,
             WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "aborted");
    return -1;
}

int h5_adapter_read(const char *path, tensor_set *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (h5_probe(path, PROBE_ADAPTER, err, errlen)) return -1;
    return h5_adapter_read_direct(path, s, err, errlen);
}

int ckpt_load(const char *path, train_ckpt *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    if (h5_probe(path, PROBE_CKPT, err, errlen)) return -1;
    return ckpt_load_direct(path, c, err, errlen);
}

static int h5_adapter_read_direct(const char *path, tensor_set *s, char *err, size_t errlen) {
    h5_quiet();
    memset(s, 0, sizeof *s);
    char why[160];
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        snprintf(err, errlen, "%s: cannot open as HDF5 (truncated or damaged?)%s", path, h5_why(why));
        return -1;
    }
    if (H5Lexists(f, "params", H5P_DEFAULT) > 0) { /* a training checkpoint */
        H5Fclose(f);
        return ckpt_adapter_set(path, s, err, errlen);
    }
    struct stat sb;
    collect_ctx c = {s, path, err, errlen, stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0};
    err[0] = 0;
    hsize_t idx = 0;
    int rc = 0;
    if (H5Literate(f, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_dataset, &c) < 0) {
        if (!err[0]) snprintf(err, errlen, "%s: cannot list the datasets%s", path, h5_why(why));
        rc = -1;
    }
    idx = 0;
    if (!rc && H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr, s) < 0) {
        snprintf(err, errlen, "%s: cannot read the attributes%s", path, h5_why(why));
        rc = -1;
    }
    H5Fclose(f);
    if (rc) ts_free(s);
    return rc;
}

/* ---------------------------------------------------------------- training checkpoint */

/* L*K*dim + L*H, or SIZE_MAX when a size is not positive or the sum overflows. */
static size_t adapter_param_count(const adapter_data *a) {
    if (a->adapter_layer <= 0 || a->adapter_len <= 0 || a->dim <= 0 || a->n_heads <= 0) return SIZE_MAX;
    size_t q, g, n;
    if (__builtin_mul_overflow((size_t)a->adapter_layer, (size_t)a->adapter_len, &q) ||
        __builtin_mul_overflow(q, (size_t)a->dim, &q) ||
        __builtin_mul_overflow((size_t)a->adapter_layer, (size_t)a->n_heads, &g) || __builtin_add_overflow(q, g, &n))
        return SIZE_MAX;
    return n;
}

int ckpt_save(const char *path, const train_ckpt *c, char *err, size_t errlen) {
    h5_quiet();
    int is_adapter = !strcmp(c->method, "adapter");
    if (!is_adapter && strcmp(c->method, "full") != 0) {
        snprintf(err, errlen, "%s: checkpoint method \"%.16s\": expected \"adapter\" or \"full\"", path, c->method);
        return -1;
    }
    if (c->n_params > 0 && (!c->params || !c->adam_m || !c->adam_v)) {
        snprintf(err, errlen, "%s: checkpoint with %zu parameters but no params/adam_m/adam_v data", path,
                 c->n_params);
        return -1;
    }
    if (is_adapter && adapter_param_count(&c->adapter) != c->n_params) {
        snprintf(err, errlen, "%s: adapter checkpoint holds %zu parameters: adapter_layer %d, adapter_len %d, "
                 "dim %d, n_heads %d need %zu", path, c->n_params, c->adapter.adapter_layer,
                 c->adapter.adapter_len, c->adapter.dim, c->adapter.n_heads, adapter_param_count(&c->adapter));
        return -1;
    }
    char tmp[4200];
    hid_t f = create_tmp(path, tmp, sizeof tmp, err, errlen);
    if (f < 0) return -1;
    const adapter_data *a = &c->adapter;
    int64_t n[1] = {(int64_t)c->n_params};
    int bad = 0;
    const char *what = "attributes";
    bad |= h5_attr_i64(f, "version", CKPT_VERSION);
    bad |= h5_attr_str(f, "method", c->method);
    bad |= h5_attr_i64(f, "n_params", (int64_t)c->n_params);
    bad |= h5_attr_i64(f, "step", c->step);
    bad |= h5_attr_i64(f, "adam_t", c->adam_t);
    bad |= h5_attr_i64(f, "epoch", c->epoch);
    bad |= h5_attr_i64(f, "micro_index", c->micro_index);
    bad |= h5_attr_u64(f, "data_seed", &c->data_seed, 1);
    bad |= h5_attr_u64(f, "rng_state", c->rng_state, 4);
    bad |= h5_attr_u64(f, "model_fingerprint", &c->model_fingerprint, 1);
    bad |= h5_attr_u64(f, "tok_fingerprint", &c->tok_fingerprint, 1);
    if (c->data_fingerprint) bad |= h5_attr_u64(f, "data_fingerprint", &c->data_fingerprint, 1);
    bad |= h5_attr_i64(f, "adapter_len", a->adapter_len);
    bad |= h5_attr_i64(f, "adapter_layer", a->adapter_layer);
    bad |= h5_attr_i64(f, "n_layers", a->n_layers);
    bad |= h5_attr_i64(f, "n_heads", a->n_heads);
    bad |= h5_attr_i64(f, "dim", a->dim);
    bad |= h5_attr_str(f, "gate_act", a->gate_act == GATE_IDENTITY ? "identity" : "tanh");
    if (!bad) {
        what = "config_json";
        bad = h5_dataset_str(f, "config_json", c->config_json ? c->config_json : "") != 0;
    }
    const char *names[3] = {"params", "adam_m", "adam_v"};
    const float *blocks[3] = {c->params, c->adam_m, c->adam_v};
    for (int i = 0; i < 3 && !bad; i++) {
        what = names[i];
        bad = h5_write_f32(f, names[i], 1, n, blocks[i]) != 0;
    }
    return finish_tmp(f, bad, what, tmp, path, err, errlen);
}

void ckpt_free(train_ckpt *c) {
    if (!c) return;
    free(c->params);
    free(c->adam_m);
    free(c->adam_v);
    free(c->config_json);
    memset(c, 0, sizeof *c);
}

static int field_err(const char *path, const char *name, const char *want, char *err, size_t errlen) {
    snprintf(err, errlen, "%s: checkpoint field %s is missing or is not %s (damaged file, or not written by "
             "llama-adapter)", path, name, want);
    return -1;
}

static int ckpt_load_direct(const char *path, train_ckpt *c, char *err, size_t errlen) {
    h5_quiet();
    memset(c, 0, sizeof *c);
    char why[160];
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        unsigned char head[8] = {0};
        FILE *fp = fopen(path, "rb");
        size_t got = fp ? fread(head, 1, sizeof head, fp) : 0;
        if (fp) fclose(fp);
        if (got == 8 && !memcmp(head, "\x89HDF\r\n\x1a\n", 8))
            snprintf(err, errlen, "%s: cannot open the HDF5 file (truncated or damaged?)%s", path, h5_why(why));
        else
            snprintf(err, errlen, "%s: not an HDF5 file: expected a training checkpoint (ckpt-*.h5)", path);
        H5Eclear2(H5E_DEFAULT);
        return -1;
    }
    int rc = -1;
    int64_t v64[8];
    uint64_t u64[4];
    int r = h5_read_int_attr(f, "version", H5T_NATIVE_INT64, 1, v64);
    if (r != 0) {
        snprintf(err, errlen, "%s: no version attribute: not a llama-adapter training checkpoint", path);
        goto done;
    }
    if (v64[0] != CKPT_VERSION) {
        snprintf(err, errlen, "%s: checkpoint version %lld, this build reads version %d: resume with the build "
                 "that wrote it, or export its adapter there and start again with --init-adapter",
                 path, (long long)v64[0], CKPT_VERSION);
        goto done;
    }
    c->version = (int)v64[0];
    static const char *i64_names[] = {"n_params", "step", "adam_t", "epoch", "micro_index",
                                      "adapter_len", "adapter_layer", "n_layers"};
    for (int i = 0; i < 8; i++)
        if (h5_read_int_attr(f, i64_names[i], H5T_NATIVE_INT64, 1, &v64[i]) != 0) {
            field_err(path, i64_names[i], "a scalar integer", err, errlen);
            goto done;
        }
    int64_t heads, dim;
    if (h5_read_int_attr(f, "n_heads", H5T_NATIVE_INT64, 1, &heads) != 0) {
        field_err(path, "n_heads", "a scalar integer", err, errlen);
        goto done;
    }
    if (h5_read_int_attr(f, "dim", H5T_NATIVE_INT64, 1, &dim) != 0) {
        field_err(path, "dim", "a scalar integer", err, errlen);
        goto done;
    }
    /* every field is range-checked before use: sizes fit an int and are positive, progress
     * counters are not negative */
    {
        static const char *what[8] = {"n_params", "step", "adam_t", "epoch", "micro_index", "adapter_len",
                                      "adapter_layer", "n_layers"};
        int64_t all[10];
        memcpy(all, v64, sizeof v64);
        all[8] = heads;
        all[9] = dim;
        for (int i = 0; i < 10; i++) {
            int64_t lo = 0, hi = (i >= 5 || i == 3) ? INT32_MAX : INT64_MAX; /* sizes and epoch: ints */
            if (all[i] < lo || all[i] > hi) {
                snprintf(err, errlen, "%s: checkpoint field %s = %lld is out of range: expected %lld..%lld (damaged "
                         "file)", path, i < 8 ? what[i] : i == 8 ? "n_heads" : "dim", (long long)all[i],
                         (long long)lo, (long long)hi);
                goto done;
            }
        }
    }
    c->n_params = (size_t)v64[0];
    c->step = v64[1];
    c->adam_t = v64[2];
    c->epoch = (int)v64[3];
    c->micro_index = v64[4];
    c->adapter.adapter_len = (int)v64[5];
    c->adapter.adapter_layer = (int)v64[6];
    c->adapter.n_layers = (int)v64[7];
    c->adapter.n_heads = (int)heads;
    c->adapter.dim = (int)dim;
    static const char *u64_names[] = {"data_seed", "model_fingerprint", "tok_fingerprint", "data_fingerprint"};
    uint64_t *u64_dst[] = {&c->data_seed, &c->model_fingerprint, &c->tok_fingerprint, &c->data_fingerprint};
    for (int i = 0; i < 4; i++) {
        r = h5_read_int_attr(f, u64_names[i], H5T_NATIVE_UINT64, 1, u64_dst[i]);
        if (r < 0 || (r > 0 && i < 3)) { /* data_fingerprint is absent from older checkpoints */
            field_err(path, u64_names[i], "a scalar integer", err, errlen);
            goto done;
        }
    }
    if (h5_read_int_attr(f, "rng_state", H5T_NATIVE_UINT64, 4, u64) != 0) {
        field_err(path, "rng_state", "4 integers", err, errlen);
        goto done;
    }
    memcpy(c->rng_state, u64, sizeof u64);
    char *method = h5_read_str_attr(f, "method"), *act = h5_read_str_attr(f, "gate_act");
    int ok_m = method && (!strcmp(method, "adapter") || !strcmp(method, "full"));
    int ok_a = act && (!strcmp(act, "tanh") || !strcmp(act, "identity"));
    if (ok_m) snprintf(c->method, sizeof c->method, "%s", method);
    if (ok_a) c->adapter.gate_act = !strcmp(act, "identity") ? GATE_IDENTITY : GATE_TANH;
    free(method);
    free(act);
    if (!ok_m) {
        field_err(path, "method", "\"adapter\" or \"full\"", err, errlen);
        goto done;
    }
    if (!ok_a) {
        field_err(path, "gate_act", "\"tanh\" or \"identity\"", err, errlen);
        goto done;
    }
    if (H5Lexists(f, "config_json", H5P_DEFAULT) <= 0) {
        field_err(path, "config_json", "a string", err, errlen);
        goto done;
    }
    hid_t ds = H5Dopen2(f, "config_json", H5P_DEFAULT);
    c->config_json = ds >= 0 ? h5_read_str(ds, 0) : NULL;
    if (ds >= 0) H5Dclose(ds);
    if (!c->config_json) {
        field_err(path, "config_json", "a string", err, errlen);
        goto done;
    }
    int is_adapter = !strcmp(c->method, "adapter");
    if (is_adapter) {
        const adapter_data *a = &c->adapter;
        if (a->adapter_len <= 0 || a->adapter_layer <= 0 || a->n_layers < a->adapter_layer || a->n_heads <= 0 ||
            a->dim <= 0 || adapter_param_count(a) != c->n_params) {
            snprintf(err, errlen, "%s: adapter checkpoint with %zu parameters does not match adapter_layer %d, "
                     "adapter_len %d, n_layers %d, n_heads %d, dim %d", path, c->n_params, a->adapter_layer,
                     a->adapter_len, a->n_layers, a->n_heads, a->dim);
            goto done;
        }
    }
    const char *names[3] = {"params", "adam_m", "adam_v"};
    float **dst[3] = {&c->params, &c->adam_m, &c->adam_v};
    for (int i = 0; i < 3; i++) {
        int ndim = 0;
        int64_t shape[TS_MAX_DIMS];
        r = h5_read_f32(f, names[i], c->n_params, (uint64_t)sb.st_size, dst[i], &ndim, shape);
        if (r != 0 || ndim != 1 || (uint64_t)shape[0] != (uint64_t)c->n_params) {
            if (r == -2)
                snprintf(err, errlen, "%s: checkpoint dataset %s declares more values than n_params = %zu or than the "
                         "%lld-byte file holds: expected f32 [%zu] (damaged file)", path, names[i], c->n_params,
                         (long long)sb.st_size, c->n_params);
            else if (r == 0)
                snprintf(err, errlen, "%s: checkpoint dataset %s has %d dims, %lld values: expected [%zu] "
                         "(n_params)", path, names[i], ndim, ndim ? (long long)shape[0] : 0LL, c->n_params);
            else
                snprintf(err, errlen, "%s: checkpoint dataset %s is missing or unreadable: expected f32 [%zu]%s",
                         path, names[i], c->n_params, h5_why(why));
            goto done;
        }
    }
    if (is_adapter) {
        c->adapter.query = c->params;
        c->adapter.gates = c->params + (size_t)c->adapter.adapter_layer * c->adapter.adapter_len * c->adapter.dim;
    }
    rc = 0;
done:
    H5Fclose(f);
    if (rc) ckpt_free(c);
    return rc;
}

int ckpt_adapter_view(const train_ckpt *c, adapter_data *view, const char *path, char *err, size_t errlen) {
    if (strcmp(c->method, "adapter") != 0 || !c->adapter.query || !c->adapter.gates) {
        snprintf(err, errlen, "%s: checkpoint of method \"%.16s\" holds no adapter: expected method \"adapter\"",
                 path ? path : "checkpoint", c->method);
        return -1;
    }
    *view = c->adapter;
    return 0;
}

/* The adapter of a training checkpoint as export tensors + metadata (for adapter_import). */
static int ckpt_adapter_set(const char *path, tensor_set *s, char *err, size_t errlen) {
    train_ckpt c;
    if (ckpt_load_direct(path, &c, err, errlen)) return -1; /* probed by h5_adapter_read */
    adapter_data a;
    int rc = -1;
    if (ckpt_adapter_view(&c, &a, path, err, errlen)) goto done;
    size_t LK = (size_t)a.adapter_layer * a.adapter_len, H = (size_t)a.n_heads;
    float *q = malloc(LK * a.dim * sizeof *q);
    if (!q) goto oom;
    memcpy(q, a.query, LK * a.dim * sizeof *q);
    int64_t qs[2] = {(int64_t)LK, a.dim};
    if (ts_add(s, ADAPTER_QUERY_NAME, 2, qs, q)) goto oom;
    for (int j = 0; j < a.adapter_layer; j++) {
        float *g = malloc(H * sizeof *g);
        if (!g) goto oom;
        memcpy(g, a.gates + j * H, H * sizeof *g);
        char name[64];
        snprintf(name, sizeof name, ADAPTER_GATE_FMT, a.n_layers - a.adapter_layer + j);
        int64_t gs[4] = {1, a.n_heads, 1, 1};
        if (ts_add(s, name, 4, gs, g)) goto oom;
    }
    char v[32];
    snprintf(v, sizeof v, "%d", a.adapter_len);
    if (ts_add_meta(s, "adapter_len", v)) goto oom;
    snprintf(v, sizeof v, "%d", a.adapter_layer);
    if (ts_add_meta(s, "adapter_layer", v)) goto oom;
    snprintf(v, sizeof v, "%d", a.n_layers);
    if (ts_add_meta(s, "n_layers", v)) goto oom;
    snprintf(v, sizeof v, "%d", a.n_heads);
    if (ts_add_meta(s, "n_heads", v)) goto oom;
    if (ts_add_meta(s, "gate_act", a.gate_act == GATE_IDENTITY ? "identity" : "tanh")) goto oom;
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "%s: out of memory", path);
done:
    ckpt_free(&c);
    if (rc) ts_free(s);
    return rc;
}

/* ---------------------------------------------------------------- checkpoint directories */

void ckpt_path(const char *dir, int64_t step, char *out, size_t outlen) {
    snprintf(out, outlen, "%s/ckpt-%08lld.h5", dir, (long long)step);
}

/* "ckpt-<digits>.h5" -> step, else -1. */
static int64_t ckpt_name_step(const char *name) {
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t step = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 18) {
        step = step * 10 + (*p++ - '0');
        digits++;
    }
    return digits > 0 && !strcmp(p, ".h5") ? step : -1;
}

typedef struct ckpt_entry {
    int64_t step;
    char name[256];
} ckpt_entry;

static int by_step_desc(const void *a, const void *b) {
    int64_t x = ((const ckpt_entry *)a)->step, y = ((const ckpt_entry *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The ckpt-*.h5 files of dir, newest first; -1 when dir cannot be read. */
static int list_ckpts(const char *dir, ckpt_entry **out, int *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t step = ckpt_name_step(e->d_name);
        if (step < 0 || strlen(e->d_name) >= sizeof(*out)->name) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            ckpt_entry *p = realloc(*out, (size_t)cap * sizeof *p);
            if (!p) break;
            *out = p;
        }
        (*out)[*n].step = step;
        snprintf((*out)[*n].name, sizeof(*out)->name, "%s", e->d_name);
        (*n)++;
    }
    closedir(d);
    if (*n > 1) qsort(*out, (size_t)*n, sizeof **out, by_step_desc);
    return 0;
}

int ckpt_resolve(const char *path, char *out, size_t outlen, char *err, size_t errlen) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, errlen, "%s: no such checkpoint file or run directory: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (snprintf(out, outlen, "%s", path) >= (int)outlen) {
            snprintf(err, errlen, "%s: path too long", path);
            return -1;
        }
        return 0;
    }
    ckpt_entry *e;
    int n;
    if (list_ckpts(path, &e, &n) != 0) {
        snprintf(err, errlen, "%s: cannot read the directory: %s", path, strerror(errno));
        return -1;
    }
    if (n == 0) {
        free(e);
        snprintf(err, errlen, "%s: no checkpoint (ckpt-*.h5) in this run directory", path);
        return -1;
    }
    int too_long = snprintf(out, outlen, "%s/%s", path, e[0].name) >= (int)outlen;
    free(e);
    if (too_long) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    return 0;
}

void ckpt_prune(const char *dir, int keep) { ckpt_prune_upto(dir, keep, INT64_MAX); }

void ckpt_prune_upto(const char *dir, int keep, int64_t step) {
    if (keep <= 0) return;
    ckpt_entry *e;
    int n;
    if (list_ckpts(dir, &e, &n) != 0) return;
    int kept = 0;
    for (int i = 0; i < n; i++) { /* newest first */
        if (e[i].step > step) continue; /* never this run's to delete */
        if (kept++ < keep) continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e[i].name);
        unlink(p);
    }
    free(e);
}
