/* PyTorch .pth files (the zip format torch.save has written since 1.6), read and written
 * without Python.
 *
 * Layout written (what torch.save writes, minus its data descriptors): an uncompressed (STORED)
 * zip with "archive/data.pkl" (pickle protocol 2 of a dict name -> tensor, each tensor being
 * torch._utils._rebuild_tensor_v2(persistent_load(('storage', torch.FloatStorage, key, 'cpu',
 * numel)), 0, size, stride, False, OrderedDict())), "archive/data/<key>" (raw little-endian
 * storage bytes, aligned to 64 bytes in the file by padding the local header's extra field
 * with an "FB" record as torch does), "archive/version" = "3\n" and "archive/byteorder".
 *
 * Reading: any top-level folder name; a pickle subset large enough for what torch.save emits
 * for dicts of tensors (memo, OrderedDict, nested dicts/lists, shared storages with offsets,
 * strided views, nn.Parameter, argparse-style objects kept as opaque values); zip64 central
 * directories. CRC-32 of every entry that is read is checked.
 * Deliberately not: compressed zip entries (torch never writes them), the legacy pre-1.6
 * format (detected and refused with a hint), big-endian files, integer tensors. */
#include "checkpoints/adapter_io.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/tensor.h"
#include "checkpoints/atomic.h"

/* ---------------------------------------------------------------- CRC-32 (zip polynomial) */

static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

static uint32_t crc32_of(const void *data, size_t n) {
    if (!crc_ready) crc_init();
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---------------------------------------------------------------- growable byte buffer */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
    int oom;
} buf;

