/* The PF / RPF programs (4) / (9) solved one instance at a time in C (CPU).
 *
 * The same method as auctionlab/solvers/pf/ipm.py's torch path (see its solve_pf): damped Newton
 * steps on the primal-dual pair towards a tenth of the mean complementarity, the Newton
 * system solved by Sherman-Morrison per agent and an m x m Woodbury system for the budgets
 * (re-solved densely when its residual is poor), fraction-to-boundary 0.995 and backtracking
 * on the centred residual; then the pair is snapped onto its active sets and its KKT residual
 * computed as in ipm.py's _pick_pair and _Program.kkt (tests/solvers/test_pf_native.py holds
 * pairs, residuals and convergence flags to the torch path's). Per-instance loops replace the
 * torch path's few dozen batched ops per Newton step, whose dispatch cost is what a small
 * program (2x2, 10x3) costs there.
 *
 * Layout: batch-first, row-major; variables [B, n, m] (agent-major), budgets [B, m], weights
 * [B, n]. Values, demands and z are zero on fixed variables (free = 0). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TINY 1e-300
#define NEWTON_REFINE_TOL 1e-9
/* Always inlined, so that the copies of solve_one for a fixed m (below) unroll every loop. */
#define INLINE static inline __attribute__((always_inline))

/* max that propagates NaN (as torch.amax does). */
static inline double mx(double a, double b) { return (a > b || isnan(a)) ? a : b; }

typedef struct {
    int n, m, N;
    const double *v, *x, *z, *fr, *b, *bud, *w;
    double pairs;
} prob_t;

typedef struct {
    double *u, *s1, *s2, *s3, *d, *sv, *invd, *sd, *kappa, *rhs, *r1, *r2, *r3, *c;
    double *da, *ds3, *dmu, *dnu, *dlam, *first, *y, *S, *L, *proj, *wts, *K;
    double *ta, *tmu, *tnu, *tlam, *ts1, *ts2, *ts3;
    double *sa, *smu, *snu, *slam, *is1, *is2, *is3;
    int *act;
} work_t;

static size_t work_doubles(int n, int m) {
    size_t N = (size_t)n * m;
    return 26 * N + 13 * (size_t)m + 2 * (size_t)m * m + N * N + 3 * (size_t)n;
}

static void work_init(work_t *W, double *buf, int *ibuf, int n, int m) {
    size_t N = (size_t)n * m;
    double *p = buf;
#define TAKE(name, count) W->name = p; p += (count)
    TAKE(u, n); TAKE(s1, N); TAKE(s2, N); TAKE(s3, m); TAKE(d, N); TAKE(sv, N);
    TAKE(invd, N); TAKE(sd, N); TAKE(kappa, n); TAKE(rhs, N); TAKE(r1, N);
    TAKE(r2, N); TAKE(r3, m); TAKE(c, m); TAKE(da, N); TAKE(ds3, m); TAKE(dmu, N);
    TAKE(dnu, N); TAKE(dlam, m); TAKE(first, N); TAKE(y, N); TAKE(S, (size_t)m * m);
    TAKE(L, (size_t)m * m); TAKE(proj, m); TAKE(wts, m); TAKE(K, N * N); TAKE(ta, N);
    TAKE(tmu, N); TAKE(tnu, N); TAKE(tlam, m); TAKE(ts1, N); TAKE(ts2, N); TAKE(ts3, m);
    TAKE(sa, N); TAKE(smu, N); TAKE(snu, N); TAKE(slam, m); TAKE(is1, N); TAKE(is2, N);
    TAKE(is3, m);
#undef TAKE
    W->act = ibuf;
}

INLINE void utilities(const prob_t *P, const double *a, double *u) {
    for (int i = 0; i < P->n; i++) {
        double s = 0.0;
        for (int j = 0; j < P->m; j++) s += P->v[i * P->m + j] * a[i * P->m + j];
        u[i] = s > TINY ? s : TINY;
    }
}

/* Slacks of a >= 0, a <= x and the budgets; 1 where not part of the program. */
INLINE void slacks(const prob_t *P, const double *a, double *s1, double *s2, double *s3) {
    int n = P->n, m = P->m;
    for (int k = 0; k < P->N; k++) {
        double fixed = 1.0 - P->fr[k];
        s1[k] = a[k] + fixed;
        s2[k] = P->x[k] - a[k] + fixed;
    }
    for (int j = 0; j < m; j++) {
        double load = 0.0;
        for (int i = 0; i < n; i++) load += a[i * m + j];
        s3[j] = (P->b[j] - load) * P->bud[j] + (1.0 - P->bud[j]);
    }
}

