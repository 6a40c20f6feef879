/* learn.c - fitting the learned hash model of one head (see learn.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "krn.h"
#include "learn.h"

#define POS_PER_QUERY 4u
#define EVAL_QUERIES 128u
#define EVAL_NEGS 256u
#define CAND_FRAC 0.08
#define PROBE_EVERY 4u
#define PROBE_WEIGHT 3.0f

struct lctx {
	uint32_t dim, bits, hidden, S, Q, T, B, R, kb_max;
	float alpha;
	float *kh;      /* [S][dim] centred keys, unit length */
	float *kn;      /* [S] |k - mu| */
	float *r;       /* [S] |k - mu| / mean */
	float *u;       /* [Q][dim] queries, unit length */
	float *thr;     /* [Q] the T-th largest u.(k - mu) */
	uint32_t *pos;  /* [Q][T] the positives */
	float *row;     /* [S] */
	uint32_t *idx, *sel; /* [S] */
	/* one step */
	uint32_t *bq, *bk;
	float *kb;      /* [kb_max][dim] the batch's keys (unit) */
	float *ub;      /* [B][dim] the batch's queries (unit) */
	float *at;      /* [max(bits, hidden)][kb_max] transposed gradients */
	float *z;       /* [B][kb_max] their exact u.(k - mu) */
	float *ak, *sk, *dk, *aq, *sq, *dq, *hid, *g, *gq, *gk, *dh;
	/* Adam */
	float *grad, *am, *av;
	size_t np;      /* trained parameters: all but cosv */
	uint64_t rng;
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t below(uint64_t *s, uint32_t n)
{
	return (uint32_t)((splitmix(s) >> 32) * n >> 32);
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1e3 + (t.tv_nsec - t0->tv_nsec) / 1e6;
}

void rt_learn_defaults(struct rt_learn_opts *o)
{
	o->seed = 1;
	o->steps = 400;
	o->batch = 32;
	o->rand_keys = 128;
	o->max_keys = 4096;
	o->max_queries = 1024;
	o->lr = 0.02f;
	o->alpha = 10.0f;
	o->top_frac = 0.08f;
	o->budget_ms = 0;
}

static void ctx_free(struct lctx *c)
{
	void *p[] = { c->kh, c->kn, c->r, c->u, c->thr, c->pos, c->row, c->idx, c->sel,
		      c->bq, c->bk, c->kb, c->ub, c->at, c->z, c->ak, c->sk, c->dk, c->aq, c->sq, c->dq, c->hid,
		      c->g, c->gq, c->gk, c->dh, c->grad, c->am, c->av };
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
		free(p[i]);
}

/* Bytes ctx_alloc takes for c's sizes. */
static size_t ctx_bytes(const struct lctx *c)
{
	size_t S = c->S, Q = c->Q, d = c->dim, b = c->bits, B = c->B, K = c->kb_max;
	size_t f = sizeof(float), u = sizeof(uint32_t);

	return S * (d + 3) * f + S * 2 * u + Q * (d + 1) * f + Q * c->T * u +
	       (B + K) * u + (K + B) * d * f + (b > c->hidden ? b : c->hidden) * K * f +
	       2 * B * K * f + 4 * K * b * f + 4 * B * b * f + 2 * B * c->hidden * f +
	       3 * c->np * f;
}

static int ctx_alloc(struct lctx *c)
{
	size_t S = c->S, Q = c->Q, d = c->dim, b = c->bits, B = c->B, K = c->kb_max;
	size_t f = sizeof(float), u = sizeof(uint32_t);

	c->kh = malloc(S * d * f);
	c->kn = malloc(S * f);
	c->r = malloc(S * f);
	c->u = malloc(Q * d * f);
	c->thr = malloc(Q * f);
	c->pos = malloc(Q * c->T * u);
	c->row = malloc(S * f);
	c->idx = malloc(S * u);
	c->sel = malloc(S * u);
	c->bq = malloc(B * u);
	c->bk = malloc(K * u);
	c->kb = malloc(K * d * f);
	c->ub = malloc(B * d * f);
	c->at = malloc((b > c->hidden ? b : c->hidden) * K * f);
	c->z = malloc(B * K * f);
	c->ak = malloc(K * b * f);
	c->sk = malloc(K * b * f);
	c->dk = malloc(K * b * f);
	c->aq = malloc(B * b * f);
	c->sq = malloc(B * b * f);
	c->dq = malloc(B * b * f);
	c->hid = malloc(B * c->hidden * f);
	c->g = malloc(B * K * f);
	c->gq = malloc(B * b * f);
	c->gk = malloc(K * b * f);
	c->dh = malloc(B * c->hidden * f);
	c->grad = malloc(c->np * f);
	c->am = calloc(c->np, f);
	c->av = calloc(c->np, f);
	return c->kh && c->kn && c->r && c->u && c->thr && c->pos && c->row && c->idx &&
	       c->sel && c->bq && c->bk && c->kb && c->ub && c->at && c->z && c->ak && c->sk && c->dk && c->aq && c->sq &&
	       c->dq && c->hid && c->g && c->gq && c->gk && c->dh && c->grad && c->am &&
	       c->av ? 0 : -1;
}

