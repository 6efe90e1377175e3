"""The toolchain's version, and the plan format it writes and reads."""

VERSION = "0.1.0"
PLAN_FORMAT = 1