/* parts = [squared stationarity, sum and sum of squares of the complementarity products];
 * also writes the slacks of a and its utilities (u). */
INLINE void residual_parts(const prob_t *P, const double *a, const double *mu, const double *nu,
                           const double *lam, double *s1, double *s2, double *s3, double *u,
                           double parts[3]) {
    int m = P->m;
    utilities(P, a, u);
    slacks(P, a, s1, s2, s3);
    double st = 0.0, sum = 0.0, sq = 0.0;
    for (int i = 0, k = 0; i < P->n; i++) {
        double wu = P->w[i] / u[i];
        for (int j = 0; j < m; j++, k++) {
            double g = (P->z[k] - P->v[k] * wu - mu[k] + nu[k] + lam[j]) * P->fr[k];
            double c1 = mu[k] * s1[k], c2 = nu[k] * s2[k];
            st += g * g;
            sum += c1 + c2;
            sq += c1 * c1 + c2 * c2;
        }
    }
    for (int j = 0; j < m; j++) {
        double c3 = lam[j] * s3[j];
        sum += c3;
        sq += c3 * c3;
    }
    parts[0] = st;
    parts[1] = sum;
    parts[2] = sq;
}

/* 2-norm of the KKT system centred at t, from its parts. */
INLINE double residual(const prob_t *P, const double parts[3], double t) {
    double centred = parts[2] - 2 * t * parts[1] + P->pairs * t * t;
    if (!(centred > 0.0) && !isnan(centred)) centred = 0.0;
    return sqrt(parts[0] + centred);
}

/* KKT residual (max-norm) of a primal-dual pair. */
INLINE double kkt(const prob_t *P, const double *a, const double *mu, const double *nu,
                  const double *lam, double *u) {
    int n = P->n, m = P->m;
    double worst = 0.0;
    utilities(P, a, u);
    for (int i = 0, k = 0; i < n; i++) {
        double wu = P->w[i] / u[i];
        for (int j = 0; j < m; j++, k++) {
            double g = P->z[k] - P->v[k] * wu;
            worst = mx(worst, fabs((g - mu[k] + nu[k] + lam[j]) * P->fr[k]));
            worst = mx(worst, -a[k]);
            worst = mx(worst, a[k] - P->x[k]);
            worst = mx(worst, fabs(mu[k] * a[k]));
            worst = mx(worst, fabs(nu[k] * (P->x[k] - a[k])));
            worst = mx(worst, -mu[k]);
            worst = mx(worst, -nu[k]);
        }
    }
    for (int j = 0; j < m; j++) {
        double load = 0.0;
        for (int i = 0; i < n; i++) load += a[i * m + j];
        double over = load - P->b[j];
        worst = mx(worst, (over > 0.0 ? over : (isnan(over) ? over : 0.0)) * P->bud[j]);
        worst = mx(worst, fabs(lam[j] * (P->b[j] - load)));
        worst = mx(worst, -lam[j]);
    }
    return worst;
}

/* Snap the pair onto the active sets it reads off (mu > a means a = 0, nu > x - a means
 * a = x, lambda > slack means a tight budget) into W->sa, smu, snu, slam; returns the KKT
 * residual of the snapped pair and writes the raw pair's into *raw_kkt. */
INLINE double snap(const prob_t *P, const double *a, const double *mu, const double *nu,
                   const double *lam, const double *s1, const double *s2, const double *s3,
                   work_t *W, double *raw_kkt) {
    for (int k = 0; k < P->N; k++) {
        int lower = mu[k] > s1[k] && P->fr[k] > 0;
        int upper = !lower && nu[k] > s2[k] && P->fr[k] > 0;
        W->sa[k] = lower ? 0.0 : (upper ? P->x[k] : a[k]);
        W->smu[k] = lower ? mu[k] : 0.0;
        W->snu[k] = upper ? nu[k] : 0.0;
    }
    for (int j = 0; j < P->m; j++) W->slam[j] = (lam[j] > s3[j] ? lam[j] : 0.0) * P->bud[j];
    *raw_kkt = kkt(P, a, mu, nu, lam, W->u);
    return kkt(P, W->sa, W->smu, W->snu, W->slam, W->u);
}

