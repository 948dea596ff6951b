/* Vectorised exp for the softmax, cross-entropy and SiLU kernels (internal to kernels/).
 * Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r, times 2^n;
 * about 1 ulp from libm's expf on [-87, 88]; below -87.3 the result is 0 (as expf's underflow).
 * 8 lanes with AVX2+FMA; the scalar tail and other CPUs use libm's expf.
 * Why: libm exp on every logit was a quarter of a small model's step (bench profile). */
#ifndef AG_KERNELS_VEXP_H
#define AG_KERNELS_VEXP_H
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KN_VEXP 1

static inline __m256 kn_exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
    return _mm256_andnot_ps(under, y);
}

/* 8 floats summed into a double (the row sums that scale a softmax stay exact enough). */
static inline double kn_hsum8_d(__m256 v) {
    __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}
#endif

/* y[i] = exp(x[i] - shift) for i < n; returns sum y[i] accumulated in double. In place allowed. */
static inline double kn_exp_shift(float *y, const float *x, int n, float shift) {
    int i = 0;
    double sum = 0;
#ifdef KN_VEXP
    __m256 s = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) {
        __m256 e = kn_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(y + i, e);
        sum += kn_hsum8_d(e);
    }
#endif
    for (; i < n; i++) {
        y[i] = expf(x[i] - shift);
        sum += y[i];
    }
    return sum;
}

/* sum of exp(x[i] - shift), in double, without storing. */
static inline double kn_sum_exp_shift(const float *x, int n, float shift) {
    int i = 0;
    double sum = 0;
#ifdef KN_VEXP
    __m256 s = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_add_ps(acc, kn_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
        if ((i & 1023) == 1016) { /* fold into double every 1024 values */
            sum += kn_hsum8_d(acc);
            acc = _mm256_setzero_ps();
        }
    }
    sum += kn_hsum8_d(acc);
#endif
    for (; i < n; i++) sum += expf(x[i] - shift);
    return sum;
}
#endif
