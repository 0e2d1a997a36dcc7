"""Per-sample seeds: what makes retried, rebalanced and resumed rollouts sample the same tokens."""

from __future__ import annotations

from grpo_dist.rollout.seeds import occurrence_stream, occurrences, sample_seed


def test_occurrences_count_earlier_repeats_of_each_prompt() -> None:
    assert occurrences([7, 9, 7, 7, 9, 3]) == [0, 0, 1, 2, 1, 0]
    assert occurrences([]) == []


def test_a_repeat_gets_a_stream_of_its_own() -> None:
    assert occurrence_stream("train", 0) == "train"
    assert occurrence_stream("train", 2) == "train#2"
    first = sample_seed(0, occurrence_stream("train", 0), 1, 7, 0)
    again = sample_seed(0, occurrence_stream("train", 1), 1, 7, 0)
    assert first != again


def test_seeds_depend_on_every_part_of_the_key_and_nothing_else() -> None:
    base = sample_seed(1, "train", 2, 3, 4)
    assert base == sample_seed(1, "train", 2, 3, 4)
    assert 0 <= base < 2**63
    variants = [(2, "train", 2, 3, 4), (1, "eval", 2, 3, 4), (1, "train", 3, 3, 4), (1, "train", 2, 4, 4)]
    variants.append((1, "train", 2, 3, 5))
    assert len({base, *(sample_seed(*v) for v in variants)}) == 6
