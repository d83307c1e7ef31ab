/*
 * shared._png_unfilter: reverse PNG row filters (PNG spec section 9) in C.
 *
 * Pillow's unfilter is a generic per-byte loop with a branch per byte; chest X-ray PNGs are
 * mostly Paeth/Average rows, where that costs ~6 ms per 1024x1024 image.  This module does
 * the same arithmetic with the GIL released, a branchless Paeth predictor, the first `bpp`
 * bytes of each row (no left neighbour) handled outside the inner loops, and, for 8-bit
 * greyscale (bpp 1), rows decoded as a wavefront so that several rows' serial chains overlap:
 * 16 rows of any filter types in AVX2 lanes where the CPU has AVX2, else runs of up to 4 Paeth
 * rows in scalar registers.
 *
 * unfilter(raw, out, width, height, bpp, vector=True)
 *   raw: bytes-like, height * (1 + width * bpp) bytes (filter byte + row)
 *   out: writable buffer, height * width * bpp bytes
 *   vector: allow the AVX2 bands below for bpp 1 (False: the scalar loops only, for comparison)
 * VECTOR: True where this CPU runs the AVX2 bands.
 * Raises ValueError on wrong sizes or an unknown filter type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* sel_lt(x, y, v_if, v_else) = x < y ? v_if : v_else, without a branch.  GCC turns plain
 * ternaries in the Paeth predictor into jumps, which image data mispredicts, so on x86-64 the
 * select is a cmov in inline asm; elsewhere (or with -DPNG_UNFILTER_PORTABLE) a mask does it. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PNG_UNFILTER_PORTABLE)
static inline int
sel_lt(int x, int y, int v_if, int v_else)
{
    __asm__("cmpl %2, %1\n\tcmovl %3, %0" : "+r"(v_else) : "r"(x), "r"(y), "r"(v_if) : "cc");
    return v_else;
}
#else
static inline int
sel_lt(int x, int y, int v_if, int v_else)
{
    int m = -(x < y);
    return v_else ^ ((v_else ^ v_if) & m);
}
#endif

static inline int
iabs(int x)
{
    return x < 0 ? -x : x;   /* compiles to neg + cmov */
}

/* Paeth predictor (PNG spec 9.4), branchless.  Ties prefer a (left), then b (up), then
 * c (upper-left): b must beat a strictly, and c must beat the better of the two strictly. */
static inline int
paeth(int a, int b, int c)
{
    int p = b - c, q = a - c;
    int pa = iabs(p);         /* |(a + b - c) - a| */
    int pb = iabs(q);         /* |(a + b - c) - b| */
    int pc = iabs(p + q);     /* |(a + b - c) - c| */
    int best = sel_lt(pb, pa, b, a);
    int best_d = sel_lt(pb, pa, pb, pa);
    return sel_lt(pc, best_d, c, best);
}

/* Paeth, bpp 1, K consecutive rows at once.  Each byte depends on its left neighbour, so one
 * row is a serial chain of ~10 cycles per byte.  Row k only needs row k-1 up to column j, so
 * the K rows run as a wavefront (row k at column i - k): K independent chains per step, with
 * every value it needs already in a register.  Called with constant K, so it unrolls. */
