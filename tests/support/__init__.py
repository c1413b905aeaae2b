"""What the test tiers share, defined once: real servers and their trees (`servers`), raw HTTP over
a socket (`raw`), multipart bodies (`multipart`), the path traversal corpus (`traversal`) and the
in-process app (`inprocess`)."""
