/* Long-option parsing for the subcommands (see args.h). */
#include "trainer/args.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

int args_max_threads(void) {
    int n = 4 * omp_get_num_procs();
    return n > 64 ? n : 64;
}

arg_spec *args_find(arg_spec *specs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(specs[i].name, name)) return &specs[i];
    return NULL;
}

void args_help(FILE *f, const char *cmd, const char *usage, const arg_spec *specs, int n) {
    fprintf(f, "usage: llama-adapter %s %s\n\noptions:\n", cmd, usage);
    for (int i = 0; i < n; i++) {
        const arg_spec *s = &specs[i];
        char def[128] = "";
        switch (s->type) {
        case ARG_STR: {
            const char *v = *(const char **)s->dst;
            if (v) snprintf(def, sizeof def, " (default: %s)", v);
            break;
        }
        case ARG_INT: snprintf(def, sizeof def, " (default: %d)", *(int *)s->dst); break;
        case ARG_I64: snprintf(def, sizeof def, " (default: %lld)", *(long long *)s->dst); break;
        case ARG_FLOAT: snprintf(def, sizeof def, " (default: %g)", *(float *)s->dst); break;
        case ARG_DOUBLE: snprintf(def, sizeof def, " (default: %g)", *(double *)s->dst); break;
        case ARG_FLAG: break;
        }
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", s->name,
                 s->type == ARG_FLAG ? "" : s->type == ARG_STR ? " S" : (s->type == ARG_FLOAT || s->type == ARG_DOUBLE) ? " X" : " N");
        fprintf(f, "  %-24s %s%s\n", flag, s->help, def);
    }
}

static int set_value(const char *cmd, arg_spec *s, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (s->type) {
    case ARG_STR: *(const char **)s->dst = v; return 0;
    case ARG_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < -2147483647L || x > 2147483647L) break;
        if (!strcmp(s->name, "threads") && (x < 0 || x > args_max_threads())) {
            fprintf(stderr, "llama-adapter %s: --threads %ld: expected 0..%d (0: all cores)\n", cmd, x, args_max_threads());
            return -1;
        }
        *(int *)s->dst = (int)x;
        return 0;
    }
    case ARG_I64: {
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno) break;
        *(long long *)s->dst = x;
        return 0;
    }
    case ARG_FLOAT: {
        float x = strtof(v, &end);
        if (!*v || *end || errno || !isfinite(x)) break;
        *(float *)s->dst = x;
        return 0;
    }
    case ARG_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x)) break;
        *(double *)s->dst = x;
        return 0;
    }
    case ARG_FLAG: break;
    }
    fprintf(stderr, "llama-adapter %s: --%s: expected %s, got '%s'\n", cmd, s->name,
            (s->type == ARG_FLOAT || s->type == ARG_DOUBLE) ? "a finite number" : "an integer", v);
    return -1;
}

int args_parse(const char *cmd, const char *usage, int argc, char **argv, arg_spec *specs, int n,
               const char **pos, int max_pos, int *n_pos) {
    int np = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            args_help(stdout, cmd, usage, specs, n);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            if (np >= max_pos) {
                fprintf(stderr, "llama-adapter %s: unexpected argument '%s' (see --help)\n", cmd, a);
                return -1;
            }
            pos[np++] = a;
            continue;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a + 2, len);
        name[len] = 0;
        for (char *c = name; *c; c++)
            if (*c == '_') *c = '-';
        arg_spec *s = args_find(specs, n, name);
        if (!s) {
            fprintf(stderr, "llama-adapter %s: unknown option '--%s' (see --help)\n", cmd, name);
            return -1;
        }
        s->seen = 1;
        if (s->type == ARG_FLAG) {
            if (eq) {
                fprintf(stderr, "llama-adapter %s: --%s takes no value\n", cmd, name);
                return -1;
            }
            *(int *)s->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(stderr, "llama-adapter %s: --%s needs a value\n", cmd, name);
            return -1;
        }
        if (set_value(cmd, s, v)) return -1;
    }
    if (n_pos) *n_pos = np;
    return 0;
}
