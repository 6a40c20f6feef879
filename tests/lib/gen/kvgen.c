/* kvgen.c - deterministic LLM-like attention data (see kvgen.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvgen.h"

#define MAXD 256
#define BLOCK 64 /* tokens per RoPE table in kvgen_kv */
#define GOLDEN 0x9e3779b97f4a7c15ULL

/* hash streams: one per kind of random quantity */
enum {
	ST_KMEAN = 1, ST_QMEAN, ST_QOWN, ST_SINK, ST_VMEAN, ST_OUTL,
	ST_KNOISE, ST_KNORM, ST_TOPIC, ST_SEGB, ST_VSEG, ST_VNOISE,
	ST_QSH, ST_QNOISE, ST_AIM, ST_AIMW, ST_NEEDLE, ST_NPOS, ST_NVAL
};

struct kvgen {
	struct kvgen_params p;
	uint32_t d, np, group;
	uint32_t slow0;        /* first slow pair */
	uint32_t m_slow;       /* dims in slow pairs */
	double aim, sink_pull, sink_norm, rec, needle_aim, qnoise;
	double nrest;          /* sqrt(1 - needle_share^2) */
	double vneedle;        /* RMS of a needle's private value */
	double *freq;          /* [np] */
	float *km;             /* [n_kv][d] key mean */
	float *outl;           /* [n_kv][d] outlier add-on of k_raw */
	float *sink;           /* [n_kv][d] sink direction D_h */
	float *vm;             /* [n_kv][d] value mean */
	float *qm;             /* [n_q][d] query mean */
	uint8_t *is_outl;      /* [n_kv][np] 1 for outlier pairs */
};

/* ---- counter-based random numbers ---- */

