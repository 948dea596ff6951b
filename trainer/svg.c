/* SVG line charts (see svg.h). Coordinates are pixels from the top-left corner; every number
 * printed is finite. Each panel is a cell of the grid: plot area on the left, legend column on
 * the right (when there is anything to list), title above, axis labels below and to the left. */
#include "trainer/svg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/atomic.h"

static const char *const PALETTE[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
static const char *const DASHES[4] = {NULL, "7 4", "2 3", "9 3 2 3"};

const char *svg_color(int i) { return PALETTE[((i % 10) + 10) % 10]; }
const char *svg_dash(int i) { return DASHES[((i % 4) + 4) % 4]; }

enum { MARGIN_L = 66, MARGIN_T = 30, MARGIN_B = 46, LEGEND_W = 190, LEGEND_ROW = 16, LEGEND_CHARS = 24 };

/* Text content or attribute value, escaped. Control characters (not allowed in XML 1.0) become
 * spaces. */
static void xml_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default: fputc(c < 0x20 && c != '\t' ? ' ' : c, f);
        }
    }
}

/* At most max_chars characters of s (cut at a UTF-8 character boundary, "..." appended). */
static void xml_text_cut(FILE *f, const char *s, int max_chars) {
    if (!s) return;
    size_t i = 0;
    int chars = 0;
    while (s[i] && chars < max_chars) {
        i++;
        while ((s[i] & 0xC0) == 0x80) i++;
        chars++;
    }
    char *cut = strndup(s, i);
    if (!cut) return;
    xml_text(f, cut);
    if (s[i]) fputs("...", f);
    free(cut);
}

static int drawable(double v, int log) { return isfinite(v) && (!log || v > 0); }

static double nice_step(double range, int want) {
    double raw = range / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static int linear_ticks(double lo, double hi, double *t, int max_ticks) {
    if (!(hi > lo)) return 0;
    double step = nice_step(hi - lo, 5);
    long long i0 = (long long)ceil(lo / step - 1e-9), i1 = (long long)floor(hi / step + 1e-9);
    int n = 0;
    for (long long i = i0; i <= i1 && n < max_ticks; i++) {
        double v = (double)i * step;
        t[n++] = v == 0 ? 0.0 : v; /* no "-0" */
    }
    return n;
}

int svg_ticks(double lo, double hi, int log, double *t, int max_ticks) {
    if (!log) return linear_ticks(lo, hi, t, max_ticks);
    if (!(lo > 0 && hi > lo)) return 0;
    static const double m1[] = {1}, m125[] = {1, 2, 5}, m1235[] = {1, 2, 3, 5}, mall[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const double *sets[4] = {m1, m125, m1235, mall};
    int sizes[4] = {1, 3, 4, 9};
    double decades = log10(hi / lo);
    int first = decades > 4 ? 0 : decades > 1.5 ? 1 : 2;
    int d0 = (int)floor(log10(lo)), d1 = (int)ceil(log10(hi));
    for (int s = first; s < 4; s++) {
        int n = 0;
        for (int d = d0; d <= d1; d++)
            for (int k = 0; k < sizes[s]; k++) {
                double v = sets[s][k] * pow(10, d);
                if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9) && n < max_ticks) t[n++] = v;
            }
        if (n >= 2) return n;
    }
    return linear_ticks(lo, hi, t, max_ticks); /* a narrow range inside one decade */
}

void svg_tick_label(double v, char *buf, size_t n) {
    double a = fabs(v);
    if (v == 0) {
        snprintf(buf, n, "0");
    } else if (a >= 1e3 && a < 1e15) {
        static const char *const suffix[] = {"k", "M", "G", "T"};
        int k = 0;
        double x = v / 1e3;
        while (fabs(x) >= 1e3 - 1e-9 && k < 3) x /= 1e3, k++;
        snprintf(buf, n, "%.3g%s", x, suffix[k]);
    } else if (a < 1e-3 || a >= 1e15) { /* "1e-4", "2.5e-7" */
        int e = (int)floor(log10(a));
        double m = v / pow(10, e);
        if (fabs(m) >= 9.95) m /= 10, e++;
        snprintf(buf, n, "%.2ge%d", m, e);
    } else {
        snprintf(buf, n, "%.4g", v);
    }
}

