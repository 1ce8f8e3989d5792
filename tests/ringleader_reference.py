"""The Ringleader ASGD authors' reference functions, copied verbatim as the tests' oracle.

Source: GitHub vectozavr/ringmaster-lmo at commit d175d78 (the experiment scripts exist only in
commits 9013e25…d175d78), ``code/experiments/``:

* ``prep_data.py``: ``reduce_dataset_to_multiple`` and ``dirichlet_partition_equal_size``;
* ``tune_and_plot_single_seed.py``: ``make_delays`` and ``make_noise_function``;
* ``asynchronous/asynchronous_transport.py``: ``State`` and ``RandomDelayedAsynchronousTransport``;
* ``asynchronous/algorithm.py``: ``IAASGD``, ``RennalaSGD`` and ``RingleaderASGD``.

The bodies are unchanged (only imports are gathered here), so ruff is silenced for this file.
Tests compare asyncopt's options against these functions on small cases, not against asyncopt's
own arithmetic.
"""
# ruff: noqa

import heapq
from enum import Enum

import numpy as np


# ---- prep_data.py -----------------------------------------------------------------------------
def reduce_dataset_to_multiple(features, labels, number_of_classes, num_nodes, seed=42):
    """
    Trim dataset so len(labels) % num_nodes == 0 by removing as few samples as possible.
    Ensures trimming is proportional across classes and correctness is verified.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    N = len(labels)
    C = int(number_of_classes)

    # --- Safety guards ---
    assert num_nodes > 0, "num_nodes must be positive"
    assert N >= num_nodes, f"Dataset has only {N} samples, fewer than num_nodes={num_nodes}"
    assert np.all(labels >= 0), "Labels must be non-negative integers"
    assert np.all(labels < C), "Labels must be < number_of_classes"

    # target size (largest multiple of num_nodes ≤ N)
    N_target = (N // num_nodes) * num_nodes
    r = N - N_target

    # If already divisible, return unchanged
    if r == 0:
        kept_idx = np.arange(N)
        dropped_idx = np.array([], dtype=int)

        # Check invariants
        assert len(kept_idx) == N
        assert len(dropped_idx) == 0
        assert (len(kept_idx) % num_nodes) == 0
        return features, labels, kept_idx, dropped_idx

    # class-wise counts
    idx_by_class = [np.where(labels == c)[0] for c in range(C)]
    counts = np.array([len(ix) for ix in idx_by_class], dtype=int)

    # Proportional allocation of drops
    p = counts / counts.sum()
    raw_drop = p * r
    base_drop = np.floor(raw_drop).astype(int)
    short = r - base_drop.sum()
    if short > 0:
        frac_order = np.argsort(-(raw_drop - base_drop))
        base_drop[frac_order[:short]] += 1

    assert base_drop.sum() == r, "Drop allocation mismatch"

    # Randomly select indices to drop
    drop_list = []
    for c in range(C):
        k = base_drop[c]
        if k > 0:
            assert len(idx_by_class[c]) >= k, "Not enough samples in class to drop"
            drop_list.append(rng.choice(idx_by_class[c], size=k, replace=False))
    dropped_idx = np.concatenate(drop_list) if drop_list else np.array([], dtype=int)

    # Build kept set
    mask = np.ones(N, dtype=bool)
    mask[dropped_idx] = False
    kept_idx = np.nonzero(mask)[0]

    # --- Assertions for correctness ---
    assert len(kept_idx) + len(dropped_idx) == N, "Lost or duplicated samples"
    assert len(set(kept_idx) & set(dropped_idx)) == 0, "Overlap between kept and dropped"
    assert (len(kept_idx) % num_nodes) == 0, "Kept size not divisible by num_nodes"
    union = np.sort(np.concatenate([kept_idx, dropped_idx]))
    assert union.shape == (N,) and np.array_equal(union, np.arange(N)), \
        "Kept + dropped indices do not cover the full dataset"

    # Optional: check class balance approx
    before_counts = np.bincount(labels, minlength=C)
    after_counts = np.bincount(labels[kept_idx], minlength=C)
    # Difference should sum to r
    assert before_counts.sum() - after_counts.sum() == r

    return features[kept_idx], labels[kept_idx], kept_idx, dropped_idx


def dirichlet_partition_equal_size(
    features, labels, number_of_classes,
    num_nodes=10, alpha=0.5, seed=0
):
    """
    Equal-size Dirichlet partitioner that uses ALL of the (already trimmed) data.
    Assumes len(labels) % num_nodes == 0.
    Returns client-wise features/labels and the index splits (relative to the *trimmed* arrays).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    N = len(labels)
    C = int(number_of_classes)
    K = int(num_nodes)
    assert N % K == 0, "Dataset size must be divisible by num_nodes (trim first)."

    N_per_client = N // K

    # per-class pools (over trimmed data)
    idx_by_class = [np.where(labels == c)[0].tolist() for c in range(C)]
    for pool in idx_by_class:
        rng.shuffle(pool)

    def rounded_counts(p, total):
        raw = p * total
        base = np.floor(raw).astype(int)
        short = total - base.sum()
        if short > 0:
            frac_order = np.argsort(-(raw - base))
            base[frac_order[:short]] += 1
        return base

    idx_splits = [[] for _ in range(K)]
    for j in range(K):
        # Dirichlet proportions for this client
        p = rng.dirichlet(np.ones(C) * alpha)
        need_c = rounded_counts(p, N_per_client)

        # Extract; top-up if a class runs short to keep exact size
        for c in range(C):
            need = int(need_c[c])
            take = min(need, len(idx_by_class[c]))
            if take > 0:
                idx_splits[j].extend(idx_by_class[c][:take])
                idx_by_class[c] = idx_by_class[c][take:]
            deficit = need - take
            if deficit > 0:
                # top-up from classes with remaining stock
                remaining = np.array([len(pool) for pool in idx_by_class])
                for c2 in np.argsort(-remaining):
                    if deficit == 0 or remaining[c2] == 0:
                        continue
                    give = min(deficit, len(idx_by_class[c2]))
                    idx_splits[j].extend(idx_by_class[c2][:give])
                    idx_by_class[c2] = idx_by_class[c2][give:]
                    deficit -= give
                    if deficit == 0:
                        break

        rng.shuffle(idx_splits[j])

    # Materialize client datasets
    client_features = [features[idxs] for idxs in idx_splits]
    client_labels   = [labels[idxs]  for idxs in idx_splits]

    # safety checks: union == trimmed data, no dups, equal sizes
    flat = np.concatenate(idx_splits)
    assert len(flat) == N and len(np.unique(flat)) == N
    assert all(len(ix)==N_per_client for ix in idx_splits)

    return client_features, client_labels, idx_splits

