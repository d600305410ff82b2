"""OVO-Bench scorer: the published Gemini results, and real entries with made-up answers."""
import copy
import json
from pathlib import Path

import pytest

from dispider_ros.eval import ovo

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "annotations"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent on this machine")
    return path


@pytest.fixture(scope="module")
def annotations():
    return ovo.load_annotations(_need(DATA / "ovo_bench_new.json"))


def test_gemini_results_match_the_official_scorer(annotations):
    out = ovo.score(ovo.load_results(_need(DATA / "ovo_results_Gemini")), annotations)
    # Official score.py prints: Backward 62.54, Realtime 69.32, Forward 57.15, Total 63.00
    assert round(out["total"], 2) == 63.00
    assert (round(out["backward"], 2), round(out["realtime"], 2), round(out["forward"], 2)) == (62.54, 69.32, 57.15)
    # ...and per task (official lines "Task: ASI, Acc: 76.35" etc.)
    official = {"ASI": 76.35, "EPM": 58.59, "HLD": 52.69, "ATR": 79.31, "ACR": 66.97, "OCR": 85.91,
                "STU": 58.43, "OJR": 61.96, "FPD": 63.37, "SSR": 74.24, "CRR": 61.67, "REC": 35.53}
    assert {task: round(out[task], 2) for task in official} == official
    assert out["counts"]["REC"] == {"correct": 248, "total": 698}
    # The published results predate the current annotation file: 3 letters differ, 5 ids
    # are scored twice and 5 are absent. Reported, never used to score.
    assert out["checks"]["ground_truth_mismatches"] == [192, 239, 427]
    assert sorted(out["checks"]["repeated_ids"]) == [192, 225, 239, 424, 427]
    assert out["checks"]["missing"] == {"EPM": 3, "HLD": 2}


def _result_files(annotations, tmp_path):
    """Real entries 0 (EPM), 483 (ASI), 631 (STU), 1558 (REC), 1516 (SSR), 1468 (CRR)."""
    by_id = {e["id"]: e for e in annotations}

    def mc(entry_id, response):
        e = by_id[entry_id]
        return {"id": entry_id, "task": e["task"], "response": response,
                "ground_truth": chr(ord("A") + e["gt"])}

    def fwd(entry_id, responses):
        e = copy.deepcopy(by_id[entry_id])
        assert len(e["test_info"]) == len(responses)
        for probe, response in zip(e["test_info"], responses):
            probe["response"] = response
        return e

    assert by_id[0]["gt"] == 2 and by_id[483]["gt"] == 0 and by_id[631]["gt"] == 1
    backward = [mc(0, "C."),          # EPM, gt C: correct
                mc(483, None)]        # ASI: no response scores 0
    realtime = [mc(631, "The answer is B")]   # STU, gt B: correct
    forward = [
        # REC counts 1, 1, 1: digits "1", "1", "12" -> 1, 1, 0 = 2/3
        fwd(1558, ["1", "There is 1 event.\n", "1 or 2"]),
        # SSR types 1,1,0,0,1,1,1,0,0,1,1,1:
        #   Y=1 Yes=1 N=1 no=0 (case) Yes.=1 yes=0 "Y "=0 (not exact) No=1
        #   "Not yet"=1 (contains "No") None=0 "Yes, done"=1 N=0 (type 1) -> 7/12
        fwd(1516, ["Y", "Yes", "N", "no", "Yes.", "yes", "Y ", "No", "Not yet", None, "Yes, done", "N"]),
        # CRR types 0,0,1,1,1: N=1 "No."=1 Yes=1 Y=1 None=0 -> 4/5
        fwd(1468, ["N", "No.", "Yes", "Y", None]),
    ]
    (tmp_path / "a_backward.json").write_text(json.dumps({"backward": backward, "realtime": [], "forward": []}))
    (tmp_path / "b_rest.json").write_text(json.dumps({"backward": [], "realtime": realtime, "forward": forward}))
    (tmp_path / "notes.txt").write_text("not a result file")
    return tmp_path


def test_constructed_answers_on_real_entries(annotations, tmp_path):
    out = ovo.score(ovo.load_results(_result_files(annotations, tmp_path)), annotations)
    assert out["EPM"] == 100.0 and out["ASI"] == 0.0 and out["backward"] == 50.0
    assert out["STU"] == 100.0 and out["realtime"] == 100.0
    assert out["REC"] == pytest.approx(200 / 3)
    assert out["SSR"] == pytest.approx(700 / 12)
    assert out["CRR"] == pytest.approx(80.0)
    # forward = (66.67 + 58.33 + 80) / 3 = 68.33; total = (50 + 100 + 68.33) / 3 = 72.78
    assert out["forward"] == pytest.approx(205 / 3)
    assert out["total"] == pytest.approx((50 + 100 + 205 / 3) / 3)
    assert out["counts"]["SSR"] == {"correct": 7, "total": 12}
    assert out["checks"]["missing"]["EPM"] == 296


def test_total_uses_only_the_modes_present(annotations, tmp_path):
    folder = _result_files(annotations, tmp_path)
    (folder / "b_rest.json").unlink()
    out = ovo.score(ovo.load_results(folder))
    assert out["total"] == out["backward"] == 50.0
    assert "realtime" not in out and "checks" not in out


def test_probe_rules():
    assert ovo.multiple_choice_correct("D. \n", "D") == 1
    assert ovo.multiple_choice_correct("d", "D") == 0
    assert ovo.rec_correct("3 \n", 3) == 1 and ovo.rec_correct("10", 1) == 0
    assert ovo.rec_correct(None, 1) == 0
    assert ovo.yes_no_correct("N", 0) == 1 and ovo.yes_no_correct("Y", 0) == 0
    assert ovo.yes_no_correct("Yes. \n", 1) == 1


def test_bad_results_name_the_item(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(
        {"backward": [{"id": 7, "task": "EPM", "response": "A"}], "realtime": [], "forward": []}))
    with pytest.raises(ValueError, match=r"id=7 .*ground_truth"):
        ovo.score(ovo.load_results(tmp_path))
    (tmp_path / "r.json").write_text(json.dumps({"backward": []}))
    with pytest.raises(ValueError, match="needs the keys"):
        ovo.load_results(tmp_path)
