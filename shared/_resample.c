/*
 * shared._resample: the vertical pass of the model's resize, read straight from uint8 levels.
 *
 * shared.resize applies Pillow's bilinear weights as sparse products.  For an 8-bit X-ray the
 * first product, rows = weights (out x H, CSR) @ levels (H x W), would otherwise need the image
 * converted to a float32 copy first (4 MB for 1024 x 1024, more memory traffic than the product
 * itself, and slow while the other core's forward pass streams the model's weights through the
 * shared cache).  Here each output row accumulates its input rows' levels times their weights in
 * float32, the same sums in the same order as scipy's CSR product, with the GIL released.
 *
 * The horizontal pass, cols_f32, then takes those float rows to the output width: the same
 * products as scipy's `(weights @ rows.T).T`, without the two transposed copies (which cost more
 * than the arithmetic at these sizes).
 *
 * rows_u8(indptr, indices, weights, levels, out, height, width)
 *   indptr: int32 (n + 1), indices: int32 (nnz), weights: float32 (nnz): a CSR matrix n x height
 *   levels: uint8 buffer, height * width;  out: writable float32 buffer, n * width
 * cols_f32(indptr, indices, weights, rows, out, count, width)
 *   the CSR matrix is n x width; rows: float32 buffer, count * width; out: float32, count * n
 * Both raise ValueError on wrong sizes or an index outside the input.
 *
 * channels_f32(grey, out, count, white, scale, offset0, offset1, offset2): the model input from
 *   the resized grey, in one pass instead of numpy's three (clip, scale, subtract into 3 channels):
 *   out[3 i + c] = (min(max(grey[i], 0), white) * scale) - offset_c in float32, operation for
 *   operation what shared.classifier.preprocess's numpy fallback computes (this file is compiled
 *   with -ffp-contract=off, so no fused multiply-add changes a rounding).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* len == a * b * c, with no product wrapping around: a huge size must not match a small buffer. */
static int
sizes_match(Py_ssize_t len, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c)
{
    Py_ssize_t ab, abc;

    return a >= 0 && b >= 0 && c >= 0 && !__builtin_mul_overflow(a, b, &ab) && !__builtin_mul_overflow(ab, c, &abc)
           && abc == len;
}

/* Check a CSR matrix (n rows over `columns` inputs) against its buffers; set ValueError if not. */
static int
csr_ok(const Py_buffer *indptr, const Py_buffer *indices, const Py_buffer *weights, Py_ssize_t columns,
       Py_ssize_t *n_out)
{
    Py_ssize_t n = indptr->len / (Py_ssize_t)sizeof(int32_t) - 1;
    Py_ssize_t nnz = indices->len / (Py_ssize_t)sizeof(int32_t);
    const int32_t *ptr = (const int32_t *)indptr->buf;
    const int32_t *idx = (const int32_t *)indices->buf;

    if (n < 1 || weights->len != nnz * (Py_ssize_t)sizeof(float) || ptr[0] != 0 || ptr[n] != nnz) {
        PyErr_SetString(PyExc_ValueError, "the weight matrix's buffers do not match");
        return 0;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        if (ptr[r] > ptr[r + 1]) {
            PyErr_SetString(PyExc_ValueError, "indptr is not ascending");
            return 0;
        }
    }
    for (Py_ssize_t k = 0; k < nnz; k++) {
        if (idx[k] < 0 || idx[k] >= columns) {
            PyErr_SetString(PyExc_ValueError, "an index is outside the input");
            return 0;
        }
    }
    *n_out = n;
    return 1;
}

