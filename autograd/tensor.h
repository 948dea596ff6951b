/* Tensors: contiguous row-major 2-D arrays [rows, cols].
 *
 * Activations, trainable parameters and gradients are f32. Frozen weights may keep the 16-bit
 * type of their file (f16 or bf16); only the matmul kernels read those, converting tile by tile.
 * A tensor never owns its memory: data comes from a model mapping, a flat parameter block or the
 * step arena, and the owner frees it. Views (a block of rows) are plain tensors with offset
 * pointers. */
#ifndef AG_TENSOR_H
#define AG_TENSOR_H
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef enum { AG_F32 = 0, AG_F16 = 1, AG_BF16 = 2 } ag_dtype;

typedef struct ag_tensor {
    void *data;        /* [rows, cols] in `dtype` */
    float *grad;       /* [rows, cols] f32, NULL until a gradient is needed */
    int rows, cols;
    ag_dtype dtype;
    int requires_grad; /* 1 when a gradient must flow into this tensor */
    int grad_pooled;   /* 1 when grad came from the tape's gradient pool (returned after use) */
} ag_tensor;

/* Always-on assertion for programmer errors: prints file:line and the message, then aborts. */
#define AG_ASSERT(cond, ...)                                                           \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: assertion failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                              \
            fprintf(stderr, "\n");                                                     \
            abort();                                                                   \
        }                                                                              \
    } while (0)

static inline size_t ag_numel(const ag_tensor *t) { return (size_t)t->rows * (size_t)t->cols; }

static inline size_t ag_dtype_size(ag_dtype d) { return d == AG_F32 ? 4 : 2; }

static inline float *ag_f32(const ag_tensor *t) {
    AG_ASSERT(t->dtype == AG_F32, "tensor [%d,%d] is 16-bit where f32 is required", t->rows, t->cols);
    return (float *)t->data;
}

/* A tensor over existing memory. */
static inline ag_tensor ag_tensor_of(void *data, int rows, int cols, ag_dtype dtype) {
    ag_tensor t = {data, NULL, rows, cols, dtype, 0, 0};
    return t;
}

/* Rows [r0, r0+n) of t, sharing data and gradient. */
static inline ag_tensor ag_rows(const ag_tensor *t, int r0, int n) {
    AG_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= t->rows, "rows [%d,%d) of [%d,%d]", r0, r0 + n, t->rows, t->cols);
    ag_tensor v = *t;
    v.data = (char *)t->data + (size_t)r0 * t->cols * ag_dtype_size(t->dtype);
    v.grad = t->grad ? t->grad + (size_t)r0 * t->cols : NULL;
    v.rows = n;
    return v;
}

/* 16-bit conversions (round to nearest even for f32 -> bf16). */
static inline float ag_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t ag_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
float ag_f16_to_f32(uint16_t h);
uint16_t ag_f32_to_f16(float f);
/* n values of src (in dtype) to f32. */
void ag_to_f32(float *dst, const void *src, ag_dtype dtype, size_t n);
#endif