static void buf_put(buf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void buf_u8(buf *b, unsigned v) { unsigned char c = (unsigned char)v; buf_put(b, &c, 1); }
static void buf_u16(buf *b, unsigned v) { buf_u8(b, v & 0xFF); buf_u8(b, (v >> 8) & 0xFF); }
static void buf_u32(buf *b, uint32_t v) { buf_u16(b, v & 0xFFFF); buf_u16(b, v >> 16); }

/* ---------------------------------------------------------------- pickle writer */

static void pk_str(buf *b, const char *s) {
    size_t n = strlen(s);
    buf_u8(b, 'X'); /* BINUNICODE */
    buf_u32(b, (uint32_t)n);
    buf_put(b, s, n);
}

static void pk_int(buf *b, int64_t v) {
    if (v >= 0 && v < 256) { buf_u8(b, 'K'); buf_u8(b, (unsigned)v); }
    else if (v >= 0 && v < 65536) { buf_u8(b, 'M'); buf_u16(b, (unsigned)v); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { buf_u8(b, 'J'); buf_u32(b, (uint32_t)(int32_t)v); }
    else { /* LONG1: 8 bytes two's complement, little-endian */
        buf_u8(b, 0x8a);
        buf_u8(b, 8);
        for (int i = 0; i < 8; i++) buf_u8(b, (unsigned)(((uint64_t)v >> (8 * i)) & 0xFF));
    }
}

static void pk_global(buf *b, const char *module, const char *name) {
    buf_u8(b, 'c');
    buf_put(b, module, strlen(module));
    buf_u8(b, '\n');
    buf_put(b, name, strlen(name));
    buf_u8(b, '\n');
}

/* data.pkl for the tensors of s; storage i is tensor i. */
static void pk_state_dict(buf *b, const tensor_set *s) {
    buf_u8(b, 0x80); buf_u8(b, 2); /* PROTO 2 */
    buf_u8(b, '}');                  /* EMPTY_DICT */
    if (s->n > 0) buf_u8(b, '(');    /* MARK */
    for (int i = 0; i < s->n; i++) {
        const ts_tensor *t = &s->t[i];
        char key[32];
        snprintf(key, sizeof key, "%d", i);
        pk_str(b, t->name);
        pk_global(b, "torch._utils", "_rebuild_tensor_v2");
        buf_u8(b, '(');              /* args */
        buf_u8(b, '(');              /* persistent id */
        pk_str(b, "storage");
        pk_global(b, "torch", "FloatStorage");
        pk_str(b, key);
        pk_str(b, "cpu");
        pk_int(b, (int64_t)ts_numel(t));
        buf_u8(b, 't');              /* TUPLE */
        buf_u8(b, 'Q');              /* BINPERSID */
        pk_int(b, 0);                /* storage_offset */
        buf_u8(b, '(');
        for (int d = 0; d < t->ndim; d++) pk_int(b, t->shape[d]);
        buf_u8(b, 't');
        buf_u8(b, '(');
        int64_t stride = 1, strides[TS_MAX_DIMS];
        for (int d = t->ndim - 1; d >= 0; d--) { strides[d] = stride; stride *= t->shape[d]; }
        for (int d = 0; d < t->ndim; d++) pk_int(b, strides[d]);
        buf_u8(b, 't');
        buf_u8(b, 0x89);             /* NEWFALSE: requires_grad */
        pk_global(b, "collections", "OrderedDict");
        buf_u8(b, ')');              /* EMPTY_TUPLE */
        buf_u8(b, 'R');              /* REDUCE: backward_hooks = OrderedDict() */
        buf_u8(b, 't');              /* TUPLE of args */
        buf_u8(b, 'R');              /* REDUCE: the tensor */
    }
    if (s->n > 0) buf_u8(b, 'u');    /* SETITEMS */
    buf_u8(b, '.');                  /* STOP */
}

/* ---------------------------------------------------------------- zip writer */

typedef struct zentry {
    char name[128];
    uint32_t crc, size, offset;
} zentry;

typedef struct zwriter {
    FILE *f;
    uint64_t pos;
    zentry *e;
    int n, cap;
    int bad;
} zwriter;

static void zw_bytes(zwriter *z, const void *d, size_t n) {
    if (n && fwrite(d, 1, n, z->f) != n) z->bad = 1;
    z->pos += n;
}

static void zw_entry(zwriter *z, const char *name, const void *data, size_t size) {
    if (z->bad) return;
    if (size > 0xFFFFFFF0u || z->pos > 0xFFFFFFF0u || strlen(name) >= sizeof z->e[0].name) {
        z->bad = 2; /* would need zip64 */
        return;
    }
    if (z->n == z->cap) {
        int cap = z->cap ? 2 * z->cap : 16;
        zentry *e = realloc(z->e, (size_t)cap * sizeof *e);
        if (!e) { z->bad = 1; return; }
        z->e = e;
        z->cap = cap;
    }
    zentry *e = &z->e[z->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->crc = crc32_of(data, size);
    e->size = (uint32_t)size;
    e->offset = (uint32_t)z->pos;
    size_t nlen = strlen(name);
    /* extra field "FB" + padding so that the data starts on a 64-byte boundary */
    uint64_t after = z->pos + 30 + nlen + 4;
    size_t pad = (size_t)((64 - after % 64) % 64);
    buf h = {0};
    buf_u32(&h, 0x04034b50u);
    buf_u16(&h, 20);   /* version needed */
    buf_u16(&h, 0);    /* flags */
    buf_u16(&h, 0);    /* STORED */
    buf_u16(&h, 0);    /* time */
    buf_u16(&h, 0x21); /* date 1980-01-01 */
    buf_u32(&h, e->crc);
    buf_u32(&h, e->size);
    buf_u32(&h, e->size);
    buf_u16(&h, (unsigned)nlen);
    buf_u16(&h, (unsigned)(4 + pad));
    buf_put(&h, name, nlen);
    buf_u8(&h, 'F'); buf_u8(&h, 'B');
    buf_u16(&h, (unsigned)pad);
    for (size_t i = 0; i < pad; i++) buf_u8(&h, 'Z');
    if (h.oom) z->bad = 1;
    else zw_bytes(z, h.p, h.n);
    free(h.p);
    zw_bytes(z, data, size);
}

static void zw_finish(zwriter *z) {
    if (z->bad) return;
    buf h = {0};
    uint64_t cd_start = z->pos;
    for (int i = 0; i < z->n; i++) {
        const zentry *e = &z->e[i];
        size_t nlen = strlen(e->name);
        buf_u32(&h, 0x02014b50u);
        buf_u16(&h, 20); /* made by */
        buf_u16(&h, 20); /* needed */
        buf_u16(&h, 0);
        buf_u16(&h, 0);
        buf_u16(&h, 0);
        buf_u16(&h, 0x21);
        buf_u32(&h, e->crc);
        buf_u32(&h, e->size);
        buf_u32(&h, e->size);
        buf_u16(&h, (unsigned)nlen);
        buf_u16(&h, 0); /* extra */
        buf_u16(&h, 0); /* comment */
        buf_u16(&h, 0); /* disk */
        buf_u16(&h, 0); /* internal attributes */
        buf_u32(&h, 0); /* external attributes */
        buf_u32(&h, e->offset);
        buf_put(&h, e->name, nlen);
    }
    uint64_t cd_size = h.n;
    buf_u32(&h, 0x06054b50u);
    buf_u16(&h, 0);
    buf_u16(&h, 0);
    buf_u16(&h, (unsigned)z->n);
    buf_u16(&h, (unsigned)z->n);
    buf_u32(&h, (uint32_t)cd_size);
    buf_u32(&h, (uint32_t)cd_start);
    buf_u16(&h, 0);
    if (h.oom || z->n > 0xFFFF || cd_start + cd_size > 0xFFFFFFF0u) z->bad = h.oom ? 1 : 2;
    else zw_bytes(z, h.p, h.n);
    free(h.p);
}

int pth_write(const char *path, const tensor_set *s, char *err, size_t errlen) {
    buf pkl = {0};
    pk_state_dict(&pkl, s);
    if (pkl.oom) {
        free(pkl.p);
        snprintf(err, errlen, "%s: out of memory building data.pkl", path);
        return -1;
    }
    atomic_file af;
    if (atomic_open(&af, path, err, errlen) != 0) {
        free(pkl.p);
        return -1;
    }
    zwriter z = {af.f, 0, NULL, 0, 0, 0};
    zw_entry(&z, "archive/data.pkl", pkl.p, pkl.n);
    free(pkl.p);
    for (int i = 0; i < s->n && !z.bad; i++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%d", i);
        /* little-endian host assumed (x86-64, aarch64): the f32 bytes go out as they are */
        zw_entry(&z, name, s->t[i].data, ts_numel(&s->t[i]) * sizeof(float));
    }
    zw_entry(&z, "archive/version", "3\n", 2);
    zw_entry(&z, "archive/byteorder", "little", 6);
    zw_finish(&z);
    free(z.e);
    if (z.bad) {
        if (z.bad == 2) snprintf(err, errlen, "%s: adapter too large for a zip without zip64 (4 GB)", path);
        else snprintf(err, errlen, "%s: write failed: %s", af.tmp, strerror(errno));
        atomic_abort(&af);
        return -1;
    }
    return atomic_commit(&af, err, errlen);
}

/* ---------------------------------------------------------------- zip reader */

typedef struct zfile {
    const char *path;
    const unsigned char *p;
    size_t size;
    char **names;
    uint64_t *data_off, *data_size;
    uint32_t *crc;
    int n;
    char prefix[256]; /* "archive/" */
} zfile;

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)rd16(p) | ((uint32_t)rd16(p + 2) << 16); }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

static void zf_free(zfile *z) {
    for (int i = 0; i < z->n; i++) free(z->names[i]);
    free(z->names);
    free(z->data_off);
    free(z->data_size);
    free(z->crc);
}

static int zf_parse(zfile *z, char *err, size_t errlen) {
    const unsigned char *p = z->p;
    size_t size = z->size;
    if (size < 22) {
        snprintf(err, errlen, "%s: truncated zip (%zu bytes): no end-of-central-directory record", z->path, size);
        return -1;
    }
    size_t eocd = (size_t)-1, lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t i = size - 22 + 1; i-- > lo;)
        if (rd32(p + i) == 0x06054b50u) { eocd = i; break; }
    if (eocd == (size_t)-1) {
        snprintf(err, errlen, "%s: truncated or damaged zip: no end-of-central-directory record", z->path);
        return -1;
    }
    uint64_t n = rd16(p + eocd + 10), cd_size = rd32(p + eocd + 12), cd_off = rd32(p + eocd + 16);
    if (n == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) { /* zip64 */
        if (eocd < 20 || rd32(p + eocd - 20) != 0x07064b50u) {
            snprintf(err, errlen, "%s: damaged zip64: no zip64 locator before byte %zu", z->path, eocd);
            return -1;
        }
        uint64_t z64 = rd64(p + eocd - 20 + 8);
        if (size < 56 || z64 > size - 56 || rd32(p + z64) != 0x06064b50u) {
            snprintf(err, errlen, "%s: damaged zip64: bad zip64 end record at byte %" PRIu64, z->path, z64);
            return -1;
        }
        n = rd64(p + z64 + 32);
        cd_size = rd64(p + z64 + 40);
        cd_off = rd64(p + z64 + 48);
    }
    if (cd_off > size || cd_size > size - cd_off || n > cd_size / 46) {
        snprintf(err, errlen, "%s: damaged zip: central directory (%" PRIu64 " entries at byte %" PRIu64
                 ", %" PRIu64 " bytes) does not fit in the %zu-byte file", z->path, n, cd_off, cd_size, size);
        return -1;
    }
    z->names = calloc(n ? n : 1, sizeof *z->names);
    z->data_off = calloc(n ? n : 1, sizeof *z->data_off);
    z->data_size = calloc(n ? n : 1, sizeof *z->data_size);
    z->crc = calloc(n ? n : 1, sizeof *z->crc);
    if (!z->names || !z->data_off || !z->data_size || !z->crc) {
        snprintf(err, errlen, "%s: out of memory reading the zip directory", z->path);
        return -1;
    }
    uint64_t q = cd_off, end = cd_off + cd_size;
    for (uint64_t i = 0; i < n; i++) {
        if (end - q < 46 || rd32(p + q) != 0x02014b50u) {
            snprintf(err, errlen, "%s: damaged zip: bad central directory entry %" PRIu64 " at byte %" PRIu64,
                     z->path, i, q);
            return -1;
        }
        unsigned method = rd16(p + q + 10), nlen = rd16(p + q + 28), elen = rd16(p + q + 30),
                 clen = rd16(p + q + 32);
        uint64_t csize = rd32(p + q + 20), usize = rd32(p + q + 24), loff = rd32(p + q + 42);
        if (end - q < 46ull + nlen + elen + clen) {
            snprintf(err, errlen, "%s: damaged zip: central directory entry %" PRIu64 " overruns", z->path, i);
            return -1;
        }
        const unsigned char *ex = p + q + 46 + nlen, *ex_end = ex + elen;
        while (ex + 4 <= ex_end) { /* zip64 extended information */
            unsigned id = rd16(ex), len = rd16(ex + 2);
            const unsigned char *f = ex + 4, *f_end = f + len;
            if (f_end > ex_end) break;
            if (id == 0x0001) {
                if (usize == 0xFFFFFFFFu && f + 8 <= f_end) { usize = rd64(f); f += 8; }
                if (csize == 0xFFFFFFFFu && f + 8 <= f_end) { csize = rd64(f); f += 8; }
                if (loff == 0xFFFFFFFFu && f + 8 <= f_end) { loff = rd64(f); f += 8; }
            }
            ex = f_end;
        }
        z->names[i] = malloc(nlen + 1);
        if (!z->names[i]) {
            snprintf(err, errlen, "%s: out of memory", z->path);
            return -1;
        }
        memcpy(z->names[i], p + q + 46, nlen);
        z->names[i][nlen] = 0;
        for (unsigned k = 0; k < nlen; k++) /* names end up in one-line messages */
            if ((unsigned char)z->names[i][k] < 0x20) z->names[i][k] = '?';
        z->n = (int)i + 1;
        if (method != 0 || csize != usize) {
            snprintf(err, errlen, "%s: zip entry %s is compressed (method %u): torch.save writes stored entries",
                     z->path, z->names[i], method);
            return -1;
        }
        if (loff > size || size - loff < 30 || rd32(p + loff) != 0x04034b50u) {
            snprintf(err, errlen, "%s: damaged zip: no local header for %s at byte %" PRIu64, z->path,
                     z->names[i], loff);
            return -1;
        }
        uint64_t data = loff + 30 + rd16(p + loff + 26) + rd16(p + loff + 28);
        if (data > size || usize > size - data) {
            snprintf(err, errlen, "%s: truncated zip: entry %s (%" PRIu64 " bytes at byte %" PRIu64
                     ") extends past the end of the %zu-byte file", z->path, z->names[i], usize, data, size);
            return -1;
        }
        z->data_off[i] = data;
        z->data_size[i] = usize;
        z->crc[i] = rd32(p + q + 16);
        q += 46ull + nlen + elen + clen;
    }
    return 0;
}

