"""Ranks of the correct candidates, computed sharded over the mesh and chunked over queries.

Shared by retrieval (queries: images or texts) and zero-shot classification
(queries: images, candidates: class embeddings). Scores are dot products of
L2-normalised embeddings in float32 at full precision.

Ties are pessimistic: a query's rank is the number of *wrong* candidates whose
score is >= the best score of any correct candidate, so a hit at k needs
rank < k. A degenerate model (all scores equal) thus scores 0, never 1, and the
result does not depend on the order of candidates or on the sort's stability.
Candidates that are the same thing (one caption string under two images, one
class name listed twice) carry the same id, so neither counts against the other.

Shape legend: Q queries (one chunk), M correct ids per query, N candidates,
E embedding dim, C chunk rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

MAX_CHUNK_SCORES = 1 << 24  # scores per chunk (C * N): 64 MiB of float32 across the mesh


@jax.jit
def _chunk_ranks(query_QxE, query_ids_QxM, cand_NxE, cand_ids_N):
  scores_QxN = jnp.matmul(query_QxE, cand_NxE.T, precision=jax.lax.Precision.HIGHEST)
  correct_QxN = jnp.any(query_ids_QxM[:, :, None] == cand_ids_N[None, None, :], axis=1)
  best_Q = jnp.max(jnp.where(correct_QxN, scores_QxN, -jnp.inf), axis=1)
  ahead_QxN = ~correct_QxN & (scores_QxN >= best_Q[:, None])
  return jnp.sum(ahead_QxN, axis=1, dtype=jnp.int32)


def _global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """The same host array on every process -> a global array with `sharding`."""
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def ranks(query_QxE: np.ndarray, query_ids_Q: np.ndarray, cand_NxE: np.ndarray, cand_ids_N: np.ndarray, *,
          mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Pessimistic rank of each query's best correct candidate (see module docstring); int [Q].

  A candidate is correct for a query when its id is the query's id (`query_ids_Q` [Q]) or one
  of its ids ([Q, M], padded with -1; ids are >= 0). Queries are split into chunks sharded
  over all devices of `mesh` (default: all devices); candidates are replicated. A query with
  no correct candidate gets rank N.
  """
  query_QxE, cand_NxE = np.asarray(query_QxE, np.float32), np.asarray(cand_NxE, np.float32)
  query_ids_Q, cand_ids_N = np.asarray(query_ids_Q, np.int32), np.asarray(cand_ids_N, np.int32)
  if query_ids_Q.ndim == 1:
    query_ids_Q = query_ids_Q[:, None]
  if mesh is None:
    mesh = jax.make_mesh((jax.device_count(),), ("q",), devices=jax.devices())
  n_dev = mesh.size
  rows = max(1, min(4096, MAX_CHUNK_SCORES // max(len(cand_NxE), 1) // n_dev)) * n_dev
  rows = min(rows, -(-len(query_QxE) // n_dev) * n_dev)  # no bigger than the (padded) query set
  split = NamedSharding(mesh, P(mesh.axis_names))
  cands = _global(cand_NxE, NamedSharding(mesh, P()))
  cand_ids = _global(cand_ids_N, NamedSharding(mesh, P()))
  out = []
  for start in range(0, len(query_QxE), rows):
    q, ids = query_QxE[start:start + rows], query_ids_Q[start:start + rows]
    pad = rows - len(q)
    q = np.pad(q, ((0, pad), (0, 0)))
    ids = np.pad(ids, ((0, pad), (0, 0)), constant_values=-1)
    r = _chunk_ranks(_global(q, split), _global(ids, split), cands, cand_ids)
    out.append(multihost_utils.process_allgather(r, tiled=True)[:rows - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)
