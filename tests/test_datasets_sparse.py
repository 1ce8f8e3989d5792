"""LIBSVM files through scikit-learn, kept sparse: SparseRows, the reader's fallback to the line
scanner (the same errors, with the line), and the problems on sparse data computing what they
compute on the same data dense."""

from __future__ import annotations

import bz2
import gzip
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncopt.errors import ConfigError
from asyncopt.problems import datasets
from asyncopt.problems.datasets import DataFileError, load_dataset, read_libsvm
from asyncopt.problems.registry import make_problem
from asyncopt.problems.sparse import SparseRows, cat, dense


def _random_sparse(rows: int, width: int, seed: int = 0, density: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, width)).astype(np.float32)
    X[rng.random((rows, width)) >= density] = 0.0
    X[1] = 0.0  # an empty row
    return X


def _rows(X: np.ndarray) -> SparseRows:
    from scipy import sparse

    return SparseRows.from_scipy(sparse.csr_matrix(X))


def test_sparse_rows_subsets_stay_sparse_and_minibatches_are_the_dense_rows():
    X = _random_sparse(12, 7)
    S, D = _rows(X), torch.from_numpy(X)
    assert len(S) == 12 and S.shape == (12, 7) and S.dtype == torch.float32
    picks = torch.tensor([3, 1, 3, 11, 0, -1])
    assert torch.equal(S.index_select(0, picks), D[picks])
    for index in (slice(2, 9), slice(None, None, 3), slice(5, 2), torch.tensor([4, 1, 1]),
                  np.array([0, 11, 5])):
        subset = S[index]
        assert isinstance(subset, SparseRows)
        assert torch.equal(subset.to_dense(), D[index])
    assert [len(part) for part in S.split(5)] == [5, 5, 2]
    assert torch.equal(cat(S.split([3, 0, 9])).to_dense(), D)
    assert torch.equal(dense(S), D) and dense(D) is D
    assert torch.equal(pickle.loads(pickle.dumps(S)).to_dense(), D)
    assert S.nbytes == 13 * 8 + int(np.count_nonzero(X)) * (8 + 4)


LIBSVM = "+1 1:0.5 3:-2 # a comment\n-1 qid:4 2:1.5\n\n+1\n2 1:1e-1 4:4\n"


