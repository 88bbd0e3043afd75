"""Old spellings of renamed arguments, attributes and homes keep working for one release, with a warning."""

import inspect
import warnings

import pytest
import torch

import ntkit
from ntkit import analysis, predict
from ntkit._warnings import renamed_keywords

DT = torch.float64


def _problem(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n + 2, generator=g, dtype=DT)
    return (
        a @ a.T / (n + 2),
        torch.randn(n, 2, generator=g, dtype=DT),
        torch.randn(n, 2, generator=g, dtype=DT),
    )


def test_decorator_passes_old_keywords_on_under_their_new_name():
    @renamed_keywords(old="new", mode=("flag", lambda v: v == "on"))
    def f(a, *, new=0, flag=False):
        return a, new, flag

    assert f(1, new=2) == (1, 2, False)
    with pytest.warns(DeprecationWarning, match=r"f\(\): the keyword 'old' is deprecated.*use new= instead"):
        assert f(1, old=3) == (1, 3, False)
    with pytest.warns(DeprecationWarning, match=r"'mode' is deprecated.*use flag=True instead"):
        assert f(1, mode="on") == (1, 0, True)
    with pytest.raises(TypeError, match=r"both 'old'.*and 'new'"):
        f(1, old=3, new=4)
    assert f.__name__ == "f" and list(inspect.signature(f).parameters) == ["a", "new", "flag"]


def test_warning_points_at_the_line_that_used_the_old_name():
    k, y, _ = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict.gradient_descent_mse(k, y, steps="discrete", learning_rate=0.1)
    (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert warning.filename == __file__
    assert "use discrete=True instead" in str(warning.message)


def test_old_and_new_spellings_give_the_same_predictions():
    k, y, f0 = _problem()
    t = torch.arange(4)
    new = predict.gradient_descent_mse(k, y, learning_rate=0.2, discrete=True)(t, f0)
    with pytest.warns(DeprecationWarning):
        old = predict.gradient_descent_mse(k, y, learning_rate=0.2, steps="discrete")
    torch.testing.assert_close(old(t, f0), new, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="MSEPredictor.steps"):
        assert old.steps == "discrete"
    with pytest.warns(DeprecationWarning, match=r"'steps' is deprecated.*use discrete=False"):
        flow = predict.gradient_descent_mse(k, y, steps="continuous")
    assert flow.discrete is False
    with pytest.raises(ValueError, match="steps must be one of"):
        predict.gradient_descent_mse(k, y, steps="euler")

    with pytest.warns(DeprecationWarning, match="'K' is deprecated"):
        old_spectrum = analysis.spectrum(K=k)
    torch.testing.assert_close(old_spectrum.eigenvalues, analysis.spectrum(k).eigenvalues, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning) as caught:
        old_run = analysis.eigen_convergence(
            K=k, y=y, f0=f0, t=[0.0, 2.0], steps="discrete", learning_rate=0.1
        )
    assert len(caught) == 4  # K, y, f0 and steps
    new_run = analysis.eigen_convergence(k, y, f0, [0.0, 2.0], discrete=True, learning_rate=0.1)
    torch.testing.assert_close(old_run.predicted, new_run.predicted, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="EigenConvergence.times"):
        torch.testing.assert_close(old_run.times, new_run.t)


def test_predictors_moved_to_ntkit_predict():
    with pytest.warns(DeprecationWarning, match=r"ntkit\.dynamics\.gradient_descent_mse .*ntkit\.predict"):
        moved = ntkit.dynamics.gradient_descent_mse
    assert moved is predict.gradient_descent_mse
    with pytest.raises(AttributeError):
        ntkit.dynamics.no_such_name  # noqa: B018
    assert set(ntkit.dynamics.__all__) == {"LinearizedModel", "TrainingResult", "linearize", "train"}


def test_training_result_steps_is_now_t():
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=DT)
    result = ntkit.train(model, x, torch.zeros(4, dtype=DT), learning_rate=0.1, steps=3, record_every=2)
    assert result.t.tolist() == [0, 2, 3]
    with pytest.warns(DeprecationWarning, match="TrainingResult.steps"):
        assert result.steps.tolist() == [0, 2, 3]


def test_every_predictor_keeps_its_old_spelling():
    # ntkit.dynamics finds the moved names in its own modules (reading ntkit.predict would make the two import
    # each other); ntkit.predict re-exports exactly those
    from ntkit.dynamics import closed_form, ensemble, ode

    assert {*closed_form.__all__, *ensemble.__all__, *ode.__all__} == set(predict.__all__)
    for name in predict.__all__:
        with pytest.warns(DeprecationWarning, match=rf"ntkit\.dynamics\.{name} "):
            assert getattr(ntkit.dynamics, name) is getattr(predict, name)
