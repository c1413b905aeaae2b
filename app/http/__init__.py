"""Pure HTTP logic: header text and integers in, decisions out. No I/O, no framework imports."""
