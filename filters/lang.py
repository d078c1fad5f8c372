"""Language filter: keep captions written in the wanted languages, by langdetect.

langdetect samples character n-grams at random, so the detector is seeded (`lang_seed`): the
same caption gets the same answer in every run, worker and retry. On a few letters it guesses
("dog face" comes out Welsh), so captions with fewer than `lang_min_letters` letters (a kana,
hangul or han character counts as five) are not judged: the `lang_short` policy decides them,
`keep` by default (the caption filter is the place to drop short captions), `drop` for a strict
corpus, or `detect` to trust the guess anyway. Captions in which langdetect finds no letters
follow the same policy.

A caption is kept when langdetect gives the wanted languages together at least `lang_min_prob`,
not only when one of them comes first: on a few words its seven random trials split between
languages ("smirking face emoji": Lithuanian 0.43, English 0.29), and asking for the top spot
dropped one English caption of three words in eight. A caption in another language rarely gets
any weight in the wanted one.

langdetect's character n-grams are also confidently wrong on short alt texts ("motorcycle
emoji": Polish 0.71; "an emoji of Taiwan": Swahili 0.99998): on the styles corpus it dropped 8.9%
of the English rows to catch 62% of the foreign ones. So a caption it would drop is checked
word by word (`lang_words`): it is kept when its words are common in a wanted language on
average (`COMMON_ZIPF`, by wordfreq's frequencies) and, summed over words, no less frequent there
than in the language langdetect guessed (where wordfreq has it). That dropped 0.37% of the
English rows and 54% of the foreign ones (`python bench/filters.py --corpus styles`); the
foreign ones kept are mostly mixed ("icône de folder violet favorites").
The language is recorded in `Pair.language` (a langdetect code such as `en` or `zh-cn`): the
wanted one a kept caption was kept as, else the most probable.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass, field

import wordfreq
from langdetect import DetectorFactory
from langdetect.detector_factory import PROFILES_DIRECTORY
from langdetect.lang_detect_exception import LangDetectException

from filters.base import Verdict, register
from manifests.schema import Pair

SHORT_POLICIES = ("keep", "drop", "detect")
LATIN = "LATIN"
# The langdetect languages written in each non-Latin script (Unicode names' first word); every
# other langdetect language is written in Latin letters.
SCRIPT_LANGUAGES = {
    "CYRILLIC": ("ru", "uk", "bg", "mk"),
    "GREEK": ("el",),
    "ARABIC": ("ar", "fa", "ur"),
    "HEBREW": ("he",),
    "DEVANAGARI": ("hi", "mr", "ne"),
    "BENGALI": ("bn",),
    "GUJARATI": ("gu",),
    "GURMUKHI": ("pa",),
    "KANNADA": ("kn",),
    "MALAYALAM": ("ml",),
    "TAMIL": ("ta",),
    "TELUGU": ("te",),
    "THAI": ("th",),
    "HANGUL": ("ko",),
    "HIRAGANA": ("ja",),
    "KATAKANA": ("ja",),
    "CJK": ("zh", "ja"),
}
_NON_LATIN = frozenset(code for codes in SCRIPT_LANGUAGES.values() for code in codes)
WORD_LIST = "small"  # wordfreq's lists of common words: 34 MB for eight languages ("best": 328)
SPACELESS = {"zh", "ja", "ko"}  # wordfreq splits their words only with jieba or MeCab installed
WORD_LANGUAGES = frozenset(wordfreq.available_languages(WORD_LIST)) - SPACELESS
# langdetect codes that wordfreq spells otherwise
WORD_CODES = {"no": "nb", "tl": "fil", "hr": "sh", "zh-cn": "zh", "zh-tw": "zh"}
COMMON_ZIPF = 2.5  # a word about three times in ten million, on average: the language's words


@dataclass(frozen=True)
class LangConfig:
    lang: tuple[str, ...] = field(
        default=("en",),
        metadata={"help": "languages to keep, comma-separated langdetect codes (zh matches zh-cn)"},
    )
    lang_min_prob: float = field(
        default=0.25,
        metadata={"help": "minimum langdetect probability of the wanted languages together"},
    )
    lang_min_letters: int = field(
        default=15, metadata={"help": "captions with fewer letters follow --lang-short"}
    )
    lang_short: str = field(
        default="keep", metadata={"help": f"policy for short captions: {'/'.join(SHORT_POLICIES)}"}
    )
    lang_seed: int = field(default=0, metadata={"help": "langdetect's seed"})
    lang_words: bool = field(
        default=True,
        metadata={"help": "true/false: keep captions langdetect puts elsewhere whose words are "
                          "a wanted language's (wordfreq)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.lang_short not in SHORT_POLICIES:
            raise ValueError(f"lang_short must be one of {SHORT_POLICIES}, not {self.lang_short!r}")


_factories: dict[int, DetectorFactory] = {}
_lock = threading.Lock()


def _factory(seed: int) -> DetectorFactory:
    """One loaded profile set per process and seed (loading takes about a second)."""
    with _lock:
        factory = _factories.get(seed)
        if factory is None:
            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            factory.seed = seed
            _factories[seed] = factory
        return factory


def warm_up(config: LangConfig) -> None:
    """Load langdetect's profiles and the wanted languages' word lists before the first caption
    (a guessed language's list loads when first needed)."""
    _factory(config.lang_seed)
    if config.lang_words:
        for code in filter(None, map(word_code, config.lang)):
            wordfreq.get_frequency_dict(code, WORD_LIST)


def probabilities(text: str, seed: int = 0) -> list[tuple[str, float]]:
    """langdetect's languages of `text` with their probabilities, most probable first (those
    above 0.1); empty when it finds no letters to judge."""
    detector = _factory(seed).create()
    detector.append(text)
    try:
        return [(found.lang, found.prob) for found in detector.get_probabilities()]
    except LangDetectException:
        return []


def detect(text: str, seed: int = 0) -> tuple[str, float] | None:
    """langdetect's most probable language of `text` and its probability; None if it has none."""
    found = probabilities(text, seed)
    return found[0] if found else None


def letter_count(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def scripts(text: str) -> set[str]:
    """The scripts the letters of `text` are written in (`LATIN`, `CYRILLIC`, `CJK`, ...)."""
    return {
        unicodedata.name(ch, "?").split(" ", 1)[0] if ord(ch) > 0x24F else LATIN
        for ch in text
        if ch.isalpha()
    }


def script_allows(found: set[str], wanted: tuple[str, ...]) -> bool:
    """Whether a wanted language may be written in one of the scripts `found`: no text is needed
    to rule out Korean for an English corpus, however short the caption."""
    bases = {code.split("-")[0] for code in wanted}
    if not found:
        return True
    if LATIN in found and not bases <= _NON_LATIN:
        return True
    return any(bases & set(SCRIPT_LANGUAGES.get(script, ())) for script in found)


def is_wanted(language: str, wanted: tuple[str, ...]) -> bool:
    """`zh` in `wanted` matches langdetect's `zh-cn` and `zh-tw`."""
    return language in wanted or language.split("-")[0] in wanted


def word_code(language: str) -> str | None:
    """wordfreq's code of a langdetect language, None where wordfreq has no list of it."""
    code = WORD_CODES.get(language, language.split("-")[0])
    return code if code in WORD_LANGUAGES else None


def words_favour(text: str, wanted: tuple[str, ...], guessed: str) -> str | None:
    """The wanted language whose words `text`'s are by wordfreq: common there on average, and
    no rarer there than in langdetect's `guessed` language, summed over words (where wordfreq
    has `guessed`). None when no wanted language has a word list or the words are not its."""
    other = word_code(guessed)
    for language in wanted:
        code = word_code(language)
        if code is None:
            continue
        words = [w for w in wordfreq.tokenize(text, code) if any(ch.isalpha() for ch in w)]
        if not words:
            continue
        ours = sum(wordfreq.zipf_frequency(w, code, wordlist=WORD_LIST) for w in words)
        if ours < COMMON_ZIPF * len(words):
            continue
        if other is None or ours >= sum(
            wordfreq.zipf_frequency(w, other, wordlist=WORD_LIST) for w in words
        ):
            return language
    return None


@register("lang", "text", LangConfig, setup=warm_up)
def check_language(pair: Pair, config: LangConfig) -> Verdict | None:
    """Keep captions in --lang, detected by langdetect (seeded)."""
    short = letter_count(pair.caption) < config.lang_min_letters
    if short and not script_allows(scripts(pair.caption), config.lang):
        return Verdict("other_script")
    if short and config.lang_short == "keep":
        return None
    if short and config.lang_short == "drop":
        return Verdict("too_short_to_judge")
    found = probabilities(pair.caption, config.lang_seed)
    if not found:
        return None if config.lang_short == "keep" else Verdict("too_short_to_judge")
    wanted = [(language, prob) for language, prob in found if is_wanted(language, config.lang)]
    if wanted and sum(prob for _, prob in wanted) >= config.lang_min_prob:
        return Verdict(None, {"language": wanted[0][0]})
    guessed = found[0][0]
    rescued = config.lang_words and words_favour(pair.caption, config.lang, guessed)
    if rescued:
        return Verdict(None, {"language": rescued})
    return Verdict("low_confidence" if wanted else "other_language", {"language": guessed})
