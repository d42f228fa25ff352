"""joblib backend "pp" through real workers: joblib.Parallel results and
errors, lambdas (cloudpickle fallback), and scikit-learn's n_jobs
(cross_val_score and GridSearchCV on the bundled iris data)."""
import os

import pytest

joblib = pytest.importorskip("joblib", reason="joblib is not installed for this Python")

import pp.joblib  # noqa: E402,F401 (registers the backend)
import futures_jobs as F  # noqa: E402
from clusterutil import start_ppserver  # noqa: E402,F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_parallel_runs_on_pp_workers():
    with joblib.parallel_backend("pp", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(F.sleep_pid)(0, i) for i in range(40))
    assert [t for t, _ in out] == list(range(40))
    pids = {p for _, p in out}
    assert os.getpid() not in pids
    with joblib.parallel_backend("pp", n_jobs=2):
        if pp.joblib._cloudpickle() is not None:  # lambdas need cloudpickle
            assert joblib.Parallel()(joblib.delayed(lambda x: x * 2)(i) for i in range(10)) \
                == [i * 2 for i in range(10)]
        with pytest.raises(KeyError):
            joblib.Parallel()(joblib.delayed(F.fail_at)(i, 3) for i in range(10))


def test_scikit_learn_cross_val_and_grid_search():
    sk = pytest.importorskip("sklearn", reason="scikit-learn is not installed for this Python")
    del sk
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score
    X, y = load_iris(return_X_y=True)
    serial = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5)
    with joblib.parallel_backend("pp", n_jobs=2):
        par = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5, n_jobs=2)
        gs = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0, 10.0]}, cv=3,
                          n_jobs=2).fit(X, y)
    assert list(par) == list(serial)
    assert gs.best_params_["C"] in (0.1, 1.0, 10.0) and gs.best_score_ > 0.9


def test_parallel_on_a_ppserver(start_ppserver):  # noqa: F811
    node = start_ppserver(workers=2, secret="joblib-secret")
    with joblib.parallel_backend("pp", n_jobs=4, ppservers=(node.addr,), secret="joblib-secret",
                                 ncpus=0):
        out = joblib.Parallel()(joblib.delayed(F.sleep_pid)(0, i) for i in range(20))
    assert [t for t, _ in out] == list(range(20))
    assert {p for _, p in out} <= set(node.workers())
