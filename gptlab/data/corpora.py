"""Corpora: the text a model learns from.

A corpus is either one of the named public corpora below, or the user's own UTF-8 text (a file, a folder
of .txt files, or a glob). Named corpora come from a local mirror folder if one is given (``--mirror`` or
$GPTLAB_MIRROR; the network is then never touched), else from the cache, else they are downloaded once
from their public source. Every file is checked against a pinned sha256, so a corpus is the same text on
every machine.
"""

import glob
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.files import sha256_hex, write_atomic

DOWNLOAD_TIMEOUT_S = 60
MIRROR_HINT = "use --mirror DIR or set GPTLAB_MIRROR to a folder holding the corpus files"


@dataclass
class Corpus:
    name: str  # "shakespeare", or the user's path as given
    text: str  # the whole corpus as one string
    files: list[Path] = field(default_factory=list)  # the files it was read from

    _sha: str = field(default="", repr=False, compare=False)

    def fingerprint(self) -> str:
        """sha256 of the text: the cache key for everything derived from it (tokenizers, token files)."""
        if not self._sha:  # hashed once: a large corpus takes seconds
            self._sha = sha256_hex(self.text)
        return self._sha


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")


# -----------------------------------------------------------------------------
# named corpora: where each file comes from and how its raw bytes become text

@dataclass(frozen=True)
class SourceFile:
    """One file of a named corpus: its public URL, its checksums and its place in a mirror folder."""

    url: str
    sha256: str  # of the raw bytes served at url
    path: str  # of the prepared text inside a mirror folder; its file name is also its name in the cache
    text_sha256: str = ""  # of the prepared text (UTF-8); "" when the raw file already is the text
    prepare: Callable[[bytes], str] = _utf8  # raw bytes -> text

    @property
    def expected(self) -> str:
        """The sha256 of the text as it lies in a mirror or in the cache."""
        return self.text_sha256 or self.sha256


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    description: str
    files: tuple[SourceFile, ...]  # read in this order and joined with "\n\n"


_PG_START = re.compile(r"\*\*\* ?START OF")
_PG_END = re.compile(r"\*\*\* ?END OF")
_PG_CREDIT = re.compile(r"Produced by\b")
_PG_END_LINE = re.compile(r"End of (the )?Project Gutenberg", re.IGNORECASE)


