"""`mae-tracker report`: Markdown + self-contained HTML from the runs in MLflow.

collect (MLflow -> pandas), figures (matplotlib), render (Markdown/HTML), build (the sections).
"""

from mae_tracker.report.build import ReportPaths, build_report

__all__ = ["ReportPaths", "build_report"]