/* Entry prefix+name: 0 with data/size (CRC checked) or -1 with err. */
static int zf_get(const zfile *z, const char *name, const unsigned char **data, uint64_t *size,
                  char *err, size_t errlen) {
    char full[512];
    snprintf(full, sizeof full, "%s%s", z->prefix, name);
    for (int i = 0; i < z->n; i++) {
        if (strcmp(z->names[i], full) != 0) continue;
        *data = z->p + z->data_off[i];
        *size = z->data_size[i];
        if (crc32_of(*data, (size_t)*size) != z->crc[i]) {
            snprintf(err, errlen, "%s: zip entry %s fails its CRC-32 check (corrupted file)", z->path, full);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "%s: zip entry %s is missing", z->path, full);
    return -1;
}

/* ---------------------------------------------------------------- pickle reader */

enum { PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL,
       PV_STORAGE, PV_TENSOR, PV_OPAQUE };
enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_OTHER };

typedef struct pv {
    int kind;
    int64_t i;             /* INT, BOOL; TENSOR: storage offset */
    double f;
    char *s;               /* STR; GLOBAL "module.name"; STORAGE key */
    int *items, n, cap;    /* TUPLE/LIST items, DICT key/value pairs */
    int st_type;           /* STORAGE */
    int storage;           /* TENSOR: pv index of its storage */
    int ndim;
    int64_t size[TS_MAX_DIMS], stride[TS_MAX_DIMS];
} pv;

