import sys

from .memory import keep_freed_memory

keep_freed_memory()

from .cli import main  # noqa: E402  (after the allocator setting, so the imports' memory follows it too)

sys.exit(main())
