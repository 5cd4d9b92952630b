"""What the rig does with one device under test: the Dut and its lifecycle, the facts of its boot,
Shadow-box deployment, NMIs, the hang monitor, soaks, stall settings and pstore."""
