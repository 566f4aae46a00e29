"""Deliberate bugs that the test suite must catch: ``python tests/mutations.py``.

Each mutation below is applied to a fresh copy of the repository; the named tests then run and
must FAIL. The script prints one line per mutation and exits non-zero if any mutation survives.

1. ``no-checkpoint-reload``: the trainer keeps the last weights instead of reloading the
   validation-best ones -> ``test_trainer_reloads_the_validation_best_weights``,
   ``test_checkpoint_is_the_validation_best``.
2. ``targets-also-context``: a training step's target requests are also visible context ->
   ``test_scores_do_not_depend_on_the_hidden_labels`` (the leak check on the first step fires).
3. ``label-on-hidden-edge``: a hidden request's feedback rides on its LLM edges ->
   ``test_no_label_of_a_hidden_request_reaches_message_passing``.
4. ``oracle-reads-train``: the oracle routes by the training utilities, not the test labels ->
   ``test_oracle_is_the_row_max_and_random_is_seeded``.
5. ``split-leaks-test-query``: the query split puts a held-out query into train as well ->
   ``test_splits_are_disjoint_by_query_and_seeded``.
6. ``routerdc-rank-negatives``: RouterDC's negatives are the bottom half by rank (an arbitrary
   fixed half of the LLMs when choice-only utilities tie) ->
   ``test_routerdc_contrasts_the_pick_with_every_other_answer_on_choice_feedback``.
7. ``cascade-charges-the-last-call-only``: FrugalGPT reports only the LLM that answered as
   called -> ``test_frugalgpt_is_charged_for_every_llm_it_calls``.
8. ``tuning-keeps-the-worst-point``: the tuner keeps the grid point with the worst validation
   metric -> ``test_tuning_picks_the_validation_best_point_on_development_seeds_only``.
9. ``v2-retrieves-own-query``: ours' user kNN searches similarities from before the request's
   own query was masked (so it may retrieve its label) ->
   ``test_v2_messages_do_not_depend_on_the_labels_of_their_own_query``,
   ``test_v2_messages_equal_the_explicit_edge_lists``,
   ``test_v2_user_search_equals_the_explicit_edge_lists_on_every_path``.
10. ``v2-pooled-hears-own-query``: ours' pooled kNN may retrieve the request's own query (other
    users' labels of it) -> the same three tests.
11. ``v2-task-mean-keeps-own-query``: the task message keeps the rows of the request's own query
    -> the same three tests.
12. ``v2-profile-keeps-own-row``: the profile message keeps the request's own row (its label, in
    the leave-one-query-out training view) -> the same three tests.
13. ``v2-stale-user-cache``: adding feedback leaves a user's cached rows stale ->
    ``test_v2_feedback_added_later_equals_a_store_built_at_once``.
14. ``few-shot-trains-on-held-out-users``: the new-user study trains on every user ->
    ``test_few_shot_users_and_llms_give_a_finite_share_of_the_full_model_for_every_k`` (the
    held-out check fires).
15. ``gmt-later-turns-visible``: a GMTRouter training step hides a target's own turn but shows
    the other turns of its conversation -> ``test_no_rating_being_predicted_is_in_the_graph``.
16. ``gmt-targets-in-context``: a training step's target ratings stay in its graph -> the same.
17. ``gmt-scorer-reads-own-rating``: the conversation-so-far features read the request's own
    ratings instead of its previous turn's -> ``test_scores_do_not_depend_on_the_ratings_they_predict``.
18. ``gmt-forward-edges-only``: no reverse edges (the released code's flaw: only destination
    types updated) -> ``test_every_node_type_is_updated_by_one_layer``.
19. ``gmt-add-user-ignored``: ``add_user`` does not make the new user's ratings visible ->
    ``test_a_new_user_is_routed_from_k_ratings_without_retraining``.
20. ``people-shuffle-ignores-strata``: notebook 85's null shuffles person ids across all votes,
    not within (question, LLM pair) -> ``test_shuffle_keeps_strata``.
21. ``person-ignores-offsets``: per-person Bradley-Terry predicts with the population's
    strengths only -> ``test_personal_gain_and_permutation``, ``test_known_people_rows``.
22. ``ties-counted-as-decisive``: pair accuracy counts ties (label 0.5) as decisive votes ->
    ``test_vote_metrics_hand_computed``.
23. ``mt-bench-tie-not-half``: an MT-Bench tie is not half a win ->
    ``test_mt_bench_values``.
24. ``people-ratings-b-side``: a person's rating of the LLM on side b reads side a's win score
    -> ``test_router_setting_ratings_and_split``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the tests that catch a label of the request's own query in ours' messages
V2_OWN_QUERY_TESTS = [
    "tests/test_personalized_v2.py::test_v2_messages_do_not_depend_on_the_labels_of_their_own_query",
    "tests/test_personalized_v2.py::test_v2_messages_equal_the_explicit_edge_lists",
    "tests/test_personalized_v2.py::"
    "test_v2_user_search_equals_the_explicit_edge_lists_on_every_path"]

#: name -> (file, [(old, new), ...], tests that must fail)
MUTATIONS = {
    "no-checkpoint-reload": (
        "prlib/routers/training.py",
        [("    module.load_state_dict(best_state)  # the validation-selected checkpoint",
          "    pass  # MUTATION")],
        ["tests/test_routers.py::test_trainer_reloads_the_validation_best_weights",
         "tests/test_personalized.py::test_checkpoint_is_the_validation_best"]),
    "targets-also-context": (
        "prlib/routers/personalized.py",
        [("context.append(rows[n_t:n_t + c.context_per_user])",
          "context.append(rows[:n_t + c.context_per_user])")],
        ["tests/test_personalized.py::test_scores_do_not_depend_on_the_hidden_labels"]),
    "label-on-hidden-edge": (
        "prlib/graph.py",
        [("fb = fb * vis_edge[:, None]  # hidden requests: no feedback at all",
          "fb = fb  # MUTATION")],
        ["tests/test_personalized.py::test_no_label_of_a_hidden_request_reaches_message_passing"]),
    "oracle-reads-train": (
        "prlib/routers/simple.py",
        [("        scores = np.array(requests.utility, dtype=float)\n",
          "        scores = np.tile(self.train_mean_, (len(requests), 1))\n"),
         ("    reads_labels = True\n",
          "    reads_labels = True\n\n    def fit(self, train, val, *, progress=False):\n"
          "        self.train_mean_ = col_nanmean(train.utility)\n        return self\n")],
        ["tests/test_routers.py::test_oracle_is_the_row_max_and_random_is_seeded"]),
    "split-leaks-test-query": (
        "prlib/requests.py",
        [("    return QuerySplit(perm[:n_train].tolist(),",
          "    return QuerySplit(perm[:n_train].tolist() + perm[-1:].tolist(),")],
        ["tests/test_personalized.py::test_splits_are_disjoint_by_query_and_seeded"]),
    "routerdc-rank-negatives": (
        "prlib/routers/contrastive.py",
        [("        neg = cand & (u < top) & (u <= med)",
          "        neg = cand & (rank >= cand.sum(1, keepdim=True) - cand.sum(1, keepdim=True) // 2)"
          " & (u < top)")],
        ["tests/test_routers.py::"
         "test_routerdc_contrasts_the_pick_with_every_other_answer_on_choice_feedback"]),
    "cascade-charges-the-last-call-only": (
        "prlib/routers/cascade.py",
        [("        return calls\n", "        return super().calls(requests, picks)\n")],
        ["tests/test_experiment.py::test_frugalgpt_is_charged_for_every_llm_it_calls"]),
    "tuning-keeps-the-worst-point": (
        "prlib/experiment.py",
        [("        chosen[cls.__name__] = json.loads(means.idxmax())",
          "        chosen[cls.__name__] = json.loads(means.idxmin())")],
        ["tests/test_experiment.py::"
         "test_tuning_picks_the_validation_best_point_on_development_seeds_only"]),
    "v2-retrieves-own-query": (
        "prlib/routers/retrieval.py",
        [("        sim_p[torch.from_numpy(np.flatnonzero(own_pooled)), torch.from_numpy(pos[own_pooled])] = \\\n",
          "        unmasked = sim_p.clone()  # MUTATION\n"
          "        sim_p[torch.from_numpy(np.flatnonzero(own_pooled)), torch.from_numpy(pos[own_pooled])] = \\\n"),
         ("            if np.array_equal(row_pos[rows], every_pooled):",
          "            if False:  # MUTATION"),
         ("                top, top_sim = self._search_rows(sim_p, d, rows)",
          "                top, top_sim = self._search_rows(unmasked, d, rows)")],
        V2_OWN_QUERY_TESTS),
    "v2-pooled-hears-own-query": (
        "prlib/routers/retrieval.py",
        [("        sim_p[torch.from_numpy(np.flatnonzero(own_pooled)), torch.from_numpy(pos[own_pooled])] = \\\n"
          '            float("-inf")\n', "")],
        V2_OWN_QUERY_TESTS),
    "v2-task-mean-keeps-own-query": (
        "prlib/routers/retrieval.py",
        [("        s_t, n_t = self.s_task[tk] - sq, self.n_task[tk] - nq",
          "        s_t, n_t = self.s_task[tk], self.n_task[tk]")],
        V2_OWN_QUERY_TESTS),
    "v2-profile-keeps-own-row": (
        "prlib/routers/retrieval.py",
        [("            s_p = np.where(kn3, self.s_prof[uk, tk], 0.0) - own_v",
          "            s_p = np.where(kn3, self.s_prof[uk, tk], 0.0)")],
        V2_OWN_QUERY_TESTS),
    "v2-stale-user-cache": (
        "prlib/routers/retrieval.py",
        [("            self._user_rows_cache.pop(key[0], None)\n", "")],
        ["tests/test_personalized_v2.py::"
         "test_v2_feedback_added_later_equals_a_store_built_at_once"]),
    "few-shot-trains-on-held-out-users": (
        "prlib/studies.py",
        [("        base = _ours(setting, seed, params, tr_known, va_known, ours=ours)",
          "        base = _ours(setting, seed, params, train, val, ours=ours)")],
        ["tests/test_studies.py::"
         "test_few_shot_users_and_llms_give_a_finite_share_of_the_full_model_for_every_k"]),
    "gmt-later-turns-visible": (
        "prlib/routers/gmt.py",
        [("        hidden = np.unique(users * 1_000_003 + self.conv_[qidx])\n"
          "        return np.isin(inter.user * 1_000_003 + inter.conv, hidden)",
          "        hidden = np.unique((users * 1_000_003 + self.conv_[qidx]) * 64\n"
          "                           + self.turn_[qidx])\n"
          "        return np.isin((inter.user * 1_000_003 + inter.conv) * 64 + inter.turn, hidden)")],
        ["tests/test_gmt.py::test_no_rating_being_predicted_is_in_the_graph"]),
    "gmt-targets-in-context": (
        "prlib/routers/gmt.py",
        [("        visible = np.flatnonzero(~self._hidden_for(batch, inter))",
          "        visible = np.arange(len(inter))")],
        ["tests/test_gmt.py::test_no_rating_being_predicted_is_in_the_graph"]),
    "gmt-scorer-reads-own-rating": (
        "prlib/routers/gmt.py",
        [("        rating = requests.previous[r, m]",
          "        rating = requests.utility[r, m]")],
        ["tests/test_gmt.py::test_scores_do_not_depend_on_the_ratings_they_predict"]),
    "gmt-forward-edges-only": (
        "prlib/routers/gmt.py",
        [('        g[d, f"rev_{r}", s].edge_index = ei.flip(0)', "        pass")],
        ["tests/test_gmt.py::test_every_node_type_is_updated_by_one_layer"]),
    "gmt-add-user-ignored": (
        "prlib/routers/gmt.py",
        [("        self.history_ = concat_requests(self.history_, history)\n\n    record_feedback",
          "        self.history_ = self.history_\n\n    record_feedback")],
        ["tests/test_gmt.py::test_a_new_user_is_routed_from_k_ratings_without_retraining"]),
    "people-shuffle-ignores-strata": (
        "prlib/real_people.py",
        [("            user[idx] = votes.user[rng.permutation(idx)]",
          "            user[:] = rng.permutation(votes.user)")],
        ["tests/test_real_people.py::test_shuffle_keeps_strata"]),
    "person-ignores-offsets": (
        "prlib/real_people.py",
        [("    return _sigmoid(theta[votes.a] - theta[votes.b] + d[rows, votes.a] - d[rows, votes.b])",
          "    return _sigmoid(theta[votes.a] - theta[votes.b])")],
        ["tests/test_real_people.py::test_personal_gain_and_permutation",
         "tests/test_real_people.py::test_known_people_rows"]),
    "ties-counted-as-decisive": (
        "prlib/real_people.py",
        [("    dec = y != 0.5", "    dec = y == y")],
        ["tests/test_real_people.py::test_vote_metrics_hand_computed"]),
    "mt-bench-tie-not-half": (
        "prlib/human_logs.py",
        [('"tie": ("tie", 0.5)}', '"tie": ("tie", 0.4)}')],
        ["tests/test_human_logs.py::test_mt_bench_values"]),
    "people-ratings-b-side": (
        "prlib/real_people.py",
        [('assign(s=1 - pairs["score_a"].to_numpy())', 'assign(s=pairs["score_a"].to_numpy())')],
        ["tests/test_real_people.py::test_router_setting_ratings_and_split"]),
}


def run(name: str, file: str, edits: list[tuple[str, str]], tests: list[str]) -> bool:
    """Apply one mutation to a copy of the repository and run ``tests``; True if they fail."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", "build", ".git",
                                                                  "figures", "data"))
        path = copy / file
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                raise SystemExit(f"{name}: the code to mutate is gone from {file}: {old!r}")
            text = text.replace(old, new)
        path.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(copy), "PRLIB_SMOKE": "1",
               "PRLIB_CACHE_DIR": os.environ.get("PRLIB_CACHE_DIR", str(ROOT / "build" / "cache")),
               "PRLIB_DATA_DIR": os.environ.get("PRLIB_DATA_DIR", str(ROOT.parent / "shared" /
                                                                     "data"))}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--no-header", "-o", "addopts=", *tests], cwd=copy, env=env,
                              capture_output=True, text=True)
        return proc.returncode == 1 and " failed" in proc.stdout  # a test failed, not a crash


def main(names: list[str] | None = None) -> int:
    """Run every mutation (or those ``names``, e.g. ``python tests/mutations.py v2-stale-user-cache``)."""
    survived = []
    for name, (file, edits, tests) in MUTATIONS.items():
        if names and name not in names:
            continue
        caught = run(name, file, edits, tests)
        print(f"{'caught  ' if caught else 'SURVIVED'} {name:24s} by {', '.join(t.split('::')[1] for t in tests)}",
              flush=True)
        if not caught:
            survived.append(name)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
