/* Alpaca JSON -> examples, and the prompt templates of DESIGN.md §2 (byte for byte).
 * The file is read whole and parsed with cJSON; every field is checked (type, UTF-8) and copied,
 * so the cJSON tree is freed before returning. Errors are one line naming the file and the
 * place: the line/column/byte offset of a JSON syntax error, or the 0-based example index and
 * the field. Example indices in every message are 0-based (the first element is "example 0").
 * Deliberately not here: tokenization and labels (dataset.c), other data formats (JSONL,
 * chat), and repair of bad input (nothing is skipped silently: one bad example fails the file). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "data/alpaca.h"
#include "data/err.h"

#define PROMPT_INPUT_HEAD                                                                     \
    "Below is an instruction that describes a task, paired with an input that provides "      \
    "further context. Write a response that appropriately completes the request.\n\n"         \
    "### Instruction:\n"
#define PROMPT_INPUT_MID "\n\n### Input:\n"
#define PROMPT_NO_INPUT_HEAD                                                                  \
    "Below is an instruction that describes a task. Write a response that appropriately "     \
    "completes the request.\n\n### Instruction:\n"
#define PROMPT_TAIL "\n\n### Response:"


char *alpaca_prompt(const char *instruction, const char *input) {
    int with_input = input && input[0];
    size_t n = strlen(instruction) + (with_input ? strlen(input) : 0) +
               (with_input ? sizeof PROMPT_INPUT_HEAD + sizeof PROMPT_INPUT_MID
                           : sizeof PROMPT_NO_INPUT_HEAD) +
               sizeof PROMPT_TAIL;
    char *p = malloc(n);
    if (!p) return NULL;
    if (with_input)
        snprintf(p, n, "%s%s%s%s%s", PROMPT_INPUT_HEAD, instruction, PROMPT_INPUT_MID, input,
                 PROMPT_TAIL);
    else
        snprintf(p, n, "%s%s%s", PROMPT_NO_INPUT_HEAD, instruction, PROMPT_TAIL);
    return p;
}

/* Offset of the first byte that breaks UTF-8 (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF, no truncated sequences), or -1 when s[0..n) is valid. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) { len = 3; lo = 0xA0; }            /* overlong below U+0800 */
        else if (c == 0xED) { len = 3; hi = 0x9F; }            /* surrogates U+D800..DFFF */
        else if (c >= 0xE1 && c <= 0xEF) len = 3;
        else if (c == 0xF0) { len = 4; lo = 0x90; }            /* overlong below U+10000 */
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) { len = 4; hi = 0x8F; }            /* above U+10FFFF */
        else return (long)i;                                   /* 80..C1, F5..FF */
        if (i + len > n) return (long)i;                       /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return (long)i;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return (long)i;
        i += len;
    }
    return -1;
}

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* Reads the whole file into a NUL-terminated buffer. */
static char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        data_set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        data_set_err(err, errlen, "%s: %s", path, bad ? "read error" : "out of memory");
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* One line: the place of a JSON syntax error and the text there (control characters shown as
 * spaces). */
static void json_syntax_error(const char *path, const char *buf, size_t len, size_t at,
                              char *err, size_t errlen) {
    if (at > len) at = len;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at; i++) {
        if (buf[i] == '\n') { line++; col = 1; }
        else col++;
    }
    char near[32];
    size_t k = 0;
    for (size_t i = at; i < len && k < 20; i++) {
        unsigned char c = (unsigned char)buf[i];
        near[k++] = (char)(c < 0x20 || c == 0x7f ? ' ' : c);
    }
    near[k] = '\0';
    if (k == 0)
        data_set_err(err, errlen,
                "%s: line %zu, column %zu (byte offset %zu): not valid JSON (unexpected end of "
                "file): expected a JSON array of {instruction, input, output} objects",
                path, line, col, at);
    else
        data_set_err(err, errlen,
                "%s: line %zu, column %zu (byte offset %zu): not valid JSON near \"%s\": expected "
                "a JSON array of {instruction, input, output} objects",
                path, line, col, at, near);
}

/* Copies field `name` of example i into *out. "input" may be absent ("" then). */
static int take_field(const char *path, int i, const cJSON *obj, const char *name, int optional,
                      char **out, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        if (optional) {
            *out = calloc(1, 1);
            if (*out) return 0;
            data_set_err(err, errlen, "%s: out of memory", path);
            return -1;
        }
        data_set_err(err, errlen, "%s: example %d: field \"%s\" is missing: expected a string", path, i,
                name);
        return -1;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        data_set_err(err, errlen, "%s: example %d: field \"%s\" is %s: expected a string", path, i, name,
                json_type_name(v));
        return -1;
    }
    size_t n = strlen(v->valuestring);
    long bad = utf8_invalid_at((const unsigned char *)v->valuestring, n);
    if (bad >= 0) {
        data_set_err(err, errlen,
                "%s: invalid UTF-8 in example %d, field \"%s\", at byte %ld of the field (0x%02x): "
                "expected UTF-8 text",
                path, i, name, bad, (unsigned char)v->valuestring[bad]);
        return -1;
    }
    *out = malloc(n + 1);
    if (!*out) {
        data_set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    memcpy(*out, v->valuestring, n + 1);
    return 0;
}