typedef struct unpickler {
    const char *path;
    const unsigned char *p;
    size_t n, pos;
    pv *v;
    int nv, capv;
    int *stack, ns, caps;
    int *marks, nm, capm;
    int *memo;
    size_t nmemo;
    uint64_t memo_keys; /* distinct memo entries set (MEMOIZE writes at this index) */
    char *err;
    size_t errlen;
} unpickler;

static int up_fail(unpickler *u, const char *what) {
    snprintf(u->err, u->errlen, "%s: data.pkl: %s at byte %zu", u->path, what, u->pos);
    return -1;
}

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int pv_new(unpickler *u, int kind) {
    if (grow((void **)&u->v, &u->capv, u->nv + 1, sizeof(pv))) return -1;
    memset(&u->v[u->nv], 0, sizeof(pv));
    u->v[u->nv].kind = kind;
    u->v[u->nv].storage = -1;
    return u->nv++;
}

static int pv_append(unpickler *u, int obj, int item) {
    pv *o = &u->v[obj];
    if (grow((void **)&o->items, &o->cap, o->n + 1, sizeof(int))) return -1;
    o->items[o->n++] = item;
    return 0;
}

static int push(unpickler *u, int idx) {
    if (idx < 0 || grow((void **)&u->stack, &u->caps, u->ns + 1, sizeof(int))) return up_fail(u, "out of memory");
    u->stack[u->ns++] = idx;
    return 0;
}

static int pop(unpickler *u, int *idx) {
    if (u->ns == 0 || (u->nm > 0 && u->marks[u->nm - 1] == u->ns)) return up_fail(u, "stack underflow");
    *idx = u->stack[--u->ns];
    return 0;
}

static int top(unpickler *u, int *idx) {
    if (u->ns == 0) return up_fail(u, "stack underflow");
    *idx = u->stack[u->ns - 1];
    return 0;
}

/* Pops everything above the last MARK into a new container of `kind`. */
static int pop_mark(unpickler *u, int *first, int *count) {
    if (u->nm == 0) return up_fail(u, "no MARK on the stack");
    *first = u->marks[--u->nm];
    *count = u->ns - *first;
    u->ns = *first;
    return 0;
}

static int need(unpickler *u, size_t k) {
    if (u->n - u->pos < k) return up_fail(u, "truncated pickle");
    return 0;
}

