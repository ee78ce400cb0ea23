"""Where a machine comes from: live or captured sysfs, a spec file, bundled examples."""
