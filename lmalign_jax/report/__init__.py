"""Reports of an alignment: file-order views, the ``.json`` record, the text summary, the figure.

- :mod:`.views`: the result mapped onto every view of the input files (:func:`expand_to_file_views`).
- :mod:`.record_build`: the ``.json`` record, built and written (:func:`build_record`,
  :func:`record_to_json`).
- :mod:`.record`: the ``.json`` record read back (:func:`read_record`); the only module that
  parses the file.
- :mod:`.summary`: the tiltalign-style text summary of a record (:func:`format_summary`).
- :mod:`.figure`: the PNG report (:func:`render_figure`; matplotlib is imported there only).
"""

from .figure import prefetch_matplotlib, render_figure
from .record import AlignmentRecord, read_record, record_as_read
from .record_build import RECORD_VERSION, build_record, record_to_json
from .summary import format_summary
from .views import (
    FileViews,
    aligned_model_xy,
    expand_to_file_views,
    interpolate_transforms,
)

__all__ = [
    "RECORD_VERSION",
    "AlignmentRecord",
    "FileViews",
    "aligned_model_xy",
    "build_record",
    "expand_to_file_views",
    "format_summary",
    "interpolate_transforms",
    "prefetch_matplotlib",
    "read_record",
    "record_as_read",
    "record_to_json",
    "render_figure",
]
