/* Command-line flags of the subcommands: long options `--name VALUE` (or `--name=VALUE`),
 * booleans as `--name`, typed and checked in one place; `--help` prints every flag with its
 * default. Errors are one line: "llama-adapter CMD: --flag: expected an integer, got 'x'".
 * Checked here for every subcommand: numbers are finite (no inf/nan), and --threads is within
 * 0..args_max_threads(). */
#ifndef TRAINER_ARGS_H
#define TRAINER_ARGS_H
#include <stdio.h>

typedef enum { ARG_STR, ARG_INT, ARG_FLOAT, ARG_FLAG, ARG_I64, ARG_DOUBLE } arg_type;

typedef struct arg_spec {
    const char *name;  /* without the leading dashes */
    arg_type type;
    void *dst;         /* const char **, int *, float *, int * (flag: set to 1), long long *,
                          double * */
    const char *help;  /* one line; the default is printed from *dst */
    int seen;          /* set by args_parse when the flag was given */
} arg_spec;

/* Parses argv[1..argc) (argv[0] is the subcommand). Positional arguments go to pos[0..max_pos).
 * Returns 0 on success, 1 when --help was printed (exit 0), -1 after printing an error (exit 2). */
int args_parse(const char *cmd, const char *usage, int argc, char **argv, arg_spec *specs, int n,
               const char **pos, int max_pos, int *n_pos);
void args_help(FILE *f, const char *cmd, const char *usage, const arg_spec *specs, int n);
/* The most threads --threads may ask for, in every subcommand: max(64, 4 x cores) (more
 * threads than cores only loses time; far more exhausts memory for their stacks). */
int args_max_threads(void);
/* The spec named `name`, or NULL. */
arg_spec *args_find(arg_spec *specs, int n, const char *name);
#endif