#define MAX_WAVE 4

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE void
paeth_wave(const uint8_t *src, Py_ssize_t src_stride, uint8_t *dst, const uint8_t *prev0,
           Py_ssize_t n, const int K)
{
    const uint8_t *s[MAX_WAVE], *p[MAX_WAVE];
    uint8_t *d[MAX_WAVE];
    int a[MAX_WAVE], c[MAX_WAVE], nv[MAX_WAVE];
    Py_ssize_t i, j;
    int k;

    for (k = 0; k < K; k++) {
        s[k] = src + k * src_stride;
        d[k] = dst + k * n;
        p[k] = k ? d[k - 1] : prev0;
    }
    /* Column 0 has a = c = 0, where Paeth picks b. */
#define PAETH_AT(k, j) \
    (d[k][j] = (uint8_t)(s[k][j] + ((j) ? paeth(d[k][(j) - 1], p[k][j], p[k][(j) - 1]) : p[k][j])))
    if (n < K) {
        for (k = 0; k < K; k++)
            for (j = 0; j < n; j++)
                PAETH_AT(k, j);
        return;
    }
    /* Ramp up: steps 0..K-2 start the rows one by one. */
    for (i = 0; i < K - 1; i++)
        for (k = 0; k <= i; k++)
            PAETH_AT(k, i - k);
    /* Steady state, step i: row k does column j = i - k.  a[k] = d[k][j-1], c[k] = p[k][j-1],
     * and b for row k >= 1 is d[k-1][j], which is a[k-1] from the previous step. */
    for (k = 0; k < K; k++) {
        j = K - 1 - k;
        a[k] = j ? d[k][j - 1] : 0;
        c[k] = j ? p[k][j - 1] : 0;
    }
    for (i = K - 1; i < n; i++) {
        int b0 = prev0[i];
        nv[0] = (uint8_t)(s[0][i] + paeth(a[0], b0, c[0]));
        for (k = 1; k < K; k++)
            nv[k] = (uint8_t)(s[k][i - k] + paeth(a[k], a[k - 1], c[k]));
        for (k = 0; k < K; k++)
            d[k][i - k] = (uint8_t)nv[k];
        c[0] = b0;
        for (k = 1; k < K; k++)
            c[k] = a[k - 1];
        for (k = 0; k < K; k++)
            a[k] = nv[k];
    }
    /* Ramp down: finish the last columns of rows 1..K-1. */
    for (i = n; i < n + K - 1; i++)
        for (k = (int)(i - n) + 1; k < K; k++)
            PAETH_AT(k, i - k);
#undef PAETH_AT
}

/* ---------------------------------------------------------------------------------------------
 * bpp 1, 16 rows at once in AVX2 (x86-64 CPUs that have it; checked at run time).
 *
 * The scalar wavefront above keeps 4 rows' chains in flight; here a band of 16 consecutive rows
 * of ANY filter types runs as one wavefront in the 16 lanes of a 256-bit register (16-bit lanes):
 * at step i lane k computes row k's column j = i - k.  Its inputs are all in registers:
 *   a (left)       = lane k's own result of step i - 1
 *   b (up)         = lane k-1's result of step i - 1   (lane 0: the row above the band)
 *   c (upper-left) = lane k-1's result of step i - 2   = the previous step's b
 * so each step is: B = A shifted up one lane (+ prev[i] in lane 0), every lane's predictor
 * (None 0, Sub a, Up b, Average (a+b)/2, Paeth) selected by the lane's filter type, A = x + it.
 * The filtered bytes x a step needs (row k at column i - k) are read 16 steps at a time as 16
 * unaligned row segments and transposed (16 x 16 bytes); the results are transposed back and
 * stored the same way.  Rows are copied into zero-padded scratch rows first, so lanes before
 * their row's first column (j < 0) see a = b = c = x = 0 and produce 0 (every predictor of
 * zeros is 0), and lanes past the last column write only into the padding. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PNG_UNFILTER_PORTABLE)
#define HAVE_WAVE16 1
#include <immintrin.h>
#include <stdlib.h>

#define WAVE16_ROWS 16
#define WAVE16_PAD 16         /* scratch columns before column 0 (lane k starts at -k >= -15) */
#define WAVE16_MIN_WIDTH 64   /* narrower rows: the transposes cost more than they save */

