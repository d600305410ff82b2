"""datafile: syntax errors of user files come back as one line: file, line, column, problem."""
import pytest

from dispider_ros.eval import datafile


@pytest.mark.parametrize("name, text, where, problem", [
    ("a.yaml", "a: 1\n b: 2\n", ":2:3:", "not valid YAML: mapping values are not allowed here"),
    ("a.yml", "a: 1\n\tb: 2\n", ":2:1:", "not valid YAML: found character '\\t'"),
    ("a.json", '{"version": 1,\n "recordings": [,]}\n', ":2:17:", "not valid JSON: Expecting value"),
])
def test_syntax_error_is_one_line_with_line_and_column(tmp_path, name, text, where, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        datafile.load(path)
    message = str(info.value)
    assert message.startswith(str(path) + where), message
    assert problem in message and "\n" not in message


def test_suffix_picks_the_parser_and_can_be_forced(tmp_path):
    (tmp_path / "a.yaml").write_text("a: [1, 2]\n")
    (tmp_path / "b.txt").write_text('{"a": [1, 2]}')
    assert datafile.load(tmp_path / "a.yaml") == {"a": [1, 2]}
    assert datafile.load(tmp_path / "b.txt") == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"a.yaml:1:1: not valid JSON"):
        datafile.load(tmp_path / "a.yaml", yaml_ok=False)


def test_binary_file_and_folder_are_named(tmp_path):
    (tmp_path / "x.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"x.json: not a UTF-8 text file"):
        datafile.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"is a folder, not a file"):
        datafile.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        datafile.load(tmp_path / "missing.json")
