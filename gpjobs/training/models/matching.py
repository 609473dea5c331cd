"""Minimum-cost one-to-one assignment (the Hungarian method), shared by DETR's set matching (detr_matcher.py)
and MaX-DeepLab's slot-to-segment matching (panoptic.py).

`linear_sum_assignment` is the shortest-augmenting-path Hungarian method (Jonker-Volgenant style, as in
Crouse 2016), written in numpy because scipy is not a dependency: one augmenting path per row of the
(smaller side x larger side) cost matrix, each path search vectorised over the columns. With tens of targets
and 100 queries a match takes well under a millisecond per image.
"""

from __future__ import annotations

import numpy as np


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a minimum-cost assignment of a rectangular cost matrix, rows in ascending order.

    Every row is assigned when rows <= cols (every column otherwise), as scipy's function of the same name.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError("linear_sum_assignment: the cost must be a 2-D matrix")
    if not np.all(np.isfinite(cost)):
        raise ValueError("linear_sum_assignment: the cost matrix has NaN or infinite entries")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n, m = cost.shape
    u, v = np.zeros(n), np.zeros(m)
    col4row = np.full(n, -1, dtype=np.int64)
    row4col = np.full(m, -1, dtype=np.int64)
    for current in range(n):
        shortest = np.full(m, np.inf)
        path = np.full(m, -1, dtype=np.int64)
        seen_rows = np.zeros(n, dtype=bool)
        seen_cols = np.zeros(m, dtype=bool)
        row, min_val, sink = current, 0.0, -1
        while sink < 0:
            seen_rows[row] = True
            reduced = min_val + cost[row] - u[row] - v
            better = ~seen_cols & (reduced < shortest)
            path[better] = row
            shortest[better] = reduced[better]
            candidates = np.flatnonzero(~seen_cols)
            lowest = shortest[candidates].min()
            tied = candidates[shortest[candidates] == lowest]
            free = tied[row4col[tied] < 0]  # an unassigned column ends the path at once
            col = int(free[0] if len(free) else tied[0])
            min_val = float(lowest)
            seen_cols[col] = True
            if row4col[col] < 0:
                sink = col
            else:
                row = int(row4col[col])
        # dual update keeps the reduced costs of the assigned pairs at zero
        u[current] += min_val
        others = seen_rows.copy()
        others[current] = False
        u[others] += min_val - shortest[col4row[others]]
        v[seen_cols] -= min_val - shortest[seen_cols]
        col = sink
        while True:  # flip the alternating path
            row = int(path[col])
            row4col[col] = row
            col4row[row], col = col, int(col4row[row])
            if row == current:
                break
    rows = np.arange(n)
    if transposed:
        order = np.argsort(col4row)
        return col4row[order], rows[order]
    return rows, col4row