/* r[j] byte k <- r[k] byte j, for 16 rows of 16 bytes (SSE2 unpacks, 4 stages). */
__attribute__((target("avx2"))) static inline void
transpose16(__m128i r[16])
{
    __m128i a[16], b[16], c[16];
    int m;

    for (m = 0; m < 8; m++) {
        a[2 * m] = _mm_unpacklo_epi8(r[2 * m], r[2 * m + 1]);
        a[2 * m + 1] = _mm_unpackhi_epi8(r[2 * m], r[2 * m + 1]);
    }
    for (m = 0; m < 4; m++) {   /* rows 4m..4m+3: columns 0-3, 4-7, 8-11, 12-15 */
        b[4 * m] = _mm_unpacklo_epi16(a[4 * m], a[4 * m + 2]);
        b[4 * m + 1] = _mm_unpackhi_epi16(a[4 * m], a[4 * m + 2]);
        b[4 * m + 2] = _mm_unpacklo_epi16(a[4 * m + 1], a[4 * m + 3]);
        b[4 * m + 3] = _mm_unpackhi_epi16(a[4 * m + 1], a[4 * m + 3]);
    }
    for (m = 0; m < 2; m++) {   /* rows 8m..8m+7: column pairs 0-1, 2-3, ..., 14-15 */
        int q;
        for (q = 0; q < 4; q++) {
            c[8 * m + 2 * q] = _mm_unpacklo_epi32(b[8 * m + q], b[8 * m + q + 4]);
            c[8 * m + 2 * q + 1] = _mm_unpackhi_epi32(b[8 * m + q], b[8 * m + q + 4]);
        }
    }
    for (m = 0; m < 8; m++) {
        r[2 * m] = _mm_unpacklo_epi64(c[m], c[m + 8]);
        r[2 * m + 1] = _mm_unpackhi_epi64(c[m], c[m + 8]);
    }
}

/* One band: `in` and `out` hold 16 scratch rows of `stride` bytes, column j of row k at
 * [k * stride + WAVE16_PAD + j]; `in` is zero outside columns 0..n-1.  `prev` is the row above
 * the band (zeros for the image's first row) at prev[WAVE16_PAD + j], zero for j >= n. */
__attribute__((target("avx2"))) static void
wave16(const uint8_t *in, uint8_t *out, Py_ssize_t stride, const uint8_t *prev, Py_ssize_t n,
       const uint8_t types[16])
{
    int16_t lane_type[WAVE16_ROWS];
    __m256i is_sub, is_up, is_avg, is_paeth;
    const __m256i low8 = _mm256_set1_epi16(0xFF);
    __m256i A = _mm256_setzero_si256(), C = _mm256_setzero_si256();
    Py_ssize_t i0;
    int k, t;

    for (k = 0; k < WAVE16_ROWS; k++)
        lane_type[k] = types[k];
    {
        const __m256i ty = _mm256_loadu_si256((const __m256i *)lane_type);
        is_sub = _mm256_cmpeq_epi16(ty, _mm256_set1_epi16(1));
        is_up = _mm256_cmpeq_epi16(ty, _mm256_set1_epi16(2));
        is_avg = _mm256_cmpeq_epi16(ty, _mm256_set1_epi16(3));
        is_paeth = _mm256_cmpeq_epi16(ty, _mm256_set1_epi16(4));
    }
    /* Lane 15 finishes column n - 1 at step n + 14. */
    for (i0 = 0; i0 <= n + WAVE16_ROWS - 2; i0 += 16) {
        __m128i x[16];
        for (k = 0; k < WAVE16_ROWS; k++)
            x[k] = _mm_loadu_si128((const __m128i *)(in + k * stride + WAVE16_PAD + i0 - k));
        transpose16(x);   /* x[t] lane k = row k, column i0 + t - k */
        for (t = 0; t < 16; t++) {
            const __m256i X = _mm256_cvtepu8_epi16(x[t]);
            const __m256i up0 = _mm256_inserti128_si256(_mm256_setzero_si256(),
                                                        _mm_cvtsi32_si128(prev[WAVE16_PAD + i0 + t]), 0);
            /* B = A one lane up (lane 0 gets 0, then the row above's byte). */
            const __m256i B = _mm256_or_si256(
                _mm256_alignr_epi8(A, _mm256_permute2x128_si256(A, A, 0x08), 14), up0);
            const __m256i p = _mm256_sub_epi16(B, C), q = _mm256_sub_epi16(A, C);
            const __m256i pa = _mm256_abs_epi16(p), pb = _mm256_abs_epi16(q);
            const __m256i pc = _mm256_abs_epi16(_mm256_add_epi16(p, q));
            /* Paeth: a unless b is strictly nearer; then c only if strictly nearer than both. */
            const __m256i best = _mm256_blendv_epi8(A, B, _mm256_cmpgt_epi16(pa, pb));
            const __m256i near = _mm256_cmpgt_epi16(_mm256_min_epi16(pa, pb), pc);
            const __m256i paeth_v = _mm256_blendv_epi8(best, C, near);
            const __m256i avg = _mm256_srli_epi16(_mm256_add_epi16(A, B), 1);
            const __m256i pred = _mm256_or_si256(
                _mm256_or_si256(_mm256_and_si256(is_paeth, paeth_v), _mm256_and_si256(is_avg, avg)),
                _mm256_or_si256(_mm256_and_si256(is_sub, A), _mm256_and_si256(is_up, B)));
            C = B;
            A = _mm256_and_si256(_mm256_add_epi16(X, pred), low8);
            x[t] = _mm_packus_epi16(_mm256_castsi256_si128(A), _mm256_extracti128_si256(A, 1));
        }
        transpose16(x);   /* x[k] = row k, columns i0 - k .. i0 - k + 15 */
        for (k = 0; k < WAVE16_ROWS; k++)
            _mm_storeu_si128((__m128i *)(out + k * stride + WAVE16_PAD + i0 - k), x[k]);
    }
}

