"""engines/text.py: whole UTF-8 characters only, stop strings found across feeds and held back."""

from __future__ import annotations

import itertools

import pytest

from qwenkit.engines.text import IncrementalDecoder, StopMatcher

SAMPLES = [
    "你好，世界",
    "😀🎉👍🏽",
    "👨‍👩‍👧 family",
    "mixed: ascii, 中文, émoji 🚀, Ω, 𝘊",
    "こんにちは 안녕하세요 العربية",
]


# ----- IncrementalDecoder ------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLES)
def test_decoder_byte_by_byte_never_emits_partial_characters(text):
    data = text.encode("utf-8")
    decoder = IncrementalDecoder()
    out = []
    for i in range(len(data)):
        piece = decoder.feed(data[i : i + 1])
        assert "\ufffd" not in piece
        out.append(piece)
    out.append(decoder.flush())
    assert "".join(out) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_decoder_every_two_way_split(text):
    data = text.encode("utf-8")
    for cut in range(len(data) + 1):
        decoder = IncrementalDecoder()
        first, second = decoder.feed(data[:cut]), decoder.feed(data[cut:])
        assert "\ufffd" not in first + second
        assert first + second + decoder.flush() == text
        # what is emitted after the first part is always whole characters of the text
        assert text.startswith(first)


def test_decoder_every_three_way_split_of_multibyte_run():
    text = "中😀é"
    data = text.encode("utf-8")
    for a, b in itertools.combinations(range(len(data) + 1), 2):
        decoder = IncrementalDecoder()
        parts = [decoder.feed(data[:a]), decoder.feed(data[a:b]), decoder.feed(data[b:])]
        assert all("\ufffd" not in p for p in parts)
        assert "".join(parts) + decoder.flush() == text


def test_decoder_holds_incomplete_character_until_completed():
    data = "中".encode()  # 3 bytes
    decoder = IncrementalDecoder()
    assert decoder.feed(data[:1]) == ""
    assert decoder.feed(data[1:2]) == ""
    assert decoder.feed(data[2:]) == "中"


def test_decoder_flush_turns_incomplete_tail_into_replacement():
    decoder = IncrementalDecoder()
    assert decoder.feed(b"ok" + "😀".encode()[:2]) == "ok"
    assert decoder.flush() == "\ufffd"


def test_decoder_invalid_bytes_are_replaced_not_raised():
    decoder = IncrementalDecoder()
    assert decoder.feed(b"a\xffb") == "a\ufffdb"


# ----- StopMatcher -------------------------------------------------------------------------


def run(stops, pieces):
    """Feed pieces until a stop matches; the emitted text, the stop, and the flushed tail."""
    matcher = StopMatcher(stops)
    emitted = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        emitted.append(text)
        if stop is not None:
            return "".join(emitted), stop
    emitted.append(matcher.flush())
    return "".join(emitted), None


def test_no_stops_passes_text_through():
    matcher = StopMatcher([])
    assert matcher.feed("abc") == ("abc", None)
    assert matcher.flush() == ""


def test_empty_stop_string_is_ignored():
    assert run(["", "END"], ["abc"]) == ("abc", None)


def test_stop_within_one_feed_cuts_before_it():
    assert run(["STOP"], ["hello STOP world"]) == ("hello ", "STOP")


@pytest.mark.parametrize("text", ["answer: 42<END>trailing", "<END>", "x<END"])
def test_stop_split_at_every_position(text):
    stop = "<END>"
    expected = (text.split(stop)[0], stop) if stop in text else (text, None)
    for cut in range(len(text) + 1):
        assert run([stop], [text[:cut], text[cut:]]) == expected
    # and one character at a time
    assert run([stop], list(text)) == expected


def test_text_that_may_begin_a_stop_is_held_then_released():
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("abc</e") == ("abc", None)
    assert matcher.feed("x") == ("</ex", None)  # no longer a prefix: released
    assert matcher.feed("</") == ("", None)
    assert matcher.flush() == "</"
    assert matcher.flush() == ""


def test_overlapping_stop_prefixes():
    # "aab": after "aa" the held text must be "aa" (both "a" and "aa" are prefixes)
    assert run(["aab"], ["a", "a", "a", "b", "zzz"]) == ("a", "aab")
    # "abab": a partial match that fails and restarts inside itself
    assert run(["abab"], ["ab", "a", "c", "abab"]) == ("abac", "abab")
    assert run(["abab"], ["aba", "bab"]) == ("", "abab")


def test_several_stops_earliest_wins():
    assert run(["world", "lo"], ["hello world"]) == ("hel", "lo")
    assert run(["lo", "world"], ["hello world"]) == ("hel", "lo")
    assert run(["xyz", "\n\n", "o w"], ["hell", "o world\n\n"]) == ("hell", "o w")


def test_several_stops_longer_prefix_held_for_other_stop():
    # "ab" is held as a possible "abc"; the next feed completes "b!" instead, inside the held text
    assert run(["abc", "b!"], ["xa", "b", "!tail"]) == ("xa", "b!")


def test_nothing_after_stop_is_emitted_even_in_same_feed():
    text, stop = run(["###"], ["before ### after ### more"])
    assert (text, stop) == ("before ", "###")


def test_held_text_flushed_at_end():
    assert run(["STOP"], ["the end ST"]) == ("the end ST", None)
    assert run(["STOP"], ["S", "T", "O"]) == ("STO", None)


def test_multichar_unicode_stop():
    assert run(["。"], ["你好", "。再见"]) == ("你好", "。")
    assert run(["😀!"], ["hi 😀", "!"]) == ("hi ", "😀!")
