"""Folder archives (zip and tar) with an exact length, resumable and sent zero-copy."""