/* Scratch for wave16: input and output bands and the row above, with their padding. */
typedef struct {
    uint8_t *in, *out, *prev;
    Py_ssize_t stride;
} Wave16Scratch;

static int
wave16_scratch_init(Wave16Scratch *w, Py_ssize_t n)
{
    /* Tiles read and write up to column n + 29 (step n + 14, 16 columns); round up generously. */
    w->stride = WAVE16_PAD + n + 64;
    w->in = calloc((size_t)(2 * WAVE16_ROWS + 1), (size_t)w->stride);
    if (w->in == NULL)
        return -1;
    w->out = w->in + WAVE16_ROWS * w->stride;
    w->prev = w->out + WAVE16_ROWS * w->stride;
    return 0;
}

/* Unfilter rows y..y+15 of a bpp-1 image through wave16 (filter types already checked). */
static void
wave16_band(const Wave16Scratch *w, const uint8_t *src, Py_ssize_t src_stride, uint8_t *dst,
            const uint8_t *prev, Py_ssize_t n)
{
    uint8_t types[WAVE16_ROWS];
    int k;

    for (k = 0; k < WAVE16_ROWS; k++) {
        types[k] = src[k * src_stride];
        memcpy(w->in + k * w->stride + WAVE16_PAD, src + k * src_stride + 1, (size_t)n);
    }
    if (prev != NULL)
        memcpy(w->prev + WAVE16_PAD, prev, (size_t)n);
    else
        memset(w->prev + WAVE16_PAD, 0, (size_t)n);
    wave16(w->in, w->out, w->stride, w->prev, n, types);
    for (k = 0; k < WAVE16_ROWS; k++)
        memcpy(dst + k * n, w->out + k * w->stride + WAVE16_PAD, (size_t)n);
}

static int
cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

/* Generic row unfilter for any bpp.  `prev` is the previous output row or
 * NULL for the first row (treated as zeros).  Returns 0, or -1 on a bad
 * filter type. */
