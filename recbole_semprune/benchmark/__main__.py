import sys

from recbole_semprune.benchmark.cli import main

sys.exit(main())
