/* safetensors reader and atomic writer (format: 8-byte little-endian header length N, N bytes of
 * JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
 * then the data section; offsets are relative to the start of the data section).
 *
 * The reader is a security boundary: every number in the header is checked before use (header
 * length against the file size, JSON parsed by cJSON with its length, shapes non-negative
 * integers whose product times the dtype size equals end - begin without overflow, offsets inside
 * the data section, tensors not overlapping, names unique, metadata values strings). A corrupt
 * file gives -1 and one line naming the file; it never crashes or reads outside the mapping.
 * It deliberately does not require the data section to be covered without holes (harmless), and
 * it does not convert or align data: st_tensor.data may be unaligned for its dtype when the file
 * was written by a tool that does not align (callers copy in that case).
 *
 * The writer pads the header with spaces so the data section starts at a multiple of 8, writes
 * tensors in the order given, and goes through atomic.h (PATH.tmp, fsync, rename). */
#include "checkpoints/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/atomic.h"

/* The reference implementation refuses headers above 100 MB; so do we. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)

size_t st_dtype_size(const char *dtype) {
    static const struct { const char *name; size_t size; } tab[] = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2},
        {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
        {"I64", 8},  {"U64", 8}, {"F64", 8},
    };
    if (!dtype) return 0;
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(dtype, tab[i].name)) return tab[i].size;
    return 0;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->map && f->size) munmap(f->map, f->size);
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_vals[i];
    return NULL;
}

/* A JSON number that is an exact non-negative integer below 2^53 (exactly representable). */
static int json_u64(const cJSON *x, uint64_t *out) {
    if (!cJSON_IsNumber(x)) return -1;
    double d = x->valuedouble;
    if (!(d >= 0.0) || d >= 9007199254740992.0 || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_by_begin(const void *a, const void *b) {
    const uint64_t *x = a, *y = b; /* pairs {begin, end} */
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

/* Shortens a name for messages so one line stays readable even for hostile names. */
static const char *short_name(const char *s, char *buf, size_t n) {
    size_t len = strlen(s);
    if (len < n) return s;
    snprintf(buf, n, "%.*s...", (int)(n - 4), s);
    return buf;
}

/* Parses one tensor entry into t (name already set). Returns 0 or -1 with err. */
static int parse_entry(const st_file *f, const cJSON *e, st_tensor *t, uint64_t data_size,
                       uint64_t *begin_end, char *err, size_t errlen) {
    char nb[96];
    const char *nm = short_name(t->name, nb, sizeof nb);
    if (!cJSON_IsObject(e)) {
        snprintf(err, errlen, "%s: tensor '%s': header entry is not an object: expected {dtype, shape, data_offsets}", f->path, nm);
        return -1;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of)) {
        snprintf(err, errlen, "%s: tensor '%s': missing or mistyped dtype/shape/data_offsets: expected a string and two arrays", f->path, nm);
        return -1;
    }
    size_t esize = st_dtype_size(dt->valuestring);
    if (!esize || strlen(dt->valuestring) >= sizeof t->dtype) {
        char db[32];
        snprintf(err, errlen, "%s: tensor '%s': unknown dtype '%s': expected F32, F16, BF16, I32, ...", f->path, nm,
                 short_name(dt->valuestring, db, sizeof db));
        return -1;
    }
    snprintf(t->dtype, sizeof t->dtype, "%s", dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor '%s': %d dimensions: at most %d supported", f->path, nm, nd, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < nd; d++) {
        uint64_t v;
        if (json_u64(cJSON_GetArrayItem(sh, d), &v) || v > (uint64_t)INT64_MAX) {
            snprintf(err, errlen, "%s: tensor '%s': shape[%d] is not a non-negative integer", f->path, nm, d);
            return -1;
        }
        t->shape[d] = (int64_t)v;
        if (__builtin_mul_overflow(numel, v, &numel)) overflow = 1;
    }
    uint64_t nbytes;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)esize, &nbytes)) {
        snprintf(err, errlen, "%s: tensor '%s': shape product overflows: expected a tensor that fits in memory", f->path, nm);
        return -1;
    }
    uint64_t b, en;
    if (cJSON_GetArraySize(of) != 2 || json_u64(cJSON_GetArrayItem(of, 0), &b) ||
        json_u64(cJSON_GetArrayItem(of, 1), &en) || b > en) {
        snprintf(err, errlen, "%s: tensor '%s': bad data_offsets: expected [begin, end] integers with begin <= end", f->path, nm);
        return -1;
    }
    if (en > data_size) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] beyond the data section of %" PRIu64 " bytes",
                 f->path, nm, b, en, data_size);
        return -1;
    }
    if (en - b != nbytes) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets span %" PRIu64 " bytes: expected %" PRIu64 " (shape x %s size %zu)",
                 f->path, nm, en - b, nbytes, t->dtype, esize);
        return -1;
    }
    t->nbytes = (size_t)nbytes;
    begin_end[0] = b;
    begin_end[1] = en;
    return 0;
}

