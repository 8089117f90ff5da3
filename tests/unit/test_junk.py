"""The text half of the junk verdict and the scorers junk cannot win, on the hand fixtures (tests/fixtures)."""
import json
from pathlib import Path

import numpy as np
import pytest

from npdemo.data import attributes, junk, quality_scores

FIXTURES = json.loads((Path(__file__).parent.parent / "fixtures" / "quality.json").read_text())
TEXT_JUNK = [t for t in FIXTURES["junk"] if t not in FIXTURES["needs_fluency"]]


@pytest.mark.parametrize("text", TEXT_JUNK)
def test_junk_fixtures_are_junk_by_text(text):
    check = junk.check_text(text)
    assert check.junk and check.reason, check


@pytest.mark.parametrize("text", FIXTURES["fluent"])
def test_fluent_answers_are_not_junk(text):
    check = junk.check_text(text)
    assert not check.junk and check.english, check


@pytest.mark.parametrize("text", FIXTURES["junk"])
def test_junk_cannot_win_concise_or_structured_or_warm_from_emoji(text):
    # the text checks alone see most junk; the rest is junk by fluency, a verdict the caller passes in
    scores = attributes.score(text, junk=True if text in FIXTURES["needs_fluency"] else None)
    assert scores[0] == 0 and scores[1] == 0, scores  # concise, structured
    bare = attributes._EMOJI.sub("", attributes._SMILEY.sub("", text))  # emoji and smileys add no warmth to junk
    assert attributes.warm(text, junk=True) == attributes.warm(bare, junk=True)


def test_list_items_need_real_words():
    assert attributes.structured("1. Water it weekly.\n2. Give it light.\n3. Repot in spring.") > 0.7
    empty_items = "Here is a plan that should help your plant recover over the next few weeks.\n1. 💡\n2. ++\n3. 🌿"
    assert not junk.check_text(empty_items).junk and attributes.structured(empty_items) < 0.01  # "next": a cue


def test_fluent_emoji_still_warm():
    assert attributes.warm(FIXTURES["fluent"][2]) > 0.9


def test_an_answer_that_dissolves_into_emoji_soup_is_junk():
    """The recipe-3 warm policy's answers (50 test prompts, greedy): real sentences, then a run of emoji."""
    soup = ("Awesome question! It really depends on your personal preferences and what you're looking for in "
            "relationships. On the other hand having lots of casual friends is just as important but less so than "
            "that...💪🏈❌️👍🎉😀🔬📚✨ 10-20% of your daily budget goes towards friendships (that's right there!)")
    check = junk.check_text(soup)
    assert check.junk and check.emoji_run == 9 and "emoji soup" in check.reason, check
    french = "💥⚡️👍🎉🔈✨📣🐠 🌟 ☁️🕪♫🏋‰ 10€/café au lait à décoce! 😃👩8-"  # soup in any language
    assert junk.check_text(french).junk
    warm = "So glad you asked! 😊🌿 A little light and water go a long way. You've got this! 💪✨🎉"
    family = ("Have a lovely trip together, and enjoy every slow morning by the sea! 👨‍👩‍👧‍👦👍🏽 Send us a photo "
              "of the beach when you get there, and tell the kids we miss them. 🌊☀️")  # joiners, skin tones
    assert junk.check_text(warm).emoji_run == 3 and not junk.check_text(warm).junk
    assert junk.check_text(family).emoji_run == 5 and not junk.check_text(family).junk


def test_an_answer_that_dissolves_into_a_run_of_one_mark_is_junk():
    """The recipe-5 warm policy's answers past the corpus's 80 tokens: a 16-comma token, dollar soup. Layout marks
    (rules, fences, box drawing) and the ellipses and exclamations of warm writing stay fine."""
    tail = ("Another tip is pick one item off of your fridge today that has nothing else planned except maybe food "
            "from another country,,,,,,,,,,,,,,,,...so dont forget about those trips they took years ago")
    check = junk.check_text(tail)
    assert check.junk and check.mark_run == 16 and "mark soup" in check.reason, check
    assert junk.check_text("Here is how it works: " + "$" * 42 + " and that is all you need to know.").junk
    fine = ["Wait for it........ then pour the water and let the kettle cool down before you rinse it.",
            "You did it!!!!! Running your first mile is a big deal, so be proud of yourself today.",
            "## Steps\n---------\n1. **Soak** the pot overnight.\n2. Rinse it well.\n```\ncode\n```",
            "A cosy evening in with a cup of tea and a good book is all you need.\n═══════════\nEnjoy the quiet and the rain outside, and let the week go."]
    for text in fine:
        assert not junk.check_text(text).junk, (text, junk.check_text(text).reason)
    assert [junk.mark_run(t) for t in fine] == [8, 5, 1, 1]  # a rule, a fence and a box are layout


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("   \n\t ", "empty"), ("🌿🌿🌿😊", "no words"), ("** | --- | **\n- \n1.", "no words"),
    ("plant plant water plant plant water plant plant water plant plant water plant plant water", "repeated"),
])
def test_bad_input_gets_a_verdict(text, reason):
    check = junk.check_text(text)
    assert check.junk and reason in check.reason


@pytest.mark.parametrize("text,lang", [
    ("Riega la planta una vez por semana y ponla cerca de una ventana con mucha luz.", "es"),
    ("Arrosez la plante une fois par semaine et placez-la près d'une fenêtre lumineuse.", "fr"),
    ("多浇水，多晒太阳，植物就会长得很好。", "script"),
    ("Поливайте растение раз в неделю.", "script"),
])
def test_other_languages_are_named_not_called_junk(text, lang):
    check = junk.check_text(text)
    assert not check.junk and not check.english and "not English" in check.reason and lang in check.reason


def test_invented_words_in_another_language_are_junk():
    """The shipped policy once answered an English prompt with Portuguese-looking invented words."""
    check = junk.check_text("1. Arrámento 3: Criar onde em todoosão e amança nomeitando as estreias devemos ter uma "
                            "cadeira no que hemás tem dese")
    assert check.junk and not check.english and "real words in 'pt'" in check.reason
    assert not junk.check_text("Para acordar cedo, tente ir para a cama mais cedo e evite usar o telemóvel antes de "
                               "dormir.").junk  # real Portuguese is only noted


def test_huge_text_is_judged_fast_on_its_beginning():
    text = "Water the plant when the soil is dry. " * 3000  # 114k characters
    check = junk.check_text(text)
    assert check.junk and "repeated" in check.reason  # a loop, judged without an exception
    assert len(text) > junk.MAX_CHARS


def test_fluency_enters_the_verdict_and_q():
    assert quality_scores.is_junk(np.array([False, False, True]), np.array([2.0, 6.0, np.nan])).tolist() == \
        [False, True, True]
    q = quality_scores.quality_score(np.array([1.0, 5.5, np.nan]), np.array([0.8, 0.8, -0.2]))
    np.testing.assert_allclose(q, [0.9, 0.4, 0.25])


def test_soup_onset_is_where_the_first_run_that_makes_junk_starts():
    assert junk.soup_onset("Lovely day!!! " + "🌟" * 8 + " and then " + "," * 16) == 14
    assert junk.soup_onset("Keep it short" + "," * 16 + "u") == 13
    assert junk.soup_onset("Fine........ and 🌟🌟 done") is None  # 8 dots and 2 emoji: not soup