/* Factorise K = diag(d) + sum_i s_i s_i^T + sum_m c_m f_m f_m^T (see linalg.py's _factorise).
 * Returns nonzero when a Schur pivot is not positive. */
INLINE int factorise(const prob_t *P, work_t *W) {
    int n = P->n, m = P->m, failed = 0;
    for (int k = 0; k < P->N; k++) {
        W->invd[k] = 1.0 / W->d[k];
        W->sd[k] = W->sv[k] * W->invd[k];
    }
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int j = 0; j < m; j++) s += W->sv[i * m + j] * W->sd[i * m + j];
        W->kappa[i] = 1.0 / (1.0 + s);
    }
    for (int j = 0; j < m; j++) W->act[j] = W->c[j] > 0;
    for (int j = 0; j < m; j++) {
        for (int l = 0; l < m; l++) {
            double inner = 0.0;
            if (W->act[j] && W->act[l])
                for (int i = 0; i < n; i++)
                    inner -= W->kappa[i] * (P->fr[i * m + j] * W->sd[i * m + j]) *
                             (P->fr[i * m + l] * W->sd[i * m + l]);
            W->S[j * m + l] = inner;
        }
        double diag = 0.0;
        if (W->act[j]) {
            for (int i = 0; i < n; i++) diag += P->fr[i * m + j] * W->invd[i * m + j];
            diag += 1.0 / (W->c[j] > TINY ? W->c[j] : TINY);
        } else {
            diag = 1.0;
        }
        W->S[j * m + j] += diag;
    }
    for (int j = 0; j < m; j++) {
        double pivot = W->S[j * m + j];
        for (int k = 0; k < j; k++) pivot -= W->L[j * m + k] * W->L[j * m + k];
        if (!(pivot > 0)) failed = 1;
        double ljj = sqrt(pivot > TINY ? pivot : TINY);
        W->L[j * m + j] = ljj;
        for (int i = j + 1; i < m; i++) {
            double s = W->S[i * m + j];
            for (int k = 0; k < j; k++) s -= W->L[i * m + k] * W->L[j * m + k];
            W->L[i * m + j] = s / ljj;
        }
        for (int i = 0; i < j; i++) W->L[i * m + j] = 0.0;
    }
    return failed;
}

/* q = A^-1 y for A = diag(d) + blockdiag(s_i s_i^T) (Sherman-Morrison per agent). */
INLINE void agent_solve(const prob_t *P, const work_t *W, const double *y, double *q) {
    int n = P->n, m = P->m;
    for (int i = 0; i < n; i++) {
        double t = 0.0;
        for (int j = 0; j < m; j++) {
            q[i * m + j] = y[i * m + j] * W->invd[i * m + j];
            t += W->sv[i * m + j] * q[i * m + j];
        }
        t *= W->kappa[i];
        for (int j = 0; j < m; j++) q[i * m + j] -= W->sd[i * m + j] * t;
    }
}

/* da = K^-1 rhs by Woodbury on the factorisation. */
INLINE void solve_structured(const prob_t *P, work_t *W, const double *rhs, double *da) {
    int n = P->n, m = P->m;
    agent_solve(P, W, rhs, W->first);
    for (int j = 0; j < m; j++) {
        double s = 0.0;
        if (W->act[j])
            for (int i = 0; i < n; i++) s += P->fr[i * m + j] * W->first[i * m + j];
        W->proj[j] = s;
    }
    for (int j = 0; j < m; j++) {
        double s = W->proj[j];
        for (int k = 0; k < j; k++) s -= W->L[j * m + k] * W->wts[k];
        W->wts[j] = s / W->L[j * m + j];
    }
    for (int j = m - 1; j >= 0; j--) {
        double s = W->wts[j];
        for (int k = j + 1; k < m; k++) s -= W->L[k * m + j] * W->wts[k];
        W->wts[j] = s / W->L[j * m + j];
    }
    for (int i = 0, k = 0; i < n; i++)
        for (int j = 0; j < m; j++, k++) W->y[k] = P->fr[k] * W->wts[j];
    agent_solve(P, W, W->y, da);
    for (int k = 0; k < P->N; k++) da[k] = W->first[k] - da[k];
}