static uint64_t rd_le(const unsigned char *p, int k) {
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int new_str(unpickler *u, const unsigned char *s, size_t len, int kind) {
    int idx = pv_new(u, kind);
    if (idx < 0) return -1;
    u->v[idx].s = malloc(len + 1);
    if (!u->v[idx].s) return -1;
    memcpy(u->v[idx].s, s, len);
    u->v[idx].s[len] = 0;
    return idx;
}

static int memo_put(unpickler *u, uint64_t id) {
    int idx;
    if (top(u, &idx)) return -1;
    if (id > (1u << 24)) return up_fail(u, "memo index too large");
    if (id >= u->nmemo) {
        size_t nn = (size_t)id + 64;
        int *m = realloc(u->memo, nn * sizeof *m);
        if (!m) return up_fail(u, "out of memory");
        for (size_t i = u->nmemo; i < nn; i++) m[i] = -1;
        u->memo = m;
        u->nmemo = nn;
    }
    if (u->memo[id] < 0) u->memo_keys++;
    u->memo[id] = idx;
    return 0;
}

static int memo_get(unpickler *u, uint64_t id) {
    if (id >= u->nmemo || u->memo[id] < 0) return up_fail(u, "memo entry read before it was written");
    return push(u, u->memo[id]);
}

static int as_int(unpickler *u, int idx, int64_t *out) {
    if (u->v[idx].kind != PV_INT && u->v[idx].kind != PV_BOOL) return -1;
    *out = u->v[idx].i;
    return 0;
}

static int storage_type_of(const char *global) {
    if (!strcmp(global, "torch.FloatStorage")) return ST_F32;
    if (!strcmp(global, "torch.HalfStorage")) return ST_F16;
    if (!strcmp(global, "torch.BFloat16Storage")) return ST_BF16;
    if (!strcmp(global, "torch.DoubleStorage")) return ST_F64;
    return ST_OTHER;
}

/* persistent_load(('storage', type, key, location, numel)) */
static int persistent_load(unpickler *u, int pid) {
    pv *t = &u->v[pid];
    if (t->kind != PV_TUPLE || t->n < 5 || u->v[t->items[0]].kind != PV_STR ||
        strcmp(u->v[t->items[0]].s, "storage") != 0 || u->v[t->items[1]].kind != PV_GLOBAL ||
        u->v[t->items[2]].kind != PV_STR)
        return up_fail(u, "persistent id is not ('storage', type, key, location, numel)");
    int st_type = storage_type_of(u->v[t->items[1]].s);
    const char *key = u->v[t->items[2]].s;
    int idx = new_str(u, (const unsigned char *)key, strlen(key), PV_STORAGE);
    if (idx < 0) return up_fail(u, "out of memory");
    u->v[idx].st_type = st_type;
    return push(u, idx);
}

static int tuple_ints(unpickler *u, int idx, int64_t *out, int *n) {
    pv *t = &u->v[idx];
    if (t->kind != PV_TUPLE && t->kind != PV_LIST) return -1;
    if (t->n > TS_MAX_DIMS) return -1;
    for (int i = 0; i < t->n; i++)
        if (as_int(u, t->items[i], &out[i])) return -1;
    *n = t->n;
    return 0;
}

/* callable(*args) for the callables torch.save emits; anything else becomes an opaque value. */
static int reduce(unpickler *u, int fn, int args) {
    const char *name = u->v[fn].kind == PV_GLOBAL ? u->v[fn].s : "";
    pv *a = &u->v[args];
    int res;
    if (!strcmp(name, "torch._utils._rebuild_tensor_v2") || !strcmp(name, "torch._utils._rebuild_tensor")) {
        if (a->kind != PV_TUPLE || a->n < 4 || u->v[a->items[0]].kind != PV_STORAGE)
            return up_fail(u, "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)");
        int st = a->items[0], ndim = 0, nstride = 0;
        int64_t off, size[TS_MAX_DIMS], stride[TS_MAX_DIMS];
        if (as_int(u, a->items[1], &off) || off < 0 || tuple_ints(u, a->items[2], size, &ndim) ||
            tuple_ints(u, a->items[3], stride, &nstride) || nstride != ndim)
            return up_fail(u, "tensor offset/size/stride are not integers of matching length (at most 8 dims)");
        if ((res = pv_new(u, PV_TENSOR)) < 0) return up_fail(u, "out of memory");
        pv *t = &u->v[res];
        t->storage = st;
        t->i = off;
        t->ndim = ndim;
        memcpy(t->size, size, sizeof size);
        memcpy(t->stride, stride, sizeof stride);
    } else if (!strcmp(name, "torch._utils._rebuild_parameter") ||
               !strcmp(name, "torch._utils._rebuild_parameter_with_state")) {
        if (a->kind != PV_TUPLE || a->n < 1) return up_fail(u, "_rebuild_parameter without arguments");
        res = a->items[0];
    } else if (!strcmp(name, "collections.OrderedDict")) {
        if ((res = pv_new(u, PV_DICT)) < 0) return up_fail(u, "out of memory");
    } else {
        if ((res = pv_new(u, PV_OPAQUE)) < 0) return up_fail(u, "out of memory");
    }
    return push(u, res);
}

static int setitems(unpickler *u, int dict, const int *kv, int n) {
    if (n % 2) return up_fail(u, "SETITEMS with an odd number of values");
    if (u->v[dict].kind != PV_DICT) return 0; /* items of an opaque object: dropped */
    for (int i = 0; i < n; i++)
        if (pv_append(u, dict, kv[i])) return up_fail(u, "out of memory");
    return 0;
}

/* Runs the pickle to STOP; *result = the top value. */
static int unpickle(unpickler *u, int *result) {
    while (u->pos < u->n) {
        unsigned op = u->p[u->pos++];
        int a = 0, b = 0, c = 0, idx, first = 0, cnt = 0;
        uint64_t len;
        switch (op) {
        case 0x80: if (need(u, 1)) return -1; u->pos++; break;          /* PROTO */
        case 0x95: if (need(u, 8)) return -1; u->pos += 8; break;       /* FRAME */
        case '.':                                                       /* STOP */
            if (pop(u, result)) return -1;
            return 0;
        case '(':                                                       /* MARK */
            if (grow((void **)&u->marks, &u->capm, u->nm + 1, sizeof(int))) return up_fail(u, "out of memory");
            u->marks[u->nm++] = u->ns;
            break;
        case '}': case ']': case ')': case 0x8f:                        /* EMPTY_DICT/LIST/TUPLE/SET */
            if (push(u, pv_new(u, op == '}' ? PV_DICT : op == ']' ? PV_LIST : op == ')' ? PV_TUPLE : PV_OPAQUE)))
                return -1;
            break;
        case 'N': if (push(u, pv_new(u, PV_NONE))) return -1; break;
        case 0x88: case 0x89:                                           /* NEWTRUE/NEWFALSE */
            if ((idx = pv_new(u, PV_BOOL)) < 0 || push(u, idx)) return up_fail(u, "out of memory");
            u->v[idx].i = op == 0x88;
            break;
        case 'K': case 'M': case 'J': {                                 /* BININT1/2/BININT */
            int k = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if (need(u, (size_t)k)) return -1;
            int64_t v = (int64_t)rd_le(u->p + u->pos, k);
            if (k == 4) v = (int32_t)(uint32_t)v;
            u->pos += (size_t)k;
            if ((idx = pv_new(u, PV_INT)) < 0 || push(u, idx)) return up_fail(u, "out of memory");
            u->v[idx].i = v;
            break;
        }
        case 0x8a: {                                                    /* LONG1 */
            if (need(u, 1)) return -1;
            int k = u->p[u->pos++];
            if (k > 8) return up_fail(u, "integer wider than 64 bits");
            if (need(u, (size_t)k)) return -1;
            uint64_t v = rd_le(u->p + u->pos, k);
            if (k > 0 && k < 8 && (u->p[u->pos + k - 1] & 0x80)) v |= ~0ull << (8 * k);
            u->pos += (size_t)k;
            if ((idx = pv_new(u, PV_INT)) < 0 || push(u, idx)) return up_fail(u, "out of memory");
            u->v[idx].i = (int64_t)v;
            break;
        }
        case 'G': {                                                     /* BINFLOAT (big-endian) */
            if (need(u, 8)) return -1;
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++) bits = (bits << 8) | u->p[u->pos + i];
            u->pos += 8;
            if ((idx = pv_new(u, PV_FLOAT)) < 0 || push(u, idx)) return up_fail(u, "out of memory");
            memcpy(&u->v[idx].f, &bits, 8);
            break;
        }
        case 'X': case 0x8c: case 0x8d: case 'T': case 'U': case 'B': case 'C': case 0x8e: {
            int k = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
            if (need(u, (size_t)k)) return -1;
            len = rd_le(u->p + u->pos, k);
            u->pos += (size_t)k;
            if (need(u, (size_t)len)) return -1;
            if (push(u, new_str(u, u->p + u->pos, (size_t)len, PV_STR))) return -1;
            u->pos += (size_t)len;
            break;
        }
        case 'c': {                                                     /* GLOBAL */
            const unsigned char *s = u->p + u->pos, *e1, *e2;
            e1 = memchr(s, '\n', u->n - u->pos);
            if (!e1) return up_fail(u, "unterminated GLOBAL");
            e2 = memchr(e1 + 1, '\n', (size_t)(u->p + u->n - (e1 + 1)));
            if (!e2) return up_fail(u, "unterminated GLOBAL");
            if ((idx = new_str(u, s, (size_t)(e2 - s), PV_GLOBAL)) < 0) return up_fail(u, "out of memory");
            u->v[idx].s[e1 - s] = '.';
            u->pos = (size_t)(e2 + 1 - u->p);
            if (push(u, idx)) return -1;
            break;
        }
        case 0x93: {                                                    /* STACK_GLOBAL */
            if (pop(u, &b) || pop(u, &a)) return -1;
            if (u->v[a].kind != PV_STR || u->v[b].kind != PV_STR) return up_fail(u, "STACK_GLOBAL of non-strings");
            size_t la = strlen(u->v[a].s), lb = strlen(u->v[b].s);
            char *s = malloc(la + lb + 2);
            if (!s || (idx = pv_new(u, PV_GLOBAL)) < 0) { free(s); return up_fail(u, "out of memory"); }
            snprintf(s, la + lb + 2, "%s.%s", u->v[a].s, u->v[b].s);
            u->v[idx].s = s;
            if (push(u, idx)) return -1;
            break;
        }
        case 'q': if (need(u, 1)) return -1; if (memo_put(u, u->p[u->pos++])) return -1; break; /* BINPUT */
        case 'r':                                                       /* LONG_BINPUT */
            if (need(u, 4)) return -1;
            len = rd_le(u->p + u->pos, 4);
            u->pos += 4;
            if (memo_put(u, len)) return -1;
            break;
        case 0x94: if (memo_put(u, u->memo_keys)) return -1; break;    /* MEMOIZE */
        case 'h': if (need(u, 1)) return -1; if (memo_get(u, u->p[u->pos++])) return -1; break; /* BINGET */
        case 'j':                                                       /* LONG_BINGET */
            if (need(u, 4)) return -1;
            len = rd_le(u->p + u->pos, 4);
            u->pos += 4;
            if (memo_get(u, len)) return -1;
            break;
        case '0': if (pop(u, &a)) return -1; break;                     /* POP */
        case '2': if (top(u, &a) || push(u, a)) return -1; break;       /* DUP */
        case '1': if (pop_mark(u, &first, &cnt)) return -1; break;      /* POP_MARK */
        case 't': case 'l': case 0x91: {                                /* TUPLE, LIST, FROZENSET */
            if (pop_mark(u, &first, &cnt)) return -1;
            if ((idx = pv_new(u, op == 't' ? PV_TUPLE : op == 'l' ? PV_LIST : PV_OPAQUE)) < 0)
                return up_fail(u, "out of memory");
            for (int i = 0; i < cnt && op != 0x91; i++)
                if (pv_append(u, idx, u->stack[first + i])) return up_fail(u, "out of memory");
            if (push(u, idx)) return -1;
            break;
        }
        case 0x85: case 0x86: case 0x87: {                              /* TUPLE1/2/3 */
            int k = (int)op - 0x84, it[3];
            for (int i = k - 1; i >= 0; i--)
                if (pop(u, &it[i])) return -1;
            if ((idx = pv_new(u, PV_TUPLE)) < 0) return up_fail(u, "out of memory");
            for (int i = 0; i < k; i++)
                if (pv_append(u, idx, it[i])) return up_fail(u, "out of memory");
            if (push(u, idx)) return -1;
            break;
        }
        case 'd': {                                                     /* DICT */
            if (pop_mark(u, &first, &cnt)) return -1;
            if ((idx = pv_new(u, PV_DICT)) < 0) return up_fail(u, "out of memory");
            if (setitems(u, idx, u->stack + first, cnt) || push(u, idx)) return -1;
            break;
        }
        case 's':                                                       /* SETITEM */
            if (pop(u, &c) || pop(u, &b) || top(u, &a)) return -1;
            {
                int kv[2] = {b, c};
                if (setitems(u, a, kv, 2)) return -1;
            }
            break;
        case 'u':                                                       /* SETITEMS */
            if (pop_mark(u, &first, &cnt) || top(u, &a)) return -1;
            if (setitems(u, a, u->stack + first, cnt)) return -1;
            break;
        case 'a':                                                       /* APPEND */
            if (pop(u, &b) || top(u, &a)) return -1;
            if (u->v[a].kind == PV_LIST && pv_append(u, a, b)) return up_fail(u, "out of memory");
            break;
        case 'e': case 0x90:                                            /* APPENDS, ADDITEMS */
            if (pop_mark(u, &first, &cnt) || top(u, &a)) return -1;
            for (int i = 0; i < cnt && u->v[a].kind == PV_LIST && op == 'e'; i++)
                if (pv_append(u, a, u->stack[first + i])) return up_fail(u, "out of memory");
            break;
        case 'R':                                                       /* REDUCE */
            if (pop(u, &b) || pop(u, &a)) return -1;
            if (reduce(u, a, b)) return -1;
            break;
        case 0x81:                                                      /* NEWOBJ: cls.__new__(cls, *args) */
            if (pop(u, &b) || pop(u, &a)) return -1;
            if (push(u, pv_new(u, PV_OPAQUE))) return -1;
            break;
        case 'b':                                                       /* BUILD: state is dropped */
            if (pop(u, &b) || top(u, &a)) return -1;
            break;
        case 'Q':                                                       /* BINPERSID */
            if (pop(u, &a)) return -1;
            if (persistent_load(u, a)) return -1;
            break;
        default: {
            char what[64];
            u->pos--;
            snprintf(what, sizeof what, "unsupported pickle opcode 0x%02x", op);
            return up_fail(u, what);
        }
        }
    }
    return up_fail(u, "pickle ends without STOP");
}

