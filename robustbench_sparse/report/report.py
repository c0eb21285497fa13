"""The old module path of `build_report`; import from `robustbench_sparse.report` instead.

Kept only while cli.py, pipeline.py and own_model.py still import it from here.
"""

from robustbench_sparse.report.build import FORMATS, Report, build_report

__all__ = ["FORMATS", "Report", "build_report"]