/* Max-norm of K da - rhs over the size of its terms. */
INLINE double relative_residual(const prob_t *P, work_t *W, const double *da, const double *rhs) {
    int n = P->n, m = P->m;
    double m0 = 0.0, m1 = 0.0, m2 = 0.0, mr = 0.0, res = 0.0;
    for (int j = 0; j < m; j++) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += P->fr[i * m + j] * da[i * m + j];
        W->proj[j] = W->c[j] * s;
    }
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int j = 0; j < m; j++) s += W->sv[i * m + j] * da[i * m + j];
        for (int j = 0; j < m; j++) {
            int k = i * m + j;
            double t0 = W->d[k] * da[k], t1 = W->sv[k] * s, t2 = P->fr[k] * W->proj[j];
            m0 = mx(m0, fabs(t0));
            m1 = mx(m1, fabs(t1));
            m2 = mx(m2, fabs(t2));
            mr = mx(mr, fabs(rhs[k]));
            res = mx(res, fabs(t0 + t1 + t2 - rhs[k]));
        }
    }
    double scale = mr + m0 + m1 + m2;
    return res / (scale > TINY ? scale : TINY);
}

/* da = K^-1 rhs by a Cholesky factorisation of the full [nm, nm] K; nonzero when it fails. */
static int solve_dense(const prob_t *P, work_t *W, const double *rhs, double *da) {
    int n = P->n, m = P->m, N = P->N;
    double *K = W->K;
    memset(K, 0, sizeof(double) * (size_t)N * N);
    for (int k = 0; k < N; k++) K[k * N + k] = W->d[k];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++)
            for (int l = 0; l < m; l++)
                K[(i * m + j) * N + i * m + l] += W->sv[i * m + j] * W->sv[i * m + l];
    for (int j = 0; j < m; j++)
        for (int i = 0; i < n; i++)
            for (int h = 0; h < n; h++)
                K[(i * m + j) * N + h * m + j] +=
                    W->c[j] * P->fr[i * m + j] * P->fr[h * m + j];
    for (int j = 0; j < N; j++) {
        double pivot = K[j * N + j];
        for (int k = 0; k < j; k++) pivot -= K[j * N + k] * K[j * N + k];
        if (!(pivot > 0)) {
            memset(da, 0, sizeof(double) * N);
            return 1;
        }
        double ljj = sqrt(pivot);
        K[j * N + j] = ljj;
        for (int i = j + 1; i < N; i++) {
            double s = K[i * N + j];
            for (int k = 0; k < j; k++) s -= K[i * N + k] * K[j * N + k];
            K[i * N + j] = s / ljj;
        }
    }
    for (int j = 0; j < N; j++) {
        double s = rhs[j];
        for (int k = 0; k < j; k++) s -= K[j * N + k] * da[k];
        da[j] = s / K[j * N + j];
    }
    for (int j = N - 1; j >= 0; j--) {
        double s = da[j];
        for (int k = j + 1; k < N; k++) s -= K[k * N + j] * da[k];
        da[j] = s / K[j * N + j];
    }
    return 0;
}

