/* The compute precision of a run (DESIGN.md §7): --precision auto|f32|bf16.
 *   f32:  every GEMM in f32 (OpenBLAS sgemm): the exact path of the reference comparisons.
 *   bf16: the linear layers' GEMMs with bf16 operands and f32 sums on the CPU's AVX512-BF16
 *         (kn_gemm_bf16); everything else (residual stream, norms, RoPE, softmax, attention,
 *         loss, adapter, AdamW) stays f32.
 *   auto: bf16 where the CPU has AVX512-BF16 (detected at run time), f32 elsewhere.
 * AMX tiles are detected and named but have no kernel yet: AMX machines run AVX512-BF16. */
#ifndef TRAINER_PRECISION_H
#define TRAINER_PRECISION_H
#include <stddef.h>

/* Resolves s into *bf16 (0/1) and a startup line in desc ("compute: ..."). 0, or -1 with err
 * (an unknown name, or bf16 asked for on a CPU without it). */
int precision_resolve(const char *s, int *bf16, char *desc, size_t descn, char *err, size_t errlen);
#endif