static PyObject *
rows_u8(PyObject *self, PyObject *args)
{
    Py_buffer indptr, indices, weights, levels, out;
    Py_ssize_t height, width, n;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*y*y*y*w*nn", &indptr, &indices, &weights, &levels, &out, &height,
                          &width))
        return NULL;
    const int32_t *ptr = (const int32_t *)indptr.buf;
    const int32_t *idx = (const int32_t *)indices.buf;
    const float *w = (const float *)weights.buf;
    const uint8_t *src = (const uint8_t *)levels.buf;
    float *dst = (float *)out.buf;

    if (!csr_ok(&indptr, &indices, &weights, height, &n))
        goto done;
    if (height < 1 || width < 1 || !sizes_match(levels.len, height, width, 1) ||
        !sizes_match(out.len, n, width, sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "rows_u8: buffer sizes do not match");
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) {
        float *row = dst + r * width;
        for (Py_ssize_t x = 0; x < width; x++)
            row[x] = 0.0f;
        for (int32_t k = ptr[r]; k < ptr[r + 1]; k++) {
            const uint8_t *in = src + (Py_ssize_t)idx[k] * width;
            const float weight = w[k];
            for (Py_ssize_t x = 0; x < width; x++)   /* vectorised by the compiler (-O3) */
                row[x] += weight * (float)in[x];
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);

done:
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&indices);
    PyBuffer_Release(&weights);
    PyBuffer_Release(&levels);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *
cols_f32(PyObject *self, PyObject *args)
{
    Py_buffer indptr, indices, weights, rows, out;
    Py_ssize_t count, width, n;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*y*y*y*w*nn", &indptr, &indices, &weights, &rows, &out, &count, &width))
        return NULL;
    const int32_t *ptr = (const int32_t *)indptr.buf;
    const int32_t *idx = (const int32_t *)indices.buf;
    const float *w = (const float *)weights.buf;
    const float *src = (const float *)rows.buf;
    float *dst = (float *)out.buf;

    if (!csr_ok(&indptr, &indices, &weights, width, &n))
        goto done;
    if (count < 1 || width < 1 || !sizes_match(rows.len, count, width, sizeof(float)) ||
        !sizes_match(out.len, count, n, sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "cols_f32: buffer sizes do not match");
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t y = 0; y < count; y++) {
        const float *in = src + y * width;
        float *row = dst + y * n;
        for (Py_ssize_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int32_t k = ptr[j]; k < ptr[j + 1]; k++)
                acc += w[k] * in[idx[k]];
            row[j] = acc;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);

done:
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&indices);
    PyBuffer_Release(&weights);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *
channels_f32(PyObject *self, PyObject *args)
{
    Py_buffer grey, out;
    Py_ssize_t count;
    float white, scale, offset[3];
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*w*nfffff", &grey, &out, &count, &white, &scale, &offset[0], &offset[1],
                          &offset[2]))
        return NULL;
    if (!sizes_match(grey.len, count, 1, sizeof(float)) || !sizes_match(out.len, 3, count, sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "channels_f32: buffer sizes do not match");
        goto done;
    }
    const float *src = (const float *)grey.buf;
    float *dst = (float *)out.buf;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        float v = src[i];
        v = v < 0.0f ? 0.0f : (v > white ? white : v);   /* NaN stays NaN, as with np.clip */
        v = v * scale;
        dst[3 * i] = v - offset[0];
        dst[3 * i + 1] = v - offset[1];
        dst[3 * i + 2] = v - offset[2];
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);

done:
    PyBuffer_Release(&grey);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"rows_u8", rows_u8, METH_VARARGS,
     "rows_u8(indptr, indices, weights, levels, out, height, width): out = CSR weights @ uint8 levels."},
    {"cols_f32", cols_f32, METH_VARARGS,
     "cols_f32(indptr, indices, weights, rows, out, count, width): out = rows @ CSR weights.T."},
    {"channels_f32", channels_f32, METH_VARARGS,
     "channels_f32(grey, out, count, white, scale, o0, o1, o2): out[i, c] = clip(grey[i], 0, white) * scale - o_c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shared._resample", "The resize passes on uint8 levels and float rows.", -1, methods,
};

PyMODINIT_FUNC
PyInit__resample(void)
{
    return PyModule_Create(&module);
}