static int parse_metadata(st_file *f, const cJSON *m, char *err, size_t errlen) {
    if (!cJSON_IsObject(m)) {
        snprintf(err, errlen, "%s: __metadata__ is not an object: expected {\"key\": \"value\", ...}", f->path);
        return -1;
    }
    int n = cJSON_GetArraySize(m);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) {
        snprintf(err, errlen, "%s: out of memory reading __metadata__", f->path);
        return -1;
    }
    for (const cJSON *c = m->child; c; c = c->next) {
        char kb[96];
        if (!cJSON_IsString(c)) {
            snprintf(err, errlen, "%s: __metadata__ value of '%s' is not a string: expected string values", f->path,
                     short_name(c->string, kb, sizeof kb));
            return -1;
        }
        char *k = strdup(c->string), *v = strdup(c->valuestring);
        if (!k || !v) {
            free(k);
            free(v);
            snprintf(err, errlen, "%s: out of memory reading __metadata__", f->path);
            return -1;
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta] = v;
        f->n_meta++;
    }
    char **sorted = malloc(((size_t)f->n_meta + 1) * sizeof(char *));
    if (!sorted) {
        snprintf(err, errlen, "%s: out of memory reading __metadata__", f->path);
        return -1;
    }
    memcpy(sorted, f->meta_keys, (size_t)f->n_meta * sizeof(char *));
    qsort(sorted, (size_t)f->n_meta, sizeof(char *), cmp_str_ptr);
    for (int i = 1; i < f->n_meta; i++)
        if (!strcmp(sorted[i - 1], sorted[i])) {
            char kb[96];
            snprintf(err, errlen, "%s: __metadata__ key '%s' appears twice", f->path, short_name(sorted[i], kb, sizeof kb));
            free(sorted);
            return -1;
        }
    free(sorted);
    return 0;
}

