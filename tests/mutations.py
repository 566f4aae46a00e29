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

The guards issue's mutations (selection on the wrong split, held-out data in training, seeds
that share a split, own-turn features, choice views that keep utilities, derived columns) follow;
``python tests/mutations.py --list`` lists every mutation with the tests that catch it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the tests that catch a label of the request's own query in ours' messages
V2_OWN_QUERY_TESTS = [
    "tests/test_personalized_v2.py::test_v2_messages_do_not_depend_on_the_labels_of_their_own_query",
    "tests/test_personalized_v2.py::test_v2_messages_equal_the_explicit_edge_lists",
    "tests/test_personalized_v2.py::"
    "test_v2_user_search_equals_the_explicit_edge_lists_on_every_path"]

PROV = "tests/test_provenance.py::"
DERIVED = "tests/test_derived_columns.py::"

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
        "prlib/hetero_graph.py",
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
        [("        self._fit_ranges(history)\n        self.history_ = concat_requests(self.history_, history)\n",
          "        self._fit_ranges(history)\n        self.history_ = self.history_\n")],
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
    # ---- selection on the wrong split
    "tuner-scores-on-test": (
        "prlib/experiment.py",
        [("        train, val, _ = _views(seed)\n        router = _new_router(cls, setting, seed, {**params",
          "        train, val, test = _views(seed)\n        router = _new_router(cls, setting, seed, {**params"),
         ('"val_metric": validation_metric(setting, router, val)',
          '"val_metric": validation_metric(setting, router, test)')],
        [PROV + "test_the_spy_sees_exactly_its_seeds_views_through_run_and_tune"]),
    "early-stopping-on-test": (
        "prlib/experiment.py",
        [("            t0 = time.perf_counter()\n            router.fit(train, val)",
          "            t0 = time.perf_counter()\n            router.fit(train, test)")],
        [PROV + "test_the_spy_sees_exactly_its_seeds_views_through_run_and_tune"]),
    "val-and-test-swapped": (
        "prlib/experiment.py",
        [("        train, val, test = _views(seed)\n        router = _new_router(cls, setting, seed, params",
          "        train, test, val = _views(seed)\n        router = _new_router(cls, setting, seed, params")],
        [PROV + "test_the_spy_sees_exactly_its_seeds_views_through_run_and_tune"]),
    "fine-tune-checkpoint-on-test": (
        "prlib/studies.py",
        [("tuned = copy.deepcopy(base).fine_tune(support, va_known, fine_tune_steps)",
          "tuned = copy.deepcopy(base).fine_tune(support, test_new, fine_tune_steps)")],
        ["tests/test_studies.py::"
         "test_few_shot_users_and_llms_give_a_finite_share_of_the_full_model_for_every_k"]),
    # ---- held-out data reaching training
    "few-shot-baselines-see-every-held-out-request": (
        "prlib/studies.py",
        [("            rows += _user_rows(setting, seed, k, base, support, tr_known, va_known,",
          "            rows += _user_rows(setting, seed, k, base, support, concat_requests(\n"
          "                tr_known, of_users(train, new)), va_known,")],
        [PROV + "test_the_spy_as_a_few_shot_baseline_sees_exactly_k_shots_of_each_new_user"]),
    "support-draws-one-too-many": (
        "prlib/studies.py",
        [("        rows.extend(rng.choice(have, k, replace=False).tolist())",
          "        rows.extend(rng.choice(have, min(k + 1, len(have)) if k else 0,"
          " replace=False).tolist())")],
        [PROV + "test_the_spy_as_a_few_shot_baseline_sees_exactly_k_shots_of_each_new_user"]),
    "few-shot-known-means-everyone": (
        "prlib/studies.py",
        [("        tr_known, va_known = of_users(train, known), of_users(val, known)\n"
          "        provenance",
          "        tr_known, va_known = train, of_users(val, known)\n        provenance")],
        [PROV + "test_the_spy_as_a_few_shot_baseline_sees_exactly_k_shots_of_each_new_user"]),
    # ---- seeds that do not change the split
    "seeds-share-one-split": (
        "prlib/requests.py",
        [("    perm = np.random.default_rng(seed).permutation(ids)",
          "    perm = np.random.default_rng(0).permutation(ids)")],
        [PROV + "test_the_spy_sees_exactly_its_seeds_views_through_run_and_tune"]),
    "grouped-split-ignores-seed": (
        "prlib/requests.py",
        [("        part = split_queries({groups[str(q)] for q in query_ids}, fractions, seed)",
          "        part = split_queries({groups[str(q)] for q in query_ids}, fractions)")],
        [PROV + "test_grouped_multi_turn_and_choice_runs_pass_their_guards"]),
    # ---- features that carry what is being predicted
    "previous-turn-defaults-to-own-turn": (
        "prlib/requests.py",
        [("        j = row.get((u, previous_query.get(q)))",
          "        j = row.get((u, previous_query.get(q, q)))")],
        [PROV + "test_grouped_multi_turn_and_choice_runs_pass_their_guards"]),
    # ---- feedback views
    "choice-view-keeps-utilities": (
        "prlib/requests.py",
        [("    u = np.where(requests.candidates, 0.0, np.nan)\n",
          "    u = np.array(requests.utility, dtype=float)\n")],
        [PROV + "test_grouped_multi_turn_and_choice_runs_pass_their_guards"]),
    "choice-train-view-forgotten": (
        "prlib/experiment.py",
        [("        train, val = choice_only(train), choice_only(val)\n",
          "        val = choice_only(val)\n")],
        [PROV + "test_grouped_multi_turn_and_choice_runs_pass_their_guards"]),
    # ---- derived columns
    "cost-per-1k-per-100": (
        "prlib/experiment.py",
        [('"cost_per_1k": 1000 * metrics.get("cost_usd", np.nan)',
          '"cost_per_1k": 100 * metrics.get("cost_usd", np.nan)')],
        [DERIVED + "test_multi_cost_utility_call_cost_and_the_run_rows_equal_the_hand_computation"]),
    "score-over-the-oracle": (
        "prlib/metrics.py",
        [('"score": (100.0 * (reward - random) / ceiling_span if ceiling_span > 0',
          '"score": (100.0 * (reward - random) / span if ceiling_span > 0')],
        [DERIVED + "test_the_ceiling_and_the_score_equal_the_hand_computation"]),
    "ceiling-is-the-oracle": (
        "prlib/metrics.py",
        [('return pd.DataFrame(np.asarray(requests.utility, dtype=float)).groupby(',
          'return np.asarray(requests.utility, dtype=float); pd.DataFrame(np.asarray('
          'requests.utility, dtype=float)).groupby(')],
        ["tests/test_reference.py::test_where_the_lookup_table_is_optimal_the_ceiling_equals_it",
         DERIVED + "test_the_ceiling_and_the_score_equal_the_hand_computation"]),
    "references-compete": (
        "prlib/report.py",
        [('& ~results["family"].isin(NOT_COMPETING)', '& (results["family"] != UPPER_BOUND)')],
        ["tests/test_reference.py::test_references_and_upper_bounds_are_never_the_strongest_"
         "baseline"]),
    "cost-of-the-pick-only": (
        "prlib/metrics.py",
        [("np.where(calls, requests.cost, 0.0).sum(1)",
          "requests.cost[rows, picks]")],
        [DERIVED + "test_routing_metrics_equal_the_hand_computation"]),
    "call-cost-not-charged": (
        "prlib/metrics.py",
        [("    reward = float((requests.utility[rows, picks] - charged).mean())",
          "    reward = float(requests.utility[rows, picks].mean())")],
        [DERIVED + "test_routing_metrics_equal_the_hand_computation",
         "tests/test_experiment.py::test_frugalgpt_is_charged_for_every_llm_it_calls"]),
    "pair-ties-count-as-wins": (
        "prlib/metrics.py",
        [("    acc = float(np.mean((diff > 0) + 0.5 * (diff == 0)))",
          "    acc = float(np.mean(diff >= 0))")],
        [DERIVED + "test_pair_metrics_equal_the_hand_computation"]),
    "cost-normalised-over-the-bank": (
        "prlib/simulate/multicost.py",
        [("        b = bank.bank.assign(cost_norm=normalized_cost(bank))",
          "        b = bank.bank.assign(cost_norm=bank.bank['cost_usd'] / bank.bank['cost_usd'].max())")],
        [DERIVED + "test_multi_cost_utility_call_cost_and_the_run_rows_equal_the_hand_computation"]),
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


def main(argv: list[str] | None = None) -> int:
    """Run every mutation, or the named ones; ``--list`` lists them with their catching tests.
    An unknown name is an error (exit 2), never a silent pass."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Apply deliberate bugs one at a time to a copy of the repository; the "
                    "tests named for each must fail. Exit 1 if any mutation survives.")
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MUTATIONS))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; see --list for the {len(MUTATIONS)} known")
    if args.list:
        for name, (file, _, tests) in MUTATIONS.items():
            print(f"{name:44s} {file:32s} {', '.join(t.split('::')[1] for t in tests)}")
        return 0
    survived, start = [], time.perf_counter()
    for name, (file, edits, tests) in MUTATIONS.items():
        if args.names and name not in args.names:
            continue
        caught = run(name, file, edits, tests)
        print(f"{'caught  ' if caught else 'SURVIVED'} {name:44s} by "
              f"{', '.join(t.split('::')[1] for t in tests)}", flush=True)
        if not caught:
            survived.append(name)
    print(f"{len(survived)} survived; {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