def test_the_reader_gives_sparse_or_dense_and_reads_compressed_files(tmp_path):
    path = tmp_path / "small.svm"
    path.write_text(LIBSVM)
    X, y, classes = read_libsvm(path)
    S, y_sparse, _ = read_libsvm(path, sparse=True)
    expected = np.array([[0.5, 0, -2, 0], [0, 1.5, 0, 0], [0, 0, 0, 0], [0.1, 0, 0, 4]],
                        dtype=np.float32)
    np.testing.assert_array_equal(X, expected)
    assert X.dtype == np.float32 and S.dtype == np.float32 and S.format == "csr"
    np.testing.assert_array_equal(S.toarray(), expected)
    assert y.tolist() == y_sparse.tolist() == [1, 0, 1, 2] and classes.tolist() == [-1, 1, 2]
    for suffix, opener in ((".gz", gzip.open), (".bz2", bz2.open)):
        packed = tmp_path / f"small.svm{suffix}"
        with opener(packed, "wt") as file:
            file.write(LIBSVM)
        np.testing.assert_array_equal(read_libsvm(packed)[0], expected)
        with opener(packed, "wt") as file:
            file.write(LIBSVM + "1 2:x\n")
        with pytest.raises(DataFileError, match=r"line 6: bad entry '2:x'"):
            read_libsvm(packed)
    (tmp_path / "broken.svm.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match=r"broken\.svm\.gz.*readable LIBSVM file"):
        read_libsvm(tmp_path / "broken.svm.gz")


@pytest.mark.parametrize(("line", "what"), [
    ("1 1:nan", "finite value"),
    ("1 2:inf", "finite value"),
    ("1 1:1e39", "beyond float32's range"),
    ("1 1:-3.5e38", "beyond float32's range"),
    ("nan 1:1", "bad label 'nan'"),
    ("2.5 1:1", "bad label '2.5'"),
    ("1 qid:x 1:1", "bad entry 'qid:x'"),
    ("1 1:1 qid:3", "bad entry 'qid:3'"),
    ("1 99999999999:1", "above num_features"),
    ("1 1:1 junk", "bad entry 'junk'"),
])
def test_what_scikit_learn_reads_or_refuses_is_reported_by_line(tmp_path, line, what):
    path = tmp_path / "bad.svm"
    path.write_text(f"1 1:1\n# comment\n\n-1 2:2\n{line}\n1 3:1\n")
    with pytest.raises(DataFileError) as caught:
        read_libsvm(path, num_features=5, sparse=True)
    assert f"{path}, line 5: " in str(caught.value) and what in str(caught.value)


def test_a_line_only_scikit_learn_refuses_is_read_by_the_scanner(tmp_path):
    path = tmp_path / "odd.svm"  # "1 1:1\r2 2:2": str.splitlines sees two lines, sklearn one
    path.write_bytes(b"1 1:1\r2 2:2\n")
    X, y, classes = read_libsvm(path)
    np.testing.assert_array_equal(X, [[1, 0], [0, 2]])
    assert classes.tolist() == [1, 2] and y.tolist() == [0, 1]


LINES = st.lists(st.one_of(
    st.sampled_from(["1 1:0.5 2:1", "0 3:2", "-1 1:1e39", "1 2:nan", "2 1:1 1:2", "x 1:1",
                     "1 0:3", "1 1:", "# comment", "", "1.5 1:1", "1 9:1", "1 qid:2 2:1",
                     "1 1:1 # tail", "1 1:inf", "3.0 2:-0", "+1 +2:1", "1 01:3", "nan 1:1"]),
    st.text(alphabet="0123456789:.- e#\tq", max_size=16)), min_size=0, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(lines=LINES, width=st.one_of(st.none(), st.integers(1, 6)))
def test_the_reader_agrees_with_the_line_scanner(tmp_path, lines, width):
    """scikit-learn's reading, checked, equals the scanner's: the same matrix and labels, or
    the same error on the same line."""
    path = tmp_path / "data.svm"
    path.write_text("\n".join(lines))
    try:
        X_scan, labels = datasets._scan(path, width)
    except DataFileError as error:
        with pytest.raises(DataFileError) as caught:
            read_libsvm(path, width, sparse=True)
        assert (caught.value.line, caught.value.what) == (error.line, error.what)
        return
    if X_scan.shape[0] == 0:
        with pytest.raises(ConfigError, match="at least one sample"):
            read_libsvm(path, width, sparse=True)
        return
    X, y, classes = read_libsvm(path, width, sparse=True)
    assert X.shape == X_scan.shape
    np.testing.assert_array_equal(X.toarray(), X_scan.toarray())
    np.testing.assert_array_equal(classes[y], labels)


def _sparse_file(tmp_path, rows: int = 60, width: int = 40):
    rng = np.random.default_rng(1)
    X = _random_sparse(rows, width, seed=2, density=0.08)
    lines = [" ".join([str(int(rng.integers(3))), *(f"{j + 1}:{X[i, j]:.6g}"
                                                     for j in np.flatnonzero(X[i]))])
             for i in range(rows)]
    path = tmp_path / "wide.svm"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_large_sparse_set_stays_sparse_and_a_small_one_dense(tmp_path, monkeypatch):
    path = _sparse_file(tmp_path)
    small = load_dataset("libsvm", seed=0, path=str(path))
    assert isinstance(small.X_train, torch.Tensor)
    monkeypatch.setattr(datasets, "SPARSE_ABOVE_BYTES", 0)
    large = load_dataset("libsvm", seed=0, path=str(path))
    assert isinstance(large.X_train, SparseRows) and isinstance(large.X_test, SparseRows)
    assert large.num_features == small.num_features == 40
    assert torch.equal(large.X_train.to_dense(), small.X_train)
    assert torch.equal(large.X_test.to_dense(), small.X_test)
    assert torch.equal(large.y_train, small.y_train)


def test_a_set_too_wide_even_for_sparse_rows_is_refused(tmp_path):
    path = tmp_path / "wide.svm"
    path.write_text("1 1:1\n-1 99999999999:1\n")
    with pytest.raises(ConfigError, match=r"at most 8388608 features wide .*99999999999"):
        load_dataset("libsvm", seed=0, path=str(path))
    with pytest.raises(ConfigError, match=r"fits densely in 2 GiB"):
        read_libsvm(path)


@pytest.mark.parametrize(("name", "gradient"), [("logistic", "closed_form"),
                                                ("logistic", "autograd"), ("mlp", "closed_form"),
                                                ("mlp", "autograd")])
def test_problems_on_sparse_data_compute_what_they_compute_dense(tmp_path, monkeypatch, name,
                                                                  gradient):
    path = _sparse_file(tmp_path)
    spec = {"name": name, "dataset": "libsvm", "path": str(path), "gradient": gradient,
            "batch_size": 8, "l2": 0.01}
    if name == "mlp":
        spec["hidden"] = 5
    dense_problem = make_problem(spec, 3, 0)
    monkeypatch.setattr(datasets, "SPARSE_ABOVE_BYTES", 0)
    sparse_problem = make_problem(spec, 3, 0)
    assert isinstance(sparse_problem.X_train, SparseRows)
    assert isinstance(pickle.loads(pickle.dumps(sparse_problem)).X_train, SparseRows)
    params = dense_problem.init_params(torch.Generator().manual_seed(0))
    for worker in range(3):
        results = [problem.loss_and_grad(params, worker, torch.Generator().manual_seed(worker))
                   for problem in (dense_problem, sparse_problem)]
        assert results[0][0] == results[1][0]
        for key in params:
            assert torch.equal(results[0][1][key], results[1][1][key])
        blocks = [problem.gradient_at(params, worker)(torch.Generator().manual_seed(5))
                  for problem in (dense_problem, sparse_problem)]
        for key in params:
            assert torch.equal(blocks[0][1][key], blocks[1][1][key])
    batched = [problem.loss_and_grads(params, [0, 2], [torch.Generator().manual_seed(s)
                                                       for s in (1, 2)])
               for problem in (dense_problem, sparse_problem)]
    for (loss_a, grad_a), (loss_b, grad_b) in zip(*batched, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-6)
        for key in params:
            torch.testing.assert_close(grad_a[key], grad_b[key])
    assert dense_problem.evaluate(params) == sparse_problem.evaluate(params)
    X = sparse_problem.X_train  # every sample in one shard: the mean row's bytes each
    assert sparse_problem.worker_data_bytes() == len(X) * (X.nbytes // len(X) + 8)


def test_a_run_on_sparse_data(tmp_path, monkeypatch):
    import asyncopt

    monkeypatch.setattr(datasets, "SPARSE_ABOVE_BYTES", 0)
    path = _sparse_file(tmp_path)
    problem = make_problem({"name": "logistic", "dataset": "libsvm", "path": str(path)}, 2, 0)
    result = asyncopt.train(problem, "sgd", "asgd", budget={"steps": 30},
                            run_dir=tmp_path / "run")
    assert np.isfinite(result.summary["final"]["loss"])
    assert "accuracy" in result.summary["final"]