/* Data range of one axis over the panel's drawable points (both coordinates drawable). */
static int data_range(const svg_panel *p, int axis, double *lo, double *hi) {
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int s = 0; s < p->n_series; s++) {
        const svg_series *S = &p->series[s];
        for (int i = 0; i < S->n; i++) {
            if (!drawable(S->x[i], p->x.log) || !drawable(S->y[i], p->y.log)) continue;
            double v = axis ? S->y[i] : S->x[i];
            if (v < *lo) *lo = v;
            if (v > *hi) *hi = v;
        }
    }
    return *lo <= *hi;
}

/* The axis range: fixed ends where given, else the data's with a margin. */
static void axis_range(const svg_panel *p, int axis, double *lo, double *hi) {
    const svg_axis *ax = axis ? &p->y : &p->x;
    double dlo, dhi;
    if (!data_range(p, axis, &dlo, &dhi)) dlo = ax->log ? 1 : 0, dhi = ax->log ? 10 : 1;
    if (ax->log) {
        if (dhi <= dlo) dlo /= 2, dhi *= 2;
        double f = pow(dhi / dlo, 0.04);
        if (f < 1.15) f = 1.15;
        dlo /= f;
        dhi *= f;
    } else {
        if (dhi <= dlo) {
            double d = fabs(dlo) > 0 ? fabs(dlo) * 0.1 : 1;
            dlo -= d;
            dhi += d;
        } else {
            double m = 0.04 * (dhi - dlo);
            dlo -= m;
            dhi += m;
        }
    }
    *lo = isfinite(ax->min) && (!ax->log || ax->min > 0) ? ax->min : dlo;
    *hi = isfinite(ax->max) && (!ax->log || ax->max > 0) ? ax->max : dhi;
    if (!(*hi > *lo)) *hi = *lo + (ax->log ? *lo : 1);
}

typedef struct frame {
    double l, r, t, b;      /* plot area */
    double xlo, xhi, ylo, yhi;
    int xlog, ylog;
} frame;

static double map_x(const frame *fr, double v) {
    double a = fr->xlog ? log10(v) : v, lo = fr->xlog ? log10(fr->xlo) : fr->xlo, hi = fr->xlog ? log10(fr->xhi) : fr->xhi;
    return fr->l + (fr->r - fr->l) * (a - lo) / (hi - lo);
}

static double map_y(const frame *fr, double v) {
    double a = fr->ylog ? log10(v) : v, lo = fr->ylog ? log10(fr->ylo) : fr->ylo, hi = fr->ylog ? log10(fr->yhi) : fr->yhi;
    return fr->b - (fr->b - fr->t) * (a - lo) / (hi - lo);
}

/* Keeps a mapped coordinate finite and within a generous band around the picture (points far
 * outside a fixed range are clipped by the clip path anyway). */
static double clampc(double v) { return v < -1e5 ? -1e5 : v > 1e5 ? 1e5 : v; }

static void write_legend_sample(FILE *f, double x, double y, const char *color, const char *dash, int line,
                                int markers) {
    if (line) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"", x, y,
                x + 24, y, color);
        if (dash) fprintf(f, " stroke-dasharray=\"%s\"", dash);
        fputs("/>\n", f);
    }
    if (markers) fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", x + 12, y, color);
}

