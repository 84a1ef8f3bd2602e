"""Pure core shared by the device and the host tools: local time, schedules, the planner."""

VERSION = "0.1.0"
