"""Reading console text: the crash rules as data (rules), the detector that applies them (detector),
and triage of a captured log."""
