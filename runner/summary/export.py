"""The comparison table in the formats a paper or a spreadsheet takes."""
from __future__ import annotations


import pandas as pd



def export(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "tex":
        return table.to_latex(index=False, float_format="%.4g", escape=True)
    if fmt == "md":
        return table.to_markdown(index=False, floatfmt=".4g")
    return table.to_csv(index=False)
