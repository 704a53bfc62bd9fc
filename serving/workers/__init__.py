"""Worker processes: supervisor, IPC codec and the worker main loop."""
