/* The structural check of the REST fast path, in C: is the one array in a JSON body regular, and of what shape?
 *
 * The body has already been parsed by simdjson; this only reads its '[', ']' and ',' bytes (the skeleton),
 * scanning 16 bytes at a time with SSE2. Every array at one depth must have the same number of elements, arrays
 * that hold arrays must hold nothing else, and the leaves must all sit at one depth. Commas outside the array
 * (between it and a "signature_name" member) are allowed; any other structural byte outside it, including a
 * bracket or comma inside a string, makes the answer "not proven regular" and the caller takes its exact path.
 * An empty array counts as one element here: the caller's leaf count (from simdjson) rejects that case.
 *
 * regular_shape_start runs the check on its own thread, so it overlaps simdjson's parse of the same body (which
 * holds the GIL); regular_shape_finish joins it. Built by server/native.py, loaded with ctypes.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64

struct walker {
    int depth, leaf_depth, done;
    int64_t commas[MAX_DEPTH + 1], children[MAX_DEPTH + 1], shape[MAX_DEPTH + 1];
};

/* One structural byte; 0 once the skeleton cannot be that of a regular array. */
static inline int step(struct walker *w, unsigned char c) {
    if (c == ',') {
        if (w->depth == 0)
            return 1;                                  /* between the array and another member */
        w->commas[w->depth]++;
        return 1;
    }
    if (c == '[') {
        if (w->done || w->depth == MAX_DEPTH)
            return 0;
        if (w->depth > 0)
            w->children[w->depth]++;
        w->depth++;
        w->commas[w->depth] = w->children[w->depth] = 0;
        return 1;
    }
    /* ']' */
    if (w->depth == 0)
        return 0;
    int d = w->depth;
    int64_t elements = w->commas[d] + 1;
    if (w->shape[d] < 0)
        w->shape[d] = elements;
    else if (w->shape[d] != elements)
        return 0;                                      /* ragged */
    if (w->children[d] == 0) {
        if (w->leaf_depth < 0)
            w->leaf_depth = d;
        else if (w->leaf_depth != d)
            return 0;                                  /* leaves at two depths */
    } else if (w->children[d] != elements) {
        return 0;                                      /* arrays mixed with leaves */
    }
    w->depth--;
    if (w->depth == 0)
        w->done = 1;
    return 1;
}

static inline int structural(unsigned char c) {
    return c == '[' || c == ']' || c == ',';
}

/* Writes the shape into dims (at most max_dims) and returns the rank, or -1 if not proven regular. */
int regular_shape(const unsigned char *body, size_t size, int64_t *dims, int max_dims) {
    struct walker w;
    w.depth = 0;
    w.leaf_depth = -1;
    w.done = 0;
    for (int d = 0; d <= MAX_DEPTH; d++)
        w.shape[d] = -1;
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i open = _mm_set1_epi8('['), close = _mm_set1_epi8(']'), comma = _mm_set1_epi8(',');
    for (; i + 16 <= size; i += 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(body + i));
        __m128i hits = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(chunk, open), _mm_cmpeq_epi8(chunk, close)),
                                    _mm_cmpeq_epi8(chunk, comma));
        unsigned mask = (unsigned)_mm_movemask_epi8(hits);
        while (mask) {
            if (!step(&w, body[i + (unsigned)__builtin_ctz(mask)]))
                return -1;
            mask &= mask - 1;
        }
    }
#endif
    for (; i < size; i++)
        if (structural(body[i]) && !step(&w, body[i]))
            return -1;
    if (!w.done || w.leaf_depth > max_dims)
        return -1;
    for (int d = 1; d <= w.leaf_depth; d++)
        dims[d - 1] = w.shape[d];
    return w.leaf_depth;
}

struct job {
    const unsigned char *body;
    size_t size;
    int64_t dims[MAX_DEPTH];
    int rank, threaded;
    pthread_t thread;
};

static void *run_job(void *arg) {
    struct job *job = arg;
    job->rank = regular_shape(job->body, job->size, job->dims, MAX_DEPTH);
    return NULL;
}

/* Start checking body (which must stay alive until regular_shape_finish); NULL only if out of memory. */
struct job *regular_shape_start(const unsigned char *body, size_t size) {
    struct job *job = malloc(sizeof *job);
    if (job == NULL)
        return NULL;
    job->body = body;
    job->size = size;
    job->threaded = pthread_create(&job->thread, NULL, run_job, job) == 0;
    if (!job->threaded)
        run_job(job);                                  /* no thread to be had: check here and now */
    return job;
}

/* Wait for the check, free it, and return what regular_shape would have (-1 for a NULL job). */
int regular_shape_finish(struct job *job, int64_t *dims, int max_dims) {
    if (job == NULL)
        return -1;
    if (job->threaded)
        pthread_join(job->thread, NULL);
    int rank = job->rank <= max_dims ? job->rank : -1;
    for (int d = 0; d < rank; d++)
        dims[d] = job->dims[d];
    free(job);
    return rank;
}
