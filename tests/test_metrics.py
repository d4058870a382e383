"""Metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgeser.metrics import cer, classification_report, confusion_matrix, edit_distance, wer


def test_hand_computed_ua_wa_f1() -> None:
    # truth:  0 0 0 0 1 1 2 2 2 2
    # pred:   0 0 1 2 1 0 2 2 2 0
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 0]
    report = classification_report(y_true, y_pred, 3)
    assert report.confusion == [[2, 1, 1], [1, 1, 0], [1, 0, 3]]
    assert report.wa == pytest.approx(6 / 10)
    assert report.ua == pytest.approx((2 / 4 + 1 / 2 + 3 / 4) / 3)
    # F1 per class: 2*2/(4+4)=0.5, 2*1/(2+2)=0.5, 2*3/(4+4)=0.75
    assert report.macro_f1 == pytest.approx((0.5 + 0.5 + 0.75) / 3)


def test_class_absent_from_truth_is_not_counted_in_ua() -> None:
    report = classification_report([0, 0, 1], [0, 2, 1], 3)
    assert report.ua == pytest.approx((0.5 + 1.0) / 2)
    assert report.macro_f1 == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_confusion_matrix_shape_and_counts() -> None:
    matrix = confusion_matrix([1, 1, 1], [1, 1, 0], 4)
    assert matrix.shape == (4, 4) and matrix[1, 1] == 2 and matrix[1, 0] == 1 and matrix.sum() == 3


def test_edit_distance_and_error_rates() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1
    # "say the word boot" vs "say a word boat": words: sub the->a, sub boot->boat = 2 of 4
    assert wer(["Say the word, boot!"], ["say a word boat"]) == pytest.approx(2 / 4)
    # characters of "say the word boot" (17) vs "say the wor boot": one deletion
    assert cer(["say the word boot"], ["say the wor boot"]) == pytest.approx(1 / 17)
    assert cer(["ab", "cd"], ["ab", "cd"]) == 0.0
    with pytest.raises(ValueError):
        wer(["a"], [])


def test_report_is_json_ready() -> None:
    data = classification_report(np.array([0, 1]), np.array([0, 1]), 2).to_dict()
    assert data["wa"] == 1.0 and data["count"] == 2
