"""The lexical side of a store: FTS5 word and trigram tables over a `records` table.

The embedded store keeps them on disk next to its records; a Redis query process keeps the
same tables in memory (LocalIndex). Both rank with memory.search.rank over these tables, so a
query finds the same moments in either store. `records` must have the columns id, lex (the
searchable text), norm (its normalised words) and skey (the stream's hashed key).
"""

from __future__ import annotations

import sqlite3

from livesense.memory.lexical import normalise, stream_key

TEXT_RECORDS = """
CREATE TABLE IF NOT EXISTS records(
    id INTEGER PRIMARY KEY, lex TEXT NOT NULL, norm TEXT NOT NULL, skey TEXT NOT NULL);
"""
"""The smallest `records` table the text tables work on (the embedded store's has more)."""

TEXT_TABLES = """
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    norm, skey, content='records', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS tri USING fts5(
    lex, skey, content='records', content_rowid='id', tokenize='trigram');
"""


def text_columns(lex: str, stream: str) -> tuple[str, str]:
    """(norm, skey) to store next to a record's searchable text."""
    return normalise(lex), stream_key(stream)


def index_text(conn: sqlite3.Connection, rid: int, lex: str, norm: str, skey: str) -> None:
    """Add a stored row's text to both tables (inside the caller's transaction)."""
    conn.execute("INSERT INTO fts(rowid, norm, skey) VALUES (?, ?, ?)", (rid, norm, skey))
    conn.execute("INSERT INTO tri(rowid, lex, skey) VALUES (?, ?, ?)", (rid, lex, skey))


def unindex_text(conn: sqlite3.Connection, rid: int) -> bool:
    """Remove a row's text from both tables, before the row itself is deleted."""
    row = conn.execute("SELECT lex, norm, skey FROM records WHERE id = ?", (rid,)).fetchone()
    if row is None:
        return False
    lex, norm, skey = row
    conn.execute(
        "INSERT INTO fts(fts, rowid, norm, skey) VALUES ('delete', ?, ?, ?)", (rid, norm, skey)
    )
    conn.execute(
        "INSERT INTO tri(tri, rowid, lex, skey) VALUES ('delete', ?, ?, ?)", (rid, lex, skey)
    )
    return True