static inline uint64_t mix(uint64_t x)
{
	x += GOLDEN;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t key3(const struct kvgen *g, uint32_t stream, uint64_t a,
		     uint64_t b, uint64_t c)
{
	uint64_t h = mix(g->p.seed ^ ((uint64_t)stream << 56));

	h = mix(h ^ a);
	h = mix(h ^ b);
	return mix(h ^ c);
}

/* an approximately N(0, 1) number from 64 random bits (Irwin-Hall 4) */
static inline float gauss(uint64_t u)
{
	uint32_t s = (uint32_t)(u & 0xffff) + (uint32_t)((u >> 16) & 0xffff) +
		     (uint32_t)((u >> 32) & 0xffff) + (uint32_t)(u >> 48);

	return ((float)s + 2.0f) * (1.7320508f / 65536.0f) - 3.4641016f;
}

static inline float gauss_at(uint64_t base, uint32_t j)
{
	return gauss(mix(base + (uint64_t)(j + 1) * GOLDEN));
}

static double unif(uint64_t u)
{
	return (double)(u >> 11) * 0x1p-53;
}

/* ---- RoPE ---- */

static double rope_freq(uint32_t j, uint32_t dim, double theta)
{
	return pow(theta, -(double)(2 * j) / (double)dim);
}

/* cs[2j] = cos, cs[2j + 1] = sin of pos * freq[j] */
static void rope_table(const double *freq, uint32_t np, uint64_t pos, float *cs)
{
	for (uint32_t j = 0; j < np; j++) {
		double a = (double)pos * freq[j];
		cs[2 * j] = (float)cos(a);
		cs[2 * j + 1] = (float)sin(a);
	}
}

static void rotate(float *x, uint32_t np, const float *cs)
{
	for (uint32_t j = 0; j < np; j++) {
		float a = x[j], b = x[j + np];
		float c = cs[2 * j], s = cs[2 * j + 1];
		x[j] = a * c - b * s;
		x[j + np] = a * s + b * c;
	}
}

void kvgen_rope(float *x, uint32_t dim, double theta, uint64_t pos)
{
	double freq[MAXD / 2];
	float cs[MAXD];
	uint32_t np = dim / 2;

	if (theta <= 0 || dim > MAXD)
		return;
	for (uint32_t j = 0; j < np; j++)
		freq[j] = rope_freq(j, dim, theta);
	rope_table(freq, np, pos, cs);
	rotate(x, np, cs);
}

static void g_rope(const struct kvgen *g, float *x, uint64_t pos)
{
	float cs[MAXD];

	if (g->p.rope_theta <= 0)
		return;
	rope_table(g->freq, g->np, pos, cs);
	rotate(x, g->np, cs);
}

/* ---- parameters ---- */

void kvgen_params_init(struct kvgen_params *p)
{
	memset(p, 0, sizeof(*p));
	p->seed = 1;
	p->n_kv_heads = 8;
	p->n_q_heads = 32;
	p->head_dim = 128;
	p->rope_theta = 10000.0;
	p->key_mean = 0.6;
	p->norm_spread = 0.2;
	p->n_outliers = 3;
	p->outlier = 6.0;
	p->segment_len = 512;
	p->topic = 1.0;
	p->n_sinks = 4;
	p->sink_logit = 9.5;
	p->sink_value = 0.1;
	p->query_mean = 0.35;
	p->query_noise = 0.7;
	p->group_corr = 0.7;
	p->recency = 2.5;
	p->n_aims = 3;
	p->aim_logit = 2.2;
	p->needle_stride = 4096;
	p->needle_share = 0.9;
	p->needle_logit = 20.0;
	p->value_mean = 0.3;
	p->value_segment = 0.8;
	p->value_noise = 0.6;
}

static int params_ok(const struct kvgen_params *p)
{
	if (!p->n_kv_heads || !p->n_q_heads || p->n_q_heads % p->n_kv_heads)
		return 0;
	if (p->head_dim < 8 || p->head_dim > MAXD || p->head_dim % 2)
		return 0;
	if (p->n_outliers > p->head_dim / 4 || !p->segment_len)
		return 0;
	if (p->needle_share < 0 || p->needle_share > 1)
		return 0;
	return p->group_corr >= 0 && p->group_corr <= 1;
}

const struct kvgen_params *kvgen_params(const struct kvgen *g)
{
	return &g->p;
}

/* ---- per-head fixed vectors ---- */

static void fill_gauss(const struct kvgen *g, uint32_t stream, uint64_t a,
		       float *x, double rms)
{
	uint64_t base = key3(g, stream, a, 0, 0);

	for (uint32_t j = 0; j < g->d; j++)
		x[j] = (float)(rms * gauss_at(base, j));
}

/* is channel j in a slow pair? */
static int slow_dim(const struct kvgen *g, uint32_t j)
{
	return (j % g->np) >= g->slow0;
}

static void pick_outliers(struct kvgen *g, uint32_t h)
{
	uint32_t half = g->np / 2, span = g->np - half;
	uint8_t *mark = g->is_outl + (size_t)h * g->np;
	float *o = g->outl + (size_t)h * g->d;

	for (uint32_t i = 0, t = 0; i < g->p.n_outliers; t++) {
		uint64_t u = key3(g, ST_OUTL, h, t, 0);
		uint32_t j = half + (uint32_t)(u % span);
		if (mark[j])
			continue;
		mark[j] = 1;
		o[j] = (float)((u >> 40) & 1 ? g->p.outlier : -g->p.outlier);
		i++;
	}
}

static void head_vectors(struct kvgen *g, uint32_t h)
{
	float *s = g->sink + (size_t)h * g->d;

	fill_gauss(g, ST_KMEAN, h, g->km + (size_t)h * g->d, g->p.key_mean);
	fill_gauss(g, ST_VMEAN, h, g->vm + (size_t)h * g->d, g->p.value_mean);
	fill_gauss(g, ST_SINK, h, s, 1.0);
	for (uint32_t j = 0; j < g->d; j++)
		if (!slow_dim(g, j))
			s[j] = 0;
	pick_outliers(g, h);
}

static void query_means(struct kvgen *g)
{
	float sh[MAXD], own[MAXD];

	for (uint32_t qh = 0; qh < g->p.n_q_heads; qh++) {
		float *q = g->qm + (size_t)qh * g->d;
		fill_gauss(g, ST_QMEAN, qh / g->group, sh, g->p.query_mean);
		fill_gauss(g, ST_QOWN, qh, own, g->p.query_mean);
		for (uint32_t j = 0; j < g->d; j++)
			q[j] = 0.8f * sh[j] + 0.6f * own[j];
	}
}

/* the first pair that turns by at most 1 rad over a segment (>= 4 slow) */
static uint32_t first_slow(const struct kvgen *g)
{
	uint32_t j = 0;

	while (j < g->np && g->freq[j] * g->p.segment_len > 1.0)
		j++;
	return j + 4 > g->np ? g->np - 4 : j;
}

/* translate the logit-scale knobs into vector magnitudes */
static void scales(struct kvgen *g)
{
	double s = 1.0 / sqrt((double)g->d);
	double m = g->m_slow, kf = g->p.key_mean * g->p.key_mean * (g->d - m);
	double topic = g->p.topic > 0 ? g->p.topic : 1.0;

	g->sink_norm = 4.0;
	g->aim = g->p.aim_logit / (s * topic * m);
	g->sink_pull = g->p.sink_logit / (s * g->sink_norm * m);
	g->rec = kf > 0 ? g->p.recency / (s * kf) : 0.0;
	g->needle_aim = g->p.needle_share > 0 ?
		g->p.needle_logit / (s * g->p.needle_share * g->d) : 0.0;
	g->nrest = sqrt(1.0 - g->p.needle_share * g->p.needle_share);
	g->qnoise = g->p.query_noise;
	g->vneedle = sqrt(g->p.value_segment * g->p.value_segment +
			  g->p.value_noise * g->p.value_noise);
}

static int alloc_tables(struct kvgen *g)
{
	size_t kv = (size_t)g->p.n_kv_heads * g->d;

	g->freq = calloc(g->np, sizeof(*g->freq));
	g->km = calloc(kv, sizeof(float));
	g->outl = calloc(kv, sizeof(float));
	g->sink = calloc(kv, sizeof(float));
	g->vm = calloc(kv, sizeof(float));
	g->qm = calloc((size_t)g->p.n_q_heads * g->d, sizeof(float));
	g->is_outl = calloc((size_t)g->p.n_kv_heads * g->np, 1);
	return g->freq && g->km && g->outl && g->sink && g->vm && g->qm &&
	       g->is_outl;
}

struct kvgen *kvgen_new(const struct kvgen_params *p)
{
	struct kvgen *g;

	if (!p || !params_ok(p))
		return NULL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->p = *p;
	g->d = p->head_dim;
	g->np = g->d / 2;
	g->group = p->n_q_heads / p->n_kv_heads;
	if (!alloc_tables(g)) {
		kvgen_free(g);
		return NULL;
	}
	for (uint32_t j = 0; j < g->np; j++)
		g->freq[j] = p->rope_theta > 0 ? rope_freq(j, g->d, p->rope_theta) : 0;
	g->slow0 = p->rope_theta > 0 ? first_slow(g) : g->np / 2;
	g->m_slow = 2 * (g->np - g->slow0);
	scales(g);
	for (uint32_t h = 0; h < p->n_kv_heads; h++)
		head_vectors(g, h);
	query_means(g);
	return g;
}

void kvgen_free(struct kvgen *g)
{
	if (!g)
		return;
	free(g->freq);
	free(g->km);
	free(g->outl);
	free(g->sink);
	free(g->vm);
	free(g->qm);
	free(g->is_outl);
	free(g);
}

/* ---- segments and needles ---- */

static uint64_t seg_border(const struct kvgen *g, uint64_t slot)
{
	uint64_t L = g->p.segment_len;

	if (slot == 0)
		return 0;
	return slot * L + L / 4 + key3(g, ST_SEGB, slot, 0, 0) % (L / 2 + 1);
}

uint64_t kvgen_segment(const struct kvgen *g, uint64_t pos)
{
	uint64_t slot = pos / g->p.segment_len;

	return pos < seg_border(g, slot) ? slot - 1 : slot;
}

void kvgen_segment_bounds(const struct kvgen *g, uint64_t seg,
			  uint64_t *start, uint64_t *end)
{
	*start = seg_border(g, seg);
	*end = seg_border(g, seg + 1);
}

uint64_t kvgen_needle_pos(const struct kvgen *g, uint64_t n)
{
	uint64_t st = g->p.needle_stride;
	uint64_t lo = st / 8, span = st - 2 * lo;
	uint64_t pos = n * st + lo;

	if (!st)
		return UINT64_MAX;
	if (span > 1)
		pos += key3(g, ST_NPOS, n, 0, 0) % span;
	return pos < g->p.n_sinks ? g->p.n_sinks : pos;
}

uint64_t kvgen_needle_count(const struct kvgen *g, uint64_t pos)
{
	uint64_t n;

	if (!g->p.needle_stride)
		return 0;
	n = pos / g->p.needle_stride;
	return n + (kvgen_needle_pos(g, n) < pos);
}

/* the needle index at pos, or -1 */
static int64_t needle_at(const struct kvgen *g, uint64_t pos)
{
	uint64_t n;

	if (!g->p.needle_stride)
		return -1;
	n = pos / g->p.needle_stride;
	return kvgen_needle_pos(g, n) == pos ? (int64_t)n : -1;
}

/* U_n of kv head h: N(0, 1) off the outlier pairs */
static void needle_dir(const struct kvgen *g, uint32_t h, uint64_t n, float *u)
{
	const uint8_t *mark = g->is_outl + (size_t)h * g->np;

	fill_gauss(g, ST_NEEDLE, ((uint64_t)h << 40) ^ n, u, 1.0);
	for (uint32_t j = 0; j < g->d; j++)
		if (mark[j % g->np])
			u[j] = 0;
}

/* ---- keys and values ---- */

struct segcache {
	uint64_t seg;
	int valid;
	float t[MAXD]; /* topic latent T(h, S), slow dims */
	float v[MAXD]; /* segment value V(h, S) */
};

static void seg_vectors(const struct kvgen *g, uint32_t h, uint64_t seg,
			struct segcache *c)
{
	uint64_t bt = key3(g, ST_TOPIC, h, seg, 0);
	uint64_t bv = key3(g, ST_VSEG, h, seg, 0);

	for (uint32_t j = 0; j < g->d; j++) {
		c->t[j] = slow_dim(g, j) ? gauss_at(bt, j) : 0.0f;
		c->v[j] = gauss_at(bv, j);
	}
	c->seg = seg;
	c->valid = 1;
}

static const struct segcache *seg_get(const struct kvgen *g, uint32_t h,
				      uint64_t pos, struct segcache *c)
{
	uint64_t seg = kvgen_segment(g, pos);

	if (!c->valid || c->seg != seg)
		seg_vectors(g, h, seg, c);
	return c;
}

static float token_norm(const struct kvgen *g, uint32_t h, uint64_t pos)
{
	if (g->p.norm_spread <= 0)
		return 1.0f;
	return (float)exp(g->p.norm_spread *
			  gauss(key3(g, ST_KNORM, h, pos, 0)));
}

static void key_raw_sink(const struct kvgen *g, uint32_t h, uint64_t pos,
			 float *k)
{
	const float *km = g->km + (size_t)h * g->d;
	const float *d = g->sink + (size_t)h * g->d;
	uint64_t base = key3(g, ST_KNOISE, h, pos, 0);

	for (uint32_t j = 0; j < g->d; j++)
		k[j] = km[j] + (float)g->sink_norm * d[j] +
		       0.3f * gauss_at(base, j);
}

static void key_raw_needle(const struct kvgen *g, uint32_t h, uint64_t pos,
			   uint64_t n, float *k)
{
	const float *km = g->km + (size_t)h * g->d;
	const float *o = g->outl + (size_t)h * g->d;
	uint64_t base = key3(g, ST_KNOISE, h, pos, 0);
	float u[MAXD];

	needle_dir(g, h, n, u);
	for (uint32_t j = 0; j < g->d; j++)
		k[j] = km[j] + o[j] + (float)g->p.needle_share * u[j] +
		       (float)g->nrest * gauss_at(base, j);
}

static void key_raw_plain(const struct kvgen *g, uint32_t h, uint64_t pos,
			  const float *t, float *k)
{
	const float *km = g->km + (size_t)h * g->d;
	const float *o = g->outl + (size_t)h * g->d;
	uint64_t base = key3(g, ST_KNOISE, h, pos, 0);
	float nf = token_norm(g, h, pos), tp = (float)g->p.topic;

	for (uint32_t j = 0; j < g->d; j++)
		k[j] = km[j] + o[j] + tp * t[j] + nf * gauss_at(base, j);
}

static void key_raw(const struct kvgen *g, uint32_t h, uint64_t pos,
		    struct segcache *c, float *k)
{
	int64_t n;

	if (pos < g->p.n_sinks) {
		key_raw_sink(g, h, pos, k);
		return;
	}
	n = needle_at(g, pos);
	if (n >= 0)
		key_raw_needle(g, h, pos, (uint64_t)n, k);
	else
		key_raw_plain(g, h, pos, seg_get(g, h, pos, c)->t, k);
}

static void value_tok(const struct kvgen *g, uint32_t h, uint64_t pos,
		      struct segcache *c, float *v)
{
	const float *vm = g->vm + (size_t)h * g->d;
	uint64_t base = key3(g, ST_VNOISE, h, pos, 0);
	int64_t n = needle_at(g, pos);
	float vs = (float)g->p.value_segment, vn = (float)g->p.value_noise;
	const float *sv;

	if (pos < g->p.n_sinks) {
		for (uint32_t j = 0; j < g->d; j++)
			v[j] = (float)g->p.sink_value * gauss_at(base, j);
		return;
	}
	if (n >= 0) {
		uint64_t bn = key3(g, ST_NVAL, h, (uint64_t)n, 0);
		for (uint32_t j = 0; j < g->d; j++)
			v[j] = vm[j] + (float)g->vneedle * gauss_at(bn, j);
		return;
	}
	sv = seg_get(g, h, pos, c)->v;
	for (uint32_t j = 0; j < g->d; j++)
		v[j] = vm[j] + vs * sv[j] + vn * gauss_at(base, j);
}

void kvgen_key_raw(const struct kvgen *g, uint32_t head, uint64_t pos, float *k)
{
	struct segcache c = { .valid = 0 };

	key_raw(g, head, pos, &c, k);
}

void kvgen_key(const struct kvgen *g, uint32_t head, uint64_t pos, float *k)
{
	kvgen_key_raw(g, head, pos, k);
	g_rope(g, k, pos);
}

void kvgen_value(const struct kvgen *g, uint32_t head, uint64_t pos, float *v)
{
	struct segcache c = { .valid = 0 };

	value_tok(g, head, pos, &c, v);
}

/* one block of <= BLOCK tokens: RoPE tables once, then head by head */
static void kv_block(const struct kvgen *g, uint64_t pos0, uint32_t n,
		     float *cs, struct segcache *cache, float *k, float *v)
{
	uint32_t nkv = g->p.n_kv_heads, d = g->d;
	int rope = g->p.rope_theta > 0;

	if (k && rope)
		for (uint32_t i = 0; i < n; i++)
			rope_table(g->freq, g->np, pos0 + i, cs + (size_t)i * d);
	for (uint32_t h = 0; h < nkv; h++) {
		for (uint32_t i = 0; i < n; i++) {
			size_t off = ((size_t)i * nkv + h) * d;
			if (k) {
				key_raw(g, h, pos0 + i, &cache[2 * h], k + off);
				if (rope)
					rotate(k + off, g->np, cs + (size_t)i * d);
			}
			if (v)
				value_tok(g, h, pos0 + i, &cache[2 * h + 1], v + off);
		}
	}
}

void kvgen_kv(const struct kvgen *g, uint64_t pos0, uint32_t n,
	      float *k, float *v)
{
	size_t tok = (size_t)g->p.n_kv_heads * g->d;
	struct segcache *cache;
	float *cs;

	cs = malloc((size_t)BLOCK * g->d * sizeof(*cs));
	cache = calloc(2 * (size_t)g->p.n_kv_heads, sizeof(*cache));
	if (!cs || !cache)
		abort(); /* a test helper: out of memory is fatal */
	for (uint32_t i = 0; i < n; i += BLOCK) {
		uint32_t m = n - i < BLOCK ? n - i : BLOCK;
		kv_block(g, pos0 + i, m, cs, cache, k ? k + i * tok : NULL,
			 v ? v + i * tok : NULL);
	}
	free(cache);
	free(cs);
}

/* ---- queries ---- */

/* the aimed segment of aim a (a = 0: the current one) and its centre */
static uint64_t aim_segment(const struct kvgen *g, uint32_t h, uint64_t pos,
			    uint64_t draw, uint32_t a, uint64_t *centre)
{
	uint64_t cur = kvgen_segment(g, pos), seg = cur, s, e;

	if (a > 0 && cur > 0)
		seg = key3(g, ST_AIM, ((uint64_t)h << 32) | a, pos, draw) % cur;
	kvgen_segment_bounds(g, seg, &s, &e);
	if (e > pos + 1)
		e = pos + 1;
	*centre = s + (e - s) / 2;
	return seg;
}

/* x += w * R(c) T(h, S) for aim a */
static void add_aim(const struct kvgen *g, uint32_t h, uint64_t pos,
		    uint64_t draw, uint32_t a, double w, float *x)
{
	struct segcache c = { .valid = 0 };
	uint64_t centre, seg = aim_segment(g, h, pos, draw, a, &centre);
	float t[MAXD];

	seg_vectors(g, h, seg, &c);
	memcpy(t, c.t, g->d * sizeof(float));
	g_rope(g, t, centre);
	for (uint32_t j = 0; j < g->d; j++)
		x[j] += (float)w * t[j];
}

static double aim_weight(const struct kvgen *g, uint32_t qh, uint64_t pos,
			 uint64_t draw, uint32_t a)
{
	return 0.6 + 0.8 * unif(key3(g, ST_AIMW, ((uint64_t)qh << 32) | a,
				     pos, draw));
}

/* q_rel of q head qh (before R(pos)) */
static void query_rel(const struct kvgen *g, uint32_t qh, uint64_t pos,
		      uint64_t draw, float *q)
{
	uint32_t h = qh / g->group;
	const float *qm = g->qm + (size_t)qh * g->d;
	const float *km = g->km + (size_t)h * g->d;
	uint64_t bs = key3(g, ST_QSH, h, pos, draw);
	uint64_t bo = key3(g, ST_QNOISE, qh, pos, draw);
	float c = (float)g->p.group_corr, r = sqrtf(1.0f - c * c);
	float qn = (float)g->qnoise, rc = (float)g->rec;

	for (uint32_t j = 0; j < g->d; j++) {
		float z = c * gauss_at(bs, j) + r * gauss_at(bo, j);
		q[j] = qm[j] + qn * z + (slow_dim(g, j) ? 0.0f : rc * km[j]);
	}
}

/* the needle aim needle_aim * R(i_n) U_n of needle n, kv head h */
static void needle_aim(const struct kvgen *g, uint32_t h, uint64_t n, float *u)
{
	needle_dir(g, h, n, u);
	g_rope(g, u, kvgen_needle_pos(g, n));
	for (uint32_t j = 0; j < g->d; j++)
		u[j] *= (float)g->needle_aim;
}

/* the sinks' logit comes from the sink pull alone: set q's D_h part */
static void sink_part(const struct kvgen *g, uint32_t h, float *q)
{
	const float *d = g->sink + (size_t)h * g->d;
	double dq = 0.0, dd = 0.0, c;

	for (uint32_t j = 0; j < g->d; j++) {
		dq += (double)q[j] * d[j];
		dd += (double)d[j] * d[j];
	}
	c = dd > 0 ? dq / dd : 0.0;
	for (uint32_t j = 0; j < g->d; j++)
		q[j] += (float)(g->sink_pull - c) * d[j];
}

/*
 * a query; extra (or NULL) is added in the rotated frame; aims: bit a
 * set for every aim a the query takes (all: ~0u)
 */
static void query_aims(const struct kvgen *g, uint32_t qh, uint64_t pos,
		       uint64_t draw, const float *extra, uint32_t aims, float *q)
{
	uint32_t h = qh / g->group;

	query_rel(g, qh, pos, draw, q);
	g_rope(g, q, pos);
	for (uint32_t a = 0; a < g->p.n_aims; a++)
		if (aims >> (a < 31 ? a : 31) & 1)
			add_aim(g, h, pos, draw, a,
				g->aim * aim_weight(g, qh, pos, draw, a), q);
	for (uint32_t j = 0; extra && j < g->d; j++)
		q[j] += extra[j];
	sink_part(g, h, q);
}

static void query(const struct kvgen *g, uint32_t qh, uint64_t pos,
		  uint64_t draw, const float *extra, float *q)
{
	query_aims(g, qh, pos, draw, extra, ~0u, q);
}

void kvgen_kind_queries(const struct kvgen *g, enum kvgen_kind kind, uint64_t pos,
			uint64_t draw, float *q)
{
	/* aim 0 is the current segment; aim 1 an earlier one (when any) */
	uint32_t aims = kind == KVGEN_CURRENT ? 1u : kind == KVGEN_EARLIER ? 2u : ~0u;

	for (uint32_t qh = 0; qh < g->p.n_q_heads; qh++)
		query_aims(g, qh, pos, draw, NULL, aims, q + (size_t)qh * g->d);
}

void kvgen_query_draw(const struct kvgen *g, uint32_t qh, uint64_t pos,
		      uint64_t draw, float *q)
{
	query(g, qh, pos, draw, NULL, q);
}

void kvgen_query(const struct kvgen *g, uint32_t qh, uint64_t pos, float *q)
{
	query(g, qh, pos, 0, NULL, q);
}

void kvgen_queries(const struct kvgen *g, uint64_t pos, uint64_t draw, float *q)
{
	for (uint32_t qh = 0; qh < g->p.n_q_heads; qh++)
		query(g, qh, pos, draw, NULL, q + (size_t)qh * g->d);
}

void kvgen_needle_query(const struct kvgen *g, uint32_t qh, uint64_t n,
			uint64_t pos, float *q)
{
	float u[MAXD];

	needle_aim(g, qh / g->group, n, u);
	/* draw: a stream of its own per needle, apart from plain draws */
	query(g, qh, pos, ~n, u, q);
}

void kvgen_needle_queries(const struct kvgen *g, uint64_t n, uint64_t pos,
			  float *q)
{
	for (uint32_t qh = 0; qh < g->p.n_q_heads; qh++)
		kvgen_needle_query(g, qh, n, pos, q + (size_t)qh * g->d);
}

uint32_t kvgen_outlier_channels(const struct kvgen *g, uint32_t head,
				uint32_t *ch)
{
	const uint8_t *mark = g->is_outl + (size_t)head * g->np;
	uint32_t n = 0;

	for (uint32_t j = 0; j < g->d; j++)
		if (mark[j % g->np])
			ch[n++] = j;
	return n;
}

/* ---- concentration ---- */

static void swapd(double *x, uint32_t i, uint32_t j)
{
	double t = x[i];

	x[i] = x[j];
	x[j] = t;
}

static double median3(double a, double b, double c)
{
	if (a > b) {
		double t = a;
		a = b;
		b = t;
	}
	return c < a ? a : c > b ? b : c;
}

/* reorder x so that its m largest values come first (3-way quickselect) */
static void top_partition(double *x, uint32_t n, uint32_t m)
{
	uint32_t lo = 0, hi = n;

	while (hi - lo > 1) {
		double piv = median3(x[lo], x[lo + (hi - lo) / 2], x[hi - 1]);
		uint32_t lt = lo, i = lo, gt = hi;
		while (i < gt) {
			if (x[i] > piv)
				swapd(x, lt++, i++);
			else if (x[i] < piv)
				swapd(x, i, --gt);
			else
				i++;
		}
		if (m <= lt)
			hi = lt;
		else if (m <= gt)
			return;
		else
			lo = gt;
	}
}

double kvgen_top_mass(const double *logit, uint32_t n, double frac,
		      double *scratch)
{
	double *x = scratch ? scratch : malloc((size_t)n * sizeof(*x));
	double mx = -INFINITY, sum = 0.0, top = 0.0;
	uint32_t m = (uint32_t)ceil(frac * n);

	if (!x || n == 0) {
		if (!scratch)
			free(x);
		return n == 0 ? 0.0 : -1.0;
	}
	m = m < 1 ? 1 : m > n ? n : m;
	for (uint32_t i = 0; i < n; i++)
		mx = logit[i] > mx ? logit[i] : mx;
	for (uint32_t i = 0; i < n; i++) {
		x[i] = exp(logit[i] - mx);
		sum += x[i];
	}
	top_partition(x, n, m);
	for (uint32_t i = 0; i < m; i++)
		top += x[i];
	if (!scratch)
		free(x);
	return top / sum;
}

/* keys of one kv head, [n][d] */
static void head_keys(const struct kvgen *g, uint32_t h, uint32_t n, float *k)
{
	struct segcache c = { .valid = 0 };

	for (uint32_t i = 0; i < n; i++) {
		key_raw(g, h, i, &c, k + (size_t)i * g->d);
		g_rope(g, k + (size_t)i * g->d, i);
	}
}

static double head_mass(const struct kvgen *g, uint32_t h, const float *k,
			uint32_t n, uint32_t nq, double *logit, double *scr)
{
	double s = 1.0 / sqrt((double)g->d), acc = 0.0;
	float q[MAXD];

	for (uint32_t qh = h * g->group; qh < (h + 1) * g->group; qh++) {
		for (uint32_t r = 0; r < nq; r++) {
			kvgen_query_draw(g, qh, n - 1, r, q);
			for (uint32_t i = 0; i < n; i++) {
				const float *ki = k + (size_t)i * g->d;
				double dot = 0.0;
				for (uint32_t j = 0; j < g->d; j++)
					dot += (double)q[j] * ki[j];
				logit[i] = s * dot;
			}
			acc += kvgen_top_mass(logit, n, 0.01, scr);
		}
	}
	return acc;
}

double kvgen_mass_top1pct(const struct kvgen *g, uint32_t n_tokens,
			  uint32_t n_queries)
{
	float *k = malloc((size_t)n_tokens * g->d * sizeof(*k));
	double *logit = malloc((size_t)n_tokens * sizeof(*logit));
	double *scr = malloc((size_t)n_tokens * sizeof(*scr));
	double acc = 0.0;

	if (!k || !logit || !scr || !n_tokens || !n_queries) {
		free(k);
		free(logit);
		free(scr);
		return -1.0;
	}
	for (uint32_t h = 0; h < g->p.n_kv_heads; h++) {
		head_keys(g, h, n_tokens, k);
		acc += head_mass(g, h, k, n_tokens, n_queries, logit, scr);
	}
	free(k);
	free(logit);
	free(scr);
	return acc / ((double)n_queries * g->p.n_q_heads);
}