/* Parses the JSON header of an already mapped file. */
static int parse_header(st_file *f, const char *hdr, size_t hlen, uint64_t data_off, char *err, size_t errlen) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        snprintf(err, errlen, "%s: header is not valid JSON (near byte %zu of the header): expected a safetensors file", f->path, at + 8);
        return -1;
    }
    for (const char *p = end; p && p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            snprintf(err, errlen, "%s: unexpected bytes after the JSON header at byte %zu: expected space padding", f->path,
                     (size_t)(p - hdr) + 8);
            cJSON_Delete(root);
            return -1;
        }
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object: expected {name: {dtype, shape, data_offsets}}", f->path);
        cJSON_Delete(root);
        return -1;
    }
    uint64_t data_size = (uint64_t)f->size - data_off;
    int n = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        if (strcmp(c->string, "__metadata__")) n++;
    f->t = calloc((size_t)n + 1, sizeof(st_tensor));
    uint64_t *ranges = calloc(2 * (size_t)n + 2, sizeof(uint64_t));
    char **names = calloc((size_t)n + 1, sizeof(char *));
    int rc = -1, seen_meta = 0;
    if (!f->t || !ranges || !names) {
        snprintf(err, errlen, "%s: out of memory reading a header of %d tensors", f->path, n);
        goto done;
    }
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) {
            if (seen_meta++) {
                snprintf(err, errlen, "%s: __metadata__ appears twice", f->path);
                goto done;
            }
            if (parse_metadata(f, c, err, errlen)) goto done;
            continue;
        }
        st_tensor *t = &f->t[f->n];
        if (!(t->name = strdup(c->string))) {
            snprintf(err, errlen, "%s: out of memory", f->path);
            goto done;
        }
        f->n++;
        if (parse_entry(f, c, t, data_size, &ranges[2 * (f->n - 1)], err, errlen)) goto done;
        t->data = (const char *)f->map + data_off + ranges[2 * (f->n - 1)];
        names[f->n - 1] = t->name;
    }
    qsort(names, (size_t)f->n, sizeof(char *), cmp_str_ptr);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(names[i - 1], names[i])) {
            char nb[96];
            snprintf(err, errlen, "%s: tensor '%s' appears twice in the header: expected unique names", f->path,
                     short_name(names[i], nb, sizeof nb));
            goto done;
        }
    qsort(ranges, (size_t)f->n, 2 * sizeof(uint64_t), cmp_by_begin);
    const uint64_t *prev = NULL; /* the non-empty range ending last so far */
    for (int i = 0; i < f->n; i++) {
        const uint64_t *q = &ranges[2 * i];
        if (q[0] == q[1]) continue;
        if (prev && q[0] < prev[1]) {
            snprintf(err, errlen, "%s: tensor data overlap: bytes [%" PRIu64 ", %" PRIu64 ") and [%" PRIu64 ", %" PRIu64
                     ") of the data section", f->path, prev[0], prev[1], q[0], q[1]);
            goto done;
        }
        if (!prev || q[1] > prev[1]) prev = q;
    }
    rc = 0;
done:
    free(ranges);
    free(names);
    cJSON_Delete(root);
    return rc;
}

int st_open(const char *path, st_file *f, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path) {
        snprintf(err, errlen, "%.200s...: path too long", path);
        return -1;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file: expected a safetensors file", path);
        close(fd);
        return -1;
    }
    if (sb.st_size < 8) {
        snprintf(err, errlen, "%s: file of %lld bytes is too small: a safetensors file has at least 8", path,
                 (long long)sb.st_size);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map %lld bytes: %s", path, (long long)sb.st_size, strerror(errno));
        return -1;
    }
    f->map = map;
    f->size = (size_t)sb.st_size;
    const unsigned char *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > f->size - 8) {
        snprintf(err, errlen, "%s: header length %" PRIu64 " exceeds the file size %zu: truncated or not a safetensors file",
                 path, hlen, f->size);
        st_close(f);
        return -1;
    }
    if (hlen > ST_MAX_HEADER) {
        snprintf(err, errlen, "%s: header length %" PRIu64 " above the %u-byte limit", path, hlen, ST_MAX_HEADER);
        st_close(f);
        return -1;
    }
    if (hlen < 2 || b[8] != '{') {
        snprintf(err, errlen, "%s: header does not start with '{': not a safetensors file", path);
        st_close(f);
        return -1;
    }
    if (parse_header(f, (const char *)b + 8, (size_t)hlen, 8 + hlen, err, errlen)) {
        st_close(f);
        return -1;
    }
    return 0;
}

/* ---- writer ---- */

/* A JSON-escaped copy of s, with quotes; caller frees. */
static char *json_quote(const char *s) {
    cJSON *str = cJSON_CreateString(s);
    if (!str) return NULL;
    char *out = cJSON_PrintUnformatted(str);
    cJSON_Delete(str);
    return out;
}

typedef struct strbuf { char *p; size_t len, cap; int oom; } strbuf;

static void sb_add(strbuf *s, const char *x) {
    size_t n = strlen(x);
    if (s->oom) return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->cap ? s->cap * 2 : 1024);
        while (cap < s->len + n + 1) cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) { s->oom = 1; return; }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->len, x, n + 1);
    s->len += n;
}

static void sb_add_quoted(strbuf *s, const char *x) {
    char *q = json_quote(x);
    if (!q) { s->oom = 1; return; }
    sb_add(s, q);
    free(q);
}

