"""The deliberate bugs of ``tests/mutations.py`` still apply: each finds the code it breaks and
names tests that exist (a mutation whose code is gone would stop checking anything)."""

from mutations import MUTATIONS, ROOT


def test_every_mutation_still_finds_the_code_it_breaks_and_its_tests():
    stale = []
    for name, (file, edits, tests) in MUTATIONS.items():
        text = (ROOT / file).read_text()
        stale += [f"{name}: {old[:60]!r} is gone from {file}" for old, _ in edits
                  if old not in text]
        for test in tests:
            path, func = test.split("::")
            if f"def {func}(" not in (ROOT / path).read_text():
                stale.append(f"{name}: no test {test}")
    assert not stale, "\n".join(stale)