static void up_free(unpickler *u) {
    for (int i = 0; i < u->nv; i++) {
        free(u->v[i].s);
        free(u->v[i].items);
    }
    free(u->v);
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

/* ---------------------------------------------------------------- tensors out of the zip */

static const char *st_type_name(int t) {
    static const char *names[] = {"float32", "float16", "bfloat16", "float64", "non-float"};
    return names[t];
}

static int gather_tensor(const zfile *z, unpickler *u, const char *name, const pv *t, tensor_set *out,
                         char *err, size_t errlen) {
    const pv *st = &u->v[t->storage];
    if (st->st_type == ST_OTHER) {
        snprintf(err, errlen, "%s: tensor %s has a %s storage: expected float32, float16 or bfloat16", z->path,
                 name, st_type_name(st->st_type));
        return -1;
    }
    size_t esz = st->st_type == ST_F32 ? 4 : st->st_type == ST_F64 ? 8 : 2;
    char entry[300];
    snprintf(entry, sizeof entry, "data/%s", st->s);
    const unsigned char *data;
    uint64_t nbytes;
    if (zf_get(z, entry, &data, &nbytes, err, errlen)) return -1;
    /* Every product and sum below is overflow-checked: sizes, strides and the offset come from
     * the file. The last element reached must lie inside the storage, and the tensor may not
     * hold more elements than its storage (an expanded view would let a few bytes of file ask
     * for any amount of memory). */
    uint64_t st_numel = nbytes / esz, numel = 1, last = (uint64_t)t->i;
    int wrap = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->size[d] < 0 || t->stride[d] < 0) {
            snprintf(err, errlen, "%s: tensor %s has a negative size or stride", z->path, name);
            return -1;
        }
        uint64_t reach;
        wrap |= __builtin_mul_overflow(numel, (uint64_t)t->size[d], &numel);
        if (t->size[d] > 0) {
            wrap |= __builtin_mul_overflow((uint64_t)(t->size[d] - 1), (uint64_t)t->stride[d], &reach);
            wrap |= __builtin_add_overflow(last, reach, &last);
        }
    }
    if (wrap) {
        snprintf(err, errlen, "%s: tensor %s: its sizes, strides and offset overflow 64 bits (damaged file)", z->path,
                 name);
        return -1;
    }
    if (numel > 0 && last >= st_numel) {
        snprintf(err, errlen, "%s: tensor %s reaches element %" PRIu64 " of storage %s, which holds %" PRIu64,
                 z->path, name, last, st->s, st_numel);
        return -1;
    }
    if (numel > st_numel) {
        snprintf(err, errlen, "%s: tensor %s has %" PRIu64 " elements, more than its storage %s holds (%" PRIu64
                 "): expanded views are not read", z->path, name, numel, st->s, st_numel);
        return -1;
    }
    float *f = malloc((numel ? numel : 1) * sizeof *f);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory for tensor %s", z->path, name);
        return -1;
    }
    int64_t idx[TS_MAX_DIMS] = {0};
    for (uint64_t k = 0; k < numel; k++) {
        uint64_t e = (uint64_t)t->i;
        for (int d = 0; d < t->ndim; d++) e += (uint64_t)idx[d] * (uint64_t)t->stride[d];
        const unsigned char *src = data + e * esz;
        switch (st->st_type) {
        case ST_F32: memcpy(&f[k], src, 4); break;
        case ST_F16: f[k] = ag_f16_to_f32((uint16_t)(src[0] | (src[1] << 8))); break;
        case ST_BF16: f[k] = ag_bf16_to_f32((uint16_t)(src[0] | (src[1] << 8))); break;
        default: { double dv; memcpy(&dv, src, 8); f[k] = (float)dv; }
        }
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->size[d]) break;
            idx[d] = 0;
        }
    }
    if (ts_add(out, name, t->ndim, t->size, f)) {
        snprintf(err, errlen, "%s: out of memory", z->path);
        return -1;
    }
    return 0;
}

