/*
 * SkillRank's fused minibatch step: the math of skillrank/model.py kl_loss_and_grad followed
 * by plain SGD, in place on phi_t. Built and loaded by skillrank/kernel.py.
 *
 * phi_t is J x S float32, row-major (one row per job). A batch of B profiles comes in CSR form
 * (skillrank.model.Batch): job ids and weights, skill ids, and offsets per profile. `work` is
 * a B x stride float buffer (stride = S rounded up to LANES, 64-byte aligned) owned by the
 * caller, so that no batch-sized temporary is allocated per step.
 *
 * skr_sgd_step works in two passes; every gradient comes from phi_t before the step:
 *   1. per profile, in parallel: its logits (the weighted sum of its jobs' rows) into its row
 *      of `work`, a stable log-sum-exp (max subtracted), its KL, and in place the gradient of
 *      the mean loss with respect to its logits, (softmax - target) / B;
 *   2. per job of the batch, in parallel: phi_t[job] -= lr * (sum of w * gradient row over
 *      the (profile, w) pairs holding the job, in profile order).
 * Nothing is split by thread count: a profile's row of `work` (pass 1) and a job's row of
 * phi_t (pass 2) are each computed whole by one thread, through code that depends only on the
 * row (vectorised reductions included), and the per-profile losses are summed serially in
 * profile order. So phi_t and the loss come out bit-identical whatever the number of threads.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

/* Floats per 64-byte cache line (and AVX-512 register); `work`'s stride is a multiple of it. */
#define LANES 16
/* Columns per tile when a job's update sums several profiles: the running sum stays in L1. */
#define TILE 128
/* exp(x) for x below this is under float's normal range; it is taken as 0. */
#define EXP_FLOOR -87.0f

enum { SKR_OK = 0, SKR_EMPTY_BATCH, SKR_BAD_OFFSETS, SKR_JOB_RANGE, SKR_SKILL_RANGE, SKR_NO_MEMORY };

typedef struct {
    const int64_t *job_ids;
    const float *job_weights;
    const int64_t *job_offsets;
    const int64_t *skill_ids;
    const int64_t *skill_offsets;
    int64_t size;
} Batch;

/* A (profile, job, weight) pair of the batch, sorted by job and then by its position. */
typedef struct {
    int64_t job;
    int64_t position;
    int64_t profile;
    float weight;
} Pair;

/* exp(x) for x <= 0, to about 1 ulp: x = n ln 2 + r, exp(r) by Cephes' polynomial, times 2^n.
 * Branch-free so that the compiler vectorises the loops calling it. */
static inline float exp_nonpositive(float x) {
    const float clamped = x < EXP_FLOOR ? EXP_FLOOR : x;
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer. */
    const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return x < EXP_FLOOR ? 0.0f : p * scale.f;
}

static int check_offsets(const int64_t *offsets, int64_t size, int64_t total) {
    if (offsets[0] != 0 || offsets[size] != total) return 0;
    for (int64_t i = 0; i < size; i++)
        if (offsets[i + 1] <= offsets[i]) return 0; /* every profile holds a job and a skill */
    return 1;
}

static int check_ids(const int64_t *ids, int64_t count, int64_t limit) {
    for (int64_t k = 0; k < count; k++)
        if (ids[k] < 0 || ids[k] >= limit) return 0;
    return 1;
}

static int check_batch(const Batch *b, int64_t jobs, int64_t skills, int64_t n_jobs,
                       int64_t n_skills) {
    if (b->size < 1) return SKR_EMPTY_BATCH;
    if (!check_offsets(b->job_offsets, b->size, n_jobs) ||
        !check_offsets(b->skill_offsets, b->size, n_skills))
        return SKR_BAD_OFFSETS;
    if (!check_ids(b->job_ids, n_jobs, jobs)) return SKR_JOB_RANGE;
    if (!check_ids(b->skill_ids, n_skills, skills)) return SKR_SKILL_RANGE;
    return SKR_OK;
}

/* x[0:skills] = sum_k w_k phi_t[job_k] over profile i's jobs, in job order. The first three
 * rows stream in together (one pass over x, three reads in flight); any further row is added
 * on its own. Either way each x[c] is ((w_0 r_0 + w_1 r_1) + w_2 r_2) + ..., in that order. */