/* Evenly spaced sample of keys, centred and split into direction and norm. */
static void take_keys(struct lctx *c, const float *keys, uint32_t nk, size_t ld,
		      const float *mu)
{
	double sum = 0;
	uint32_t off = below(&c->rng, nk / c->S);

	for (uint32_t s = 0; s < c->S; s++) {
		const float *k = keys + (size_t)((uint64_t)s * nk / c->S + off) * ld;
		float *o = c->kh + (size_t)s * c->dim;
		double nn = 0;
		for (uint32_t d = 0; d < c->dim; d++) {
			o[d] = k[d] - mu[d];
			nn += (double)o[d] * o[d];
		}
		c->kn[s] = (float)sqrt(nn);
		sum += c->kn[s];
		for (uint32_t d = 0; d < c->dim; d++)
			o[d] = nn > 0 ? (float)(o[d] / c->kn[s]) : 0.0f;
	}
	for (uint32_t s = 0; s < c->S; s++)
		c->r[s] = sum > 0 ? (float)(c->kn[s] * c->S / sum) : 1.0f;
}

static void take_queries(struct lctx *c, const float *q, uint32_t nq, size_t ld)
{
	for (uint32_t i = 0; i < c->Q; i++) {
		const float *x = q + (size_t)((uint64_t)i * nq / c->Q) * ld;
		float *o = c->u + (size_t)i * c->dim;
		double nn = 0;
		for (uint32_t d = 0; d < c->dim; d++)
			nn += (double)x[d] * x[d];
		for (uint32_t d = 0; d < c->dim; d++)
			o[d] = nn > 0 ? (float)(x[d] / sqrt(nn)) : 0.0f;
	}
}

/*
 * One query in PROBE_EVERY gets the direction of a random sampled key
 * added with weight PROBE_WEIGHT, so that a single key becomes its top
 * key: queries seen in a prefill may never aim at a rare key (a
 * "needle"), and these probes ask the codes to keep such directions.
 * They help only a little (needle hits 0.39 -> 0.44 on the generator).
 */
static void add_probes(struct lctx *c)
{
	for (uint32_t i = PROBE_EVERY - 1; i < c->Q; i += PROBE_EVERY) {
		float *u = c->u + (size_t)i * c->dim;
		const float *k = c->kh + (size_t)below(&c->rng, c->S) * c->dim;
		double nn = 0;
		for (uint32_t d = 0; d < c->dim; d++) {
			u[d] += PROBE_WEIGHT * k[d];
			nn += (double)u[d] * u[d];
		}
		for (uint32_t d = 0; d < c->dim; d++)
			u[d] = (float)(u[d] / sqrt(nn));
	}
}

/* Exact u.(k - mu) of query i against every sampled key into c->row. */
static void exact_row(struct lctx *c, uint32_t i)
{
	krn_get()->dot(c->u + (size_t)i * c->dim, 1, c->kh, c->dim, c->S, c->dim,
		       c->row, c->S);
	for (uint32_t s = 0; s < c->S; s++)
		c->row[s] *= c->kn[s];
}

/* Evaluation query e of E: evenly spread over the sample. */
static uint32_t eval_query(const struct lctx *c, uint32_t e, uint32_t E)
{
	return (uint32_t)((uint64_t)e * c->Q / E);
}

/* Each query's positives: its T keys of largest exact logit. */
static void find_positives(struct lctx *c)
{
	for (uint32_t i = 0; i < c->Q; i++) {
		uint32_t *p = c->pos + (size_t)i * c->T;
		float t = INFINITY;
		exact_row(c, i);
		krn_select_top(c->row, c->S, c->T, p, c->sel);
		for (uint32_t j = 0; j < c->T; j++)
			t = c->row[p[j]] < t ? c->row[p[j]] : t;
		c->thr[i] = t;
	}
}

