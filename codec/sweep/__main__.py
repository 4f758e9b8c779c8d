import sys

from codec.sweep.command import main

sys.exit(main())