int alpaca_load(const char *path, alpaca_set *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    size_t len = 0;
    char *buf = read_all(path, &len, err, errlen);
    if (!buf) return -1;
    size_t first = 0;
    while (first < len && strchr(" \t\r\n", buf[first])) first++;
    if (first == len) {
        data_set_err(err, errlen, "%s: empty file: expected a JSON array of {instruction, input, output} "
                             "objects", path);
        free(buf);
        return -1;
    }
    /* cJSON stops at a NUL byte; name it rather than report a confusing position */
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        json_syntax_error(path, buf, len, (size_t)(nul - buf), err, errlen);
        free(buf);
        return -1;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
    if (!root) {
        size_t at = end ? (size_t)(end - buf) : 0;
        json_syntax_error(path, buf, len, at, err, errlen);
        free(buf);
        return -1;
    }
    free(buf);
    int rc = -1;
    if (!cJSON_IsArray(root)) {
        data_set_err(err, errlen, "%s: top level is %s: expected a JSON array of {instruction, input, "
                             "output} objects", path, json_type_name(root));
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    if (n == 0) {
        data_set_err(err, errlen, "%s: the array holds no examples: expected at least one", path);
        goto done;
    }
    s->ex = calloc((size_t)n, sizeof *s->ex);
    if (!s->ex) {
        data_set_err(err, errlen, "%s: out of memory for %d examples", path, n);
        goto done;
    }
    int i = 0;
    for (const cJSON *e = root->child; e; e = e->next, i++) {
        s->n = i + 1; /* alpaca_free frees what was filled so far */
        if (!cJSON_IsObject(e)) {
            data_set_err(err, errlen, "%s: example %d is %s: expected an object with \"instruction\", "
                                 "\"input\", \"output\"", path, i, json_type_name(e));
            goto done;
        }
        alpaca_example *x = &s->ex[i];
        if (take_field(path, i, e, "instruction", 0, &x->instruction, err, errlen) ||
            take_field(path, i, e, "input", 1, &x->input, err, errlen) ||
            take_field(path, i, e, "output", 0, &x->output, err, errlen))
            goto done;
        size_t bytes = strlen(x->instruction) + strlen(x->input) + strlen(x->output);
        if (bytes > ALPACA_MAX_EXAMPLE_BYTES) {
            data_set_err(err, errlen, "%s: example %d holds %zu bytes of text: expected at most %zu (256 KiB) per "
                         "example (only the first max_seq_len tokens are trained: shorten it)", path, i, bytes,
                         ALPACA_MAX_EXAMPLE_BYTES);
            goto done;
        }
    }
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) alpaca_free(s);
    return rc;
}

void alpaca_free(alpaca_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n && s->ex; i++) {
        free(s->ex[i].instruction);
        free(s->ex[i].input);
        free(s->ex[i].output);
    }
    free(s->ex);
    s->ex = NULL;
    s->n = 0;
}

int text_load(const char *path, alpaca_set *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    int cap = 0, lineno = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    s->plain_text = 1;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if ((size_t)n > ALPACA_MAX_EXAMPLE_BYTES) {
            snprintf(err, errlen, "%s: line %d holds %zu bytes: expected at most %zu (256 KiB) per document (only the "
                     "first max_seq_len tokens are trained: split long documents into lines)", path, lineno, (size_t)n,
                     ALPACA_MAX_EXAMPLE_BYTES);
            goto fail;
        }
        long bad = utf8_invalid_at((const unsigned char *)line, (size_t)n);
        if (bad >= 0 || memchr(line, 0, (size_t)n)) {
            snprintf(err, errlen, "%s: line %d: %s at byte %ld of the line", path, lineno,
                     bad >= 0 ? "invalid UTF-8" : "NUL byte", bad >= 0 ? bad : (long)((char *)memchr(line, 0, (size_t)n) - line));
            goto fail;
        }
        if (s->n == cap) {
            cap = cap ? 2 * cap : 256;
            alpaca_example *e = realloc(s->ex, (size_t)cap * sizeof *e);
            if (!e) goto oom;
            s->ex = e;
        }
        alpaca_example *x = &s->ex[s->n];
        x->instruction = calloc(1, 1);
        x->input = calloc(1, 1);
        x->output = strdup(line);
        s->n++;
        if (!x->instruction || !x->input || !x->output) goto oom;
    }
    free(line);
    fclose(f);
    if (s->n == 0) {
        snprintf(err, errlen, "%s: no text (expected one document per line)", path);
        alpaca_free(s);
        return -1;
    }
    return 0;
oom:
    snprintf(err, errlen, "%s: out of memory at line %d", path, lineno);
fail:
    free(line);
    fclose(f);
    alpaca_free(s);
    return -1;
}

int data_load(const char *path, const char *format, alpaca_set *s, char *err, size_t errlen) {
    if (!format || !strcmp(format, "auto")) {
        size_t n = strlen(path);
        format = n > 4 && !strcmp(path + n - 4, ".txt") ? "text" : "alpaca";
    }
    if (!strcmp(format, "text")) return text_load(path, s, err, errlen);
    if (!strcmp(format, "alpaca")) return alpaca_load(path, s, err, errlen);
    snprintf(err, errlen, "%s: data format '%s': expected auto, alpaca or text", path, format);
    return -1;
}
