"""Each JSON/CSV/TSV/Parquet data file `neat-train` is given is checked before `datasets` reads it, streaming, so a bad
file is one line naming the file and the line (`data_sources.py` calls [`check_data_file`] on every file it loads).

The check reads a file once, in pieces: a JSON-lines or CSV/TSV file line by line, a JSON list element by element.
No row may be longer than [`MAX_ROW_BYTES`] and at most that much of one is read, so checking any file costs memory in
proportion to that bound, not to the file (`benchmarks/bench_data_check.py` measures it on a 1 GB file).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow
import pyarrow.parquet

from neat_hf.errors import DatasetError

#: The longest row the check reads (a JSON line, an element of a JSON list, a CSV/TSV line or record), line ending
#: included: 16 MiB. A longer row is refused (file and line named) after reading at most this much of it.
#: `neat-train` tokenizes at most `cutoff_len * MAX_CHARS_PER_TOKEN` characters of any text, so such a row could only
#: cost memory.
MAX_ROW_BYTES = 16 * 2**20
_PIECE_BYTES = 2**18  # what one read of a JSON list takes

_NOT_JSON_SPACE = re.compile(r"[^ \t\n\r]")
_CSV_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def check_data_file(path: str, *, delimiter: str = ",", has_header: bool = True, shown_as: str | None = None) -> None:
    """Read a local data file once, streaming, before `datasets` does, so that a bad file gets one line naming the file
    and the line: empty, not UTF-8, a row longer than [`MAX_ROW_BYTES`], a JSON line that does not parse or is not an
    object, JSON nested too deeply, a CSV/TSV row with another number of fields than the header or a field over the
    `csv` reader's limit, a CSV/TSV column of integers holding one beyond 64 bits (`datasets` cannot read it), a
    Parquet file whose footer does not parse.

    Args:
        path (`str`): the local file (for a Hub dataset, its copy in the Hub cache).
        delimiter (`str`): the CSV/TSV field separator.
        has_header (`bool`): whether the first CSV/TSV row names the columns.
        shown_as (`str`, *optional*): the name the user knows the file by in messages (e.g.
            `hf://datasets/org/name/train.jsonl` for a Hub file); defaults to `path`.

    Raises:
        DatasetError: naming the file, the line (1-based) and what is wrong.
    """
    suffix = os.path.splitext(path)[1].lower()
    shown = shown_as or path
    if suffix == ".parquet":
        if os.path.getsize(path) == 0:
            raise DatasetError(f"Data file {shown!r} is empty.")
        try:  # the footer only: what `datasets` reads first; the rows and their schema are its to check
            pyarrow.parquet.read_metadata(path)
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise DatasetError(f"Data file {shown!r} is not a readable Parquet file: {err}") from None
        return
    if _is_blank(path):
        raise DatasetError(f"Data file {shown!r} is empty; it needs at least one row.")
    if suffix in (".json", ".jsonl", ".ndjson"):
        if suffix == ".json" and _is_json_document(path, shown):
            _check_json_document(path, shown)
        else:
            _check_json_lines(path, shown)
        return
    _check_csv(path, shown, delimiter, has_header)


# ---------------------------------------------------------------------------------------------------------------
# Reading in bounded pieces


def _lines(path: str, shown: str) -> Iterator[tuple[int, str, int]]:
    """`(line number, text with its line ending, bytes)` of each line of `path`, decoded as UTF-8 (a leading BOM
    dropped); a line longer than [`MAX_ROW_BYTES`] is refused after reading that much of it."""
    with open(path, "rb") as handle:
        offset, number = 0, 0
        while raw := handle.readline(MAX_ROW_BYTES + 1):
            number += 1
            if len(raw) > MAX_ROW_BYTES:
                raise DatasetError(
                    f"Data file {shown!r} line {number} is longer than {MAX_ROW_BYTES:,d} bytes, the longest row "
                    "neat-train reads; split or shorten it."
                )
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(shown, number, raw[err.start : err.start + 1], offset + err.start) from None
            offset += len(raw)
            yield number, text, len(raw)


def _pieces(path: str, shown: str) -> Iterator[str]:
    """`path` decoded as UTF-8 in pieces of about `_PIECE_BYTES` (never splitting a character; a leading BOM dropped),
    for a JSON list that may sit on one line."""
    with open(path, "rb") as handle:
        offset, lines, carry = 0, 0, b""
        while True:
            data = handle.read(_PIECE_BYTES)
            chunk = carry + data
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                chunk, offset = chunk[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            cut = _char_boundary(chunk) if data else len(chunk)
            part, carry = chunk[:cut], chunk[cut:]
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError as err:
                line = lines + part.count(b"\n", 0, err.start) + 1
                raise _not_utf8(shown, line, part[err.start : err.start + 1], offset + err.start) from None
            offset, lines = offset + len(part), lines + part.count(b"\n")
            if text:
                yield text
            if not data:
                return


def _char_boundary(chunk: bytes) -> int:
    """Where the UTF-8 character cut by the end of `chunk` starts (`len(chunk)` if none is cut)."""
    for back in range(1, min(4, len(chunk)) + 1):
        byte = chunk[-back]
        if byte & 0xC0 != 0x80:  # ASCII or the first byte of a sequence
            needed = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(chunk) if back >= needed else len(chunk) - back
    return len(chunk)


def _not_utf8(shown: str, line: int, byte: bytes, offset: int) -> DatasetError:
    return DatasetError(
        f"Data file {shown!r} is not UTF-8: line {line} holds the byte {byte!r} (offset {offset}). Re-save it as UTF-8."
    )


def _is_blank(path: str) -> bool:
    """Whether the file holds nothing but whitespace (read up to its first other character)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(2**16):
            if chunk.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace").strip():
                return False
    return True


