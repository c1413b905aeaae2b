"""What a person or a script sees of a directory."""
