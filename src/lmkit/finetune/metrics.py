"""Classification metrics from predicted and true class indices.

accuracy = (1/N) Σ [ŷ_i = y_i];  F1_c = 2·P_c·R_c / (P_c + R_c);  macro-F1 = mean over classes of F1_c.
confusion[i][j] = how many examples of true class i were predicted as class j.
"""
from __future__ import annotations


def confusion_matrix(y_true: list[int], y_pred: list[int], n_classes: int) -> list[list[int]]:
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def classification_report(y_true: list[int], y_pred: list[int], n_classes: int) -> dict:
    m = confusion_matrix(y_true, y_pred, n_classes)
    f1s = []
    for c in range(n_classes):
        tp = m[c][c]
        predicted, actual = sum(m[r][c] for r in range(n_classes)), sum(m[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    accuracy = sum(m[c][c] for c in range(n_classes)) / max(1, len(y_true))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / n_classes, "confusion": m}


def format_confusion(m: list[list[int]], labels: list[str]) -> str:
    width = max(6, *(len(str(l)) for l in labels), *(len(str(v)) for r in m for v in r))
    head = " " * width + " │ " + " ".join(f"{l:>{width}}" for l in labels) + "   (columns: predicted)"
    rows = [f"{l:>{width}} │ " + " ".join(f"{v:>{width}}" for v in r) for l, r in zip(labels, m)]
    return "\n".join([head] + rows)