static double softplus(double x)
{
	return x > 30 ? x : log1p(exp(x));
}

/* Codes of every sampled key and of the evaluation queries, packed. */
struct codes {
	uint32_t words, E;
	uint64_t *k;   /* [S][words] */
	uint64_t *q;   /* [E][words] */
	uint16_t *h;   /* [S] */
};

static void codes_free(struct codes *cd)
{
	free(cd->k);
	free(cd->q);
	free(cd->h);
	cd->k = cd->q = NULL;
	cd->h = NULL;
}

static int codes_make(struct lctx *c, const struct rt_lhead *m, struct codes *cd)
{
	float tmp[RT_MODEL_HIDDEN_MAX + 256];

	cd->words = c->bits / 64;
	cd->E = c->Q < EVAL_QUERIES ? c->Q : EVAL_QUERIES;
	cd->k = malloc((size_t)c->S * cd->words * sizeof(uint64_t));
	cd->q = malloc((size_t)cd->E * cd->words * sizeof(uint64_t));
	cd->h = malloc((size_t)c->S * sizeof(uint16_t));
	if (!cd->k || !cd->q || !cd->h) {
		codes_free(cd);
		return -1;
	}
	krn_get()->encode(m->Wk, c->bits, c->dim, c->kh, c->dim, c->S, cd->k);
	for (uint32_t e = 0; e < cd->E; e++)
		rt_lhead_query_code(m, c->u + (size_t)eval_query(c, e, cd->E) * c->dim,
				    cd->q + (size_t)e * cd->words, tmp);
	return 0;
}

/* Share of query i's positives whose estimate lies in the top CAND_FRAC. */
static double eval_recall(struct lctx *c, const struct rt_lhead *m, const uint16_t *h,
			  uint32_t i)
{
	const uint32_t *p = c->pos + (size_t)i * c->T;
	uint32_t nc = (uint32_t)(CAND_FRAC * c->S), hit = 0;
	float cut = INFINITY;

	nc = nc > c->T ? nc : c->T;
	for (uint32_t s = 0; s < c->S; s++)
		c->row[s] = c->r[s] * m->cosv[h[s]];
	krn_select_top(c->row, c->S, nc, c->idx, c->sel);
	for (uint32_t j = 0; j < nc; j++)
		cut = c->row[c->idx[j]] < cut ? c->row[c->idx[j]] : cut;
	for (uint32_t j = 0; j < c->T; j++)
		hit += c->row[p[j]] >= cut;
	return hit;
}

/* Pairwise loss of query i's positives against EVAL_NEGS fixed keys. */
static double eval_loss(struct lctx *c, const uint16_t *h, uint32_t i, size_t *n)
{
	const uint32_t *p = c->pos + (size_t)i * c->T;
	double L = 0;

	exact_row(c, i);
	for (uint32_t j = 0; j < c->T; j++) {
		float ep = c->r[p[j]] * (1.0f - 2.0f * h[p[j]] / c->bits);
		for (uint32_t k = 0; k < EVAL_NEGS && k < c->S; k++) {
			uint32_t s = (uint32_t)((uint64_t)k * c->S / EVAL_NEGS);
			if (c->row[s] >= c->thr[i])
				continue;
			float en = c->r[s] * (1.0f - 2.0f * h[s] / c->bits);
			L += softplus(c->alpha * (en - ep));
			(*n)++;
		}
	}
	return L;
}

/*
 * Held-out figures with hard codes: the pairwise loss (positives against
 * EVAL_NEGS fixed keys) and the share of positives whose estimate
 * |k - mu| * cosv[h] lies in the top CAND_FRAC of all sampled keys.
 */
static void evaluate(struct lctx *c, const struct rt_lhead *m, double *loss, double *recall)
{
	struct codes cd;
	double L = 0, hit = 0;
	size_t n = 0;

	*loss = *recall = NAN;
	if (codes_make(c, m, &cd))
		return;
	for (uint32_t e = 0; e < cd.E; e++) {
		uint32_t i = eval_query(c, e, cd.E);
		krn_get()->hamming(cd.q + (size_t)e * cd.words, cd.k, cd.words, c->S, cd.h);
		hit += eval_recall(c, m, cd.h, i);
		L += eval_loss(c, cd.h, i, &n);
	}
	*loss = n ? L / n : 0;
	*recall = hit / ((double)cd.E * c->T);
	codes_free(&cd);
}

