/* `llama-adapter plot RUN_DIR|metrics.jsonl [more ...] --out FILE.svg`: the training loss,
 * validation loss and learning rate of one or several runs on shared axes, as an SVG written by
 * trainer/svg.c. Two panels, one above the other with the same x range: losses (train solid,
 * validation dashed with a marker at each evaluation), and the lr. One color per run.
 * Works on any training's metrics.jsonl (adapter or full, finished or still running).
 * Exit status: 0, 1 on bad input (one line naming the file and line), 2 on a usage error.
 * Deliberately not here: smoothing, other metrics (tokens/s), raster output. */
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/args.h"
#include "trainer/cli.h"
#include "trainer/runlog.h"
#include "trainer/svg.h"

#define CMD "plot"
#define MAX_RUNS 64

static const char USAGE_LINE[] =
    "RUN_DIR|metrics.jsonl [more ...] --out FILE.svg [--labels A,B,...] [--x step|epoch] [--log-loss]\n"
    "       [--log-lr] [--title S]\n"
    "\n"
    "Draws the train loss, the validation loss (where validation ran) and the learning rate of each\n"
    "run against the optimizer step (or the epoch) on shared axes. A run is a directory holding\n"
    "metrics.jsonl or the file itself; its legend name is the directory's name unless --labels\n"
    "gives one per run.";

static int usage(const char *msg) {
    fprintf(stderr, "llama-adapter " CMD ": %s (see llama-adapter " CMD " --help)\n", msg);
    return 2;
}

/* Legend name of a run: the run directory's name ("runs/K5_L2" and "runs/K5_L2/metrics.jsonl"
 * both give "K5_L2"); a bare FILE.jsonl gives FILE. Malloc'ed. */
static char *run_name(const char *path) {
    char *a = strdup(path);
    if (!a) return NULL;
    size_t n = strlen(a);
    while (n > 1 && a[n - 1] == '/') a[--n] = 0;
    char *base = strdup(basename(a)), *out = NULL;
    if (base && !strcmp(base, "metrics.jsonl")) {
        char *d = strdup(path);
        out = d ? strdup(basename(dirname(d))) : NULL;
        free(d);
        if (out && (!strcmp(out, ".") || !strcmp(out, "/"))) {
            free(out);
            out = strdup(base);
        }
    } else if (base) {
        size_t bl = strlen(base);
        if (bl > 6 && !strcmp(base + bl - 6, ".jsonl")) base[bl - 6] = 0;
        out = strdup(base);
    }
    free(base);
    free(a);
    return out;
}

