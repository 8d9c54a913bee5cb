import hashlib
import http.server
import json
import os
import socket
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptlab.data.corpora import (
    NAMED,
    Corpus,
    NamedCorpus,
    SourceFile,
    clean_gutenberg,
    default_cache_dir,
    fetch,
    hcandersen_to_text,
    load_corpus,
    resolve_mirror,
)
from gptlab.errors import GptlabError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -----------------------------------------------------------------------------
# named corpora from the mirror (GPTLAB_MIRROR, set in conftest.py)

MIRROR = Path(os.environ["GPTLAB_MIRROR"])
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason="no shared/data mirror")


@needs_mirror
def test_shakespeare_from_mirror():
    corpus = load_corpus("shakespeare")
    assert corpus.name == "shakespeare"
    assert len(corpus.text) == 1_115_394
    assert corpus.text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert corpus.files == [MIRROR / "tinyshakespeare/input.txt"]
    assert corpus.fingerprint() == NAMED["shakespeare"].files[0].sha256


@needs_mirror
def test_andersen_da_from_mirror():
    corpus = load_corpus("andersen-da")
    assert corpus.text.startswith("Fyrtøjet\n\nDer kom en soldat marcherende hen ad landevejen: én, to!")
    assert all(ch in corpus.text for ch in "æøå")
    assert corpus.text.count("\n\n\n") == 137  # 138 tales
    assert corpus.text.endswith("\n") and not corpus.text.endswith("\n\n")


@needs_mirror
def test_andersen_en_from_mirror_joins_both_books():
    corpus = load_corpus("andersen-en")
    pg27200, pg1597 = (f.read_text(encoding="utf-8") for f in corpus.files)
    assert [f.name for f in corpus.files] == ["andersen_en_pg27200.txt", "andersen_en_pg1597.txt"]
    assert corpus.text == pg27200 + "\n\n" + pg1597
    assert corpus.text.startswith("FAIRY TALES OF HANS CHRISTIAN ANDERSEN\n")
    assert "ANDERSEN'S FAIRY TALES\n" in corpus.text
    assert "Gutenberg" not in corpus.text


