/* Pass 1 of the banded blur + downsample (paper Eq. 16; prefrestore/data/degrade/fast.py), read straight
 * from the uint8 image: output rows in blocks of `block` that share one band of `span` input rows, and
 * for output row i = k block + b (i < n) and rank term s,
 *
 *     y[s][i][j] = sum_t ops[k][s][b][t] * x[start[k] + t][j]        (t < span, j < cols)
 *
 * x is the uint8 image as rows of `cols` values (interleaved or channel-planar), ops the float32 band
 * weights (zero where a row's own band is narrower than the block's), y float32 [terms][n][cols].
 * Computing this from uint8 rows skips the float copy of the whole image that a BLAS product needs (a
 * 3 MB write and read back per 512^2 draw), one call does every row, and each input value converted to
 * float serves every (term, row) of its block held in registers (up to 8).
 *
 * AVX-512 only (Intel Skylake-X and later, AMD Zen 4 and later), chosen at run time: on other CPUs
 * band_rows_u8_supported() returns 0 and fast.py keeps its numpy/BLAS path. Each output element sums its
 * span terms in t order with one fused multiply-add each, as OpenBLAS's small-matrix kernel does.
 *
 * Loaded with ctypes (fast.py checks every shape, dtype and bound before the call); the Python module
 * below has no functions of its own, it only lets setuptools build and install this file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define MAX_TERMS 8 /* (term, row) pairs held in registers at once: 2 x 8 accumulators + 2 inputs of 32 zmm */

#if HAVE_X86
/* RS (term, row) pairs of one block: op[v] its band weights [span], out[v] its output row [cols]. 32 columns
 * at a time in 2 zmm per pair, then 16, then a scalar tail. */
#define ROWS_KERNEL(RS)                                                                                     \
    __attribute__((target("avx512f"))) static void rows_##RS(const uint8_t *base, int64_t cols,          \
                                                             const float *const *op, int64_t span,       \
                                                             float *const *out) {                        \
        int64_t j = 0;                                                                                   \
        for (; j + 32 <= cols; j += 32) {                                                                \
            __m512 a0[RS], a1[RS];                                                                       \
            for (int v = 0; v < RS; v++) {                                                               \
                a0[v] = _mm512_setzero_ps();                                                             \
                a1[v] = _mm512_setzero_ps();                                                             \
            }                                                                                            \
            const uint8_t *p = base + j;                                                                 \
            for (int64_t t = 0; t < span; t++, p += cols) {                                              \
                __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p))); \
                __m512 x1 =                                                                              \
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)))); \
                for (int v = 0; v < RS; v++) {                                                           \
                    __m512 c = _mm512_set1_ps(op[v][t]);                                                 \
                    a0[v] = _mm512_fmadd_ps(c, x0, a0[v]);                                               \
                    a1[v] = _mm512_fmadd_ps(c, x1, a1[v]);                                               \
                }                                                                                        \
            }                                                                                            \
            for (int v = 0; v < RS; v++) {                                                               \
                _mm512_storeu_ps(out[v] + j, a0[v]);                                                     \
                _mm512_storeu_ps(out[v] + j + 16, a1[v]);                                                \
            }                                                                                            \
        }                                                                                                \
        for (; j + 16 <= cols; j += 16) {                                                                \
            __m512 a0[RS];                                                                               \
            for (int v = 0; v < RS; v++) a0[v] = _mm512_setzero_ps();                                    \
            const uint8_t *p = base + j;                                                                 \
            for (int64_t t = 0; t < span; t++, p += cols) {                                              \
                __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p))); \
                for (int v = 0; v < RS; v++) a0[v] = _mm512_fmadd_ps(_mm512_set1_ps(op[v][t]), x0, a0[v]); \
            }                                                                                            \
            for (int v = 0; v < RS; v++) _mm512_storeu_ps(out[v] + j, a0[v]);                            \
        }                                                                                                \
        for (; j < cols; j++) {                                                                          \
            for (int v = 0; v < RS; v++) {                                                               \
                float acc = 0.0f;                                                                        \
                for (int64_t t = 0; t < span; t++) acc = __builtin_fmaf(op[v][t], (float)base[t * cols + j], acc); \
                out[v][j] = acc;                                                                         \
            }                                                                                            \
        }                                                                                                \
    }

ROWS_KERNEL(1)
ROWS_KERNEL(2)
ROWS_KERNEL(3)
ROWS_KERNEL(4)
ROWS_KERNEL(5)
ROWS_KERNEL(6)
ROWS_KERNEL(7)
ROWS_KERNEL(8)

typedef void (*rows_fn)(const uint8_t *, int64_t, const float *const *, int64_t, float *const *);
static const rows_fn ROWS[MAX_TERMS + 1] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};
#endif

/* The argument list of band_rows_u8, numbered: fast.py (KERNEL_ABI) refuses a build of another number, so that
 * an editable install whose .so predates a change of this file falls back to numpy instead of crashing.
 * Bump it with every change of band_rows_u8's arguments. */
int band_rows_u8_abi(void) { return 1; }

/* 1 where this CPU runs band_rows_u8 (AVX-512F), else 0. */
int band_rows_u8_supported(void) {
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

/* y [terms][n][cols] from x [rows][cols], ops [blocks][terms][block][span], start [blocks] (see the top).
 * The caller guarantees the shapes, blocks * block >= n and 0 <= start[k] <= rows - span. Returns 0, or -1
 * where this CPU lacks AVX-512F. */
int band_rows_u8(const uint8_t *x, int64_t cols, const float *ops, const int64_t *start, int64_t blocks,
                 int64_t block, int64_t terms, int64_t span, float *y, int64_t n) {
#if HAVE_X86
    if (!band_rows_u8_supported()) return -1;
    int64_t fetched = 0; /* rows [.., fetched) of x were prefetched */
    for (int64_t k = 0; k < blocks; k++) {
        /* The kernel walks its band 32 columns at a time down `span` rows, a strided walk that the hardware
         * prefetchers do not follow from L3: the rows entering this block's and the next block's bands are
         * fetched here first, in order (the blur then ran 1.29-1.34x the BLAS path's speed, 1.14-1.19x without). */
        const int64_t want = start[k + 1 < blocks ? k + 1 : k] + span;
        if (fetched < start[k]) fetched = start[k];
        for (; fetched < want; fetched++)
            for (int64_t off = 0; off < cols; off += 64) _mm_prefetch((const char *)(x + fetched * cols + off), _MM_HINT_T1);
        const uint8_t *base = x + start[k] * cols;
        const float *op[MAX_TERMS];
        float *out[MAX_TERMS];
        int held = 0;
        for (int64_t s = 0; s < terms; s++) {
            for (int64_t b = 0; b < block && k * block + b < n; b++) {
                op[held] = ops + ((k * terms + s) * block + b) * span;
                out[held] = y + (s * n + k * block + b) * cols;
                if (++held == MAX_TERMS) {
                    ROWS[held](base, cols, op, span, out);
                    held = 0;
                }
            }
        }
        if (held) ROWS[held](base, cols, op, span, out);
    }
    return 0;
#else
    (void)x; (void)cols; (void)ops; (void)start; (void)blocks; (void)block; (void)terms; (void)span; (void)y; (void)n;
    return -1;
#endif
}

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled pass 1 of the banded blur + downsample (ctypes entry points band_rows_u8, band_rows_u8_supported).",
    -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
