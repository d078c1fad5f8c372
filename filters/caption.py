"""Caption-quality filter: drop captions that say nothing about their image.

Web alt texts are often file names (`IMG_2043.JPG`), URLs, placeholders (`image`, `untitled`),
numbers and symbols, or one token repeated for search engines; none of them teaches a CLIP model
anything. Lengths count words by whitespace, except in scripts written without spaces (Chinese,
Japanese), where each character counts as a word, so a length limit treats them fairly.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from filters.base import register
from manifests.schema import Pair

PLACEHOLDERS = (
    "image",
    "images",
    "img",
    "photo",
    "photos",
    "picture",
    "pic",
    "untitled",
    "no title",
    "thumbnail",
    "placeholder",
    "default",
    "null",
    "none",
    "n/a",
    "unknown",
    "alt",
    "logo",
    "icon",
    "banner",
    "no image",
    "image not found",
    "click to enlarge",
)
_EXTENSIONS = r"jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif|svg"
_FILE_NAME = re.compile(rf"^[\w\-. ()]*\.({_EXTENSIONS})$", re.IGNORECASE)
_CAMERA_NAME = re.compile(
    r"^(img|dsc|dscn|dscf|dcim|pxl|mvimg|p|sam|gopr|screenshot)[\s_\-]*\d{3,}", re.I
)
_URL = re.compile(r"^(https?://|ftp://|www\.)\S+$|^\S+\.(com|org|net|html?|php)(/\S*)?$", re.I)
_NO_SPACE_SCRIPTS = ("CJK UNIFIED", "HIRAGANA", "KATAKANA", "CJK COMPATIBILITY")


@dataclass(frozen=True)
class CaptionConfig:
    min_chars: int = field(default=2, metadata={"help": "minimum caption length, characters"})
    max_chars: int = field(default=2000, metadata={"help": "maximum caption length; 0: none"})
    min_words: int = field(default=1, metadata={"help": "minimum words (CJK: characters)"})
    max_words: int = field(default=0, metadata={"help": "maximum words; 0: no limit"})
    min_letter_fraction: float = field(
        default=0.5, metadata={"help": "drop captions that are mostly digits or symbols"}
    )
    max_token_share: float = field(
        default=0.5, metadata={"help": "drop captions of 3+ tokens where one token is more"}
    )
    placeholders: tuple[str, ...] = field(
        default=PLACEHOLDERS, metadata={"help": "captions that are only one of these words"}
    )


def _is_no_space_char(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(_NO_SPACE_SCRIPTS)


def word_count(text: str) -> int:
    """Whitespace tokens, each character of a no-space script counting as one word."""
    count = 0
    for token in text.split():
        count += max(sum(_is_no_space_char(ch) for ch in token), 1)
    return count


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, spaces collapsed: how placeholders are compared."""
    kept = "".join(ch if ch.isalnum() else " " for ch in text.casefold())
    return " ".join(kept.split())


@lru_cache(maxsize=8)
def _normalised(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(normalise(word) for word in words)


def letter_fraction(text: str) -> float:
    chars = [ch for ch in text if not ch.isspace()]
    return sum(ch.isalpha() for ch in chars) / len(chars) if chars else 0.0


def top_token_share(text: str) -> float:
    """The share of the most common token among 3 or more; 0 for shorter captions."""
    tokens = normalise(text).split()
    if len(tokens) < 3:
        return 0.0
    return Counter(tokens).most_common(1)[0][1] / len(tokens)


def caption_reason(caption: str, config: CaptionConfig) -> str | None:
    """None to keep `caption`, or why it says nothing about its image."""
    text = caption.strip()
    if len(text) < config.min_chars:
        return "too_short"
    if config.max_chars and len(text) > config.max_chars:
        return "too_long"
    if _FILE_NAME.match(text) or _CAMERA_NAME.match(text):
        return "file_name"
    if _URL.match(text):
        return "url"
    if normalise(text) in _normalised(config.placeholders):
        return "placeholder"
    if letter_fraction(text) < config.min_letter_fraction:
        return "few_letters"
    words = word_count(text)
    if words < config.min_words:
        return "too_few_words"
    if config.max_words and words > config.max_words:
        return "too_many_words"
    if top_token_share(text) > config.max_token_share:
        return "repetitive"
    return None


@register("caption", "text", CaptionConfig)
def check_caption(pair: Pair, config: CaptionConfig) -> str | None:
    """Drop captions that are file names, URLs, placeholders, symbols or repeats."""
    return caption_reason(pair.caption, config)
