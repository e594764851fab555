"""The command line's commands, one module per stage; each command turns its options into the
library's options object, makes one library call and prints. Shared options: :mod:`.options`."""
