"""Secret rotation: schedules, the two-phase protocol, rotators per secret type."""