/* One damped Newton step centred at target; updates the pair, its parts and its slacks. */
INLINE void newton_step(const prob_t *P, double *a, double *mu, double *nu, double *lam,
                        double parts[3], double target, double tol, work_t *W) {
    int n = P->n, m = P->m, N = P->N;
    double *s1 = W->s1, *s2 = W->s2, *s3 = W->s3;
    double *is1 = W->is1, *is2 = W->is2, *is3 = W->is3;  /* reciprocal slacks */
    utilities(P, a, W->u);
    for (int j = 0; j < m; j++) {
        is3[j] = 1.0 / s3[j];
        W->c[j] = lam[j] * is3[j];
        W->r3[j] = (target - lam[j] * s3[j]) * P->bud[j];
    }
    for (int i = 0, k = 0; i < n; i++) {
        double wu = P->w[i] / W->u[i], su = sqrt(P->w[i]) / W->u[i];
        for (int j = 0; j < m; j++, k++) {
            double f = P->fr[k];
            double g = P->z[k] - P->v[k] * wu;
            double dual = (g - mu[k] + nu[k] + lam[j]) * f;
            is1[k] = 1.0 / s1[k];
            is2[k] = 1.0 / s2[k];
            W->d[k] = mu[k] * is1[k] + nu[k] * is2[k] + (1.0 - f);
            W->sv[k] = P->v[k] * su;
            W->r1[k] = (target - mu[k] * s1[k]) * f;
            W->r2[k] = (target - nu[k] * s2[k]) * f;
            W->rhs[k] = (-dual + W->r1[k] * is1[k] - W->r2[k] * is2[k] - W->r3[j] * is3[j]) * f;
        }
    }

    int info = factorise(P, W);
    solve_structured(P, W, W->rhs, W->da);
    /* Far from the tolerance the closed form is accurate and the step is safeguarded anyway. */
    int check = target <= 1e3 * tol;
    if (info || (check && !(relative_residual(P, W, W->da, W->rhs) <= NEWTON_REFINE_TOL)))
        info = solve_dense(P, W, W->rhs, W->da);
    double shrink = -INFINITY;
    for (int j = 0; j < m; j++) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += W->da[i * m + j];
        W->ds3[j] = -s * P->bud[j];
        W->dlam[j] = (W->r3[j] - lam[j] * W->ds3[j]) * is3[j];
        shrink = mx(shrink, -W->ds3[j] * is3[j]);
        if (!(W->dlam[j] >= 0.0)) shrink = mx(shrink, -W->dlam[j] / (lam[j] > TINY ? lam[j] : TINY));
    }
    for (int k = 0; k < N; k++) {
        double da = W->da[k];
        W->dmu[k] = (W->r1[k] - mu[k] * da) * is1[k];
        W->dnu[k] = (W->r2[k] + nu[k] * da) * is2[k];
        shrink = mx(shrink, -da * is1[k]);
        shrink = mx(shrink, da * is2[k]);
        /* Only a falling multiplier can reach its bound (NaN goes through, as in torch). */
        if (!(W->dmu[k] >= 0.0)) shrink = mx(shrink, -W->dmu[k] / (mu[k] > TINY ? mu[k] : TINY));
        if (!(W->dnu[k] >= 0.0)) shrink = mx(shrink, -W->dnu[k] / (nu[k] > TINY ? nu[k] : TINY));
    }
    double alpha = 0.995 / mx(shrink, 0.995);
    if (info) alpha = 0.0;
    double before = residual(P, parts, target), floor = 1e-2 * tol, tparts[3];
    /* Backtracking on the centred residual; residuals at the tolerance's scale are noise. */
    for (int t = 0; t < 30; t++) {
        for (int k = 0; k < N; k++) {
            W->ta[k] = a[k] + alpha * W->da[k];
            W->tmu[k] = mu[k] + alpha * W->dmu[k];
            W->tnu[k] = nu[k] + alpha * W->dnu[k];
        }
        for (int j = 0; j < m; j++) W->tlam[j] = lam[j] + alpha * W->dlam[j];
        residual_parts(P, W->ta, W->tmu, W->tnu, W->tlam, W->ts1, W->ts2, W->ts3, W->u, tparts);
        double after = residual(P, tparts, target);
        double bound = (1 - 0.01 * alpha) * before;
        if (after <= (bound > floor ? bound : floor) || alpha == 0.0) break;
        alpha *= 0.5;
    }
    memcpy(a, W->ta, sizeof(double) * N);
    memcpy(mu, W->tmu, sizeof(double) * N);
    memcpy(nu, W->tnu, sizeof(double) * N);
    memcpy(lam, W->tlam, sizeof(double) * m);
    memcpy(s1, W->ts1, sizeof(double) * N);
    memcpy(s2, W->ts2, sizeof(double) * N);
    memcpy(s3, W->ts3, sizeof(double) * m);
    memcpy(parts, tparts, sizeof(double) * 3);
}

