"""`neat_hf.cli.train.data_files.check_data_file` reads streaming, in bounded memory (issue 22): a JSON-lines or CSV
file line by line, a JSON list element by element, and no row past `MAX_ROW_BYTES`. Memory is measured with
`tracemalloc` (Python allocations), never timed; `benchmarks/bench_data_check.py` measures RSS on a 1 GB file."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from neat_hf.cli.train import data_files
from neat_hf.cli.train.data_files import check_data_file
from neat_hf.errors import DatasetError

ROW = {"instruction": "Please choose the correct answer: é, 😀 or \"quoted\"", "input": "", "output": "answer1"}


def _peak_bytes(path, **kwargs) -> tuple[int, str | None]:
    """Peak Python allocation while checking `path`, and the refusal (None if accepted)."""
    tracemalloc.start()
    try:
        check_data_file(str(path), **kwargs)
        error = None
    except DatasetError as err:
        error = str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("train.jsonl", lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
        ("train.json", lambda rows: json.dumps(rows)),  # one line, as json.dump writes it
        ("train.json", lambda rows: json.dumps(rows, indent=1)),
        ("train.csv", lambda rows: "instruction,output\n" + "".join(f'"{r["instruction"].replace(chr(34), 2 * chr(34))}",x\n' for r in rows)),
    ],
)
def test_a_large_file_is_checked_in_bounded_memory(tmp_path, monkeypatch, name, write):
    """3 MB of rows, read in 64 KiB pieces: the check holds a few pieces and a few rows at a time, not the file."""
    monkeypatch.setattr(data_files, "_PIECE_BYTES", 2**16)
    path = tmp_path / name
    path.write_text(write([ROW] * 30_000), encoding="utf-8")
    assert path.stat().st_size > 1_800_000
    peak, error = _peak_bytes(path)
    assert error is None
    assert peak < 2**20, peak


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("long.jsonl", b'{"output": "a"}\n{"output": "' + b"x" * 3_000_000 + b'"}\n', ["line 2 is longer than 65,536 bytes"]),
        ("long.csv", b"output,label\na,1\n" + b"x" * 3_000_000 + b",0\n", ["line 3 is longer than 65,536 bytes"]),
        ("long.json", b'[{"output": "a"},\n {"output": "' + b"x" * 3_000_000 + b'"}]',
         ["holds a row longer than 65,536 characters", "starts at line 2, column 2"]),
        ("one_line.json", b'[{"output": "a"}, {"output": "' + b"x" * 3_000_000 + b'"}]', ["starts at line 1, column 19"]),
        ("open_quote.csv", b'output,label\na,1\n"' + b"x\n" * 1_500_000, ["ends a record longer than 65,536 bytes"]),
    ],
)
def test_a_row_over_the_limit_is_refused_without_reading_it_whole(tmp_path, monkeypatch, name, content, fragments):
    """With the limit at 64 KiB, a 3 MB row is refused after reading about the limit (not the row) into memory."""
    monkeypatch.setattr(data_files, "MAX_ROW_BYTES", 2**16)
    monkeypatch.setattr(data_files, "_PIECE_BYTES", 2**12)
    path = tmp_path / name
    path.write_bytes(content)
    peak, error = _peak_bytes(path)
    assert error is not None and name in error and "\n" not in error, error
    for fragment in fragments:
        assert fragment in error, error
    assert peak < 600_000, peak  # the row is 3 MB


def test_the_default_row_limit_is_documented_and_generous():
    assert data_files.MAX_ROW_BYTES == 16 * 2**20
    assert "MAX_ROW_BYTES" in check_data_file.__doc__


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64])
def test_a_json_list_read_in_tiny_pieces_is_read_exactly(tmp_path, monkeypatch, piece):
    """Pieces that cut characters, strings, escapes and numbers: the list is accepted, and a bad one gets the line and
    column `json` reports for the whole text."""
    monkeypatch.setattr(data_files, "_PIECE_BYTES", piece)
    rows = [ROW, {"n": 12345678901234567890, "x": -1.5e-7, "t": [True, None, "\\u00e9\\\\"]}, {"é": "😀" * 3}]
    good = json.dumps(rows, indent=2, ensure_ascii=False)
    path = tmp_path / "rows.json"
    path.write_text(good, encoding="utf-8")
    check_data_file(str(path))
    for bad in (good.replace('"n": 1', '"n": x1'), good[:-3], good + " ]", good.replace("-1.5e-07", "-1.5e-")):
        assert bad != good
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(DatasetError) as info:
            check_data_file(str(path))
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(bad)
        assert f"line {expected.value.lineno}, column {expected.value.colno}" in str(info.value), (bad, info.value)


def test_utf8_errors_are_named_by_line_and_byte_offset_in_every_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(data_files, "_PIECE_BYTES", 5)
    for name, content in [("a.jsonl", b'{"x": "\xc3\xa9"}\n{"x": "\xe9"}\n'), ("a.json", b'[{"x": "\xc3\xa9"},\n{"x": "\xe9"}]'),
                          ("a.csv", b"x\n\xc3\xa9\n\xe9\n")]:
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content)  # a BOM is fine, and offsets count it
        with pytest.raises(DatasetError) as info:
            check_data_file(str(path))
        bad = content.index(b"\xe9", content.index(b"\n"))
        line, offset = content[:bad].count(b"\n") + 1, len(b"\xef\xbb\xbf") + bad
        assert f"line {line} holds the byte b'\\xe9' (offset {offset})" in str(info.value), info.value


def test_json_lines_may_end_with_a_lone_carriage_return(tmp_path):
    """`datasets`' JSON reader splits lines at \\r too (old Mac files); such a file is accepted, and a bad line is
    still named by its number."""
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b'{"output": "a"}\r{"output": "b"}\r')
    check_data_file(str(path))
    path.write_bytes(b'{"output": "a"}\r{"output": "b"}\r{"output": }\r\n{"output": "c"}\n')
    with pytest.raises(DatasetError, match="line 3 is not valid JSON"):
        check_data_file(str(path))


def test_a_5000_digit_json_integer_is_not_converted(tmp_path):
    """The check only parses JSON syntax: no `int()` of a 5,000-digit number (a ValueError before)."""
    path = tmp_path / "big.jsonl"
    path.write_text('{"output": "a", "label": ' + "9" * 5000 + "}\n")
    check_data_file(str(path))
