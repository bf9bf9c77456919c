import pandas as pd
import pytest

from m3d_components.data.errors import DataError
from m3d_components.data.vqa import VQADataset, read_vqa_csv

from .conftest import FIXTURES, vqa_row, write_volume


def test_reads_published_header(vqa_csv):
    header = vqa_csv.read_text().splitlines()[0]
    assert header.startswith(",Image Path,Text,Question Type")
    records = read_vqa_csv(vqa_csv)
    assert [r["question_type"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["answer_letter"] == "B" and records[0]["choice_B"] == "answer 1"
    assert len(read_vqa_csv(vqa_csv, question_types=(1, 2))) == 2


def test_closed_and_open_prompts(vqa_csv):
    records = read_vqa_csv(vqa_csv)
    closed = VQADataset(records, closed=True, seed=0)[0]
    assert closed["question"] == (
        "Which plane is shown? Choices: A. Axial B. answer 1 C. Sagittal D. Oblique"
    )
    assert closed["answer"] == "B. answer 1" and closed["task"] == "vqa_closed"
    opened = VQADataset(records, closed=False, seed=0)[0]
    assert opened["question"] == "Which plane is shown?" and opened["answer"] == "answer 1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"Question Type": 7}, r"row 0: 'Question Type' is 7, expected 1–5"),
        ({"Question Type": "plane"}, r"row 0: 'Question Type' is 'plane'"),
        ({"Answer Choice": "E"}, r"row 0: 'Answer Choice' is 'E'"),
        ({"Answer": "Axial"}, r"row 0: 'Answer' 'Axial' differs from 'Choice B' 'Coronal'"),
        ({"Question": ""}, r"row 0: 'Question' is empty"),
        ({"Image Path": "missing.npy"}, r"row 0: Image Path 'missing.npy' not found"),
    ],
)
def test_bad_rows_named(tmp_path, change, message):
    write_volume(tmp_path / "v.npy")
    path = tmp_path / "M3D_VQA_test.csv"
    pd.DataFrame([{**vqa_row("v.npy"), **change}, vqa_row("v.npy")]).to_csv(path)
    with pytest.raises(DataError, match=message) as info:
        read_vqa_csv(path)
    assert "M3D_VQA_test.csv" in str(info.value)
    assert len(read_vqa_csv(path, skip_invalid=True)) == 1


def test_missing_column(tmp_path):
    path = tmp_path / "M3D_VQA_test.csv"
    pd.DataFrame([vqa_row("v.npy")]).drop(columns=["Choice C"]).to_csv(path)
    with pytest.raises(DataError, match=r"missing column\(s\) \['Choice C'\]"):
        read_vqa_csv(path, check_files=False)


def test_real_rows_fixture():
    path = FIXTURES / "m3d_vqa_sample.csv"
    if not path.is_file():
        pytest.skip("shared fixtures absent")
    records = read_vqa_csv(path, check_files=False)
    assert len(records) == 11
    assert {r["question_type"] for r in records} <= {1, 2, 3, 4, 5}
    assert all(r[f"choice_{r['answer_letter']}"] == r["answer_text"] for r in records)
    assert str(records[0]["image"]).endswith(".nii.gz")
