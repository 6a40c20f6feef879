/*
 * proj.h - the random Gaussian projection behind the hash models.
 *
 * SimHash projects keys and queries with it (hash.h); a learned model
 * starts from it and draws its hidden layer from it (model.h).
 */
#ifndef DKV_RT_PROJ_H
#define DKV_RT_PROJ_H

#include <stdint.h>

/* The seed of a sequence's SimHash projection (the learned models' start). */
#define RT_HASH_SEED(dim) (0x44415348ull * 1000003u + (dim))

/*
 * A deterministic random projection [bits][dim] for `seed`: Gaussian rows,
 * each run of dim rows made orthogonal (rows of length sqrt(dim)); NULL
 * on ENOMEM.
 */
float *rt_hash_projection(uint32_t bits, uint32_t dim, uint64_t seed);

#endif
