"""Datasets: bundled sets, synthetic data, the LIBSVM reader and its error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import DataFileError, load_dataset, read_libsvm

LIBSVM_TEXT = """\
# a comment line, then a blank line

+1 1:0.5 3:-2 # trailing comment
-1 2:1.5
+1
2 1:1e-1 4:4
"""


def test_read_libsvm_values_labels_and_sparse_zeros(tmp_path):
    path = tmp_path / "small.svm"
    path.write_text(LIBSVM_TEXT)
    X, y, classes = read_libsvm(path)
    expected = np.array([[0.5, 0, -2, 0], [0, 1.5, 0, 0], [0, 0, 0, 0], [0.1, 0, 0, 4]],
                        dtype=np.float32)
    np.testing.assert_allclose(X, expected)
    assert classes.tolist() == [-1, 1, 2]
    assert y.tolist() == [1, 0, 1, 2]
    X_wide, _, _ = read_libsvm(path, num_features=6)
    assert X_wide.shape == (4, 6) and not X_wide[:, 4:].any()


@pytest.mark.parametrize(("line", "what"), [
    ("abc 1:1", "bad label 'abc'"),
    ("1.5 1:1", "bad label '1.5'"),
    ("1 1:x", "bad entry '1:x'"),
    ("1 1-2", "bad entry '1-2'"),
    ("1 0:3", "indices start at 1"),
    ("1 3:1 2:1", "strictly increasing"),
    ("1 3:1 3:2", "strictly increasing"),
    ("1 9:1", "above num_features"),
])
def test_a_bad_line_is_reported_with_its_file_and_number(tmp_path, line, what):
    path = tmp_path / "bad.svm"
    path.write_text(f"1 1:1\n\n# comment\n{line}\n-1 2:2\n")
    with pytest.raises(DataFileError) as caught:
        read_libsvm(path, num_features=5)
    message = str(caught.value)
    assert f"{path}, line 4: " in message and what in message
    assert caught.value.line == 4 and isinstance(caught.value, ConfigError)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"path = '.*nowhere\.svm' .*existing LIBSVM file"):
        read_libsvm(tmp_path / "nowhere.svm")
    (tmp_path / "empty.svm").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="at least one sample"):
        read_libsvm(tmp_path / "empty.svm")
    with pytest.raises(ConfigError, match=r"path = None"):
        load_dataset("libsvm", seed=0)


def test_libsvm_dataset_is_split_and_unscaled(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{'+1' if i % 2 else '-1'} 1:{rng.random():.3f} 2:{rng.random():.3f}"
             for i in range(40)]
    path = tmp_path / "data.svm"
    path.write_text("\n".join(lines))
    data = load_dataset("libsvm", seed=0, path=str(path))
    assert data.num_classes == 2 and data.num_features == 2
    assert len(data.y_train) == 32 and len(data.y_test) == 8
    assert float(data.X_train.min()) >= 0.0 and float(data.X_train.max()) <= 1.0


@pytest.mark.parametrize(("name", "classes"), [("digits", 10), ("breast_cancer", 2),
                                                ("iris", 3), ("wine", 3)])
def test_bundled_datasets_split_stratified_and_scaled(name, classes):
    data = load_dataset(name, seed=0, test_fraction=0.25)
    assert data.num_classes == classes and data.X_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64 and data.feature_names is not None
    total = len(data.y_train) + len(data.y_test)
    assert abs(len(data.y_test) - 0.25 * total) <= classes
    train_share = torch.bincount(data.y_train, minlength=classes) / len(data.y_train)
    test_share = torch.bincount(data.y_test, minlength=classes) / len(data.y_test)
    assert torch.allclose(train_share, test_share, atol=0.03)
    if name == "digits":
        assert float(data.X_train.min()) == 0.0 and float(data.X_train.max()) == 1.0
    else:
        assert torch.allclose(data.X_train.mean(0), torch.zeros(data.num_features), atol=1e-5)
        assert torch.allclose(data.X_train.std(0, unbiased=False),
                              torch.ones(data.num_features), atol=1e-4)


def test_split_is_seeded_and_test_fraction_zero_leaves_no_test_set():
    a, b = load_dataset("iris", seed=1), load_dataset("iris", seed=1)
    c = load_dataset("iris", seed=2)
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    empty = load_dataset("iris", seed=0, test_fraction=0.0)
    assert len(empty.y_train) == 150 and len(empty.y_test) == 0


def test_synthetic_data_follow_their_true_weights():
    data = load_dataset("synthetic", seed=0, num_samples=500, num_features=5, num_classes=3,
                        label_noise=0.1)
    assert data.X_train.shape == (400, 5) and data.true_weights.shape == (5, 3)
    predicted = (data.X_train @ data.true_weights).argmax(1)
    agreement = float((predicted == data.y_train).float().mean())
    assert 0.85 < agreement < 0.98  # about 1 − 0.1·(2/3) agree; noise breaks the rest
    again = load_dataset("synthetic", seed=0, num_samples=500, num_features=5, num_classes=3,
                         label_noise=0.1)
    assert torch.equal(data.X_train, again.X_train)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("mnist", {}, r"dataset = 'mnist' .*digits"),
    ("iris", {"test_fraction": 1.0}, r"test_fraction = 1\.0"),
    ("iris", {"num_samples": 10}, r"dataset options = 'num_samples' .*none"),
    ("synthetic", {"label_noise": 2}, r"label_noise = 2"),
    ("synthetic", {"num_classes": 1}, r"num_classes = 1"),
])
def test_bad_inputs_name_their_field(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset(name, seed=0, **kwargs)