def _json_int(text: str) -> int:
    """JSON integers are only checked for syntax here: no `int()` of a 5,000-digit number (`datasets` reads one as a
    float, and the label checks of `data.py` refuse it)."""
    return 0


# ---------------------------------------------------------------------------------------------------------------
# JSON


def _check_json_lines(path: str, shown: str) -> None:
    """One JSON object per line; a line ends at `\n`, `\r\n` or a lone `\r`, as for `datasets`' JSON reader."""
    breaks = 0  # lone `\r` line breaks so far, which `_lines` does not split at
    for number, text, _ in _lines(path, shown):
        body = text.removesuffix("\n").removesuffix("\r")
        parts = body.split("\r") if "\r" in body else [body]
        for part_index, line in enumerate(parts):
            if line.strip():
                _check_json_line(line, shown, number + breaks + part_index)
        breaks += len(parts) - 1


def _check_json_line(line: str, shown: str, number: int) -> None:
    try:
        row = json.loads(line, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"Data file {shown!r} line {number} is not valid JSON ({err.msg} at column {err.colno}); every line "
            "of a JSON-lines file must be one JSON object."
        ) from None
    except RecursionError:
        raise DatasetError(
            f"Data file {shown!r} line {number} is nested too deeply; every line of a JSON-lines file must be "
            "one flat JSON object (column: value)."
        ) from None
    if not isinstance(row, dict):
        raise DatasetError(
            f"Data file {shown!r} line {number} is a JSON {type(row).__name__}, not an object with column names."
        )


def _is_json_document(path: str, shown: str) -> bool:
    """Whether a `.json` file is one JSON document (a list of rows, or an object) rather than JSON lines: a list, or
    an object unless its first line is a whole JSON object and another line follows."""
    pieces = _pieces(path, shown)
    start = next((found.group() for piece in pieces if (found := _NOT_JSON_SPACE.search(piece))), None)
    pieces.close()
    if start != "{":
        return start == "["
    lines = _lines(path, shown)
    try:
        filled = (line for _, line, _ in lines if line.strip())
        json.loads(next(filled), parse_int=_json_int)
        return next(filled, None) is None
    except (json.JSONDecodeError, RecursionError):
        return True
    finally:
        lines.close()


