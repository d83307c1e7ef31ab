/*
 * shared._png_unfilter: reverse PNG row filters (PNG spec section 9) in C.
 *
 * Pillow's unfilter is a generic per-byte loop with a branch per byte; chest X-ray PNGs are
 * mostly Paeth/Average rows, where that costs ~6 ms per 1024x1024 image.  This module does
 * the same arithmetic with the GIL released, a branchless Paeth predictor, the first `bpp`
 * bytes of each row (no left neighbour) handled outside the inner loops, and, for 8-bit
 * greyscale (bpp 1), runs of Paeth rows decoded as a wavefront so that several rows' serial
 * chains overlap.
 *
 * unfilter(raw, out, width, height, bpp)
 *   raw: bytes-like, height * (1 + width * bpp) bytes (filter byte + row)
 *   out: writable buffer, height * width * bpp bytes
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

/* Unfilter the whole image.  Returns -1, or the index of the first row with a bad filter
 * type (rows before it are already written).  Runs without the GIL. */
static Py_ssize_t
unfilter_image(const uint8_t *src, uint8_t *dst, Py_ssize_t rowbytes, Py_ssize_t height,
               Py_ssize_t bpp)
{
    const Py_ssize_t stride = rowbytes + 1;
    const uint8_t *prev = NULL;
    Py_ssize_t y = 0;

    while (y < height) {
        const uint8_t *row = src + y * stride;
        uint8_t *out = dst + y * rowbytes;
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
        if (unfilter_row(row[0], row + 1, out, prev, rowbytes, bpp) < 0)
            return y;
        prev = out;
        y++;
    }
    return -1;
}

static PyObject *
png_unfilter(PyObject *self, PyObject *args)
{
    Py_buffer raw, out;
    Py_ssize_t width, height, bpp, rowbytes;
    PyObject *result = NULL;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nnn:unfilter", &raw, &out, &width, &height, &bpp))
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
        bad_row = unfilter_image(src, dst, rowbytes, height, bpp);
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
     "unfilter(raw, out, width, height, bpp)\n--\n\n"
     "Reverse PNG filters 0-4: raw holds height rows of (filter byte + width*bpp bytes);\n"
     "out (writable, height*width*bpp bytes) receives the pixels. Releases the GIL."},
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
    return PyModule_Create(&moduledef);
}
