"""What a run leaves behind: per-device reports and the run summary, the one reader of them (results),
the HTML pages, merging runs from several controllers, the live board, `rig report`."""
