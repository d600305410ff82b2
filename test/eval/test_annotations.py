"""Annotation schema: validation errors name the bad entry; files round-trip; StreamingBench converts."""
import json
import re
from pathlib import Path

import pytest

from dispider_ros.eval import annotations as ann

PROACTIVE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "annotations" / \
    "streamingbench_questions_proactive.json"


def _sample():
    return {"version": 1, "recordings": [
        {"recording_id": "lab01", "source": "bags/lab01", "start_stamp": 1700000000.5, "duration": "2:00",
         "queries": [
             {"query_id": "door", "time": 12.5, "text": "Tell me when the door opens.", "mode": "auto",
              "camera": "front", "windows": [{"start": 30, "end": 34, "text": "The door is open."}]},
             {"time": "0:05", "text": "Say nothing.", "mode": "match", "windows": []},
         ]},
        {"recording_id": "lab02", "queries": [
            {"time": 1, "text": "Count the cups.", "windows": [[5, 6], {"start": "0:02", "end": 4.5}]}]},
    ]}


def _error(data):
    with pytest.raises(ValueError) as info:
        ann.from_dict(data)
    return str(info.value)


def test_valid_file_defaults_and_sorting():
    s = ann.from_dict(_sample())
    ids = [q.query_id for q in s.queries()]
    assert ids == ["door", "lab01/q1", "lab02/q0"]       # default ids from the position
    q = s.query("lab02/q0")
    assert [(w.start, w.end) for w in q.windows] == [(2.0, 4.5), (5.0, 6.0)]   # sorted
    assert s.query("lab01/q1").time == 5.0 and s.recordings[0].duration == 120.0
    assert s.recording_of("door").recording_id == "lab01"
    assert s.recordings[0].to_relative(1700000013.0) == 12.5
    with pytest.raises(KeyError):
        s.query("nope")


