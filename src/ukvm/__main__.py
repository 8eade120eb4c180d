"""python3 -m ukvm: same as the `ukvm` command."""
import sys

from ukvm.start import main

sys.exit(main())