class _JsonStream:
    """One JSON document read value by value from [`_pieces`], holding at most about two rows' worth of text."""

    def __init__(self, path: str, shown: str) -> None:
        self.pieces, self.shown = _pieces(path, shown), shown
        self.decoder = json.JSONDecoder(parse_int=_json_int)
        self.text, self.pos, self.eof = "", 0, False
        self.line, self.column = 1, 0  # where text[0] sits in the file (line 1-based, column 0-based)

    def _read(self, wanted: int) -> None:
        """Drop the text before `pos`, then read until `wanted` characters from `pos` are held (or the file ends)."""
        self.line, self.column = self.where(self.pos)
        self.column -= 1
        parts, held = [self.text[self.pos :]], len(self.text) - self.pos
        while held < wanted and not self.eof:
            piece = next(self.pieces, None)
            if piece is None:
                self.eof = True
            else:
                parts.append(piece)
                held += len(piece)
        self.text, self.pos = "".join(parts), 0

    def peek(self) -> str | None:
        """The next character that is not whitespace (`pos` moved to it), or None at the end of the file."""
        while True:
            found = _NOT_JSON_SPACE.search(self.text, self.pos)
            if found:
                self.pos = found.start()
                return found.group()
            self.pos = len(self.text)
            if self.eof:
                return None
            self._read(_PIECE_BYTES)

    def value(self) -> Any:
        """The JSON value at the next non-whitespace character, read whole (at most [`MAX_ROW_BYTES`] of it)."""
        self.peek()
        while True:
            held = len(self.text) - self.pos
            try:
                value, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:  # cut by the end of what is held, or wrong
                cut = err.pos >= len(self.text) - 16 or err.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    raise self.invalid(err.msg, err.pos) from None
            except RecursionError:
                raise DatasetError(f"Data file {self.shown!r} is nested too deeply to be a table of rows.") from None
            else:
                if end < len(self.text) or self.eof:  # a number or literal at the very end may go on
                    self.pos = end
                    return value
            if held >= MAX_ROW_BYTES:
                line, column = self.where(self.pos)
                raise DatasetError(
                    f"Data file {self.shown!r} holds a row longer than {MAX_ROW_BYTES:,d} characters, the longest "
                    f"row neat-train reads (it starts at line {line}, column {column}); split or shorten it."
                )
            self._read(min(2 * held + _PIECE_BYTES, MAX_ROW_BYTES + 16))

    def where(self, pos: int) -> tuple[int, int]:
        """Line and column (1-based) in the file of `text[pos]`."""
        last = self.text.rfind("\n", 0, pos)
        if last < 0:
            return self.line, self.column + pos + 1
        return self.line + self.text.count("\n", 0, pos), pos - last

    def invalid(self, message: str, pos: int) -> DatasetError:
        line, column = self.where(pos)
        return DatasetError(f"Data file {self.shown!r} is not valid JSON: line {line}, column {column}: {message}.")


def _check_json_document(path: str, shown: str) -> None:
    """A `.json` file holding a list of rows (read element by element) or one object (`{"data": [...]}`: one row)."""
    stream = _JsonStream(path, shown)
    if stream.peek() == "[":
        stream.pos += 1
        rows = 0
        if stream.peek() != "]":
            while True:
                stream.value()
                rows += 1
                after = stream.peek()
                if after == "]":
                    break
                if after != ",":
                    raise stream.invalid("Expecting ',' delimiter", stream.pos)
                stream.pos += 1
        stream.pos += 1
    else:
        document = stream.value()
        rows = 0 if isinstance(document, dict) and document.get("data") == [] else 1
    if stream.peek() is not None:
        raise stream.invalid("Extra data", stream.pos)
    if not rows:
        raise DatasetError(f"Data file {shown!r} holds no rows.")


# ---------------------------------------------------------------------------------------------------------------
# CSV / TSV


