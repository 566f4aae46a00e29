"""prlib.pins: a pinned smoke number that moves beyond its tolerance fails, one within it passes,
missing or extra pins fail, a full run checks nothing, and re-pinning writes the file."""

import pandas as pd
import pytest

from prlib.config import resolve_config
from prlib.pins import PinError, pin_results, pin_smoke

SMOKE = resolve_config(True)


def test_a_moved_number_fails_and_one_within_tolerance_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("PRLIB_UPDATE_PINS", "1")
    pin_smoke("77_x", {"a": 0.5, "b": 2.0}, SMOKE, tol={"a": 0.01, "b": 1e-4}, folder=tmp_path)
    assert (tmp_path / "77_x.json").is_file()
    monkeypatch.delenv("PRLIB_UPDATE_PINS")
    pin_smoke("77_x", {"a": 0.505, "b": 2.0}, SMOKE, tol={"a": 0.01, "b": 1e-4}, folder=tmp_path)
    with pytest.raises(PinError, match=r"a: 0\.52 \(pinned 0\.5, tolerance 0\.01\)"):
        pin_smoke("77_x", {"a": 0.52, "b": 2.0}, SMOKE, tol={"a": 0.01, "b": 1e-4},
                  folder=tmp_path)
    with pytest.raises(PinError, match="b: pinned but not computed"):
        pin_smoke("77_x", {"a": 0.5}, SMOKE, tol={"a": 0.01}, folder=tmp_path)
    with pytest.raises(PinError, match="no smoke pins 77_y.json"):
        pin_smoke("77_y", {"a": 0.5}, SMOKE, folder=tmp_path)
    monkeypatch.delenv("PRLIB_SMOKE", raising=False)  # (CI runs the tests in smoke mode)
    pin_smoke("77_x", {"a": 99.0}, resolve_config(False), folder=tmp_path)  # full: no check


def test_torch_routers_get_the_loose_tolerance_and_lookups_the_tight_one(tmp_path, monkeypatch):
    results = pd.DataFrame({"setting": "s", "router": ["Cheapest LLM", "MLP classifier"],
                            "seed": 100, "reward": [0.30, 0.40], "score": [10.0, 20.0]})
    monkeypatch.setenv("PRLIB_UPDATE_PINS", "1")
    frame = pin_results("77_r", results, ["reward", "score"], cfg=SMOKE, folder=tmp_path)
    tol = dict(zip(frame["key"], frame["tol"]))
    assert tol["s | Cheapest LLM | reward"] == pytest.approx(1e-4)
    assert tol["s | MLP classifier | reward"] == pytest.approx(0.03)
    assert tol["s | MLP classifier | score"] == pytest.approx(3.0)  # a 0-100 metric


def test_a_torch_routers_tolerance_covers_three_flipped_picks_of_a_small_test_split(tmp_path,
                                                                                    monkeypatch):
    """On 40 test requests a trained router's accuracy may move by 3.5 requests (0.0875), on
    1,000 by the usual 0.03; lookups stay exact whatever the split."""
    results = pd.DataFrame({"setting": ["small", "small", "large"],
                            "router": ["MLP classifier", "Cheapest LLM", "MLP classifier"],
                            "seed": 100, "accuracy": [0.3, 0.2, 0.4], "n_test": [40, 40, 1000]})
    monkeypatch.setenv("PRLIB_UPDATE_PINS", "1")
    frame = pin_results("77_n", results, ["accuracy"], cfg=SMOKE, folder=tmp_path)
    tol = dict(zip(frame["key"], frame["tol"]))
    assert tol["small | MLP classifier | accuracy"] == pytest.approx(3.5 / 40)
    assert tol["large | MLP classifier | accuracy"] == pytest.approx(0.03)
    assert tol["small | Cheapest LLM | accuracy"] == pytest.approx(1e-4)
