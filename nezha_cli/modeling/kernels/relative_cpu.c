/* CPU kernels for the relative attention's two memory-bound steps (see relative_kernels.py, which compiles this
 * file once per machine and calls it through ctypes).
 *
 * With K the clipping distance, key j of query i falls in bucket p = clip(j - i, -K, K) + K. Along a row both
 * steps are a shifted copy of the band |j - i| < K plus the two clipped ends, so each row is one memcpy and two
 * short loops instead of an indexed gather (which also reads an int64 index per element) and several masked
 * passes. Rows are shared out with OpenMP: linked against libgomp, the library joins the thread pool that PyTorch's
 * own CPU ops use (the loader checks that only one libgomp is mapped), and follows torch.set_num_threads.
 */
#include <stdint.h>
#include <string.h>

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as PyTorch's float -> bfloat16 conversion; NaN stays a (quiet) NaN. */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Sixteen running sums: lets the compiler vectorize a float reduction without reassociating it at will. */
#define DEFINE_SUM(NAME, T, LOAD)                                        \
    static inline float NAME(const T *x, int64_t n) {                   \
        float acc[16] = {0};                                             \
        int64_t j = 0;                                                   \
        for (; j + 16 <= n; j += 16)                                     \
            for (int c = 0; c < 16; c++) acc[c] += LOAD(x[j + c]);       \
        float s = 0.f;                                                   \
        for (; j < n; j++) s += LOAD(x[j]);                              \
        for (int c = 0; c < 16; c++) s += acc[c];                        \
        return s;                                                        \
    }
#define AS_FLOAT(v) ((float)(v))
DEFINE_SUM(sum_f32, float, AS_FLOAT)
DEFINE_SUM(sum_bf16, uint16_t, bf16_to_float)

/* out[n, i, j] = y[n, i, clip(j - i, -K, K) + K] for n = b * heads + h, where row i of (b, h) starts at
 * y + b * stride_b + h * stride_h + i * stride_l (strides in elements; a row's W >= 2K + 1 entries contiguous).
 * out is a contiguous [batch * heads, length, length]. Only bits move, so one kernel per element size. */
#define DEFINE_EXPAND(NAME, T)                                                                                    \
    void NAME(const T *y, T *out, int64_t batch, int64_t heads, int64_t length, int64_t k, int64_t stride_b,    \
              int64_t stride_h, int64_t stride_l) {                                                               \
        int64_t rows = batch * heads * length;                                                                   \
        _Pragma("omp parallel for schedule(static) if (rows * length >= PARALLEL_MIN)")                        \
        for (int64_t r = 0; r < rows; r++) {                                                                     \
            int64_t i = r % length, n = r / length;                                                             \
            const T *src = y + (n / heads) * stride_b + (n % heads) * stride_h + i * stride_l;                  \
            T *dst = out + r * length;                                                                           \
            int64_t lo = i - k > 0 ? i - k : 0, hi = i + k < length - 1 ? i + k : length - 1;                   \
            T first = src[0], last = src[2 * k];                                                                 \
            for (int64_t j = 0; j < lo; j++) dst[j] = first;                                                     \
            memcpy(dst + lo, src + lo - i + k, (size_t)(hi + 1 - lo) * sizeof(T));                               \
            for (int64_t j = hi + 1; j < length; j++) dst[j] = last;                                             \
        }                                                                                                        \
    }
DEFINE_EXPAND(expand_buckets_2, uint16_t)
DEFINE_EXPAND(expand_buckets_4, uint32_t)

/* out[r, p] = sum of x[r, j] over the keys j of bucket p, for the rows r of a contiguous [rows, length] x whose
 * query is i = r % length; out is [rows, width] with zeros past 2K. The band (0 < p < 2K: one key each) is copied,
 * converted if the types differ; the clipped buckets are summed in fp32 and rounded once. */
#define DEFINE_SUMS(NAME, TIN, TOUT, SUM, CONVERT)                                                              \
    void NAME(const TIN *x, TOUT *out, int64_t rows, int64_t length, int64_t k, int64_t width) {               \
        _Pragma("omp parallel for schedule(static) if (rows * length >= PARALLEL_MIN)")                        \
        for (int64_t r = 0; r < rows; r++) {                                                                     \
            int64_t i = r % length;                                                                             \
            const TIN *src = x + r * length;                                                                     \
            TOUT *dst = out + r * width;                                                                         \
            int64_t lo = i - k + 1 > 0 ? i - k + 1 : 0, hi = i + k - 1 < length - 1 ? i + k - 1 : length - 1;   \
            int64_t first = lo - i + k, count = hi + 1 - lo; /* first >= 1 and first + count <= 2K */            \
            memset(dst, 0, (size_t)first * sizeof(TOUT));                                                        \
            if (sizeof(TIN) == sizeof(TOUT))                                                                     \
                memcpy(dst + first, src + lo, (size_t)count * sizeof(TOUT));                                     \
            else                                                                                                 \
                for (int64_t c = 0; c < count; c++) dst[first + c] = CONVERT(src[lo + c]);                       \
            memset(dst + first + count, 0, (size_t)(width - first - count) * sizeof(TOUT));                      \
            dst[0] = CONVERT(i - k >= 0 ? SUM(src, i - k + 1) : 0.f);                                            \
            dst[2 * k] = CONVERT(i + k < length ? SUM(src + i + k, length - i - k) : 0.f);                        \
        }                                                                                                        \
    }
#define SAME(v) (v)
DEFINE_SUMS(sum_buckets_f32, float, float, sum_f32, SAME)
DEFINE_SUMS(sum_buckets_f32_bf16, float, uint16_t, sum_f32, float_to_bf16)
DEFINE_SUMS(sum_buckets_bf16, uint16_t, uint16_t, sum_bf16, float_to_bf16)