static int
unfilter_row(int ftype, const uint8_t *src, uint8_t *dst, const uint8_t *prev,
             Py_ssize_t rowbytes, Py_ssize_t bpp)
{
    Py_ssize_t i;
    Py_ssize_t head = bpp < rowbytes ? bpp : rowbytes;

    switch (ftype) {
    case 0: /* None */
        memcpy(dst, src, (size_t)rowbytes);
        return 0;
    case 1: /* Sub */
        memcpy(dst, src, (size_t)head);
        for (i = head; i < rowbytes; i++)
            dst[i] = (uint8_t)(src[i] + dst[i - bpp]);
        return 0;
    case 2: /* Up */
        if (prev == NULL) {
            memcpy(dst, src, (size_t)rowbytes);
        }
        else {
            for (i = 0; i < rowbytes; i++)
                dst[i] = (uint8_t)(src[i] + prev[i]);
        }
        return 0;
    case 3: /* Average */
        if (prev == NULL) {
            memcpy(dst, src, (size_t)head);
            for (i = head; i < rowbytes; i++)
                dst[i] = (uint8_t)(src[i] + (dst[i - bpp] >> 1));
        }
        else {
            for (i = 0; i < head; i++)
                dst[i] = (uint8_t)(src[i] + (prev[i] >> 1));
            for (i = head; i < rowbytes; i++)
                dst[i] = (uint8_t)(src[i] + (((unsigned)dst[i - bpp] + prev[i]) >> 1));
        }
        return 0;
    case 4: /* Paeth */
        if (prev == NULL) {
            /* b = c = 0, so Paeth picks a: identical to Sub. */
            memcpy(dst, src, (size_t)head);
            for (i = head; i < rowbytes; i++)
                dst[i] = (uint8_t)(src[i] + dst[i - bpp]);
        }
        else {
            for (i = 0; i < head; i++)
                dst[i] = (uint8_t)(src[i] + prev[i]);
            for (i = head; i < rowbytes; i++)
                dst[i] = (uint8_t)(src[i] + paeth(dst[i - bpp], prev[i], prev[i - bpp]));
        }
        return 0;
    default:
        return -1;
    }
}

static int have_vector = 0;   /* set at import: the CPU runs wave16 */

#ifdef HAVE_WAVE16
/* True when the band's 16 rows all have filter types 0-4 (a bad one is left to the row-by-row
 * path, which reports it). */
static int
band_types_ok(const uint8_t *row, Py_ssize_t stride)
{
    int k;
    for (k = 0; k < WAVE16_ROWS; k++)
        if (row[k * stride] > 4)
            return 0;
    return 1;
}
#endif

/* Unfilter the whole image.  Returns -1, or the index of the first row with a bad filter
 * type (rows before it are already written).  Runs without the GIL.  `vector` allows wave16
 * for bpp 1 (where the CPU has it); rows it does not take go through the scalar paths. */
static Py_ssize_t
unfilter_image(const uint8_t *src, uint8_t *dst, Py_ssize_t rowbytes, Py_ssize_t height,
               Py_ssize_t bpp, int vector)
{
    const Py_ssize_t stride = rowbytes + 1;
    const uint8_t *prev = NULL;
    Py_ssize_t y = 0, bad_row = -1;
#ifdef HAVE_WAVE16
    Wave16Scratch wave = {NULL, NULL, NULL, 0};
    vector = vector && have_vector && bpp == 1 && rowbytes >= WAVE16_MIN_WIDTH && height >= WAVE16_ROWS
             && wave16_scratch_init(&wave, rowbytes) == 0;
#else
    (void)vector;
#endif

    while (y < height) {
        const uint8_t *row = src + y * stride;
        uint8_t *out = dst + y * rowbytes;
#ifdef HAVE_WAVE16
        if (vector && height - y >= WAVE16_ROWS && band_types_ok(row, stride)) {
            wave16_band(&wave, row, stride, out, prev, rowbytes);
            prev = out + (WAVE16_ROWS - 1) * rowbytes;
            y += WAVE16_ROWS;
            continue;
        }
#endif
        if (bpp == 1 && prev != NULL && row[0] == 4) {
            /* A run of Paeth rows: take up to MAX_WAVE of them as one wavefront. */
            int run = 1;
            while (run < MAX_WAVE && y + run < height && row[run * stride] == 4)
                run++;
            switch (run) {
            case 4: paeth_wave(row + 1, stride, out, prev, rowbytes, 4); break;
            case 3: paeth_wave(row + 1, stride, out, prev, rowbytes, 3); break;
            case 2: paeth_wave(row + 1, stride, out, prev, rowbytes, 2); break;
            default: paeth_wave(row + 1, stride, out, prev, rowbytes, 1); break;
            }
            prev = out + (run - 1) * rowbytes;
            y += run;
            continue;
        }
        if (unfilter_row(row[0], row + 1, out, prev, rowbytes, bpp) < 0) {
            bad_row = y;
            break;
        }
        prev = out;
        y++;
    }
#ifdef HAVE_WAVE16
    free(wave.in);
#endif
    return bad_row;
}

