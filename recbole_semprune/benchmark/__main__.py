import sys

from recbole_semprune.benchmark import main

sys.exit(main())
