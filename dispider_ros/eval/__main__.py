"""`python -m dispider_ros.eval run|score|report|topics|convert` (see cli.py)."""
import sys

from dispider_ros.eval.cli import main

sys.exit(main())