@pytest.mark.parametrize("path, value, expected", [
    (("queries", 0, "windows", 0, "start"), 40, r"recording 'lab01' query 0: query 'door' window 0: window start 40.0 > end 34.0"),
    (("queries", 0, "mode"), "sometimes", r"query 0: query 'door': mode 'sometimes' is not one of"),
    (("queries", 0, "time"), "12h", r"query 'door' time: '12h' is neither seconds nor H:MM:SS"),
    (("queries", 0, "time"), -1, r"must be finite and >= 0"),
    (("queries", 0, "text"), " ", r"text ' ' must be a non-empty string"),
    (("queries", 0, "windows", 0), {"start": 5, "end": 10}, r"window 0: ends at 10.0 before the query is asked at 12.5"),
    (("queries", 0, "camera"), 3, r"camera 3 is not a string"),
])
def test_errors_name_the_bad_entry(path, value, expected):
    data = _sample()
    node = data["recordings"][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    message = _error(data)
    assert re.search(expected, message), message


def test_structural_errors():
    data = _sample()
    data["recordings"][0]["queries"][0]["windowz"] = []
    assert "unknown keys ['windowz']" in _error(data)
    data = _sample()
    data["recordings"][1]["queries"][0]["query_id"] = "door"
    assert "query_id 'door' is already used in recording 'lab01'" in _error(data)
    data = _sample()
    data["recordings"][1]["recording_id"] = "lab01"
    assert "recording 1: recording_id 'lab01' is repeated" in _error(data)
    data = _sample()
    del data["recordings"][1]["queries"][0]["text"]
    assert "recording 'lab02' query 0: query: missing keys ['text']" in _error(data)
    assert "version 2 is not 1" in _error({"version": 2, "recordings": []})
    assert "queries must be a list" in _error({"recordings": [{"recording_id": "r", "queries": {}}]})
    data = _sample()
    data["recordings"][0]["queries"][0]["query_id"] = 7
    assert "recording 'lab01' query 0: query_id 7 must be a string" in _error(data)
    data = _sample()
    data["recordings"][0]["queries"][0]["windows"] = {"start": 1}
    assert "query 'door': windows must be a list" in _error(data)
    assert "start_stamp 'x'" in _error({"recordings": [{"recording_id": "r", "start_stamp": "x"}]})


def test_parse_time():
    assert ann.parse_time("1:02:03.5") == 3723.5
    assert ann.parse_time("02:03") == 123.0
    assert ann.parse_time("7.25") == 7.25
    with pytest.raises(ValueError, match="start: True is not a time"):
        ann.parse_time(True, "start")


@pytest.mark.parametrize("name", ["ann.json", "ann.yaml"])
def test_round_trip(tmp_path, name):
    original = ann.from_dict(_sample())
    ann.save(original, tmp_path / name)
    loaded = ann.load(tmp_path / name)
    assert loaded == original
    assert loaded.to_dict()["recordings"][0]["queries"][1]["query_id"] == "lab01/q1"


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("recordings:\n  - recording_id: r\n    queries:\n      - {time: 1}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: recording 'r' query 0: query: missing keys \['text'\]"):
        ann.load(path)


@pytest.mark.parametrize("name, text, where", [
    ("bad.yaml", "recordings:\n  - recording_id: r\n    queries: [{time: 1, text: x}\n  - y\n",
     "bad.yaml:4:3: not valid YAML"),
    ("bad.json", '{"recordings": [\n  {"recording_id": "r",}]}', "bad.json:2:24: not valid JSON"),
])
def test_syntax_error_names_file_line_and_column(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as info:
        ann.load(tmp_path / name)
    assert where in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def proactive():
    if not PROACTIVE.exists():
        pytest.skip(f"{PROACTIVE} is absent on this machine")
    return json.loads(PROACTIVE.read_text())


def test_from_streamingbench_real_entries(proactive):
    rec = ann.from_streamingbench(proactive[0], 0)
    # time_stamp 00:00:20, ground_truth_time_stamp 00:00:29, ground_truth_output "3"
    assert rec.recording_id == "sb000_sample_17_proactive"
    assert rec.source == "./videos/sample_17_proactive.mp4"
    (q,) = rec.queries
    assert (q.query_id, q.time, q.mode, q.camera) == ("sb000_q0", 20.0, "auto", "")
    assert q.text == 'When the scoreboard shows 3 points for USA, output "3".'
    assert [w.to_dict() for w in q.windows] == [{"start": 29.0, "end": 29.0, "text": "3"}]
    # entry 12 writes H:MM:SS without the leading zero: 0:02:22 -> 142, 0:02:32 -> 152
    q = ann.from_streamingbench(proactive[12], 12).queries[0]
    assert (q.query_id, q.time, q.windows[0].start, q.windows[0].text) == \
        ("sb012_q0", 142.0, 152.0, "Corner kick by red team")
    # entry 205 has two questions: 00:00:01 -> 13 s and 00:00:35 -> 58 s
    two = ann.from_streamingbench(proactive[205], 205).queries
    assert [(q.query_id, q.time, q.windows[0].start) for q in two] == [("sb205_q0", 1.0, 13.0),
                                                                       ("sb205_q1", 35.0, 58.0)]


def test_whole_streamingbench_file_loads_as_annotations(proactive):
    s = ann.load(PROACTIVE)
    queries = list(s.queries())
    assert len(s.recordings) == 248 and len(queries) == 250
    assert len({q.query_id for q in queries}) == 250
    assert s == ann.from_streamingbench_file(proactive)


def test_from_streamingbench_errors_name_the_question(proactive):
    entry = json.loads(json.dumps(proactive[0]))
    entry["questions"][0]["ground_truth_time_stamp"] = "00:00:10"   # before the query at 20 s
    with pytest.raises(ValueError, match="StreamingBench entry 3 question 0: .*ends at 10.0 before"):
        ann.from_streamingbench(entry, 3)
    del entry["questions"][0]["question"]
    with pytest.raises(ValueError, match=r"entry 3 question 0: missing keys \['question'\]"):
        ann.from_streamingbench(entry, 3)