int cmd_plot(int argc, char **argv) {
    const char *out = NULL, *labels = NULL, *xaxis = "step", *title = NULL;
    int log_loss = 0, log_lr = 0;
    arg_spec specs[] = {
        {"out", ARG_STR, &out, "SVG file to write (required)", 0},
        {"labels", ARG_STR, &labels, "comma-separated legend names, one per run (default: run directory names)", 0},
        {"x", ARG_STR, &xaxis, "x axis: step | epoch", 0},
        {"title", ARG_STR, &title, "title above the panels", 0},
        {"log-loss", ARG_FLAG, &log_loss, "loss axis on a log scale", 0},
        {"log-lr", ARG_FLAG, &log_lr, "lr axis on a log scale (runs with very different lrs; lr 0 is left out)", 0},
    };
    int n_specs = (int)(sizeof specs / sizeof specs[0]);
    const char *paths[MAX_RUNS];
    int n_runs = 0;
    int rc = args_parse(CMD, USAGE_LINE, argc, argv, specs, n_specs, paths, MAX_RUNS, &n_runs);
    if (rc) return rc > 0 ? 0 : 2;
    if (n_runs == 0) return usage("no run given: expected one or more run directories or metrics.jsonl files");
    if (!out) return usage("missing --out FILE.svg");
    int by_epoch = !strcmp(xaxis, "epoch");
    if (!by_epoch && strcmp(xaxis, "step")) return usage("--x: expected step or epoch");

    char *names[MAX_RUNS] = {0};
    char err[4600];
    runlog logs[MAX_RUNS];
    memset(logs, 0, sizeof logs);
    int status = 1, n_loaded = 0;
    svg_series *loss_s = NULL, *lr_s = NULL;
    double *val_x[MAX_RUNS] = {0}, *val_y[MAX_RUNS] = {0}; /* validation points of each run */
    if (labels) {
        const char *p = labels;
        for (int i = 0; i < n_runs; i++) {
            size_t k = strcspn(p, ",");
            names[i] = strndup(p, k);
            p += k;
            if (*p == ',') p++;
            else if (i + 1 < n_runs) {
                for (int j = 0; j <= i; j++) free(names[j]);
                snprintf(err, sizeof err, "--labels has %d names for %d runs", i + 1, n_runs);
                return usage(err);
            }
        }
        if (*p) {
            for (int j = 0; j < n_runs; j++) free(names[j]);
            snprintf(err, sizeof err, "--labels has more names than the %d runs", n_runs);
            return usage(err);
        }
    } else {
        for (int i = 0; i < n_runs; i++) names[i] = run_name(paths[i]);
    }
    for (int i = 0; i < n_runs; i++) {
        if (runlog_load(paths[i], &logs[i], err, sizeof err)) {
            fprintf(stderr, "llama-adapter " CMD ": %s\n", err);
            goto done;
        }
        n_loaded++;
        if (logs[i].n == 0) {
            fprintf(stderr, "llama-adapter " CMD ": %s: no steps in its metrics.jsonl yet\n", paths[i]);
            goto done;
        }
    }
    /* series: per run a train-loss line, a validation line (points where it ran) and an lr line */
    loss_s = calloc((size_t)n_runs * 2, sizeof *loss_s);
    lr_s = calloc((size_t)n_runs, sizeof *lr_s);
    if (!loss_s || !lr_s) {
        fprintf(stderr, "llama-adapter " CMD ": out of memory\n");
        goto done;
    }
    int any_val = 0, n_loss = 0;
    double xmin = INFINITY, xmax = -INFINITY;
    for (int i = 0; i < n_runs; i++) {
        runlog *r = &logs[i];
        const double *x = by_epoch ? r->epoch : r->step;
        for (int j = 0; j < r->n; j++)
            if (isfinite(x[j])) {
                if (x[j] < xmin) xmin = x[j];
                if (x[j] > xmax) xmax = x[j];
            }
        const char *color = svg_color(i);
        loss_s[n_loss++] = (svg_series){names[i] ? names[i] : paths[i], x, r->loss, r->n, color, NULL, 1, 0, "train-loss", NULL};
        int nv = 0;
        for (int j = 0; j < r->n; j++) nv += isfinite(r->val_loss[j]);
        if (nv) {
            val_x[i] = malloc((size_t)nv * sizeof(double));
            val_y[i] = malloc((size_t)nv * sizeof(double));
            if (!val_x[i] || !val_y[i]) {
                fprintf(stderr, "llama-adapter " CMD ": out of memory\n");
                goto done;
            }
            nv = 0;
            for (int j = 0; j < r->n; j++)
                if (isfinite(r->val_loss[j])) val_x[i][nv] = x[j], val_y[i][nv++] = r->val_loss[j];
            loss_s[n_loss++] = (svg_series){NULL, val_x[i], val_y[i], nv, color, "6 4", 1, 1, "val-loss", NULL};
            any_val = 1;
        }
        lr_s[i] = (svg_series){names[i] ? names[i] : paths[i], x, r->lr, r->n, color, NULL, 1, 0, "lr", NULL};
    }
    if (!(xmax > xmin)) xmax = xmin + 1;
    double x0 = by_epoch ? (xmin < 0 ? xmin : 0) : (xmin < 1 ? xmin : 0);
    svg_key keys[2] = {{"train loss", "#333", NULL, 0}, {"validation loss", "#333", "6 4", 1}};
    const char *xlabel = by_epoch ? "epoch (passes over the training data)" : "step (optimizer steps)";
    svg_panel panels[2] = {
        {"Loss", {xlabel, 0, x0, xmax}, {log_loss ? "loss (nats per loss token, log scale)" : "loss (nats per loss token)",
                                          log_loss, NAN, NAN}, loss_s, n_loss, keys,
         any_val ? 2 : 1, "no finite loss"},
        {"Learning rate", {xlabel, 0, x0, xmax},
         {log_lr ? "learning rate (per step, log scale)" : "learning rate (per step)", log_lr, log_lr ? NAN : 0, NAN},
         lr_s, n_runs, NULL, 0,
         "no lr recorded"},
    };
    svg_figure fig = {title, 1, 920, 360, panels, 2};
    if (svg_write_file(out, &fig, err, sizeof err)) {
        fprintf(stderr, "llama-adapter " CMD ": %s\n", err);
    } else {
        printf("plot: %d run%s -> %s\n", n_runs, n_runs > 1 ? "s" : "", out);
        status = 0;
    }
done:
    for (int i = 0; i < n_runs; i++) free(val_x[i]), free(val_y[i]);
    free(loss_s);
    free(lr_s);
    for (int i = 0; i < n_loaded; i++) runlog_free(&logs[i]);
    for (int i = 0; i < n_runs; i++) free(names[i]);
    return status;
}
