"""Export a run's encoders: the same as the ``mmssl-export`` console script."""

import sys

from mmssl.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