static PyObject *
png_unfilter(PyObject *self, PyObject *args)
{
    Py_buffer raw, out;
    Py_ssize_t width, height, bpp, rowbytes;
    int vector = 1;
    PyObject *result = NULL;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nnn|p:unfilter", &raw, &out, &width, &height, &bpp, &vector))
        return NULL;

    if (bpp < 1 || bpp > 8) {
        PyErr_Format(PyExc_ValueError, "bpp must be 1..8, got %zd", bpp);
        goto done;
    }
    if (width < 0 || height < 0 || (width > 0 && width > (PY_SSIZE_T_MAX / bpp) - 1)) {
        PyErr_SetString(PyExc_ValueError, "width and height must be non-negative and not overflow");
        goto done;
    }
    rowbytes = width * bpp;
    if (height > 0 && (rowbytes + 1) > PY_SSIZE_T_MAX / height) {
        PyErr_SetString(PyExc_ValueError, "image size overflows");
        goto done;
    }
    if (raw.len != height * (rowbytes + 1)) {
        PyErr_Format(PyExc_ValueError, "raw has %zd bytes, expected %zd", raw.len, height * (rowbytes + 1));
        goto done;
    }
    if (out.len != height * rowbytes) {
        PyErr_Format(PyExc_ValueError, "out has %zd bytes, expected %zd", out.len, height * rowbytes);
        goto done;
    }

    {
        const uint8_t *src = (const uint8_t *)raw.buf;
        uint8_t *dst = (uint8_t *)out.buf;
        Py_ssize_t bad_row;

        Py_BEGIN_ALLOW_THREADS
        bad_row = unfilter_image(src, dst, rowbytes, height, bpp, vector);
        Py_END_ALLOW_THREADS

        if (bad_row >= 0) {
            PyErr_Format(PyExc_ValueError, "bad PNG filter type %d on row %zd",
                         (int)src[bad_row * (rowbytes + 1)], bad_row);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);

done:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter", png_unfilter, METH_VARARGS,
     "unfilter(raw, out, width, height, bpp, vector=True, /)\n--\n\n"
     "Reverse PNG filters 0-4: raw holds height rows of (filter byte + width*bpp bytes);\n"
     "out (writable, height*width*bpp bytes) receives the pixels. Releases the GIL.\n"
     "vector=False keeps to the scalar loops (VECTOR says whether the CPU has the other)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "shared._png_unfilter",
    "Fast exact PNG unfiltering (filters 0-4) for shared.png_fast.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__png_unfilter(void)
{
    PyObject *module = PyModule_Create(&moduledef);

#ifdef HAVE_WAVE16
    have_vector = cpu_has_avx2();
#endif
    if (module != NULL && PyModule_AddObjectRef(module, "VECTOR", have_vector ? Py_True : Py_False) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