/* The step's batch: B queries, their positives and random keys. */
static uint32_t draw_batch(struct lctx *c)
{
	uint32_t nk = 0;

	for (uint32_t i = 0; i < c->B; i++) {
		c->bq[i] = below(&c->rng, c->Q);
		for (uint32_t j = 0; j < POS_PER_QUERY; j++)
			c->bk[nk++] = c->pos[(size_t)c->bq[i] * c->T + below(&c->rng, c->T)];
	}
	for (uint32_t j = 0; j < c->R; j++)
		c->bk[nk++] = below(&c->rng, c->S);
	return nk;
}

/* Forward: hard signs of the batch's keys and queries, STE factors. */
static void forward(struct lctx *c, const struct rt_lhead *m, uint32_t nk)
{
	const struct krn_ops *ops = krn_get();
	uint32_t bits = c->bits;

	for (uint32_t k = 0; k < nk; k++)
		memcpy(c->kb + (size_t)k * c->dim, c->kh + (size_t)c->bk[k] * c->dim,
		       c->dim * sizeof(float));
	ops->dot(c->kb, nk, m->Wk, c->dim, bits, c->dim, c->ak, bits);
	for (uint32_t i = 0; i < c->B; i++) {
		const float *u = c->u + (size_t)c->bq[i] * c->dim;
		memcpy(c->ub + (size_t)i * c->dim, u, c->dim * sizeof(float));
		rt_lhead_query_pre(m, u, c->aq + (size_t)i * bits, c->hid + (size_t)i * c->hidden);
		ops->dot(u, 1, c->kb, c->dim, nk, c->dim, c->z + (size_t)i * c->kb_max, nk);
	}
	for (size_t x = 0; x < (size_t)nk * bits; x++) {
		float t = tanhf(c->ak[x]);
		c->sk[x] = c->ak[x] > 0 ? 1.0f : -1.0f;
		c->dk[x] = 1.0f - t * t;
	}
	for (size_t x = 0; x < (size_t)c->B * bits; x++) {
		float t = tanhf(c->aq[x]);
		c->sq[x] = c->aq[x] > 0 ? 1.0f : -1.0f;
		c->dq[x] = 1.0f - t * t;
	}
}

/*
 * dL/de of query i of the batch into g[i][0..nk), which holds the code
 * dot products sq[i] . sk[k] on entry.
 */
static void pair_grads(struct lctx *c, uint32_t i, uint32_t nk)
{
	const float *z = c->z + (size_t)i * c->kb_max;
	float *g = c->g + (size_t)i * c->kb_max, e[1024], a = c->alpha;
	uint32_t pos[1024], neg[1024], np = 0, nn = 0;

	for (uint32_t k = 0; k < nk; k++) {
		if (z[k] * c->kn[c->bk[k]] >= c->thr[c->bq[i]])
			pos[np++] = k;
		else
			neg[nn++] = k;
		e[k] = c->r[c->bk[k]] * g[k] / c->bits;
		g[k] = 0;
	}
	if (!np || !nn)
		return;
	float w = a / ((float)np * nn * c->B);
	for (uint32_t x = 0; x < np; x++) {
		float ep = e[pos[x]], gp = 0;
		for (uint32_t y = 0; y < nn; y++) {
			float sg = w / (1.0f + expf(a * (ep - e[neg[y]])));
			g[neg[y]] += sg;
			gp -= sg;
		}
		g[pos[x]] += gp;
	}
}

/* dL/d(pre-sign) of queries (gq) and keys (gk) from g, through the STE. */
static void code_grads(struct lctx *c, uint32_t nk)
{
	const struct krn_ops *ops = krn_get();
	uint32_t bits = c->bits;

	for (uint32_t i = 0; i < c->B; i++)
		for (uint32_t k = 0; k < nk; k++) {
			float w = c->g[(size_t)i * c->kb_max + k] * c->r[c->bk[k]] / bits;
			c->g[(size_t)i * c->kb_max + k] = w;
			c->at[(size_t)k * c->B + i] = w;
		}
	memset(c->gq, 0, (size_t)c->B * bits * sizeof(float));
	memset(c->gk, 0, (size_t)nk * bits * sizeof(float));
	ops->wsum(c->g, c->kb_max, c->B, c->sk, bits, nk, bits, c->gq);
	ops->wsum(c->at, c->B, nk, c->sq, bits, c->B, bits, c->gk);
	for (size_t x = 0; x < (size_t)c->B * bits; x++)
		c->gq[x] *= c->dq[x];
	for (size_t x = 0; x < (size_t)nk * bits; x++)
		c->gk[x] *= c->dk[x];
}

