"""Problems: objectives split across workers, with their data shards."""

from asyncopt.problems.base import Problem
from asyncopt.problems.closed_form import ClosedFormProblem, cross_entropy_grad, dense_relu_layers
from asyncopt.problems.datasets import (
    DATASETS,
    DataFileError,
    Dataset,
    load_dataset,
    read_libsvm,
    stratified_split,
)
from asyncopt.problems.partition import SCHEMES, partition
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.problems.registry import make_problem, problem_names, resolve_problem_spec
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.problems.user import ModuleCopy, check_portable, to_tensors, user_problem

__all__ = ["DATASETS", "SCHEMES", "ClosedFormProblem", "DataFileError", "Dataset", "ModuleCopy",
           "Problem", "QuadraticProblem", "SupervisedProblem", "check_portable",
           "cross_entropy_grad", "dense_relu_layers", "load_dataset", "make_problem", "partition",
           "problem_names", "read_libsvm", "resolve_problem_spec", "stratified_split",
           "to_tensors", "user_problem"]