static void write_panel(FILE *f, const svg_panel *p, int index, double cx, double cy, double cw, double ch) {
    int n_legend = p->n_keys;
    for (int s = 0; s < p->n_series; s++) n_legend += p->series[s].label != NULL;
    frame fr;
    fr.l = cx + MARGIN_L;
    fr.r = cx + cw - (n_legend ? LEGEND_W : 18);
    fr.t = cy + MARGIN_T;
    fr.b = cy + ch - MARGIN_B;
    if (fr.r < fr.l + 40) fr.r = fr.l + 40;
    fr.xlog = p->x.log;
    fr.ylog = p->y.log;
    axis_range(p, 0, &fr.xlo, &fr.xhi);
    axis_range(p, 1, &fr.ylo, &fr.yhi);

    fprintf(f, "<g class=\"panel\">\n");
    if (p->title) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">",
                (fr.l + fr.r) / 2, cy + 19);
        xml_text(f, p->title);
        fputs("</text>\n", f);
    }
    /* grid, ticks and tick labels */
    double t[64];
    char lab[32];
    int nt = svg_ticks(fr.ylo, fr.yhi, fr.ylog, t, 64);
    for (int i = 0; i < nt; i++) {
        double y = map_y(&fr, t[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e3e3e3\"/>\n", fr.l, y, fr.r, y);
        svg_tick_label(t[i], lab, sizeof lab);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", fr.l - 5, y + 4, lab);
    }
    nt = svg_ticks(fr.xlo, fr.xhi, fr.xlog, t, 64);
    for (int i = 0; i < nt; i++) {
        double x = map_x(&fr, t[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e3e3e3\"/>\n", x, fr.t, x, fr.b);
        svg_tick_label(t[i], lab, sizeof lab);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, fr.b + 16, lab);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", fr.l,
            fr.t, fr.r - fr.l, fr.b - fr.t);
    if (p->x.label) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (fr.l + fr.r) / 2, fr.b + 36);
        xml_text(f, p->x.label);
        fputs("</text>\n", f);
    }
    if (p->y.label) {
        double yx = cx + 16, yy = (fr.t + fr.b) / 2;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">", yx, yy,
                yx, yy);
        xml_text(f, p->y.label);
        fputs("</text>\n", f);
    }
    /* the series, clipped to the plot area (a little slack so markers on the edge show) */
    fprintf(f, "<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n",
            index, fr.l - 4, fr.t - 4, fr.r - fr.l + 8, fr.b - fr.t + 8);
    fprintf(f, "<g clip-path=\"url(#clip%d)\">\n", index);
    int drawn = 0;
    for (int s = 0; s < p->n_series; s++) {
        const svg_series *S = &p->series[s];
        const char *color = S->color ? S->color : svg_color(s);
        if (S->line) {
            fprintf(f, "<polyline");
            if (S->cls) {
                fputs(" class=\"", f);
                xml_text(f, S->cls);
                fputs("\"", f);
            }
            fprintf(f, " fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" stroke-linejoin=\"round\"", color);
            if (S->dash) fprintf(f, " stroke-dasharray=\"%s\"", S->dash);
            fputs(" points=\"", f);
            int first = 1;
            for (int i = 0; i < S->n; i++) {
                if (!drawable(S->x[i], fr.xlog) || !drawable(S->y[i], fr.ylog)) continue;
                fprintf(f, "%s%.1f,%.1f", first ? "" : " ", clampc(map_x(&fr, S->x[i])), clampc(map_y(&fr, S->y[i])));
                first = 0;
                drawn++;
            }
            fputs("\">", f);
            if (S->label) {
                fputs("<title>", f);
                xml_text(f, S->label);
                fputs("</title>", f);
            }
            fputs("</polyline>\n", f);
        }
        if (S->markers) {
            fputs("<g", f);
            if (S->cls) {
                fputs(" class=\"", f);
                xml_text(f, S->cls);
                fputs("-points\"", f);
            }
            fprintf(f, " fill=\"%s\">\n", color);
            for (int i = 0; i < S->n; i++) {
                if (!drawable(S->x[i], fr.xlog) || !drawable(S->y[i], fr.ylog)) continue;
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\"/>\n", clampc(map_x(&fr, S->x[i])),
                        clampc(map_y(&fr, S->y[i])));
                drawn++;
            }
            fputs("</g>\n", f);
        }
    }
    fputs("</g>\n", f);
    for (int s = 0; s < p->n_series; s++) { /* point labels outside the clip: they may overhang */
        const svg_series *S = &p->series[s];
        const char *color = S->color ? S->color : svg_color(s);
        if (S->point_labels) {
            fprintf(f, "<g font-size=\"10\" fill=\"%s\">\n", color);
            for (int i = 0; i < S->n; i++) {
                if (!S->point_labels[i] || !drawable(S->x[i], fr.xlog) || !drawable(S->y[i], fr.ylog)) continue;
                double x = clampc(map_x(&fr, S->x[i])), y = clampc(map_y(&fr, S->y[i]));
                int left = x > fr.r - 40; /* near the right edge: the label goes to the left of the point */
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\"%s>", left ? x - 5 : x + 5, y - 5,
                        left ? " text-anchor=\"end\"" : "");
                xml_text(f, S->point_labels[i]);
                fputs("</text>\n", f);
            }
            fputs("</g>\n", f);
        }
    }
    if (!drawn && p->empty_note) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#777\">", (fr.l + fr.r) / 2,
                (fr.t + fr.b) / 2);
        xml_text(f, p->empty_note);
        fputs("</text>\n", f);
    }
    /* legend */
    if (n_legend) {
        double lx = fr.r + 12, ly = fr.t + 8;
        int rows = (int)((fr.b - fr.t) / LEGEND_ROW), row = 0;
        if (rows < 1) rows = 1;
        for (int e = 0; e < p->n_series + p->n_keys; e++) {
            const char *label, *color, *dash;
            int line, markers;
            if (e < p->n_series) {
                const svg_series *S = &p->series[e];
                if (!S->label) continue;
                label = S->label;
                color = S->color ? S->color : svg_color(e);
                dash = S->dash;
                line = S->line;
                markers = S->markers;
            } else {
                const svg_key *k = &p->keys[e - p->n_series];
                label = k->label;
                color = k->color ? k->color : "#333";
                dash = k->dash;
                line = 1;
                markers = k->markers;
            }
            if (row == rows - 1 && row + 1 < n_legend) {
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">... %d more</text>\n", lx, ly + 4,
                        n_legend - row);
                break;
            }
            write_legend_sample(f, lx, ly, color, dash, line, markers);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", lx + 30, ly + 4);
            xml_text_cut(f, label, LEGEND_CHARS);
            fputs("</text>\n", f);
            ly += LEGEND_ROW;
            row++;
        }
    }
    fputs("</g>\n", f);
}