/*
 * y[r][d] += sum_i a[i][r] * x[i][d] for a [n][rows], x [n][dim]: the
 * kernel's weighted row sum on a transposed into c->at.
 */
static void outer_acc(struct lctx *c, float *y, const float *a, uint32_t rows,
		      const float *x, uint32_t dim, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t r = 0; r < rows; r++)
			c->at[(size_t)r * n + i] = a[(size_t)i * rows + r];
	krn_get()->wsum(c->at, n, rows, x, dim, n, dim, y);
}

/* Parameter gradients into c->grad (layout of rt_lhead's buffer). */
static void backward(struct lctx *c, const struct rt_lhead *m, uint32_t nk)
{
	struct rt_lhead g = *m;
	uint32_t bits = c->bits, H = c->hidden, dim = c->dim;

	/* the gradient buffer shares the model's layout */
	g.Wk = c->grad + (m->Wk - m->buf);
	g.Wq = c->grad + (m->Wq - m->buf);
	g.W1 = c->grad + (m->W1 - m->buf);
	g.b1 = c->grad + (m->b1 - m->buf);
	g.W2 = c->grad + (m->W2 - m->buf);
	g.b2 = c->grad + (m->b2 - m->buf);
	memset(c->grad, 0, c->np * sizeof(float));
	outer_acc(c, g.Wk, c->gk, bits, c->kb, dim, nk);
	outer_acc(c, g.Wq, c->gq, bits, c->ub, dim, c->B);
	outer_acc(c, g.W2, c->gq, bits, c->hid, H, c->B);
	for (uint32_t i = 0; i < c->B; i++) {
		const float *gq = c->gq + (size_t)i * bits, *t = c->hid + (size_t)i * H;
		float *dh = c->dh + (size_t)i * H;
		for (uint32_t b = 0; b < bits; b++)
			g.b2[b] += gq[b];
		memset(dh, 0, H * sizeof(float));
		for (uint32_t b = 0; b < bits; b++) {
			const float *w2 = m->W2 + (size_t)b * H;
			for (uint32_t j = 0; j < H; j++)
				dh[j] += gq[b] * w2[j];
		}
		for (uint32_t j = 0; j < H; j++) {
			dh[j] *= 1.0f - t[j] * t[j];
			g.b1[j] += dh[j];
		}
	}
	outer_acc(c, g.W1, c->dh, H, c->ub, dim, c->B);
}

static void adam(struct lctx *c, struct rt_lhead *m, float lr, uint32_t step)
{
	const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
	float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);

	for (size_t x = 0; x < c->np; x++) {
		float gr = c->grad[x];
		c->am[x] = b1 * c->am[x] + (1 - b1) * gr;
		c->av[x] = b2 * c->av[x] + (1 - b2) * gr * gr;
		m->buf[x] -= lr * (c->am[x] / c1) / (sqrtf(c->av[x] / c2) + eps);
	}
}

/*
 * cosv[h]: the mean cosine of (u, k - mu) per Hamming distance over the
 * evaluation queries and every sampled key, pooled until non-increasing;
 * distances never seen take their neighbours' value.
 */
static int fit_table(struct lctx *c, struct rt_lhead *m)
{
	uint32_t bits = c->bits;
	double *sum = calloc(bits + 1, sizeof(double)), *cnt = calloc(bits + 1, sizeof(double));
	uint32_t *blk = malloc((bits + 1) * sizeof(uint32_t));
	struct codes cd = { 0, 0, NULL, NULL, NULL };
	int rc = -1;

	if (!sum || !cnt || !blk || codes_make(c, m, &cd))
		goto out;
	for (uint32_t e = 0; e < cd.E; e++) {
		uint32_t i = eval_query(c, e, cd.E);
		krn_get()->hamming(cd.q + (size_t)e * cd.words, cd.k, cd.words, c->S, cd.h);
		krn_get()->dot(c->u + (size_t)i * c->dim, 1, c->kh, c->dim, c->S, c->dim,
			       c->row, c->S);
		for (uint32_t s = 0; s < c->S; s++) {
			sum[cd.h[s]] += c->row[s];
			cnt[cd.h[s]] += 1;
		}
	}
	/* pool adjacent violators, non-increasing, weighted by counts */
	uint32_t nb = 0;
	for (uint32_t h = 0; h <= bits; h++) {
		if (!cnt[h])
			continue;
		blk[nb] = h;
		sum[h] /= cnt[h];
		nb++;
		while (nb > 1 && sum[blk[nb - 1]] > sum[blk[nb - 2]]) {
			uint32_t a = blk[nb - 2], b = blk[nb - 1];
			sum[a] = (sum[a] * cnt[a] + sum[b] * cnt[b]) / (cnt[a] + cnt[b]);
			cnt[a] += cnt[b];
			nb--;
		}
	}
	if (!nb)
		goto out;
	/* block j covers [blk[j], blk[j + 1]) of the seen distances */
	for (uint32_t j = 0; j < nb; j++) {
		uint32_t h1 = j + 1 < nb ? blk[j + 1] : bits + 1;
		for (uint32_t h = j ? blk[j] : 0; h < h1; h++)
			m->cosv[h] = (float)sum[blk[j]];
	}
	rc = 0;
out:
	free(sum);
	free(cnt);
	free(blk);
	codes_free(&cd);
	return rc;
}