int st_write_stream(const char *path, const st_out *t, int n, const char *const *meta_keys,
                    const char *const *meta_vals, int n_meta, st_fill_fn fill, void *ctx, char *err,
                    size_t errlen) {
    uint64_t *nbytes = calloc((size_t)n + 1, sizeof(uint64_t));
    if (!nbytes) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    uint64_t max_fill = 0;
    for (int i = 0; i < n; i++) {
        size_t es = st_dtype_size(t[i].dtype);
        if (!t[i].name || !es || t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS || !strcmp(t[i].name, "__metadata__")) {
            snprintf(err, errlen, "%s: tensor %d ('%s'): bad name, dtype '%s' or ndim %d", path, i,
                     t[i].name ? t[i].name : "(null)", t[i].dtype ? t[i].dtype : "(null)", t[i].ndim);
            free(nbytes);
            return -1;
        }
        uint64_t ne = es;
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < 0 || __builtin_mul_overflow(ne, (uint64_t)t[i].shape[d], &ne)) {
                snprintf(err, errlen, "%s: tensor '%s': bad shape[%d] = %" PRId64, path, t[i].name, d, t[i].shape[d]);
                free(nbytes);
                return -1;
            }
        if (!t[i].data && !fill && ne) {
            snprintf(err, errlen, "%s: tensor '%s': no data", path, t[i].name);
            free(nbytes);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(t[j].name, t[i].name)) {
                snprintf(err, errlen, "%s: tensor '%s' given twice: names must be unique", path, t[i].name);
                free(nbytes);
                return -1;
            }
        nbytes[i] = ne;
        if (!t[i].data && ne > max_fill) max_fill = ne;
    }
    strbuf h = {0};
    char num[64];
    sb_add(&h, "{");
    if (n_meta > 0) {
        sb_add(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_add(&h, ",");
            sb_add_quoted(&h, meta_keys[i]);
            sb_add(&h, ":");
            sb_add_quoted(&h, meta_vals[i]);
        }
        sb_add(&h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i || n_meta > 0) sb_add(&h, ",");
        sb_add_quoted(&h, t[i].name);
        sb_add(&h, ":{\"dtype\":\"");
        sb_add(&h, t[i].dtype);
        sb_add(&h, "\",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
            sb_add(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + nbytes[i]);
        sb_add(&h, num);
        off += nbytes[i];
    }
    sb_add(&h, "}");
    while (!h.oom && (8 + h.len) % 8) sb_add(&h, " ");
    void *scratch = max_fill ? malloc((size_t)max_fill) : NULL;
    if (h.oom || (max_fill && !scratch)) {
        snprintf(err, errlen, "%s: out of memory building the header", path);
        free(h.p);
        free(scratch);
        free(nbytes);
        return -1;
    }
    atomic_file a;
    if (atomic_open(&a, path, err, errlen)) {
        free(h.p);
        free(scratch);
        free(nbytes);
        return -1;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int ok = fwrite(len8, 1, 8, a.f) == 8 && fwrite(h.p, 1, h.len, a.f) == h.len;
    for (int i = 0; ok && i < n; i++) {
        if (!nbytes[i]) continue;
        const void *src = t[i].data;
        if (!src) {
            if (fill(ctx, i, scratch, (size_t)nbytes[i])) {
                snprintf(err, errlen, "%s: could not produce the data of tensor '%s'", path, t[i].name);
                atomic_abort(&a);
                free(h.p);
                free(scratch);
                free(nbytes);
                return -1;
            }
            src = scratch;
        }
        ok = fwrite(src, 1, (size_t)nbytes[i], a.f) == nbytes[i];
    }
    free(h.p);
    free(scratch);
    free(nbytes);
    if (!ok) {
        snprintf(err, errlen, "%s: write failed: %s", a.tmp, strerror(errno));
        atomic_abort(&a);
        return -1;
    }
    return atomic_commit(&a, err, errlen);
}

int st_write(const char *path, const st_out *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta, char *err, size_t errlen) {
    return st_write_stream(path, t, n, meta_keys, meta_vals, n_meta, NULL, NULL, err, errlen);
}
