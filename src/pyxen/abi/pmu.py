"""xen/pmu.h: XENPMU_* sub-ops."""

from __future__ import annotations

XENPMU_mode_get = 0
XENPMU_mode_set = 1
XENPMU_feature_get = 2
XENPMU_feature_set = 3
XENPMU_init = 4
XENPMU_finish = 5
XENPMU_lvtpc_set = 6
XENPMU_flush = 7