# ---- tune_and_plot_single_seed.py --------------------------------------------------------------
def make_delays(num_nodes: int, seed: int) -> np.ndarray:
    base = np.array([1 + i for i in range(num_nodes)], dtype=int)
    rng = np.random.default_rng(seed=seed)
    return rng.permutation(base)

def make_noise_function(num_nodes: int, seed: int):
    gens = [np.random.default_rng(seed + i) for i in range(num_nodes)]
    def halfnormal(index):
        return abs(gens[index].normal(loc=0.0, scale=np.sqrt(index + 1)))
    return halfnormal


# ---- asynchronous/asynchronous_transport.py -----------------------------------------------------
class State(Enum):
    AVAILABLE = 1
    WORKING = 2
    
    
class ReturnState(Enum):
    WAIT = 1
    RESULT = 2

class RandomDelayedAsynchronousTransport(object):
    def __init__(self, nodes, delays, noise_function, is_independent=True):
        self._nodes = [node.create_instance() for node in nodes]
        self._is_independent = is_independent
        self._delays = delays
        self._noise_function = noise_function

        self._states = [State.AVAILABLE] * len(nodes)
        self._current_time = 0
        self._node_call_count = [0] * len(nodes)
        self._outputs = [None] * len(nodes)
        self._time_return = [None] * len(nodes)

        if not self._is_independent:
            # noises are stored by call index to ensure dependency
            self._noise = {}

    def _get_noise_for_node(self, node_index):
        call_index = self._node_call_count[node_index]

        if self._is_independent:
            return self._noise_function(node_index)
        else:
            if call_index not in self._noise:
                self._noise[call_index] = self._noise_function(node_index)
            return self._noise[call_index]
    
    def call_available_node_method(self, time, node_index, node_method, **kwargs):
        assert self._current_time <= time
        self._current_time = time
        assert self._states[node_index] == State.AVAILABLE
        self._states[node_index] = State.WORKING

        noise = self._get_noise_for_node(node_index)
        self._outputs[node_index] = getattr(self._nodes[node_index], node_method)(**kwargs)
        self._time_return[node_index] = self._current_time +\
                self._delays[node_index] + noise
        self._node_call_count[node_index] += 1

        return self._time_return[node_index]
    
    def call_ready_node(self, time, node_index):
        assert self._current_time <= time
        assert self._states[node_index] == State.WORKING
        self._current_time = time
        assert self._current_time >= self._time_return[node_index]
        self._states[node_index] = State.AVAILABLE
        return self._outputs[node_index]

    def ignore_node(self, time, node_index):
        self._current_time = time
        self._states[node_index] = State.AVAILABLE

    def is_node_available_at_time(self, time, node_index):
        return time >= self._time_return[node_index]
    
    def call_nodes_method(self, node_method, **kwargs):
        return [getattr(self._nodes[node_index], node_method)(**kwargs)
                for node_index in range(self.get_number_of_nodes())]
    
    def get_number_of_nodes(self):
        return len(self._nodes)

    def reset_all_nodes(self, time=None):
        self._current_time = time
        self._outputs = [None] * len(self._nodes)
        self._time_return = [None] * len(self._nodes)
        self._states = [State.AVAILABLE] * len(self._nodes)


