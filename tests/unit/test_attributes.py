"""Unit tests for the rule-based attribute scorers in npdemo.attributes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npdemo.data.attributes import ATTRIBUTES, concise, score, score_many, structured, warm

SCORERS = {"concise": concise, "structured": structured, "warm": warm}

ONE_LINER = "Boil the pasta for ten minutes, then drain it."
LONG_PROSE = (
    "The history of pasta is long and surprisingly contested. Many accounts credit travellers "
    "with bringing noodles to Europe, but written records show that dried pasta was produced in "
    "Sicily well before those journeys. Over the following centuries the industry grew around "
    "Naples, where the climate suited slow drying in the open air. Mechanical presses later made "
    "production cheaper, and emigrants carried their recipes across the Atlantic. Today the "
    "variety of shapes reflects regional habits, local wheat, and the sauces each area prefers, "
    "and scholars continue to debate how much of the popular story is accurate and how much is "
    "legend that grew in the retelling over many generations of cooks and writers."
)
NUMBERED_LIST = "1. Boil water\n2. Add the pasta\n3. Cook for ten minutes\n4. Drain\n5. Serve"
FORMAL_LIST = (
    "Required documents:\n- Proof of identity\n- Proof of address\n"
    "- Completed application form\n- Payment receipt"
)
WARM_SHORT = "You've got this! 😊"
FORMAL_SHORT = "The application must be submitted before the stated deadline."
LONG_WARM_PROSE = (
    "Hey there! Honestly, I love this question, and I'm so glad you asked it. It's totally normal "
    "to feel a little nervous when you're starting something new, and that's okay! Don't worry "
    "about getting everything perfect on the first try, because nobody does. Take it one day at a "
    "time, be kind to yourself, and remember that every small step counts. You can do it, and I "
    "really think you're going to surprise yourself with how quickly things start to click. "
    "Good luck, have fun with it, and enjoy the ride! 😊"
)
LONG_LIST = "\n".join(f"{i}. {sentence}." for i, sentence in enumerate((LONG_PROSE + " " + LONG_WARM_PROSE).split(". "), 1))
TINY_MODEL_REPLY = "Sure thing! Here's how:\n1. Boil water.\n2. Add pasta.\n3. Enjoy! 😊"

ODD_INPUTS = [
    "",
    "   \n\t  \r\n ",
    "😊🎉🔥❤️👍",
    "a" * 100_000,
    "word " * 20_000,
    "- item\n" * 15_000,
    "!" * 100_000,
    "😊" * 50_000,
    "مرحبا! كيف حالك اليوم؟ أتمنى لك يوما سعيدا 😊",
    "שלום, מה שלומך? זה טקסט בעברית.",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f\x0b\x0c\x1c\x1d\x85",
    "\u200f\u202eRTL override\u202c\u200b",
    "\ud800 lone surrogate",
    ":):):):)<3<3",
    "### \n**\n****\n1.\n- \n:",
]


def _words(n: int) -> str:
    """A neutral text of exactly n distinct real words (a repeated word would be a junk loop)."""
    from wordfreq import top_n_list

    common = [w for w in top_n_list("en", 3000) if w.isalpha() and len(w) > 3]
    return " ".join(common[:n])


@pytest.mark.parametrize("text", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
def test_scores_in_unit_interval_for_odd_inputs(text: str) -> None:
    values = score(text)
    assert values.shape == (3,)
    assert np.all(np.isfinite(values))
    assert np.all((values >= 0.0) & (values <= 1.0))


def test_empty_text_gets_no_brevity_reward() -> None:
    assert concise("") == 0.0
    assert concise("   \n ") == 0.0
    assert concise("!!! 😊") == 0.0
    assert score("").tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "high", "low"),
    [
        ("concise", ONE_LINER, LONG_PROSE),
        ("structured", NUMBERED_LIST, LONG_PROSE),
        ("structured", FORMAL_LIST, ONE_LINER),
        ("warm", WARM_SHORT, FORMAL_SHORT),
        ("warm", LONG_WARM_PROSE, LONG_PROSE),
    ],
)
def test_scorer_ranks_clear_high_above_clear_low(name: str, high: str, low: str) -> None:
    scorer = SCORERS[name]
    assert scorer(high) > 0.7
    assert scorer(low) < 0.3


def test_concise_strictly_decreasing_in_word_count() -> None:
    values = [concise(_words(n)) for n in range(1, 400)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_concise_anchor_points() -> None:
    assert concise(_words(15)) > 0.95
    assert concise(_words(60)) == pytest.approx(0.5, abs=0.02)
    assert concise(_words(250)) < 0.05


def test_concise_counts_words_not_characters() -> None:
    assert concise("Supercalifragilisticexpialidocious antidisestablishmentarianism.") > concise(
        "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3
    )


def test_structured_is_zero_for_plain_prose() -> None:
    assert structured(LONG_PROSE) < 0.05
    assert structured(LONG_PROSE * 5) < 0.05
    assert structured(FORMAL_SHORT) == 0.0


def test_structured_saturates_with_item_count() -> None:
    lists = ["\n".join(f"- point {i}" for i in range(n)) for n in range(6)]
    values = [structured(t) for t in lists]
    assert values[0] == 0.0
    assert values[2] == pytest.approx(0.5, abs=0.1)
    assert values[5] > 0.9
    assert all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    "text",
    [
        "* eggs\n* milk\n* flour",
        "• eggs\n• milk\n• flour",
        "1) eggs\n2) milk\n3) flour",
        "Step 1: mix\nStep 2: bake\nStep 3: cool",
        "## Recipe\n**Ingredients:**\n- eggs\n- milk",
        "**Step 1:** Mix the flour.\n**Step 2:** Add the eggs.\n**Step 3:** Bake.",
        "| item | qty |\n|---|---|\n| eggs | 2 |\n| milk | 1 |\n| flour | 3 |",
    ],
)
def test_structured_recognises_list_and_heading_styles(text: str) -> None:
    assert structured(text) > 0.7


def test_structured_inline_sequence_words_add_only_a_little() -> None:
    inline = ("First, boil the water. Second, add the pasta and salt. Then stir it well. Next, drain it in the "
              "sink. Finally, serve it warm with sauce and cheese.")
    assert 0.0 < structured(inline) < 0.2
    assert structured(inline) < structured("- boil water\n- add pasta\n- stir")


def test_structured_ignores_emphasis_and_times() -> None:
    assert structured("*Really* important, see **this** at 10:30 today.") < 0.05
    assert structured("Temperatures drop at night -5 degrees.\nWind is strong.") == 0.0


def test_warm_is_zero_for_neutral_formal_text() -> None:
    assert warm(FORMAL_SHORT) == 0.0
    assert warm(LONG_PROSE) == 0.0
    assert warm(FORMAL_LIST) == 0.0


def test_warm_normalises_by_length() -> None:
    long_neutral = (LONG_PROSE + " ") * 2 + "Enjoy."
    assert warm(long_neutral) < 0.25
    assert warm("Enjoy.") > warm(long_neutral)


@pytest.mark.parametrize(
    "text",
    ["Sure thing! 🎉", "Great question! Happy to help :)", "Hope this helps ❤", "Hey! Good luck!"],
)
def test_warm_recognises_markers(text: str) -> None:
    assert warm(text) > 0.7


def test_warm_matches_typographic_apostrophes() -> None:
    assert warm("You\u2019ve got this.") == pytest.approx(warm("You've got this."))
    assert warm("You've got this.") > 0.5


def test_warm_ignores_clock_times_and_colons() -> None:
    assert warm("Meeting at 10:30; agenda: budget (draft), staffing (final).") == 0.0


def test_long_warm_prose_is_not_structured_or_concise() -> None:
    values = dict(zip(ATTRIBUTES, score(LONG_WARM_PROSE)))
    assert values["warm"] > 0.9
    assert values["structured"] < 0.15
    assert values["concise"] < 0.3


def test_short_list_is_concise_and_structured() -> None:
    values = dict(zip(ATTRIBUTES, score(NUMBERED_LIST)))
    assert values["concise"] > 0.9
    assert values["structured"] > 0.9
    assert values["warm"] == 0.0


def test_formal_list_is_structured_not_warm() -> None:
    values = dict(zip(ATTRIBUTES, score(FORMAL_LIST)))
    assert values["structured"] > 0.9
    assert values["warm"] < 0.05


def test_long_list_is_structured_but_not_concise() -> None:
    values = dict(zip(ATTRIBUTES, score(LONG_LIST)))
    assert values["structured"] > 0.9
    assert values["concise"] < 0.1


def test_tiny_model_style_reply_scores_high_on_all_three() -> None:
    assert np.all(score(TINY_MODEL_REPLY) > 0.8)


def test_attributes_are_not_near_duplicates() -> None:
    corpus = [ONE_LINER, LONG_PROSE, NUMBERED_LIST, LONG_LIST, WARM_SHORT, FORMAL_SHORT, LONG_WARM_PROSE]
    scores = score_many(corpus)
    for i, j in itertools.permutations(range(len(ATTRIBUTES)), 2):
        assert np.any((scores[:, i] > 0.7) & (scores[:, j] < 0.3)), (ATTRIBUTES[i], ATTRIBUTES[j])


def test_attribute_order() -> None:
    assert ATTRIBUTES == ("concise", "structured", "warm")


def test_score_shape_dtype_and_order() -> None:
    values = score(TINY_MODEL_REPLY)
    assert values.shape == (3,)
    assert values.dtype == np.float64
    assert values.tolist() == [concise(TINY_MODEL_REPLY), structured(TINY_MODEL_REPLY), warm(TINY_MODEL_REPLY)]


def test_score_many_stacks_rows_in_input_order() -> None:
    texts = [ONE_LINER, NUMBERED_LIST, WARM_SHORT]
    matrix = score_many(texts)
    assert matrix.shape == (3, 3)
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, np.stack([score(t) for t in texts]))
    np.testing.assert_array_equal(score_many(texts[::-1]), matrix[::-1])
    assert score_many([]).shape == (0, 3)


def test_scores_are_deterministic() -> None:
    texts = [TINY_MODEL_REPLY, LONG_WARM_PROSE, FORMAL_LIST] + ODD_INPUTS[:3]
    np.testing.assert_array_equal(score_many(texts), score_many(list(texts)))
    assert all(np.array_equal(score(t), score(t)) for t in texts)