def _trim_blank(lines: list[str]) -> list[str]:
    """Drop blank (or whitespace-only) lines at both ends."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def clean_gutenberg(raw: bytes) -> str:
    """A Project Gutenberg plain-text file -> only the book, as in shared/data/andersen_en/SOURCE.md.

    Keeps the lines between the "*** START OF" and "*** END OF" markers, without the producers' credit
    ("Produced by ...", the first paragraph) or the closing "End of the Project Gutenberg EBook ..." line;
    strips the BOM, turns CRLF into LF, trims blank lines at both ends and ends with one newline.
    """
    text = raw.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if _PG_START.match(line)), -1)
    end = next((i for i in range(start + 1, len(lines)) if _PG_END.match(lines[i])), -1)
    if start < 0 or end < 0:
        raise GptlabError("not a Project Gutenberg text: no '*** START OF' and '*** END OF' marker lines")
    body = _trim_blank(lines[start + 1:end])
    if body and _PG_CREDIT.match(body[0]):
        # the credit is a paragraph of its own (a long one wraps onto a second line)
        blank = next((i for i, line in enumerate(body) if not line.strip()), len(body))
        body = _trim_blank(body[blank:])
    # the "End of the Project Gutenberg EBook ..." line sits in the last paragraph, maybe wrapped
    last_blank = max((i for i, line in enumerate(body) if not line.strip()), default=-1)
    for i in range(last_blank + 1, len(body)):
        if _PG_END_LINE.match(body[i]):
            body = _trim_blank(body[:i])
            break
    return "\n".join(body) + "\n"


def hcandersen_to_text(raw: bytes) -> str:
    """The R data file hcandersen_da.rda -> one text, as in shared/data/andersen_da/SOURCE.md.

    The data frame has one row per wrapped line (columns ``text`` and ``book``). Each tale becomes its
    title line, a blank line and its rows one per line; tales are separated by two blank lines.
    """
    try:
        import pyreadr  # optional: only needed to convert this one corpus
    except ImportError as e:  # pyreadr also raises ImportError when neither pandas nor polars is there
        raise GptlabError(f"converting andersen-da needs pyreadr ({e}): pip install 'gptlab[andersen]', "
                          f"or {MIRROR_HINT}") from e
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hcandersen_da.rda"
        path.write_bytes(raw)
        frames = pyreadr.read_r(str(path))
    df = frames["hcandersen_da"] if "hcandersen_da" in frames else next(iter(frames.values()))
    tales: dict[str, list[str]] = {}  # title -> rows, in the package's order
    for row, book in zip(df["text"], df["book"], strict=True):
        if isinstance(row, str) and row:  # skip missing or empty rows: no blank lines inside a tale
            tales.setdefault(str(book), []).append(row)
    return "\n\n\n".join(f"{title}\n\n" + "\n".join(rows) for title, rows in tales.items()) + "\n"


_GITENBERG = "https://raw.githubusercontent.com/GITenberg"

NAMED: dict[str, NamedCorpus] = {c.name: c for c in [
    NamedCorpus("shakespeare", "Tiny Shakespeare, 1.1M characters (karpathy/char-rnn)", (
        SourceFile(
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            path="tinyshakespeare/input.txt"),
    )),
    NamedCorpus("andersen-da", "H.C. Andersen's 138 tales in the original Danish, 1.5M characters "
                "(R package hcandersenr)", (
        SourceFile(
            url="https://raw.githubusercontent.com/EmilHvitfeldt/hcandersenr/"
                "a40ebfba0f37c01918644cb433987fc4ac00d3eb/data/hcandersen_da.rda",
            sha256="331aeee1cb2697de949df7c533225faec12e44f77930d74526ee3515f21a41e8",
            path="andersen_da/andersen_da.txt",
            text_sha256="0cddf439deb62c4576b35453bd66d86b959e9b7162304a0ed01ceee3ccd456c6",
            prepare=hcandersen_to_text),
    )),
    NamedCorpus("andersen-en", "H.C. Andersen's tales in English, 2.3M characters "
                "(Project Gutenberg #27200 and #1597)", (
        SourceFile(
            url=f"{_GITENBERG}/Fairy-Tales-of-Hans-Christian-Andersen_27200/"
                "057b052894fe4c52324c8de7c6b51ed21267e0c1/27200.txt",
            sha256="de8bce79dd37892c8ee09d64c1abc179403dd127ead3dfcdf24dd5365a483d7e",
            path="andersen_en/andersen_en_pg27200.txt",
            text_sha256="c58e5b450a5fb0a6ade840c496f1b5a171612c9f06fcf230edd2ec7b7f81fa47",
            prepare=clean_gutenberg),
        SourceFile(
            url=f"{_GITENBERG}/Andersen-s-Fairy-Tales_1597/7061c8473942cec0e218a97ef9b10e4389a4ab01/1597-0.txt",
            sha256="694271fa06569b61c5c3041f08cca1d4ff92341ec8a867f6c38b23862edb3adb",
            path="andersen_en/andersen_en_pg1597.txt",
            text_sha256="8b6fa931bce2067ee28754296f2307a5d8c35a3151c44371107b8b1ae3f29444",
            prepare=clean_gutenberg),
    )),
]}


def default_cache_dir() -> Path:
    """$GPTLAB_CACHE, else ~/.cache/gptlab."""
    return Path(os.environ.get("GPTLAB_CACHE") or Path.home() / ".cache" / "gptlab").expanduser()


def resolve_mirror(mirror: str | Path | None) -> Path | None:
    """The mirror folder to read named corpora from: the argument, else $GPTLAB_MIRROR, else None."""
    mirror = mirror or os.environ.get("GPTLAB_MIRROR")
    return Path(mirror).expanduser() if mirror else None


def _read_verified(path: Path, expected: str) -> str | None:
    """The file's text if its sha256 is the expected one, else None."""
    data = path.read_bytes()
    return data.decode("utf-8") if sha256_hex(data) == expected else None


