"""What people look at: the HTML report of a twin (and, later, the dashboard served by the app)."""

from immunetwin.web.report import Check, Report, build_report, write_report

__all__ = ["Check", "Report", "build_report", "write_report"]
