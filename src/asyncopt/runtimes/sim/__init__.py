"""The discrete-event simulator of heterogeneous workers in virtual time."""