# ---- asynchronous/algorithm.py ------------------------------------------------------------------
class IAASGD(object):
    def __init__(self, transport, point, gamma=None, delay_adaptive=False, gamma_multiply=None, seed=None, meta=None):
        self._transport = transport
        self._transport.reset_all_nodes(0)
        self._point = point
        if gamma_multiply is not None:
            gamma *= gamma_multiply
        self._gamma = gamma
        self._delay_adaptive = delay_adaptive
        self._seed = seed
        self._time = 0
        
        self._heap = []
        self._iter = 0
        self._number_of_nodes = self._transport.get_number_of_nodes()
        self._delays = np.array([0] * self._number_of_nodes)
        
        for node_index in range(self._transport.get_number_of_nodes()):
            available_time = self._transport.call_available_node_method(
                self._time, node_index, node_method="calculate_stochastic_gradient", point=self._point)
            heapq.heappush(self._heap, (available_time, node_index, self._iter))

        self._gradient_table = [None] * self._number_of_nodes
        self._valid_count = 0
        self._table_full = False
        self._mean_grad = np.zeros_like(self._point)

    # NEW: allow multiple arrivals per call (default = number of workers)
    def step(self, max_events=None):
        n = self._number_of_nodes
        K = n if (max_events is None) else int(max_events)
        if K <= 0:
            return

        # --- Warm-up: fill the table in a single call (no early returns) ---
        if not self._table_full:
            while self._valid_count < n:
                available_time, node_index, _ = heapq.heappop(self._heap)
                self._time = available_time

                g = self._transport.call_ready_node(self._time, node_index)
                g = np.asarray(g, dtype=self._point.dtype)

                old = self._gradient_table[node_index]
                if old is None:
                    self._gradient_table[node_index] = g
                    self._valid_count += 1
                else:
                    # if it happens during warm-up, just replace
                    self._gradient_table[node_index] = g

                next_time = self._transport.call_available_node_method(
                    self._time, node_index, node_method="calculate_stochastic_gradient", point=self._point)
                heapq.heappush(self._heap, (next_time, node_index, self._iter))

            # table just became full: compute initial mean once
            G = np.stack(self._gradient_table, axis=0)   # (n, d)
            self._mean_grad = G.mean(axis=0)             # (d,)
            self._table_full = True
            # fall through to steady-state below

        # --- Steady-state: process up to K arrivals this call ---
        for _ in range(K):
            available_time, node_index, _ = heapq.heappop(self._heap)
            self._time = available_time

            g = self._transport.call_ready_node(self._time, node_index)
            g = np.asarray(g, dtype=self._point.dtype)

            old = self._gradient_table[node_index]
            if old is None:
                # should not happen after warm-up, but keep it safe
                self._gradient_table[node_index] = g
                # recompute mean conservatively once if needed
                G = np.stack([x if x is not None else g for x in self._gradient_table], axis=0)
                self._mean_grad = G.mean(axis=0)
            else:
                # Incremental mean update: m <- m + (g - old)/n
                np.add(self._mean_grad, (g - old) / float(n), out=self._mean_grad)
                self._gradient_table[node_index] = g

            # One async-SGD update per arrival
            self._point -= self._gamma * self._mean_grad
            self._iter += 1

            next_time = self._transport.call_available_node_method(
                self._time, node_index, node_method="calculate_stochastic_gradient", point=self._point)
            heapq.heappush(self._heap, (next_time, node_index, self._iter))

    def calculate_function(self):
        return np.mean(self._transport.call_nodes_method(node_method='calculate_function',
                                                         point=self._point))
        
    def get_point(self):
        return self._point
    
    def get_time(self):
        return self._time

