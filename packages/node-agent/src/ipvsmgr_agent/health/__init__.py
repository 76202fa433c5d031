"""Backend health checks run by the node agent: TCP, HTTP(S), UDP, DNS and script probes with rise/fall."""

from ._metrics import HealthMetrics
from ._monitor import CheckResult, HealthMonitor
from ._spec import CheckSpec, HealthSpecError, check_spec

__all__ = ["CheckResult", "CheckSpec", "HealthMetrics", "HealthMonitor", "HealthSpecError", "check_spec"]
