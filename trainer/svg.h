/* Line charts as SVG, written by hand (no plotting library): a figure is a grid of panels, each
 * with a title, labelled x and y axes (linear or log10, "nice" ticks and grid lines), polylines
 * and/or point markers per series, and a legend beside the plot area. Used by `plot` and `sweep`.
 *
 * The output is one well-formed XML document (UTF-8, every text escaped, no NaN or infinity in
 * any coordinate) that a browser shows as is. A series may be tagged with a class attribute so
 * a test can count its elements: a series with `line` set is exactly one <polyline> (even when
 * it has no drawable point). Points whose x or y is not finite, or not > 0 on a log axis, are
 * left out and the line joins the remaining ones.
 * Deliberately not here: bar charts, interactivity, text measurement (legend entries are
 * truncated to a fixed number of characters instead), fonts other than the browser's sans-serif.
 * Ownership: everything is borrowed for the duration of the call. */
#ifndef TRAINER_SVG_H
#define TRAINER_SVG_H
#include <stddef.h>
#include <stdio.h>

typedef struct svg_series {
    const char *label;   /* legend text; NULL: not in the legend */
    const double *x, *y; /* [n] */
    int n;
    const char *color;   /* CSS color, e.g. "#1f77b4" */
    const char *dash;    /* stroke-dasharray ("6 3"), NULL = solid */
    int line;            /* 1: join the points with a polyline */
    int markers;         /* 1: a circle at each point */
    const char *cls;     /* class attribute of the series' polyline/marker group, or NULL */
    const char *const *point_labels; /* [n] small text beside each drawn point, or NULL */
} svg_series;

/* A legend entry that is not a series (a key to line styles, say). */
typedef struct svg_key {
    const char *label;
    const char *color;
    const char *dash;
    int markers;
} svg_key;

typedef struct svg_axis {
    const char *label; /* with its unit, e.g. "loss (nats per token)" */
    int log;           /* 1: log10 scale */
    double min, max;   /* fixed range; NAN: from the data (with a margin) */
} svg_axis;

typedef struct svg_panel {
    const char *title;
    svg_axis x, y;
    const svg_series *series;
    int n_series;
    const svg_key *keys; /* extra legend entries after the series' */
    int n_keys;
    const char *empty_note; /* shown in the plot area when no point is drawable */
} svg_panel;

typedef struct svg_figure {
    const char *title;      /* above every panel, or NULL */
    int cols;               /* panels per row (>= 1) */
    int panel_w, panel_h;   /* pixels of one panel, legend included */
    const svg_panel *panels;
    int n_panels;
} svg_figure;

/* A palette of 10 distinguishable colors (Tableau 10): svg_color(i) cycles through it. */
const char *svg_color(int i);
/* A dash pattern for style index i: solid (NULL), then three dash patterns, cycling. */
const char *svg_dash(int i);

/* Writes the figure to f. 0, or -1 when a write failed. */
int svg_write(FILE *f, const svg_figure *fig);
/* The same into PATH atomically (PATH.tmp, fsync, rename). 0, or -1 with err. */
int svg_write_file(const char *path, const svg_figure *fig, char *err, size_t errlen);

/* Axis ticks (exposed for tests): up to max_ticks values in [lo, hi], written to t; returns the
 * count. Linear: multiples of 1, 2 or 5 times a power of ten. Log: powers of ten, with 2 and 5
 * (or 2, 3, 5) times them when the range spans few decades. */
int svg_ticks(double lo, double hi, int log, double *t, int max_ticks);
/* A short tick label: "0.5", "3", "1e-4", "20k", "1.2M". */
void svg_tick_label(double v, char *buf, size_t n);
#endif