static void profile_logits(const float *phi, int64_t skills, const Batch *b, int64_t i,
                           float *restrict x) {
    const int64_t first = b->job_offsets[i], end = b->job_offsets[i + 1];
    const float *restrict r0 = phi + b->job_ids[first] * skills;
    const float w0 = b->job_weights[first];
    if (end - first == 1) {
        for (int64_t c = 0; c < skills; c++) x[c] = w0 * r0[c];
        return;
    }
    const float *restrict r1 = phi + b->job_ids[first + 1] * skills;
    const float w1 = b->job_weights[first + 1];
    if (end - first == 2) {
        for (int64_t c = 0; c < skills; c++) x[c] = w0 * r0[c] + w1 * r1[c];
        return;
    }
    const float *restrict r2 = phi + b->job_ids[first + 2] * skills;
    const float w2 = b->job_weights[first + 2];
    for (int64_t c = 0; c < skills; c++) x[c] = w0 * r0[c] + w1 * r1[c] + w2 * r2[c];
    for (int64_t k = first + 3; k < end; k++) {
        const float *restrict row = phi + b->job_ids[k] * skills;
        const float w = b->job_weights[k];
        for (int64_t c = 0; c < skills; c++) x[c] += w * row[c];
    }
}

/* The largest of x[0:n]. (A max is exact, so the vectorised reduction's order is moot.) */
static float row_max(const float *restrict x, int64_t n) {
    float max = -INFINITY;
#pragma omp simd reduction(max : max)
    for (int64_t c = 0; c < n; c++) max = x[c] > max ? x[c] : max;
    return max;
}

/* Profile i's KL(target || softmax(logits)), its logits built in x (stride floats). With
 * `grad`, x is left holding d(mean loss)/d(logits) = (softmax - target) / B. */
static double forward_profile(const float *phi, int64_t skills, int64_t stride, const Batch *b,
                              int64_t i, float *restrict x, int grad) {
    profile_logits(phi, skills, b, i, x);
    for (int64_t c = skills; c < stride; c++) x[c] = -INFINITY; /* exp gives 0 there */
    const float max = row_max(x, stride);

    const int64_t *skill = b->skill_ids + b->skill_offsets[i];
    const int64_t n = b->skill_offsets[i + 1] - b->skill_offsets[i];
    double picked = 0.0;
    for (int64_t k = 0; k < n; k++) picked += (double)x[skill[k]] - max;

    /* The exps are compute-bound and the next profile's logits memory-bound: fetch the next
     * profile's first job rows into the cache meanwhile, one line of each per LANES values
     * (prefetches past a row's end are harmless). */
    const float *next[3];
    int fetch = 0;
    if (i + 1 < b->size)
        for (int64_t k = b->job_offsets[i + 1]; k < b->job_offsets[i + 2] && fetch < 3; k++)
            next[fetch++] = phi + b->job_ids[k] * skills;
    for (int64_t c = 0; c < stride; c += LANES) {
        for (int k = 0; k < fetch; k++) __builtin_prefetch(next[k] + c, 0, 2);
        for (int l = 0; l < LANES; l++) x[c + l] = exp_nonpositive(x[c + l] - max);
    }
    /* Vectorised in a fixed order of the compiled code: the same for every row and thread. */
    float partial = 0.0f;
#pragma omp simd reduction(+ : partial)
    for (int64_t c = 0; c < stride; c++) partial += x[c];
    const double sum = partial;
    /* KL = sum_k (1/n)(log(1/n) - log p_k), log p_k = x_k - max - log(sum). */
    const double kl = -log((double)n) - picked / (double)n + log(sum);

    if (grad) {
        const float scale = (float)(1.0 / (sum * (double)b->size));
        for (int64_t c = 0; c < stride; c++) x[c] *= scale;
        const float target = (float)(1.0 / ((double)n * (double)b->size));
        for (int64_t k = 0; k < n; k++) x[skill[k]] -= target;
    }
    return kl;
}

