import pandas as pd
import pytest

from m3d_components.data.errors import DataError
from m3d_components.data.refseg import RefSegDataset, read_refseg_csv


def test_reads_rows_and_selects_region(refseg_csv):
    records = read_refseg_csv(refseg_csv)
    assert [(r["mask_id"], r["question_type"]) for r in records] == [(1, 0), (2, 1)]
    sample = RefSegDataset(records, seed=0)[1]
    assert sample["seg"].sum() == 3 * 4 * 6 and sample["answer"] == "It is here: [SEG]."
    assert sample["question"] == "Where is region 2?" and sample["task"] == "refseg"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"Mask_ID": 0}, r"row 0: 'Mask_ID' is 0"),
        ({"Question_Type": 3}, r"row 0: 'Question_Type' is '3'"),
        ({"Answer": "No token here."}, r"row 0: 'Answer' must contain exactly one \[SEG\], found 0"),
        ({"Mask": "s0000/none.npy"}, r"row 0: Mask 's0000/none.npy' not found"),
    ],
)
def test_bad_rows(refseg_csv, change, message):
    table = pd.read_csv(refseg_csv)
    for key, value in change.items():
        table[key] = table[key].astype(object)
        table.loc[0, key] = value
    table.to_csv(refseg_csv, index=False)
    with pytest.raises(DataError, match=message):
        read_refseg_csv(refseg_csv)
    assert len(read_refseg_csv(refseg_csv, skip_invalid=True)) == 1


def test_seg_spelling_and_absent_region(refseg_csv):
    table = pd.read_csv(refseg_csv)
    table.loc[0, "Answer"] = "Here: <SEG>."
    table.loc[1, "Mask_ID"] = 9
    table.to_csv(refseg_csv, index=False)
    records = read_refseg_csv(refseg_csv)
    assert records[0]["ref_answer"] == "Here: [SEG]."
    with pytest.raises(DataError, match="region id 9 does not occur"):
        RefSegDataset(records)[1]