static void sizes(struct lctx *c, uint32_t bits, uint32_t dim, uint32_t hidden,
		  uint32_t nk, uint32_t nq, const struct rt_learn_opts *o)
{
	memset(c, 0, sizeof(*c));
	c->dim = dim;
	c->bits = bits;
	c->hidden = hidden;
	c->S = nk < o->max_keys ? nk : o->max_keys;
	c->Q = nq < o->max_queries ? nq : o->max_queries;
	c->T = (uint32_t)(o->top_frac * c->S);
	c->T = c->T < 4 ? 4 : c->T;
	c->B = o->batch ? o->batch : 32;
	c->R = o->rand_keys;
	c->kb_max = c->B * POS_PER_QUERY + c->R;
	c->np = rt_lhead_floats(c->bits, c->dim, c->hidden) - (c->bits + 1);
	c->rng = o->seed;
	c->alpha = o->alpha;
	if (c->kb_max > 1024) {
		c->R = 1024 - c->B * POS_PER_QUERY;
		c->kb_max = 1024;
	}
}

static int setup(struct lctx *c, const struct rt_lhead *m, uint32_t nk, uint32_t nq,
		 const struct rt_learn_opts *o)
{
	sizes(c, m->bits, m->dim, m->hidden, nk, nq, o);
	return ctx_alloc(c);
}

size_t rt_learn_bytes(uint32_t bits, uint32_t dim, uint32_t hidden, uint32_t nk,
		      uint32_t nq, const struct rt_learn_opts *o)
{
	struct lctx c;

	sizes(&c, bits, dim, hidden, nk, nq, o);
	return ctx_bytes(&c);
}

int rt_learn_head(const float *keys, uint32_t nk, size_t ld_k, const float *mu,
		  const float *queries, uint32_t nq, size_t ld_q, const float *P,
		  const struct rt_learn_opts *o, struct rt_lhead *m,
		  struct rt_learn_stats *st)
{
	struct rt_learn_stats s = { NAN, NAN, NAN, NAN, 0, 0, 0, 0 };
	struct timespec t0;
	struct lctx c;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	rt_lhead_init(m, P, o->seed ^ 0x5151);
	if (nk < 64 || nq < 8 || o->batch > 256) {
		rc = 1;
		goto done;
	}
	if (setup(&c, m, nk, nq, o)) {
		ctx_free(&c);
		return -1;
	}
	take_keys(&c, keys, nk, ld_k, mu);
	take_queries(&c, queries, nq, ld_q);
	add_probes(&c);
	find_positives(&c);
	evaluate(&c, m, &s.loss0, &s.recall0);
	for (uint32_t t = 1; t <= o->steps; t++) {
		uint32_t n = draw_batch(&c);
		forward(&c, m, n);
		krn_get()->dot(c.sq, c.B, c.sk, c.bits, n, c.bits, c.g, c.kb_max);
		for (uint32_t i = 0; i < c.B; i++)
			pair_grads(&c, i, n);
		code_grads(&c, n);
		backward(&c, m, n);
		adam(&c, m, o->lr, t);
		s.steps = t;
		if (o->budget_ms > 0 && ms_since(&t0) > o->budget_ms)
			break;
	}
	if (fit_table(&c, m))
		rc = -1;
	evaluate(&c, m, &s.loss1, &s.recall1);
	s.n_keys = c.S;
	s.n_queries = c.Q;
	ctx_free(&c);
done:
	s.ms = ms_since(&t0);
	if (st)
		*st = s;
	return rc;
}