class RennalaSGD(object):
    def __init__(self, transport, point, gamma=None, gamma_multiply=None, batch_size=None, seed=None, meta=None):
        self._transport = transport
        self._point = point
        if gamma_multiply is not None:
            gamma *= gamma_multiply
        self._gamma = gamma
        self._batch_size = batch_size
        self._seed = seed
        self._time = 0
        
        self._heap = []
        self._iter = 0
        self._number_of_nodes = self._transport.get_number_of_nodes()
        
        self._gradient_estimator = 0
        self._current_batch = 0
        self._total_worker_time = 0
    
    def find_all_available_times(self):
        self._transport.reset_all_nodes(0)
        self._heap = [(self._transport.call_available_node_method(self._time, node_index, node_method="calculate_stochastic_gradient", point=self._point),
                        node_index, self._iter)
                            for node_index in range(self._number_of_nodes)]
        if self._batch_size < self._number_of_nodes:
            self._heap = heapq.nsmallest(self._batch_size, self._heap)
        heapq.heapify(self._heap) 

    def step(self):
        self.find_all_available_times()
        
        start_time = self._time
        while self._current_batch < self._batch_size:
            available_time, node_index, _ = heapq.heappop(self._heap)
            self._time = available_time
            stochastic_gradient = self._transport.call_ready_node(self._time, node_index)

            if available_time == np.inf:
                return
            
            self._gradient_estimator = self._gradient_estimator + stochastic_gradient
            self._current_batch += 1

            available_time = self._transport.call_available_node_method(
                self._time, node_index, node_method="calculate_stochastic_gradient", point=self._point)
            heapq.heappush(self._heap, (available_time, node_index, self._iter))

        self._total_worker_time += (self._time - start_time) * self._number_of_nodes

        self._point = self._point - self._gamma * (self._gradient_estimator / self._current_batch)
        self._iter += 1
        self._current_batch = 0
        self._gradient_estimator = 0

 
    def calculate_function(self):
        return np.mean(self._transport.call_nodes_method(node_method='calculate_function',
                                                         point=self._point))
        
    def get_point(self):
        return self._point
    
    def get_time(self):
        return self._time
    
    def get_total_worker_time(self):
        return self._total_worker_time

