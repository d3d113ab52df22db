"""Analysis: sizes and MACs (metrics), the sensitivity scan (scan, fx_scan), the planner (plan), plots (plots, loaded on use)."""

from .metrics import count_macs, layer_stats, model_stats
from .plan import layer_unit_costs, plan_by_budget, plan_by_tolerance
from .scan import ScanResult, sensitivity_scan

__all__ = [
    "ScanResult",
    "count_macs",
    "layer_stats",
    "layer_unit_costs",
    "model_stats",
    "plan_by_budget",
    "plan_by_tolerance",
    "sensitivity_scan",
]