INLINE int solve_one(const prob_t *P, double *a, double *mu, double *nu, double *lam,
                     double *residual_out, double tol, int max_iter, work_t *W) {
    int n = P->n, m = P->m, N = P->N, iterations = 0;
    /* Strictly interior start: half of each demand, every budget at most half used. */
    for (int j = 0; j < m; j++) {
        double total = 0.0;
        for (int i = 0; i < n; i++) total += P->x[i * m + j];
        double ratio = P->b[j] / (total > 1e-12 ? total : 1e-12);
        double share = 0.5 * (ratio < 1.0 ? ratio : 1.0);
        for (int i = 0; i < n; i++) a[i * m + j] = P->x[i * m + j] * share;
    }
    slacks(P, a, W->s1, W->s2, W->s3);
    for (int k = 0; k < N; k++) {
        mu[k] = P->fr[k] / W->s1[k];
        nu[k] = P->fr[k] / W->s2[k];
    }
    for (int j = 0; j < m; j++) lam[j] = P->bud[j] / W->s3[j];
    double parts[3];
    residual_parts(P, a, mu, nu, lam, W->s1, W->s2, W->s3, W->u, parts);
    for (int it = 1; it <= max_iter; it++) {
        iterations = it;
        double eta = parts[1] / (P->pairs > 1.0 ? P->pairs : 1.0);
        if (eta <= 10 * tol) {
            /* A tenth of the tolerance: the snapped pair is then settled on its active sets
             * (which the backward pass needs) for almost every instance. */
            double raw, snapped = snap(P, a, mu, nu, lam, W->s1, W->s2, W->s3, W, &raw);
            if ((snapped < raw ? snapped : raw) <= 0.1 * tol) break;
        }
        newton_step(P, a, mu, nu, lam, parts, 0.1 * eta, tol, W);
    }
    /* The snapped pair where it meets tol (exact bounds, clean active sets) or beats the
     * interior iterate, else the iterate; with its KKT residual. */
    double raw, snapped = snap(P, a, mu, nu, lam, W->s1, W->s2, W->s3, W, &raw);
    if (snapped <= tol || snapped <= raw) {
        memcpy(a, W->sa, sizeof(double) * N);
        memcpy(mu, W->smu, sizeof(double) * N);
        memcpy(nu, W->snu, sizeof(double) * N);
        memcpy(lam, W->slam, sizeof(double) * m);
        *residual_out = snapped;
    } else {
        *residual_out = raw;
    }
    return iterations;
}

/* solve_one with the number of resources fixed at compile time: the loops over resources
 * unroll (most of the work for a few resources). */
#define FIXED_M(M)                                                                        \
    static int solve_m##M(prob_t P, double *a, double *mu, double *nu, double *lam,        \
                          double *r, double tol, int max_iter, work_t *W) {                 \
        P.m = M;                                                                           \
        return solve_one(&P, a, mu, nu, lam, r, tol, max_iter, W);                         \
    }
FIXED_M(1)
FIXED_M(2)
FIXED_M(3)
FIXED_M(4)

static int solve_any(prob_t P, double *a, double *mu, double *nu, double *lam, double *r,
                     double tol, int max_iter, work_t *W) {
    switch (P.m) {
    case 1: return solve_m1(P, a, mu, nu, lam, r, tol, max_iter, W);
    case 2: return solve_m2(P, a, mu, nu, lam, r, tol, max_iter, W);
    case 3: return solve_m3(P, a, mu, nu, lam, r, tol, max_iter, W);
    case 4: return solve_m4(P, a, mu, nu, lam, r, tol, max_iter, W);
    default: return solve_one(&P, a, mu, nu, lam, r, tol, max_iter, W);
    }
}

/* Solve every instance of a batch (to tol, or until max_iter). Writes the pair taken into
 * a, mu, nu [B, n, m] and lam [B, m], its KKT residual into residual [B] and the iterations
 * each instance took. Returns 0, or -1 when the workspace could not be allocated. */
int pf_solve(int B, int n, int m, const double *v, const double *x, const double *z,
             const double *fr, const double *b, const double *bud, const double *w,
             const double *pairs, double tol, int max_iter, int threads, double *a, double *mu,
             double *nu, double *lam, double *residual, int *iterations) {
    int N = n * m, failed = 0;
    size_t nd = work_doubles(n, m);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : failed)
#endif
    {
        double *buf = malloc(sizeof(double) * nd);
        int *ibuf = malloc(sizeof(int) * (size_t)(m > 0 ? m : 1));
        work_t W;
        if (buf && ibuf) work_init(&W, buf, ibuf, n, m);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
        for (int s = 0; s < B; s++) {
            if (!buf || !ibuf) {
                /* Every thread still takes part in the loop (OpenMP requires it). */
                failed = 1;
                iterations[s] = 0;
                residual[s] = NAN;
                continue;
            }
            prob_t P = {n, m, N, v + (size_t)s * N, x + (size_t)s * N, z + (size_t)s * N,
                        fr + (size_t)s * N, b + (size_t)s * m, bud + (size_t)s * m,
                        w + (size_t)s * n, pairs[s]};
            iterations[s] = solve_any(P, a + (size_t)s * N, mu + (size_t)s * N,
                                      nu + (size_t)s * N, lam + (size_t)s * m, residual + s, tol,
                                      max_iter, &W);
        }
        free(buf);
        free(ibuf);
    }
    (void)threads;
    return failed ? -1 : 0;
}
