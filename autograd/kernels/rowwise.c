/* Row-wise and elementwise kernels: embedding, RMSNorm, RoPE, SwiGLU, gather, cross-entropy.
 * Threaded over rows with OpenMP where rows are independent; scatters (embedding/gather
 * backward) stay sequential so repeated indices accumulate deterministically.
 * Accumulations that decide a row's scale (RMSNorm mean, softmax sums) are done in double;
 * exponentials go through the vectorised exp of vexp.h. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/kernels/vexp.h"

#define PAR_ROWS(T, C) if ((size_t)(T) * (size_t)(C) > 32768)

void kn_embedding_forward(float *out, const void *table, ag_dtype dtype, const int *ids, int T, int C) {
    size_t es = ag_dtype_size(dtype);
    #pragma omp parallel for schedule(static) PAR_ROWS(T, C)
    for (int t = 0; t < T; t++)
        ag_to_f32(out + (size_t)t * C, (const char *)table + (size_t)ids[t] * C * es, dtype, (size_t)C);
}

void kn_embedding_backward(float *dtable, const float *dout, const int *ids, int T, int C) {
    for (int t = 0; t < T; t++) {
        float *d = dtable + (size_t)ids[t] * C;
        const float *g = dout + (size_t)t * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

void kn_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C, float eps) {
    #pragma omp parallel for schedule(static) PAR_ROWS(T, C)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = y + (size_t)t * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        if (rstd) rstd[t] = r;
        for (int c = 0; c < C; c++) yr[c] = xr[c] * r * w[c];
    }
}

void kn_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int T, int C) {
    if (dx) {
        #pragma omp parallel for schedule(static) PAR_ROWS(T, C)
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * C, *gr = dout + (size_t)t * C;
            float *dxr = dx + (size_t)t * C;
            float r = rstd[t];
            double dot = 0; /* sum_c dy*w*x */
            for (int c = 0; c < C; c++) dot += (double)gr[c] * w[c] * xr[c];
            float k = (float)(dot / C) * r * r * r;
            for (int c = 0; c < C; c++) dxr[c] += gr[c] * w[c] * r - xr[c] * k;
        }
    }
    if (dw) {
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * C, *gr = dout + (size_t)t * C;
            float r = rstd[t];
            for (int c = 0; c < C; c++) dw[c] += gr[c] * xr[c] * r;
        }
    }
}

void kn_rope(float *y, const float *x, const int *pos, int T, int NH, int D, float theta, int inverse) {
    int W = NH * D;
    #pragma omp parallel for schedule(static) PAR_ROWS(T, W)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * W;
        float *yr = y + (size_t)t * W;
        for (int i = 0; i < D / 2; i++) {
            double ang = (double)pos[t] * pow((double)theta, -2.0 * i / D);
            float c = (float)cos(ang), s = (float)sin(ang);
            if (inverse) s = -s;
            for (int h = 0; h < NH; h++) {
                float a = xr[h * D + 2 * i], b = xr[h * D + 2 * i + 1];
                yr[h * D + 2 * i] = a * c - b * s;
                yr[h * D + 2 * i + 1] = a * s + b * c;
            }
        }
    }
}

/* sigmoid of n values of a into s (n <= SIG_BLOCK), through the vectorised exp */
#define SIG_BLOCK 256
static void sigmoid_block(float *s, const float *a, int n) {
    float neg[SIG_BLOCK];
    for (int i = 0; i < n; i++) neg[i] = -a[i];
    kn_exp_shift(s, neg, n, 0.0f);
    for (int i = 0; i < n; i++) s[i] = 1.0f / (1.0f + s[i]);
}

void kn_swiglu_forward(float *out, const float *a, const float *b, size_t n) {
    size_t nb = (n + SIG_BLOCK - 1) / SIG_BLOCK;
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t blk = 0; blk < nb; blk++) {
        size_t i0 = blk * SIG_BLOCK;
        int m = (int)(n - i0 < SIG_BLOCK ? n - i0 : SIG_BLOCK);
        float s[SIG_BLOCK];
        sigmoid_block(s, a + i0, m);
        for (int k = 0; k < m; k++) out[i0 + k] = a[i0 + k] * s[k] * b[i0 + k];
    }
}

void kn_swiglu_backward(float *da, float *db, const float *dout, const float *a, const float *b, size_t n) {
    size_t nb = (n + SIG_BLOCK - 1) / SIG_BLOCK;
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t blk = 0; blk < nb; blk++) {
        size_t i0 = blk * SIG_BLOCK;
        int m = (int)(n - i0 < SIG_BLOCK ? n - i0 : SIG_BLOCK);
        float s[SIG_BLOCK];
        sigmoid_block(s, a + i0, m);
        for (int k = 0; k < m; k++) {
            size_t i = i0 + k;
            if (da) da[i] += dout[i] * b[i] * s[k] * (1.0f + a[i] * (1.0f - s[k]));
            if (db) db[i] += dout[i] * a[i] * s[k];
        }
    }
}

void kn_gather_forward(float *out, const float *x, const int *idx, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * C, x + (size_t)idx[i] * C, (size_t)C * 4);
}

void kn_gather_backward(float *dx, const float *dout, const int *idx, int n, int C) {
    for (int i = 0; i < n; i++) {
        float *d = dx + (size_t)idx[i] * C;
        const float *g = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

float kn_cross_entropy_forward(float *lse, int *count, const float *logits, const int *targets, int N, int V) {
    double total = 0;
    int cnt = 0;
    #pragma omp parallel for schedule(static) reduction(+ : total, cnt) PAR_ROWS(N, V)
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * V;
        float mx = l[0];
        for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double ls = mx + log(kn_sum_exp_shift(l, V, mx));
        lse[i] = (float)ls;
        if (targets[i] > 0) {
            total += ls - l[targets[i]];
            cnt++;
        }
    }
    *count = cnt;
    return cnt ? (float)(total / cnt) : 0.0f;
}

void kn_cross_entropy_backward(float *dlogits, float scale, const float *logits, const float *lse,
                               const int *targets, int N, int V) {
    #pragma omp parallel for schedule(static) PAR_ROWS(N, V)
    for (int i = 0; i < N; i++) {
        if (targets[i] <= 0) continue;
        const float *l = logits + (size_t)i * V;
        float *d = dlogits + (size_t)i * V;
        for (int j0 = 0; j0 < V; j0 += 1024) { /* softmax through the vectorised exp, a block at a time */
            float p[1024];
            int m = V - j0 < 1024 ? V - j0 : 1024;
            kn_exp_shift(p, l + j0, m, lse[i]);
            for (int j = 0; j < m; j++) d[j0 + j] += scale * p[j];
        }
        d[targets[i]] -= scale;
    }
}
