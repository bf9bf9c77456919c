import pytest

from m3d_components.data.report import extract_findings, shorten_report, split_sentences

from .conftest import FIXTURES


def test_findings_then_discussion_then_whole():
    text = "Title:x\n\ndiscussion:The discussion part.\n\nstudy_findings:Liver lesion.\nSecond line.\n"
    assert extract_findings(text) == "Liver lesion. Second line."
    assert extract_findings("discussion:Useful text here.\n\nstudy_findings: ab\n") == "Useful text here."
    assert extract_findings("Plain prepared report.\nTwo lines.") == "Plain prepared report. Two lines."


def test_real_report_fixture():
    path = FIXTURES / "m3d_cap_sample_text.txt"
    if not path.is_file():
        pytest.skip("shared fixtures absent")
    text = extract_findings(path.read_text())
    assert text.startswith("Increased wall thickness")
    assert "presentation" not in text and "Age:" not in text
    assert len(split_sentences(text)) == 5  # 'mass.The' and 'spine.Grade' are split too


def test_shorten_keeps_whole_sentences():
    text = "One two three. Four five six seven. Eight."
    assert shorten_report(text, 100) == text
    assert shorten_report(text, 7) == "One two three. Four five six seven."
    assert shorten_report(text, 2) == "One two"
    with pytest.raises(ValueError):
        shorten_report(text, 0)
