"""Requests.select takes its frame's rows only when the frame is read (a training loop's
mini-batches never build theirs), with the same rows and the same pickles as before."""
import dataclasses
import pickle

import numpy as np
import pandas as pd

from prlib.experiment import Setting, setting_views
from prlib.simulate import simulate_multi_cost


def _train(llmrouter_bank):
    bank = llmrouter_bank.sample_queries(200, seed=0)
    return setting_views(Setting("s", bank, simulate_multi_cost(bank)), 0)[0]


def test_a_selection_takes_its_frame_rows_when_first_read(llmrouter_bank):
    train = _train(llmrouter_bank)
    rows = np.array([5, 3, 9, 3])
    batch = train.select(rows)
    assert "_frame_rows" in batch.__dict__ and len(batch) == 4  # not taken yet
    pd.testing.assert_frame_equal(batch.frame, train.frame.iloc[rows].reset_index(drop=True))
    assert "_frame_rows" not in batch.__dict__
    mask = np.zeros(len(train), bool)
    mask[[1, 7]] = True
    np.testing.assert_array_equal(train.select(mask).frame["query_id"],
                                  train.frame["query_id"].to_numpy()[mask])
    np.testing.assert_array_equal(batch.utility, train.utility[rows])
    # a selection of a selection, replace() and a frame set by hand
    twice = train.select(rows).select(np.array([1, 2]))
    pd.testing.assert_frame_equal(twice.frame, batch.frame.iloc[[1, 2]].reset_index(drop=True))
    renamed = dataclasses.replace(train.select(rows), chosen=batch.chosen * 0)
    pd.testing.assert_frame_equal(renamed.frame, batch.frame)
    other = train.select(rows)
    other.frame = batch.frame.assign(user_id="new")
    assert set(other.frame["user_id"]) == {"new"}


def test_a_pickled_selection_carries_its_own_rows_not_the_whole_frame(llmrouter_bank):
    train = _train(llmrouter_bank)
    batch = train.select(np.arange(3))
    payload = pickle.dumps(batch)
    assert len(payload) < len(pickle.dumps(train)) / 10
    back = pickle.loads(payload)
    pd.testing.assert_frame_equal(back.frame, train.frame.iloc[:3].reset_index(drop=True))


def test_a_lookup_resolved_on_the_whole_set_is_not_resolved_again_on_a_batch(llmrouter_bank,
                                                                              monkeypatch):
    train = _train(llmrouter_bank)
    index = pd.Index(sorted(train.frame["query_id"].unique()))
    whole = train.lookup("query_id", index)
    batch = train.select(np.array([4, 2]))
    np.testing.assert_array_equal(batch.lookup("query_id", index), whole[[4, 2]])
    assert "_frame_rows" in batch.__dict__  # the batch's frame was never needed