class RingleaderASGD(object):
    """
    Phase 1: collect until every worker has contributed at least once (no updates).
    Phase 2: perform exactly n updates — start with the last finisher of Phase 1.
             Extra arrivals from already-updated workers go into NEXT buffer.
    After Phase 2: move NEXT -> CURRENT, clear NEXT, and start a new Phase 1.
    """
    def __init__(self, transport, point, gamma=None, gamma_multiply=None, meta=None):
        self._transport = transport
        self._transport.reset_all_nodes(0)
        self._point = point
        if gamma_multiply is not None:
            gamma *= gamma_multiply
        self._gamma = gamma
        self._time = 0
        self._iter = 0

        self._number_of_nodes = n = self._transport.get_number_of_nodes()
        d = int(np.asarray(self._point).size)

        # CURRENT table (running per-node means at the current point)
        self._mean_curr   = np.zeros((n, d), dtype=self._point.dtype)
        self._cnt_curr    = np.zeros(n, dtype=np.int64)
        self._global_mean = np.zeros(d, dtype=self._point.dtype)

        # NEXT buffer (arrivals during Phase 2 from already-updated workers)
        self._mean_next  = np.zeros((n, d), dtype=self._point.dtype)
        self._cnt_next   = np.zeros(n, dtype=np.int64)
        self._global_mean_next = np.zeros(d, dtype=self._point.dtype)

        # Phase-1 bookkeeping
        self._have_arrived  = np.zeros(n, dtype=np.int8)  # whether worker i has contributed in current cycle
        self._arrived_count = 0

        # Event queue
        self._heap = []
        for i in range(n):
            tnext = self._transport.call_available_node_method(
                self._time, i, node_method="calculate_stochastic_gradient", point=self._point
            )
            heapq.heappush(self._heap, (tnext, i, self._iter))

    # ---- helpers ----
    def _asarray_like_point(self, g):
        # Ensure 1-D shape compatible with rows of mean tables
        return np.asarray(g, dtype=self._point.dtype).ravel()

    @staticmethod
    def _inc_mean(mean_mat, cnt_arr, i, g, n_for_global, global_vec):
        """
        Incremental mean for worker i and corresponding global mean:
          mean_i <- mean_i + (g - mean_i)/(cnt_i + 1)
          global <- global + (mean_i_new - mean_i_old)/n
        """
        c_new = int(cnt_arr[i]) + 1
        cnt_arr[i] = c_new
        mi = mean_mat[i]                 # view (1d)
        delta = (g - mi) / float(c_new)  # (d,)
        np.add(mi, delta, out=mi)
        np.add(global_vec, delta / float(n_for_global), out=global_vec)

    def _finish_cycle_and_prepare_next(self):
        """Promote NEXT -> CURRENT (O(1) swaps), clear NEXT, rebuild Phase-1 flags."""
        # Swap tables/globals
        self._mean_curr,  self._mean_next  = self._mean_next,  self._mean_curr
        self._cnt_curr,   self._cnt_next   = self._cnt_next,   self._cnt_curr
        self._global_mean, self._global_mean_next = self._global_mean_next, self._global_mean
        # Clear NEXT in-place
        self._mean_next.fill(0.0)
        self._cnt_next.fill(0)
        self._global_mean_next.fill(0.0)
        # Phase 1 pre-arrivals (fast workers may already be nonzero)
        self._have_arrived[:] = (self._cnt_curr > 0).astype(np.int8)
        self._arrived_count = int(self._have_arrived.sum())

    def step(self):
        n = self._number_of_nodes

        # -------- Phase 1: collect until all workers have contributed once
        last_finisher = None
        while self._arrived_count < n:
            available_time, i, _ = heapq.heappop(self._heap)
            self._time = available_time

            g = self._asarray_like_point(self._transport.call_ready_node(self._time, i))
            first = (self._have_arrived[i] == 0)
            self._inc_mean(self._mean_curr, self._cnt_curr, i, g, n, self._global_mean)
            if first:
                self._have_arrived[i] = 1
                self._arrived_count += 1

            if self._arrived_count == n:
                # i is the LAST finisher → do NOT reschedule at OLD point
                last_finisher = i
                break
            else:
                # keep non-last workers busy at the old point
                tnext = self._transport.call_available_node_method(
                    self._time, i, node_method="calculate_stochastic_gradient", point=self._point
                )
                heapq.heappush(self._heap, (tnext, i, self._iter))

        # -------- Phase 2: exactly n updates (start with last finisher)
        # First update with CURRENT global mean
        self._point -= self._gamma * self._global_mean
        self._iter += 1

        # Reschedule last finisher with the NEW point
        tnext = self._transport.call_available_node_method(
            self._time, last_finisher, node_method="calculate_stochastic_gradient", point=self._point
        )
        heapq.heappush(self._heap, (tnext, last_finisher, self._iter))

        # Everyone except last finisher still needs one update
        needs_update = np.ones(n, dtype=np.int8)
        needs_update[last_finisher] = 0
        remaining = n - 1

        while remaining > 0:
            available_time, i, _ = heapq.heappop(self._heap)
            self._time = available_time

            g = self._asarray_like_point(self._transport.call_ready_node(self._time, i))

            if needs_update[i]:
                # Fold old-point grad into CURRENT table, update once, then send new point
                self._inc_mean(self._mean_curr, self._cnt_curr, i, g, n, self._global_mean)
                self._point -= self._gamma * self._global_mean
                self._iter += 1
                needs_update[i] = 0
                remaining -= 1

                tnext = self._transport.call_available_node_method(
                    self._time, i, node_method="calculate_stochastic_gradient", point=self._point
                )
                heapq.heappush(self._heap, (tnext, i, self._iter))
            else:
                # Already updated this cycle → stash into NEXT (new-point grads)
                self._inc_mean(self._mean_next, self._cnt_next, i, g, n, self._global_mean_next)
                tnext = self._transport.call_available_node_method(
                    self._time, i, node_method="calculate_stochastic_gradient", point=self._point
                )
                heapq.heappush(self._heap, (tnext, i, self._iter))

        # -------- Prepare next cycle
        self._finish_cycle_and_prepare_next()

    def calculate_function(self):
        return np.mean(self._transport.call_nodes_method(
            node_method='calculate_function', point=self._point))

    def get_point(self):
        return self._point

    def get_time(self):
        return self._time

