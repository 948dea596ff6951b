/* Packed causal attention with grouped-query heads and the gated adapter prefix
 * (DESIGN.md §1; shapes and letters in kernels.h).
 *
 * Forward, per (sequence, head): S = q k^T / sqrt(D) by sgemm, causal softmax row by row
 * (log-sum-exp kept), o = P v by sgemm; then the prefix: Sa = q ka^T / sqrt(D), its own softmax
 * over the K prompts, o += gval[h] * Pa va.
 * Backward recomputes P and Pa from the saved log-sum-exps instead of storing the [T, T] matrices
 * (a 7B layer would need T*T*H floats per sequence otherwise):
 *   dP = do v^T, dS = P .* (dP - rowsum(P .* dP)), dq += dS k / sqrt(D), dk += dS^T q / sqrt(D),
 *   dv += P^T do; prefix: dPa = do va^T, dgval[h] += sum(Pa .* dPa),
 *   dva += gval P_a^T do, dSa = gval Pa .* (dPa - rowsum(Pa .* dPa)), dq += dSa ka / sqrt(D),
 *   dka += dSa^T q / sqrt(D).
 * Parallel over (sequence, head) forward and (sequence, kv head) backward, so the rows each task
 * writes are its own; the prefix gradients (shared by every sequence) go to per-thread buffers
 * summed at the end in thread order (a static round-robin schedule, so sequences of unequal
 * lengths spread over the threads, and the same rounding on every run with the same thread
 * count, which bit-exact resume relies on). Does not handle padding (there is none) or dropout (the reference has none). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/kernels/vexp.h"

static int max_len(const int *off, int n) {
    int m = 0;
    for (int s = 0; s < n; s++) m = off[s + 1] - off[s] > m ? off[s + 1] - off[s] : m;
    return m;
}

size_t kn_attention_workspace(const kn_attn_shape *s, int max_threads) {
    size_t nq = (size_t)max_len(s->qo, s->n_seq), nk = (size_t)max_len(s->ko, s->n_seq);
    return (size_t)max_threads * (nq * nk + nq * (size_t)s->K + 16);
}

/* Row-wise softmax of S [n, ld] in place over the first vis(i) entries; zeros after them.
 * Returns log-sum-exp per row into lse (stride lstride) when lse != NULL. */
static void softmax_rows(float *S, int n, int ld, int cols, int shift, float *lse, int lstride) {
    for (int i = 0; i < n; i++) {
        float *r = S + (size_t)i * ld;
        int vis = shift < 0 ? cols : i + shift + 1; /* shift < 0: no mask (prefix) */
        if (vis > cols) vis = cols;
        float mx = r[0];
        for (int j = 1; j < vis; j++) mx = r[j] > mx ? r[j] : mx;
        double sum = kn_exp_shift(r, r, vis, mx);
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < vis; j++) r[j] *= inv;
        for (int j = vis; j < cols; j++) r[j] = 0.0f;
        if (lse) lse[(size_t)i * lstride] = mx + (float)log(sum);
    }
}

