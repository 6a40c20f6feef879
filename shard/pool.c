/* pool.c - shard worker threads (see pool.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "pool.h"

struct worker {
	struct shard_pool *pool;
	pthread_t thread;
	uint32_t shard;
};

struct shard_pool {
	uint32_t n;
	struct shard_coll *coll;
	const struct shard_plan *plan;
	pthread_mutex_t run_lock;  /* one run at a time */
	pthread_mutex_t lock;
	pthread_cond_t go, done;
	uint64_t gen;              /* bumped by each run */
	uint32_t pending;          /* workers still in the current run, or binding */
	uint32_t unbound;          /* workers not bound to their whole cpuset */
	uint32_t unbound_first;    /* the lowest shard of them */
	char unbound_msg[KRN_MSGLEN]; /* why, for that shard */
	int stop;
	shard_job_fn fn;
	void *arg;
	struct worker *w;          /* [n]; w[0] is the caller's */
	uint32_t started;
};

/* Bind the worker's thread; the pool keeps what went amiss. */
static void bind_worker(struct shard_pool *pl, uint32_t shard)
{
	char why[KRN_MSGLEN] = "";

	if (pl->plan && shard < pl->plan->n)
		shard_plan_bind_thread(pl->plan, shard, why);
	pthread_mutex_lock(&pl->lock);
	if (why[0] && (!pl->unbound++ || shard < pl->unbound_first)) {
		pl->unbound_first = shard;
		memcpy(pl->unbound_msg, why, sizeof(why));
	}
	if (--pl->pending == 0)
		pthread_cond_signal(&pl->done);
	pthread_mutex_unlock(&pl->lock);
}

static void *worker_main(void *p)
{
	struct worker *w = p;
	struct shard_pool *pl = w->pool;
	uint64_t seen = 0;

	bind_worker(pl, w->shard);
	for (;;) {
		pthread_mutex_lock(&pl->lock);
		while (!pl->stop && pl->gen == seen)
			pthread_cond_wait(&pl->go, &pl->lock);
		if (pl->stop) {
			pthread_mutex_unlock(&pl->lock);
			return NULL;
		}
		seen = pl->gen;
		shard_job_fn fn = pl->fn;
		void *arg = pl->arg;
		pthread_mutex_unlock(&pl->lock);
		fn(arg, w->shard);
		pthread_mutex_lock(&pl->lock);
		if (--pl->pending == 0)
			pthread_cond_signal(&pl->done);
		pthread_mutex_unlock(&pl->lock);
	}
}

/* Until every worker has finished the current run (or its binding). */
static void wait_workers(struct shard_pool *p)
{
	pthread_mutex_lock(&p->lock);
	while (p->pending)
		pthread_cond_wait(&p->done, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

static void stop_workers(struct shard_pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->stop = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->lock);
	for (uint32_t i = 1; i <= p->started; i++)
		pthread_join(p->w[i].thread, NULL);
}

void shard_pool_free(struct shard_pool *p)
{
	if (!p)
		return;
	stop_workers(p);
	shard_coll_free(p->coll);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->run_lock);
	free(p->w);
	free(p);
}

int shard_pool_new(struct shard_pool **out, uint32_t n, const struct shard_plan *plan,
		   char *err)
{
	struct shard_pool *p = calloc(1, sizeof(*p));
	int rc;

	if (!p || !(p->w = calloc(n ? n : 1, sizeof(*p->w)))) {
		free(p);
		return DKV_E_NOMEM;
	}
	p->n = n;
	p->plan = plan;
	pthread_mutex_init(&p->run_lock, NULL);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	rc = shard_coll_new(&p->coll, SHARD_COLL_SHM, (int)n, NULL, err);
	p->pending = n ? n - 1 : 0;
	for (uint32_t i = 1; rc == DKV_OK && i < n; i++) {
		p->w[i].pool = p;
		p->w[i].shard = i;
		if (pthread_create(&p->w[i].thread, NULL, worker_main, &p->w[i])) {
			rc = krn_msgf(err, DKV_E_NOMEM, "cannot start the thread of shard %u", i);
			break;
		}
		p->started = i;
	}
	if (rc != DKV_OK) {
		shard_pool_free(p);
		return rc;
	}
	wait_workers(p);
	*out = p;
	return DKV_OK;
}

/* Set before shard_pool_new returns, constant after: no lock. */
uint32_t shard_pool_unbound(const struct shard_pool *p, char *msg)
{
	if (p->unbound)
		krn_msgf(msg, 0, "%s", p->unbound_msg);
	return p->unbound;
}

uint32_t shard_pool_size(const struct shard_pool *p)
{
	return p->n;
}

struct shard_coll *shard_pool_coll(struct shard_pool *p)
{
	return p->coll;
}

void shard_pool_run(struct shard_pool *p, shard_job_fn fn, void *arg)
{
	if (p->n == 1) {
		fn(arg, 0);
		return;
	}
	pthread_mutex_lock(&p->run_lock);
	pthread_mutex_lock(&p->lock);
	p->fn = fn;
	p->arg = arg;
	p->pending = p->n - 1;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->lock);
	fn(arg, 0);
	wait_workers(p);
	pthread_mutex_unlock(&p->run_lock);
}