static int count_tensors(const unpickler *u, const pv *dict) {
    int n = 0;
    for (int i = 0; i + 1 < dict->n; i += 2)
        if (u->v[dict->items[i]].kind == PV_STR && u->v[dict->items[i + 1]].kind == PV_TENSOR) n++;
    return n;
}

int pth_is_legacy(const void *head, size_t n) {
    /* pickle PROTO 2, then LONG1 of the magic number 0x1950a86a20f9469cfc6c */
    static const unsigned char magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    return n >= sizeof magic && memcmp(head, magic, sizeof magic) == 0;
}

int pth_read(const char *path, tensor_set *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size == 0) {
        snprintf(err, errlen, "%s: empty or unreadable file", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        return -1;
    }
    zfile z = {0};
    z.path = path;
    z.p = map;
    z.size = size;
    unpickler u = {0};
    int rc = -1;
    if (pth_is_legacy(map, size)) {
        snprintf(err, errlen, "%s: legacy (pre-1.6) torch.save format: re-save it with a newer torch "
                 "(torch.save(torch.load(f), f)) to get the zip format", path);
        goto done;
    }
    if (zf_parse(&z, err, errlen)) goto done;
    int pkl = -1;
    for (int i = 0; i < z.n && pkl < 0; i++) {
        size_t l = strlen(z.names[i]);
        if (l >= 8 && !strcmp(z.names[i] + l - 8, "data.pkl") && (l == 8 || z.names[i][l - 9] == '/')) pkl = i;
    }
    if (pkl < 0) {
        snprintf(err, errlen, "%s: zip without data.pkl: not a torch.save file", path);
        goto done;
    }
    size_t plen = strlen(z.names[pkl]) - 8;
    if (plen >= sizeof z.prefix) plen = sizeof z.prefix - 1;
    memcpy(z.prefix, z.names[pkl], plen);
    z.prefix[plen] = 0;
    const unsigned char *pk;
    uint64_t pk_n;
    if (zf_get(&z, "data.pkl", &pk, &pk_n, err, errlen)) goto done;
    u.path = path;
    u.p = pk;
    u.n = (size_t)pk_n;
    u.err = err;
    u.errlen = errlen;
    int root;
    if (unpickle(&u, &root)) goto done;
    const pv *dict = &u.v[root];
    if (dict->kind != PV_DICT) {
        snprintf(err, errlen, "%s: data.pkl holds no dict: expected a dict of tensors (a state dict)", path);
        goto done;
    }
    if (count_tensors(&u, dict) == 0) { /* a training checkpoint: {"model": state_dict, ...} */
        for (int i = 0; i + 1 < dict->n; i += 2) {
            const pv *k = &u.v[dict->items[i]], *v = &u.v[dict->items[i + 1]];
            if (k->kind == PV_STR && (!strcmp(k->s, "model") || !strcmp(k->s, "state_dict")) &&
                v->kind == PV_DICT && count_tensors(&u, v) > 0) {
                dict = v;
                break;
            }
        }
    }
    for (int i = 0; i + 1 < dict->n; i += 2) {
        const pv *k = &u.v[dict->items[i]], *v = &u.v[dict->items[i + 1]];
        if (k->kind != PV_STR || v->kind != PV_TENSOR) continue;
        if (gather_tensor(&z, &u, k->s, v, out, err, errlen)) goto done;
    }
    rc = 0;
done:
    up_free(&u);
    zf_free(&z);
    munmap(map, size);
    if (rc) ts_free(out);
    return rc;
}