class _CsvLines:
    """The lines of a CSV/TSV file for `csv.reader`, refusing a record (lines joined by a quoted field) longer than
    [`MAX_ROW_BYTES`]: the reader calls [`row_read`] after each row."""

    def __init__(self, path: str, shown: str) -> None:
        self.path, self.shown, self.record_bytes = path, shown, 0

    def __iter__(self) -> Iterator[str]:
        for number, line, size in _lines(self.path, self.shown):
            self.record_bytes += size
            if self.record_bytes > MAX_ROW_BYTES:
                raise DatasetError(
                    f"Data file {self.shown!r} line {number} ends a record longer than {MAX_ROW_BYTES:,d} bytes, the "
                    "longest row neat-train reads (a quote left open?); close the quote, or split the row."
                )
            yield line

    def row_read(self) -> None:
        self.record_bytes = 0


def _check_csv(path: str, shown: str, delimiter: str, has_header: bool) -> None:
    lines = _CsvLines(path, shown)
    reader = csv.reader(lines, delimiter=delimiter)
    width, header = None, None
    integers: dict[int, tuple[int, str] | None] = {}  # columns of integers only so far: the first beyond 64 bits
    try:
        for row in reader:
            lines.row_read()
            if not row:
                continue
            if width is None:
                width, integers = len(row), dict.fromkeys(range(len(row)))
                if has_header:
                    header = row
                    continue
            if len(row) != width:
                raise DatasetError(
                    f"Data file {shown!r} line {reader.line_num} has {len(row)} fields where the "
                    f"{'header' if has_header else 'first row'} has {width} (delimiter {delimiter!r}); quote fields "
                    "that contain the delimiter."
                )
            for index in list(integers):
                field = row[index]
                if not field.strip():
                    continue
                if not _CSV_INTEGER.fullmatch(field):
                    del integers[index]
                elif integers[index] is None and not _fits_csv_integer(field):
                    integers[index] = (reader.line_num, field.strip())
    except csv.Error as err:  # e.g. a field longer than csv.field_size_limit() (131,072 characters)
        raise DatasetError(_csv_error(path, shown, delimiter, reader.line_num, err)) from None
    if width is None or (has_header and reader.line_num <= 1):
        raise DatasetError(f"Data file {shown!r} holds {'a header but ' if width else ''}no data rows.")
    for index, found in integers.items():
        if found is not None:
            column = header[index] if header else f"#{index + 1}"
            raise DatasetError(
                f"Data file {shown!r} line {found[0]} column {column!r} holds the integer {found[1][:40]}, beyond the "
                "64-bit integers the CSV reader of `datasets` can store in a column of integers; fix the row."
            )


def _fits_csv_integer(field: str) -> bool:
    """Whether the integer text `field` is within -2**63..2**64-1, where pandas (behind `datasets`' CSV reader) can
    hold it; decided from its length first, so a 5,000-digit field is never converted."""
    digits = field.strip().lstrip("+-").lstrip("0")
    return len(digits) <= 20 and -(2**63) <= int(field) <= 2**64 - 1


def _csv_error(path: str, shown: str, delimiter: str, line: int, err: csv.Error) -> str:
    """One line for a CSV/TSV file the `csv` reader refuses: the file, the line and, for a field over the reader's
    size limit, the column (found by reading the file again with no field limit; rows are still bounded)."""
    limit = csv.field_size_limit()
    if "field larger than field limit" not in str(err):
        return f"Data file {shown!r} line {line} cannot be read as CSV ({err})."
    csv.field_size_limit(sys.maxsize)  # process-wide: restored below
    try:
        lines = _CsvLines(path, shown)
        reader = csv.reader(lines, delimiter=delimiter)
        header: list[str] = []
        for row in reader:
            lines.row_read()
            header = header or row
            for index, field in enumerate(row):
                if len(field) > limit:
                    column = header[index] if index < len(header) and row is not header else f"#{index + 1}"
                    return (
                        f"Data file {shown!r} line {reader.line_num} column {column!r} holds a field of "
                        f"{len(field):,d} characters; the CSV reader accepts at most {limit:,d}. Shorten it, or "
                        "use a JSON-lines file."
                    )
    finally:
        csv.field_size_limit(limit)
    return f"Data file {shown!r} line {line} has a field longer than {limit:,d} characters ({err})."