void kn_attention_forward(float *out, float *lse_tok, float *lse_ad, const float *q, const float *k,
                          const float *v, const float *ka, const float *va, const float *gval,
                          const kn_attn_shape *s, float *work) {
    const int H = s->H, G = s->G, D = s->D, K = s->K, rep = H / G;
    const int ldq = H * D, ldk = G * D;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t per_thread = (size_t)max_len(s->qo, s->n_seq) * max_len(s->ko, s->n_seq) +
                              (size_t)max_len(s->qo, s->n_seq) * K + 16;
    const int tasks = s->n_seq * H;
    AG_ASSERT(K == 0 || (ka && va && gval), "adapter prefix needs ka, va and gate values");
    #pragma omp parallel for schedule(static, 1) if (tasks > 1)
    for (int task = 0; task < tasks; task++) {
        int sq = task / H, h = task % H, g = h / rep;
        int q0 = s->qo[sq], nq = s->qo[sq + 1] - q0, k0 = s->ko[sq], nk = s->ko[sq + 1] - k0;
        if (nq == 0) continue;
        float *S = work + (size_t)omp_get_thread_num() * per_thread, *Sa = S + (size_t)nq * nk;
        const float *Qh = q + (size_t)q0 * ldq + h * D;
        float *Oh = out + (size_t)q0 * ldq + h * D;
        kn_sgemm(0, 1, nq, nk, D, scale, Qh, ldq, k + (size_t)k0 * ldk + g * D, ldk, 0.0f, S, nk);
        softmax_rows(S, nq, nk, nk, nk - nq, lse_tok ? lse_tok + (size_t)q0 * H + h : NULL, H);
        kn_sgemm(0, 0, nq, D, nk, 1.0f, S, nk, v + (size_t)k0 * ldk + g * D, ldk, 0.0f, Oh, ldq);
        if (K > 0) {
            kn_sgemm(0, 1, nq, K, D, scale, Qh, ldq, ka + g * D, ldk, 0.0f, Sa, K);
            softmax_rows(Sa, nq, K, K, -1, lse_ad ? lse_ad + (size_t)q0 * H + h : NULL, H);
            kn_sgemm(0, 0, nq, D, K, gval[h], Sa, K, va + g * D, ldk, 1.0f, Oh, ldq);
        }
    }
}

size_t kn_attention_backward_workspace(const kn_attn_shape *s, int max_threads) {
    size_t n = (size_t)max_len(s->qo, s->n_seq), K = (size_t)s->K;
    size_t per = 2 * n * n + 2 * n * K + 2 * K * (size_t)s->G * s->D + (size_t)s->H + 16;
    return (size_t)max_threads * per;
}

/* P[i][j] = exp(S[i][j] - lse[i]) for visible j (causal when causal=1), 0 elsewhere. */
static void recompute_probs(float *S, int n, int cols, const float *lse, int lstride, int causal) {
    for (int i = 0; i < n; i++) {
        float *r = S + (size_t)i * cols, l = lse[(size_t)i * lstride];
        int vis = causal ? i + 1 : cols;
        kn_exp_shift(r, r, vis, l);
        for (int j = vis; j < cols; j++) r[j] = 0.0f;
    }
}

/* dS = P .* (dP - rowsum(P .* dP)) * mult, in place into dP; returns sum(P .* dP) when wanted. */
static double softmax_backward(float *dP, const float *P, int n, int cols, float mult) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        float *d = dP + (size_t)i * cols;
        const float *p = P + (size_t)i * cols;
        double dot = 0;
        for (int j = 0; j < cols; j++) dot += (double)p[j] * d[j];
        total += dot;
        float fd = (float)dot;
        for (int j = 0; j < cols; j++) d[j] = mult * p[j] * (d[j] - fd);
    }
    return total;
}

