"""The skeleton graph of ST-GCN: the 'spatial' partitioning of a layout's joints (pure numpy).

This module owns the adjacency tensor ``A [K, V, V]`` that every ST-GCN block aggregates
with (``cmd_jax.models.stgcn``). It reproduces the ST-GCN reference's ``Graph(strategy=
'spatial')`` (ST-GCN paper, "Spatial Configuration Partitioning") as that code computes it,
with ``max_hop = 1`` and ``dilation = 1`` in the configuration HiCLR uses, and it derives
everything from the layout's data: the links are ``layout.edges`` plus a self link per joint,
the centre is ``layout.root`` (NTU-25: joint 20, spine shoulder; MSR-20: joint 2, neck).

Computation (indices 0-based, ``A[k, j, i]`` with ``j`` the row and ``i`` the column):

1. Hop distances. ``B`` = the symmetric 0/1 link matrix (self links included);
   ``hop[j, i] = min{d <= max_hop : (B^d)[j, i] > 0}``, ``inf`` when no such ``d``.
2. Adjacency ``adj[j, i] = 1`` where ``hop[j, i]`` is one of the valid hops
   ``0, dilation, 2 dilation, ... <= max_hop``; normalised as ``adj D^-1``
   (``D = diag`` of the column sums, entries with a zero column sum left at 0), so
   ``norm[j, i] = adj[j, i] / sum_j' adj[j', i]``.
3. Partitions. For every valid hop ``h`` and every pair with ``hop[j, i] == h``, compare the
   two joints' distances to the centre ``c``: ``hop[j, c] == hop[i, c]`` -> "root",
   ``hop[j, c] > hop[i, c]`` -> "close", ``hop[j, c] < hop[i, c]`` -> "further". Hop 0
   contributes one matrix (its root part, i.e. the normalised self links); every other hop
   contributes two, ``root + close`` and ``further``. With ``max_hop = 1``: ``K = 3``.

The convolution reads ``A`` as ``out[..., i] = sum_j x[..., j] A[k, j, i]`` (einsum
``kvw`` with ``v = j``, ``w = i``): column ``i`` holds what joint ``i`` receives, and each
column summed over the partitions is 1 (the normalisation is per receiving joint).

QUIRK (kept, it is what the reference computes): the distances to the centre are themselves
hop distances capped at ``max_hop``, so with ``max_hop = 1`` every joint that is not the
centre or one of its neighbours is at distance ``inf``; ``inf == inf`` then puts every link
between two such joints into the *root* partition (merged with "close" into ``A[1]``),
instead of splitting the skeleton into centripetal and centrifugal links as the paper
describes. For NTU-25 the non-zeros per
partition are 25 / 40 / 8: ``A[0]`` the self links, ``A[2]`` only the 8 links that go out
of the centre's neighbourhood (``j`` nearer the centre than ``i``: the centre to its 4
neighbours, and each of those neighbours to its one neighbour further out), ``A[1]`` the
other 40 directed links.
"""

from __future__ import annotations

import numpy as np

from cmd_jax.layouts import SkeletonLayout


def link_matrix(num_joints: int, edges) -> np.ndarray:
  """The symmetric 0/1 matrix ``[V, V]`` of the links ``edges`` plus every self link."""
  b = np.eye(num_joints)
  for a, c in edges:
    if not (0 <= a < num_joints and 0 <= c < num_joints):
      raise ValueError(f"graph: link {(a, c)} outside [0, {num_joints})")
    b[a, c] = b[c, a] = 1.0
  return b


def hop_distance(num_joints: int, edges, max_hop: int = 1) -> np.ndarray:
  """``hop[j, i]``: the fewest links between ``j`` and ``i`` when at most ``max_hop``, else ``inf``."""
  b = link_matrix(num_joints, edges)
  hop = np.full((num_joints, num_joints), np.inf)
  reach = np.eye(num_joints)
  for d in range(max_hop + 1):
    if d > 0:
      reach = reach @ b  # (B^d) > 0 <=> reachable in <= d steps (B has self links)
    hop[(reach > 0) & np.isinf(hop)] = d
  return hop


def normalize_columns(adj: np.ndarray) -> np.ndarray:
  """``adj D^-1``: each column divided by its sum (columns summing to 0 stay 0)."""
  col = adj.sum(axis=0)
  inv = np.divide(1.0, col, out=np.zeros_like(col), where=col > 0)
  return adj * inv[None, :]


def spatial_partitions(num_joints: int, edges, center: int, max_hop: int = 1, dilation: int = 1) -> np.ndarray:
  """The reference's 'spatial' strategy: ``A [K, V, V]`` float64 (module docstring)."""
  if not 0 <= center < num_joints:
    raise ValueError(f"graph: centre {center} outside [0, {num_joints})")
  if max_hop < 0 or dilation < 1:
    raise ValueError(f"graph: max_hop={max_hop} must be >= 0 and dilation={dilation} >= 1")
  hop = hop_distance(num_joints, edges, max_hop)
  valid = list(range(0, max_hop + 1, dilation))
  norm = normalize_columns(np.isin(hop, valid).astype(np.float64))
  to_center = hop[:, center]
  d_j = to_center[:, None]  # row j's distance to the centre, compared with column i's
  d_i = to_center[None, :]
  root = d_j == d_i  # QUIRK: inf == inf is True
  close = d_j > d_i
  further = d_j < d_i
  parts = []
  for h in valid:
    at_h = hop == h
    if h == 0:
      parts.append(np.where(at_h & root, norm, 0.0))
    else:
      parts.append(np.where(at_h & (root | close), norm, 0.0))
      parts.append(np.where(at_h & further, norm, 0.0))
  return np.stack(parts)


def layout_graph(layout: SkeletonLayout, max_hop: int = 1, dilation: int = 1) -> np.ndarray:
  """The ST-GCN graph of ``layout``: ``A [K, V, V]`` float32 from ``layout.edges`` and
  ``layout.root`` (``K = 3`` with the defaults)."""
  a = spatial_partitions(layout.num_joints, layout.edges, layout.root, max_hop, dilation)
  return a.astype(np.float32)


def num_partitions(max_hop: int = 1, dilation: int = 1) -> int:
  """``K`` of the 'spatial' strategy: 1 for hop 0 plus 2 per other valid hop."""
  return 1 + 2 * len(range(dilation, max_hop + 1, dilation))
