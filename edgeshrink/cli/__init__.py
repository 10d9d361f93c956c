"""The command line: thin click commands that call the library and print."""