void kn_attention_backward(float *dq, float *dk, float *dv, float *dka, float *dva, float *dgval,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *ka, const float *va, const float *gval, const float *lse_tok,
                           const float *lse_ad, const kn_attn_shape *s, float *work) {
    const int H = s->H, G = s->G, D = s->D, K = s->K, rep = H / G;
    const int ldq = H * D, ldk = G * D;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t n_max = (size_t)max_len(s->qo, s->n_seq);
    const size_t adsz = (size_t)K * G * D;
    const size_t per = 2 * n_max * n_max + 2 * n_max * K + 2 * adsz + (size_t)H + 16;
    const int tasks = s->n_seq * G;
    const int want_tok = dq || dk || dv, want_ad = K > 0 && (dq || dka || dva || dgval);
    for (int sq = 0; sq < s->n_seq; sq++)
        AG_ASSERT(s->qo[sq] == s->ko[sq], "attention backward needs equal query and key layouts");
    int nthreads = tasks > 1 ? omp_get_max_threads() : 1;
    /* per-thread prefix accumulators start at zero */
    for (int t = 0; t < nthreads; t++) {
        float *base = work + (size_t)t * per + 2 * n_max * n_max + 2 * n_max * K;
        memset(base, 0, (2 * adsz + H) * sizeof(float));
    }
    #pragma omp parallel for schedule(static, 1) if (tasks > 1)
    for (int task = 0; task < tasks; task++) {
        int sq = task / G, g = task % G;
        int o0 = s->qo[sq], n = s->qo[sq + 1] - o0;
        if (n == 0) continue;
        float *P = work + (size_t)omp_get_thread_num() * per;
        float *dP = P + n_max * n_max, *Pa = dP + n_max * n_max, *dPa = Pa + n_max * K;
        float *my_dka = dPa + n_max * K, *my_dva = my_dka + adsz, *my_dg = my_dva + adsz;
        const float *Kg = k + (size_t)o0 * ldk + g * D, *Vg = v + (size_t)o0 * ldk + g * D;
        for (int h = g * rep; h < (g + 1) * rep; h++) {
            const float *Qh = q + (size_t)o0 * ldq + h * D, *dOh = dout + (size_t)o0 * ldq + h * D;
            float *dQh = dq ? dq + (size_t)o0 * ldq + h * D : NULL;
            if (want_tok) {
                kn_sgemm(0, 1, n, n, D, scale, Qh, ldq, Kg, ldk, 0.0f, P, n);
                recompute_probs(P, n, n, lse_tok + (size_t)o0 * H + h, H, 1);
                kn_sgemm(0, 1, n, n, D, 1.0f, dOh, ldq, Vg, ldk, 0.0f, dP, n);
                if (dv) kn_sgemm(1, 0, n, D, n, 1.0f, P, n, dOh, ldq, 1.0f, dv + (size_t)o0 * ldk + g * D, ldk);
                if (dq || dk) {
                    softmax_backward(dP, P, n, n, 1.0f);
                    if (dQh) kn_sgemm(0, 0, n, D, n, scale, dP, n, Kg, ldk, 1.0f, dQh, ldq);
                    if (dk) kn_sgemm(1, 0, n, D, n, scale, dP, n, Qh, ldq, 1.0f, dk + (size_t)o0 * ldk + g * D, ldk);
                }
            }
            if (want_ad) {
                const float *kag = ka + g * D, *vag = va + g * D;
                kn_sgemm(0, 1, n, K, D, scale, Qh, ldq, kag, ldk, 0.0f, Pa, K);
                recompute_probs(Pa, n, K, lse_ad + (size_t)o0 * H + h, H, 0);
                kn_sgemm(0, 1, n, K, D, 1.0f, dOh, ldq, vag, ldk, 0.0f, dPa, K);
                if (dva) kn_sgemm(1, 0, K, D, n, gval[h], Pa, K, dOh, ldq, 1.0f, my_dva + g * D, ldk);
                double pdp = softmax_backward(dPa, Pa, n, K, gval[h]);
                my_dg[h] += (float)pdp;
                if (dQh) kn_sgemm(0, 0, n, D, K, scale, dPa, K, kag, ldk, 1.0f, dQh, ldq);
                if (dka) kn_sgemm(1, 0, K, D, n, scale, dPa, K, Qh, ldq, 1.0f, my_dka + g * D, ldk);
            }
        }
    }
    for (int t = 0; t < nthreads; t++) {
        const float *base = work + (size_t)t * per + 2 * n_max * n_max + 2 * n_max * K;
        if (dka) for (size_t i = 0; i < adsz; i++) dka[i] += base[i];
        if (dva) for (size_t i = 0; i < adsz; i++) dva[i] += base[adsz + i];
        if (dgval) for (int h = 0; h < H; h++) dgval[h] += base[2 * adsz + h];
    }
}