/* Per-profile losses of pass 1, summed serially in profile order. */
static double forward_batch(const float *phi, int64_t skills, int64_t stride, const Batch *b,
                            float *work, int threads, int grad, double *losses) {
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
    for (int64_t i = 0; i < b->size; i++)
        losses[i] = forward_profile(phi, skills, stride, b, i, work + i * stride, grad);
    double total = 0.0;
    for (int64_t i = 0; i < b->size; i++) total += losses[i];
    return total;
}

static int compare_pairs(const void *a, const void *b) {
    const Pair *p = a, *q = b;
    if (p->job != q->job) return p->job < q->job ? -1 : 1;
    return (p->position > q->position) - (p->position < q->position);
}

/* Pass 2: phi_t[job] -= lr * sum over the job's pairs of weight * gradient row, the pairs
 * sorted by job and position, each job's run of pairs delimited in run_starts. A job's row is
 * updated by one thread, tile by tile, so its values do not depend on the thread count. */
static void update_rows(float *phi, int64_t skills, int64_t stride, const float *work,
                        const Pair *pairs, const int64_t *run_starts, int64_t runs, float lr,
                        int threads) {
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
    for (int64_t r = 0; r < runs; r++) {
        const Pair *first = pairs + run_starts[r], *last = pairs + run_starts[r + 1];
        float *restrict row = phi + first->job * skills;
        if (last - first == 1) { /* the common case: no sum to form */
            const float *restrict g = work + first->profile * stride;
            const float w = first->weight;
            for (int64_t c = 0; c < skills; c++) row[c] -= lr * (w * g[c]);
            continue;
        }
        float acc[TILE] __attribute__((aligned(64)));
        for (int64_t c0 = 0; c0 < skills; c0 += TILE) {
            const int64_t width = skills - c0 < TILE ? skills - c0 : TILE;
            const float *restrict g = work + first->profile * stride + c0;
            for (int64_t c = 0; c < width; c++) acc[c] = first->weight * g[c];
            for (const Pair *p = first + 1; p < last; p++) {
                g = work + p->profile * stride + c0;
                for (int64_t c = 0; c < width; c++) acc[c] += p->weight * g[c];
            }
            for (int64_t c = 0; c < width; c++) row[c0 + c] -= lr * acc[c];
        }
    }
}

/* One SGD step on phi_t in place; *loss = the batch's mean KL before the step. Returns an
 * SKR_* status; phi_t is untouched unless it is SKR_OK. */
int skr_sgd_step(float *phi, int64_t jobs, int64_t skills, const int64_t *job_ids,
                 const float *job_weights, const int64_t *job_offsets, const int64_t *skill_ids,
                 const int64_t *skill_offsets, int64_t size, int64_t n_jobs, int64_t n_skills,
                 float lr, float *work, int64_t stride, int threads, double *loss) {
    const Batch b = {job_ids, job_weights, job_offsets, skill_ids, skill_offsets, size};
    const int status = check_batch(&b, jobs, skills, n_jobs, n_skills);
    if (status != SKR_OK) return status;
    double *losses = malloc(size * sizeof *losses);
    Pair *pairs = malloc(n_jobs * sizeof *pairs);
    int64_t *run_starts = malloc((n_jobs + 1) * sizeof *run_starts);
    if (!losses || !pairs || !run_starts) {
        free(losses);
        free(pairs);
        free(run_starts);
        return SKR_NO_MEMORY;
    }
    *loss = forward_batch(phi, skills, stride, &b, work, threads, 1, losses) / (double)size;

    for (int64_t i = 0; i < size; i++)
        for (int64_t k = job_offsets[i]; k < job_offsets[i + 1]; k++)
            pairs[k] = (Pair){job_ids[k], k, i, job_weights[k]};
    qsort(pairs, n_jobs, sizeof *pairs, compare_pairs);
    int64_t runs = 0;
    for (int64_t k = 0; k < n_jobs; k++)
        if (k == 0 || pairs[k].job != pairs[k - 1].job) run_starts[runs++] = k;
    run_starts[runs] = n_jobs;
    update_rows(phi, skills, stride, work, pairs, run_starts, runs, lr, threads);

    free(losses);
    free(pairs);
    free(run_starts);
    return SKR_OK;
}
