"""`python -m tf_dlthesis`: the `tf-dlthesis` command line (see `tf_dlthesis.cli`)."""

import sys

from tf_dlthesis.cli import main

if __name__ == "__main__":
    sys.exit(main())