def test_mirror_argument_wins_and_checks_sha256(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    bad = tmp_path / "tinyshakespeare" / "input.txt"
    bad.write_text("not Shakespeare\n")
    with pytest.raises(GptlabError, match="has sha256") as e:
        load_corpus("shakespeare", mirror=tmp_path)
    assert str(bad) in one_line_error(e)
    with pytest.raises(GptlabError, match="does not exist") as e:
        load_corpus("andersen-en", mirror=tmp_path)
    assert str(tmp_path / "andersen_en" / "andersen_en_pg27200.txt") in one_line_error(e)


def test_resolve_mirror_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTLAB_MIRROR", "/env/mirror")
    assert resolve_mirror("/arg/mirror") == Path("/arg/mirror")
    assert resolve_mirror(None) == Path("/env/mirror")
    monkeypatch.delenv("GPTLAB_MIRROR")
    assert resolve_mirror(None) is None
    assert default_cache_dir() == tmp_path / "gptlab-cache"  # conftest points GPTLAB_CACHE here
    monkeypatch.delenv("GPTLAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "gptlab"


# -----------------------------------------------------------------------------
# downloads, against a real HTTP server on 127.0.0.1

@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1, log the paths requested, and turn the mirror off."""
    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("GPTLAB_MIRROR", raising=False)
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", root=root, requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(server, name: str, data: bytes, **kwargs) -> SourceFile:
    """Put data on the server and describe it as a source file (by default with its true sha256)."""
    (server.root / name).write_bytes(data)
    kwargs.setdefault("sha256", sha(data))
    return SourceFile(url=f"{server.url}/{name}", path=f"toy/{name}", **kwargs)


def cached_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_download_fills_cache_once(server, tmp_path, capsys):
    toy = NamedCorpus("toy", "two files", (serve(server, "a.txt", "héllo\n".encode()),
                                           serve(server, "b.txt", b"world\n")))
    corpus = fetch(toy)  # the cache dir comes from GPTLAB_CACHE
    assert corpus == Corpus("toy", "héllo\n\n\nworld\n", [tmp_path / "gptlab-cache/corpora/toy/a.txt",
                                                         tmp_path / "gptlab-cache/corpora/toy/b.txt"])
    assert server.requests == ["/a.txt", "/b.txt"]
    assert f"downloading toy (a.txt) from {server.url}/a.txt" in capsys.readouterr().err
    assert [f.read_bytes() for f in corpus.files] == ["héllo\n".encode(), b"world\n"]

    again = fetch(toy)
    assert again == corpus
    assert server.requests == ["/a.txt", "/b.txt"]  # served from the cache
    assert capsys.readouterr().err == ""


def test_damaged_cache_file_is_downloaded_again(server, tmp_path):
    toy = NamedCorpus("toy", "", (serve(server, "a.txt", b"the text\n"),))
    cache = tmp_path / "elsewhere"
    (cache / "corpora" / "toy").mkdir(parents=True)
    (cache / "corpora" / "toy" / "a.txt").write_bytes(b"the tex")  # an interrupted copy, say
    assert fetch(toy, cache_dir=cache).text == "the text\n"
    assert server.requests == ["/a.txt"]
    assert (cache / "corpora" / "toy" / "a.txt").read_bytes() == b"the text\n"


def test_checksum_mismatch_leaves_cache_empty(server, tmp_path):
    src = serve(server, "a.txt", b"tampered\n", sha256=sha(b"original\n"))
    with pytest.raises(GptlabError, match="checksum mismatch") as e:
        fetch(NamedCorpus("toy", "", (src,)))
    message = one_line_error(e)
    assert src.url in message and sha(b"original\n") in message and sha(b"tampered\n") in message
    assert cached_files(tmp_path / "gptlab-cache") == []


def test_http_404_is_a_clean_error(server, tmp_path):
    src = SourceFile(url=f"{server.url}/missing.txt", sha256="0" * 64, path="toy/missing.txt")
    with pytest.raises(GptlabError, match="HTTP 404") as e:
        fetch(NamedCorpus("toy", "", (src,)))
    message = one_line_error(e)
    assert src.url in message and "GPTLAB_MIRROR" in message
    assert cached_files(tmp_path / "gptlab-cache") == []


def test_connection_refused_is_a_clean_error(server):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = SourceFile(url=f"http://127.0.0.1:{port}/a.txt", sha256="0" * 64, path="toy/a.txt")
    with pytest.raises(GptlabError, match="could not download") as e:
        fetch(NamedCorpus("toy", "", (src,)))
    assert "--mirror" in one_line_error(e)


# -----------------------------------------------------------------------------
# andersen-en: cleaning Project Gutenberg files

GUTENBERG_RAW = (
    "\ufeffThe Project Gutenberg EBook of Fairy Tales, by Hans Christian Andersen\r\n"
    "\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n"
    "\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK FAIRY TALES ***\r\n"
    "\r\n\r\n\r\n\r\n"
    "Produced by Al Haines\r\n"
    "\r\n\r\n\r\n"
    "FAIRY TALES\r\n"
    "\r\n"
    "  The Fir Tree\r\n"
    "\r\n"
    "Far down in the forest, where the warm sun and the fresh air made a “sweet”\r\n"
    "end of it all; Produced by nobody.   \r\n"
    "\r\n"
    "THE END\r\n"
    "\r\n\r\n\r\n"
    "End of the Project Gutenberg EBook of Fairy Tales, by Hans Christian Andersen\r\n"
    "\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK FAIRY TALES ***\r\n"
    "\r\n"
    "***** This file should be named 27200.txt or 27200.zip *****\r\n"
    "Produced by Al Haines\r\n"
)
GUTENBERG_CLEAN = (
    "FAIRY TALES\n"
    "\n"
    "  The Fir Tree\n"
    "\n"
    "Far down in the forest, where the warm sun and the fresh air made a “sweet”\n"
    "end of it all; Produced by nobody.   \n"
    "\n"
    "THE END\n"
)


def test_clean_gutenberg():
    assert clean_gutenberg(GUTENBERG_RAW.encode("utf-8")) == GUTENBERG_CLEAN
    # LF files, a credit wrapped onto two lines, and the "End of Project Gutenberg's" variant
    raw = (GUTENBERG_RAW.replace("\r\n", "\n")
           .replace("Al Haines\n\n", "Dianne Bean, and the Online\nProofreading Team\n\n")
           .replace("End of the Project Gutenberg EBook", "End of Project Gutenberg's"))
    assert clean_gutenberg(raw.encode("utf-8")) == GUTENBERG_CLEAN
    with pytest.raises(GptlabError, match="START OF"):
        clean_gutenberg(b"just some text\n")


def test_gutenberg_download_is_cleaned_before_caching(server, tmp_path):
    raw = GUTENBERG_RAW.encode("utf-8")
    src = serve(server, "27200.txt", raw, text_sha256=sha(GUTENBERG_CLEAN.encode()), prepare=clean_gutenberg)
    corpus = fetch(NamedCorpus("toy-en", "", (src,)))
    assert corpus.text == GUTENBERG_CLEAN
    assert corpus.files[0].read_text(encoding="utf-8") == GUTENBERG_CLEAN

    wrong = serve(server, "other.txt", raw, text_sha256="f" * 64, prepare=clean_gutenberg)
    with pytest.raises(GptlabError, match="converted to text") as e:
        fetch(NamedCorpus("toy-en2", "", (wrong,)))
    assert "f" * 64 in one_line_error(e)
    assert cached_files(tmp_path / "gptlab-cache" / "corpora" / "toy-en2") == []


@needs_mirror
def test_clean_gutenberg_reproduces_the_mirror_copy():
    clean = (MIRROR / "andersen_en" / "andersen_en_pg1597.txt").read_bytes()
    raw = ("\ufeffThe Project Gutenberg EBook of Andersen's Fairy Tales\n\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK ANDERSEN'S FAIRY TALES ***\n\n\n\n\n"
           "Produced by Dianne Bean, and David Widger\n\n\n\n\n\n"
           + clean.decode("utf-8") +
           "\n\n\n\n\n\nEnd of Project Gutenberg's Andersen's Fairy Tales, by Hans Christian Andersen\n\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK ANDERSEN'S FAIRY TALES ***\n").replace("\n", "\r\n")
    assert sha(clean_gutenberg(raw.encode("utf-8")).encode("utf-8")) == NAMED["andersen-en"].files[1].expected


def test_tests_cannot_reach_the_network(monkeypatch):
    monkeypatch.delenv("GPTLAB_MIRROR")
    with pytest.raises(RuntimeError, match="test tried to"):  # conftest's guard, not swallowed as GptlabError
        fetch(NAMED["shakespeare"])


# -----------------------------------------------------------------------------
# andersen-da: converting the R package's data frame

def test_hcandersen_conversion(tmp_path):
    pyreadr = pytest.importorskip("pyreadr")
    import pandas as pd

    df = pd.DataFrame({
        "text": ["Der kom en soldat marcherende hen ad landevejen: én, to!", "Han havde sit tornyster på.",
                 "", "Der var engang en prins.", "æøå ÆØÅ"],
        "book": ["Fyrtøjet", "Fyrtøjet", "Fyrtøjet", "Prinsessen på ærten", "Prinsessen på ærten"],
    })
    path = tmp_path / "hcandersen_da.rda"
    pyreadr.write_rdata(str(path), df, df_name="hcandersen_da")
    assert hcandersen_to_text(path.read_bytes()) == (
        "Fyrtøjet\n\nDer kom en soldat marcherende hen ad landevejen: én, to!\nHan havde sit tornyster på.\n"
        "\n\n"
        "Prinsessen på ærten\n\nDer var engang en prins.\næøå ÆØÅ\n")


@needs_mirror
def test_hcandersen_conversion_reproduces_the_mirror_copy(tmp_path):
    """Rebuild the package's data frame (one row per line, book as an R factor) from the jsonl copy."""
    pyreadr = pytest.importorskip("pyreadr")
    import pandas as pd

    lines = (MIRROR / "andersen_da" / "andersen_da.jsonl").read_text(encoding="utf-8").splitlines()
    tales = [json.loads(line) for line in lines]
    rows = [(row, tale["title_da"]) for tale in tales for row in tale["text"].split("\n")]
    df = pd.DataFrame(rows, columns=["text", "book"]).astype({"book": "category"})
    path = tmp_path / "hcandersen_da.rda"
    pyreadr.write_rdata(str(path), df, df_name="hcandersen_da")
    text = hcandersen_to_text(path.read_bytes())
    assert sha(text.encode("utf-8")) == NAMED["andersen-da"].files[0].expected


def test_hcandersen_without_pyreadr_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyreadr", None)  # makes `import pyreadr` raise ImportError
    with pytest.raises(GptlabError, match=r"pip install 'gptlab\[andersen\]'") as e:
        hcandersen_to_text(b"")
    assert "GPTLAB_MIRROR" in one_line_error(e)


# -----------------------------------------------------------------------------
# the user's own text

def test_user_file_is_kept_exactly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("line one\r\nline two ø\n".encode())
    corpus = load_corpus(str(path))
    assert corpus == Corpus(str(path), "line one\r\nline two ø\n", [path])


def test_user_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("third")
    (tmp_path / "b" / "a.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "readme.md").write_text("not text for the corpus")
    corpus = load_corpus(str(tmp_path))
    assert corpus.text == "first\n\n\nsecond\n\nthird"
    assert corpus.files == [tmp_path / "a.txt", tmp_path / "b" / "a.txt", tmp_path / "b" / "z.txt"]


def test_user_glob(tmp_path):
    for name in ["2.txt", "1.txt", "3.md"]:
        (tmp_path / name).write_text(name)
    corpus = load_corpus(str(tmp_path / "*.txt"))
    assert corpus.text == "1.txt\n\n2.txt"
    assert corpus.name == str(tmp_path / "*.txt")


def test_bom_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert load_corpus(str(path)).text == "hello"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope.txt", "no such file or folder"),
    (lambda d: d, "no .txt files in folder"),
    (lambda d: d / "*.txt", "matched no files"),
])
def test_nothing_to_read(tmp_path, make, message):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(GptlabError, match=message) as e:
        load_corpus(str(make(tmp_path)))
    assert str(make(tmp_path)) in one_line_error(e)


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(GptlabError, match="empty") as e:
        load_corpus(str(path))
    assert str(path) in one_line_error(e)
    (tmp_path / "also_empty.txt").write_bytes(b"\n")
    with pytest.raises(GptlabError, match="the 2 files .* are empty"):
        load_corpus(str(tmp_path))


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Fyrtøjet".encode("latin-1"))
    with pytest.raises(GptlabError, match="not valid UTF-8") as e:
        load_corpus(str(path))
    message = one_line_error(e)
    assert str(path) in message and "offset 4" in message and "0xf8" in message
    path.write_bytes(b"\xef\xbb\xbfab\xff")  # offsets count the BOM: they are offsets in the file
    with pytest.raises(GptlabError, match="offset 5"):
        load_corpus(str(path))


def test_binary_file_names_file_and_nul_offset(tmp_path):
    path = tmp_path / "model.txt"
    path.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(GptlabError, match="NUL byte at offset 4") as e:
        load_corpus(str(tmp_path))
    assert str(path) in one_line_error(e)
