"""Root conftest: the rig's own tests live in tests/, device suites in suites/."""
