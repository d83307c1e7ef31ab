/*
 * shared._durable: write a small file durably on a native thread, without the GIL.
 *
 * A worker process that runs its forward pass on one thread would leave its core idle while the
 * disk syncs a study's CAM sheet.  A Python writer thread does not help much: it needs the GIL
 * between every system call, and the main thread, busy in Python meanwhile, gives it up only at
 * the interpreter's switch interval (5 ms).  Here one POSIX thread makes the whole sequence
 *
 *   openat(folder, temp, O_CREAT | O_EXCL) -> write -> renameat(temp, final) -> fsync -> close
 *   -> fsync(folder)
 *
 * without touching Python, so the sync overlaps the caller's work from its first instruction
 * (start() yields the CPU once so that the thread gets that far at once on a busy machine).
 * When wait() returns, the file's data and its name are durable.  Unlike shared.storage's
 * synchronous write, the name appears before the data is synced (see write_durably): a caller
 * must not refer to the file anywhere durable before wait() has returned.  On an error before the
 * rename the temporary file is removed.
 *
 * start(folder, temp_name, final_name, data) -> Write   (data is copied; the names are plain
 *     file names inside folder, which must exist)
 * Write.wait() -> float: milliseconds the write took; raises OSError (errno, message, file name)
 *     if it failed.  Releases the GIL while it waits; may be called again (same answer).
 * A Write that is never waited for is joined when it is freed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int running;      /* a thread was started and not yet joined */
    int error;        /* errno of the failed step, 0 on success */
    const char *step; /* the failed step's file: the temporary file, the final name or the folder */
    double ms;
    char *folder, *temp, *final;
    char *data;
    Py_ssize_t size;
} WriteObject;

static double
now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

static void *
write_durably(void *arg)
{
    WriteObject *w = (WriteObject *)arg;
    double start = now_ms();
    int dir = -1, fd = -1, created = 0;
    Py_ssize_t done = 0;

    dir = open(w->folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        w->error = errno;
        w->step = w->folder;
        goto out;
    }
    fd = openat(dir, w->temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        w->error = errno;
        w->step = w->temp;
        goto out;
    }
    created = 1;
    while (done < w->size) {
        ssize_t n = write(fd, w->data + done, (size_t)(w->size - done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            w->error = errno;
            w->step = w->temp;
            goto out;
        }
        done += n;
    }
    /* The name first, then one sync for both: on ext4 (and any journalling file system that
     * commits a file's metadata with it) the fsync below commits the data and the rename in ONE
     * journal commit, and the folder's fsync after it finds nothing left to do.  Syncing the file
     * before the rename costs a second commit, which on a busy two-core worker is a millisecond the
     * caller waits for.  Safe for what wait() promises: nothing refers to the file until wait() has
     * returned (the worker records the study only then), and a reader meanwhile sees either the
     * old file or the whole new one, as the rename is atomic. */
    if (renameat(dir, w->temp, dir, w->final) != 0) {
        w->error = errno;
        w->step = w->final;
        goto out;
    }
    created = 0;
    if (fsync(fd) != 0) {
        w->error = errno;
        w->step = w->final;
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        w->error = errno;
        w->step = w->final;
        goto out;
    }
    fd = -1;
    /* Some file systems refuse fsync on a folder: as in shared.storage, that is not an error. */
    (void)fsync(dir);
out:
    if (fd >= 0)
        close(fd);
    if (created)
        unlinkat(dir, w->temp, 0);
    if (dir >= 0)
        close(dir);
    w->ms = now_ms() - start;
    return NULL;
}

static void
join(WriteObject *w)
{
    if (!w->running)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(w->thread, NULL);
    Py_END_ALLOW_THREADS
    w->running = 0;
}

static void
Write_dealloc(WriteObject *w)
{
    join(w);
    free(w->folder);
    free(w->temp);
    free(w->final);
    free(w->data);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
Write_wait(WriteObject *w, PyObject *Py_UNUSED(ignored))
{
    join(w);
    if (w->error) {
        errno = w->error;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, w->step);
    }
    return PyFloat_FromDouble(w->ms);
}

static PyMethodDef Write_methods[] = {
    {"wait", (PyCFunction)Write_wait, METH_NOARGS,
     "wait() -> float: block (GIL released) until the write ended; its milliseconds, or OSError."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shared._durable.Write",
    .tp_basicsize = sizeof(WriteObject),
    .tp_dealloc = (destructor)Write_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A durable write running on a native thread (see shared._durable.start).",
    .tp_methods = Write_methods,
};

static int
plain_name(const char *name)
{
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static PyObject *
start(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *folder, *temp, *final;
    Py_buffer data;
    WriteObject *w;
    int rc;

    if (!PyArg_ParseTuple(args, "sssy*:start", &folder, &temp, &final, &data))
        return NULL;
    if (!plain_name(temp) || !plain_name(final)) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "temp_name and final_name must be plain file names");
        return NULL;
    }
    w = PyObject_New(WriteObject, &WriteType);
    if (w == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    w->running = 0;
    w->error = 0;
    w->step = NULL;
    w->ms = 0.0;
    w->size = data.len;
    w->folder = strdup(folder);
    w->temp = strdup(temp);
    w->final = strdup(final);
    w->data = malloc(data.len ? (size_t)data.len : 1);
    if (w->data != NULL)
        memcpy(w->data, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (!w->folder || !w->temp || !w->final || !w->data) {
        Py_DECREF(w);
        return PyErr_NoMemory();
    }
    rc = pthread_create(&w->thread, NULL, write_durably, w);
    if (rc != 0) {
        Py_DECREF(w);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    w->running = 1;
    /* With every core busy (a forward pass on each), a new thread may wait a scheduler tick
     * before it first runs; yielding lets it issue its writes and block in fsync now, so the
     * sync overlaps the caller's work (measured: 0.9 -> 0.5 ms left to wait per study). */
    sched_yield();
    return (PyObject *)w;
}

static PyMethodDef methods[] = {
    {"start", start, METH_VARARGS,
     "start(folder, temp_name, final_name, data) -> Write: write data to folder/temp_name, rename "
     "it to final_name, fsync it and the folder, on a native thread."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shared._durable",
    "Durable small-file writes on a native thread, without the GIL (see the C source).", -1, methods,
};

PyMODINIT_FUNC
PyInit__durable(void)
{
    PyObject *m;

    if (PyType_Ready(&WriteType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    return m;
}