def _download(src: SourceFile, name: str) -> str:
    """Fetch src.url, check the raw sha256, prepare the text and check its sha256."""
    print(f"downloading {name} from {src.url}", file=sys.stderr)
    import urllib.error  # here, not at the top: runs that never download never load the HTTP stack
    import urllib.request

    request = urllib.request.Request(src.url, headers={"User-Agent": "gptlab"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise GptlabError(f"could not download {src.url}: HTTP {e.code} {e.reason}; {MIRROR_HINT}") from e
    except urllib.error.URLError as e:
        raise GptlabError(f"could not download {src.url}: {e.reason}; {MIRROR_HINT}") from e
    except OSError as e:  # timeouts and dropped connections while reading
        raise GptlabError(f"could not download {src.url}: {e}; {MIRROR_HINT}") from e
    actual = sha256_hex(raw)
    if actual != src.sha256:
        raise GptlabError(f"checksum mismatch for {src.url}: expected sha256 {src.sha256}, got {actual}")
    text = src.prepare(raw)
    actual = sha256_hex(text.encode("utf-8"))
    if actual != src.expected:
        raise GptlabError(f"{src.url} was converted to text with sha256 {actual}, expected {src.expected}; "
                          f"the conversion changed, please report it, or {MIRROR_HINT}")
    return text


def fetch(named: NamedCorpus, mirror: str | Path | None = None,
          cache_dir: str | Path | None = None) -> Corpus:
    """Load a named corpus from the mirror folder if there is one, else from the cache, else the network."""
    mirror_dir = resolve_mirror(mirror)
    cache = Path(cache_dir or default_cache_dir()).expanduser() / "corpora" / named.name
    texts, files = [], []
    for src in named.files:
        if mirror_dir is not None:
            path = mirror_dir / src.path
            if not path.is_file():
                raise GptlabError(f"corpus {named.name}: mirror file {path} does not exist")
            text = _read_verified(path, src.expected)
            if text is None:
                raise GptlabError(f"corpus {named.name}: mirror file {path} has sha256 "
                                  f"{sha256_hex(path.read_bytes())}, expected {src.expected}")
        else:
            path = cache / Path(src.path).name
            text = _read_verified(path, src.expected) if path.is_file() else None
            if text is None:  # not cached yet (or the cached copy was damaged): download it
                text = _download(src, f"{named.name} ({path.name})")
                write_atomic(path, text)
        texts.append(text)
        files.append(path)
    return Corpus(name=named.name, text="\n\n".join(texts), files=files)


# -----------------------------------------------------------------------------
# the user's own text

def _find_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise GptlabError(f"no .txt files in folder {spec}")
        return files
    if glob.has_magic(spec):
        matches = (Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = sorted(p for p in matches if p.is_file())
        if not files:
            raise GptlabError(f"glob {spec} matched no files")
        return files
    raise GptlabError(f"no such file or folder: {spec} (named corpora: {', '.join(NAMED)})")


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, exactly as it is (line endings kept), without a leading BOM."""
    data = path.read_bytes()
    nul = data.find(b"\x00")
    if nul >= 0:
        raise GptlabError(f"{path} is not a text file: NUL byte at offset {nul} (gptlab reads UTF-8 text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} "
                          "(save it as UTF-8)") from e
    return text.removeprefix("\ufeff")


def load_corpus(spec: str, mirror: str | Path | None = None, cache_dir: str | Path | None = None) -> Corpus:
    """A named corpus (see NAMED), or the user's text: a file, a folder (its *.txt, recursively) or a glob.

    Several files are read in sorted order and joined with a blank line ("\\n\\n") between documents.
    A name wins over a file of the same name; write ./shakespeare to mean the file.
    """
    spec = os.fspath(spec)
    if spec in NAMED:
        return fetch(NAMED[spec], mirror=mirror, cache_dir=cache_dir)
    files = _find_files(spec)
    text = "\n\n".join(read_text_file(f) for f in files)
    if not text.strip():
        what = f"{files[0]} is" if len(files) == 1 else f"the {len(files)} files of {spec} are"
        raise GptlabError(f"corpus is empty: {what} empty or only whitespace")
    return Corpus(name=spec, text=text, files=files)