int svg_write(FILE *f, const svg_figure *fig) {
    int cols = fig->cols > 0 ? fig->cols : 1;
    int n = fig->n_panels > 0 ? fig->n_panels : 1;
    int rows = (n + cols - 1) / cols;
    double top = fig->title ? 30 : 0;
    double W = (double)fig->panel_w * (n < cols ? n : cols), H = top + (double)fig->panel_h * rows;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n",
            W, H, W, H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, H);
    if (fig->title) {
        fprintf(f, "<text x=\"%.1f\" y=\"21\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">", W / 2);
        xml_text(f, fig->title);
        fputs("</text>\n", f);
    }
    for (int i = 0; i < fig->n_panels; i++)
        write_panel(f, &fig->panels[i], i, (double)(i % cols) * fig->panel_w, top + (double)(i / cols) * fig->panel_h,
                    fig->panel_w, fig->panel_h);
    fputs("</svg>\n", f);
    return ferror(f) ? -1 : 0;
}

int svg_write_file(const char *path, const svg_figure *fig, char *err, size_t errlen) {
    atomic_file af;
    if (atomic_open(&af, path, err, errlen)) return -1;
    if (svg_write(af.f, fig)) {
        atomic_abort(&af);
        snprintf(err, errlen, "%s: write error", path);
        return -1;
    }
    return atomic_commit(&af, err, errlen);
}
