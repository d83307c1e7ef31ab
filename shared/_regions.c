/*
 * shared._regions: the largest 4-connected region of each map in a stack, in C.
 *
 * shared.gradcam.boxes_from_cams thresholds a study's 14 upsampled CAMs (14 x 56 x 56 at 224) and
 * needs, per map, the bounding box of its largest connected region.  scipy's label + bincount +
 * find_objects do that in about 0.4 ms, mostly in general-purpose passes over the whole stack;
 * this is one flood fill per region, about 20 us.
 *
 * largest(above, count, height, width, out)
 *   above: bytes-like, count * height * width bytes, nonzero = above the threshold
 *   out:   writable int32 buffer, count * 4 values: per map row_start, row_stop, col_start,
 *          col_stop (stops exclusive) of its largest region, or -1 four times for none.
 * Regions connect along rows and columns within one map.  Of several equally large regions the
 * one whose first pixel comes first in row-major order wins (as with scipy's label numbering).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *
largest(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer above, out;
    Py_ssize_t count, height, width, plane;
    uint8_t *seen = NULL;
    int32_t *stack = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*nnnw*:largest", &above, &count, &height, &width, &out))
        return NULL;
    if (count < 0 || height < 1 || width < 1 || height > INT32_MAX / width ||
        above.len != count * height * width || out.len != count * 4 * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "largest: buffer sizes do not match count, height and width");
        goto done;
    }
    plane = height * width;
    seen = malloc((size_t)plane);
    stack = malloc((size_t)plane * sizeof(int32_t));
    if (seen == NULL || stack == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < count; k++) {
        const uint8_t *map = (const uint8_t *)above.buf + k * plane;
        int32_t *box = (int32_t *)out.buf + k * 4;
        Py_ssize_t best = 0;

        box[0] = box[1] = box[2] = box[3] = -1;
        memset(seen, 0, (size_t)plane);
        for (Py_ssize_t start = 0; start < plane; start++) {
            Py_ssize_t size = 0, top = 0;
            int32_t r0, r1, c0, c1;

            if (!map[start] || seen[start])
                continue;
            r0 = r1 = (int32_t)(start / width);
            c0 = c1 = (int32_t)(start % width);
            seen[start] = 1;
            stack[top++] = (int32_t)start;
            while (top) {
                int32_t at = stack[--top];
                int32_t r = at / (int32_t)width, c = at % (int32_t)width;

                size++;
                if (r < r0) r0 = r;
                if (r > r1) r1 = r;
                if (c < c0) c0 = c;
                if (c > c1) c1 = c;
                if (c > 0 && map[at - 1] && !seen[at - 1]) {
                    seen[at - 1] = 1;
                    stack[top++] = at - 1;
                }
                if (c + 1 < width && map[at + 1] && !seen[at + 1]) {
                    seen[at + 1] = 1;
                    stack[top++] = at + 1;
                }
                if (r > 0 && map[at - width] && !seen[at - width]) {
                    seen[at - width] = 1;
                    stack[top++] = at - (int32_t)width;
                }
                if (r + 1 < height && map[at + width] && !seen[at + width]) {
                    seen[at + width] = 1;
                    stack[top++] = at + (int32_t)width;
                }
            }
            if (size > best) {  /* strictly larger: the first of equals stays */
                best = size;
                box[0] = r0;
                box[1] = r1 + 1;
                box[2] = c0;
                box[3] = c1 + 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(seen);
    free(stack);
    PyBuffer_Release(&above);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"largest", largest, METH_VARARGS,
     "largest(above, count, height, width, out): per map, the bounding box of its largest "
     "4-connected region (row_start, row_stop, col_start, col_stop; -1s for none) into out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shared._regions",
    "The largest connected region of each map in a stack (see the C source).", -1, methods,
};

PyMODINIT_FUNC
PyInit__regions(void)
{
    return PyModule_Create(&module);
}
