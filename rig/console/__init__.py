"""Console transports, one module each: serial and network serial (capture), netconsole (UDP),
the kernel log over SSH (sshkmsg). All feed one capture path: bytes to disk first, then lines, then subscribers."""
