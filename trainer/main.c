/* llama-adapter: entry point; dispatches to the subcommands of trainer/cli.h.
 *
 * Before a subcommand that computes (train, eval, generate, sweep) runs, main():
 *   - sets the OpenMP wait policy when the user has not: GOMP_SPINCOUNT (libgomp reads it when
 *     it is loaded, before main, so the process re-executes itself once with it set). libgomp's
 *     default spins about 300k iterations at every barrier; when other processes compete for
 *     the cores the spinning threads take the time the working ones need. A short spin keeps
 *     the idle-machine speed and degrades gracefully under load (README: measurements).
 *   - checks that the OpenBLAS it runs with is the OpenMP build (openblas_get_parallel() == 2)
 *     and warns once on stderr when not: a pthreads OpenBLAS spins with sched_yield inside our
 *     OpenMP regions;
 *   - gives eval and generate the --tokenizer default MODEL_DIR/tokenizer.model (train does it
 *     in its config).
 * `llama-adapter --version` prints the version, the BLAS library loaded (from /proc/self/maps),
 * its build configuration and the wait policy in effect.
 * Deliberately not: changing a policy the user set (OMP_WAIT_POLICY or GOMP_SPINCOUNT). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/cli.h"

#define LLAMA_ADAPTER_VERSION "0.15.0"
/* libgomp's spin count at barriers when the user sets no wait policy (its default: 300000). */
#define DEFAULT_SPINCOUNT "10000"

/* OpenBLAS's own introspection (declared here: only these two are needed outside the kernels). */
extern char *openblas_get_config(void);
extern int openblas_get_parallel(void);

static const char *blas_threading(void) {
    int p = openblas_get_parallel();
    return p == 2 ? "OpenMP" : p == 1 ? "pthreads" : p == 0 ? "sequential" : "unknown";
}

/* The path of the libopenblas mapped into this process, or "" when none is found. */
static void blas_path(char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[4600];
    while (fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "libopenblas")) {
            p[strcspn(p, "\n")] = 0;
            snprintf(out, n, "%s", p);
            break;
        }
    }
    fclose(f);
}

static int print_version(void) {
    char path[4096];
    blas_path(path, sizeof path);
    const char *wp = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT"), *ours = getenv("LLAMA_ADAPTER_SPINCOUNT");
    printf("llama-adapter %s\n", LLAMA_ADAPTER_VERSION);
    printf("blas: %s (%s threading) %s\n", path[0] ? path : "(libopenblas not found in /proc/self/maps)", blas_threading(),
           openblas_get_config());
    if (!wp && !sc)
        printf("openmp wait policy: train, eval, generate and sweep run with GOMP_SPINCOUNT=%s (llama-adapter's default; "
               "set OMP_WAIT_POLICY or GOMP_SPINCOUNT to choose)\n", DEFAULT_SPINCOUNT);
    else
        printf("openmp wait policy: OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s (%s)\n", wp ? wp : "(unset)", sc ? sc : "(unset)",
               ours ? "llama-adapter's default" : "set by the user");
    return 0;
}

/* Re-executes this process once with GOMP_SPINCOUNT set, unless the user set a policy. */
static void set_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || getenv("LLAMA_ADAPTER_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", DEFAULT_SPINCOUNT, 1) || setenv("LLAMA_ADAPTER_SPINCOUNT", DEFAULT_SPINCOUNT, 1)) return;
    fflush(NULL);
    execv("/proc/self/exe", argv); /* returns only on failure: then run with libgomp's default */
}

static void check_blas(void) {
    if (openblas_get_parallel() == 2) return;
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (rank && strcmp(rank, "0") != 0) return;
    char path[4096];
    blas_path(path, sizeof path);
    fprintf(stderr, "llama-adapter: warning: the OpenBLAS loaded (%s) is the %s build, not the OpenMP one: its threads "
            "compete with OpenMP's (install libopenblas0-openmp and rebuild)\n", path[0] ? path : "?", blas_threading());
}

/* argv plus "--tokenizer MODEL/tokenizer.model" when the command takes --model M without
 * --tokenizer and M is a directory that holds one; argv itself otherwise. */
static char **default_tokenizer(int argc, char **argv, char *buf, size_t n) {
    const char *model = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") || !strncmp(argv[i], "--tokenizer=", 12)) return argv;
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[i + 1];
        else if (!strncmp(argv[i], "--model=", 8)) model = argv[i] + 8;
    }
    struct stat st;
    if (!model || stat(model, &st) != 0 || !S_ISDIR(st.st_mode)) return argv;
    snprintf(buf, n, "%s/tokenizer.model", model);
    if (access(buf, R_OK) != 0) return argv;
    char **v = malloc(sizeof(char *) * (size_t)(argc + 3));
    if (!v) return argv;
    memcpy(v, argv, sizeof(char *) * (size_t)argc);
    v[argc] = "--tokenizer";
    v[argc + 1] = buf;
    v[argc + 2] = NULL;
    fprintf(stderr, "%s: note: --tokenizer defaults to %s (the model directory's)\n", argv[1], buf);
    return v;
}

static const char USAGE[] =
    "llama-adapter: LLaMA-Adapter fine-tuning in C\n"
    "\n"
    "usage: llama-adapter COMMAND [options]   (llama-adapter COMMAND --help for its options)\n"
    "\n"
    "commands:\n"
    "  train     fine-tune adaption prompts and gates (or every weight with --method full)\n"
    "  eval      loss and perplexity of a model (with or without an adapter) on Alpaca data\n"
    "  generate  generate text from an instruction or a raw prompt\n"
    "  export    write an adapter checkpoint as safetensors, PyTorch .pth or HDF5\n"
    "  inspect   describe a model file/directory, a checkpoint or an Alpaca data file\n"
    "  sweep     train one adapter per (adapter_len, adapter_layer) pair; results table and plot\n"
    "  plot      loss and learning-rate curves of one or more runs as an SVG\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) return print_version();
    const char *cmd = argv[1];
    int computes = !strcmp(cmd, "train") || !strcmp(cmd, "eval") || !strcmp(cmd, "generate") || !strcmp(cmd, "sweep");
    if (computes) {
        set_wait_policy(argv);
        check_blas();
    }
    char tok_buf[4200];
    if (!strcmp(cmd, "eval") || !strcmp(cmd, "generate")) {
        char **v = default_tokenizer(argc, argv, tok_buf, sizeof tok_buf);
        if (v != argv) {
            int rc = !strcmp(cmd, "eval") ? cmd_eval(argc + 1, v + 1) : cmd_generate(argc + 1, v + 1);
            free(v);
            return rc;
        }
    }
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "sweep")) return cmd_sweep(argc - 1, argv + 1);
    if (!strcmp(cmd, "plot")) return cmd_plot(argc - 1, argv + 1);
    fprintf(stderr, "llama-adapter: unknown command '%s' (try llama-adapter --help)\n", cmd);
    return 2;
}
